"""``mmai ablate``: the reference table of ARCHITECTURE.md, reproduced on one data set and seed.

An ablation study adds one feature per row and keeps everything else fixed (the shards, the seed,
the retrieval settings, the gallery). The rows:

0. CLIP zero-shot (Radford et al., ICML 2021): ``mmai validate`` with ``model.bi_encoder.clip``, only when
   the weights are on this machine; otherwise the row says why it was not run and how to enable it.
1. In-batch InfoNCE: ``mmai fit`` with ``model.bi_encoder.queue_size 0`` and ``model.bi_encoder.hard_negative_beta 0``.
2. + momentum queue and hard negatives (MoCo/ALBEF queue, similarity-weighted negatives): the
   config's own defaults.
3. + fusion re-rank: ``mmai rerank fit`` on row 2's last checkpoint; the two-stage list.
4. + GAR over the two-stage list (HippoRAG-style spreading activation on the episodic graph).
5. + GAR control: the same, on a graph whose times and places are shuffled.

Rows 3-5 come from one re-ranker run (the retrieval callback logs all three stages). Every run
lives in ``OUT/runs/<row>-<hash of its arguments>`` with its checkpoints, W&B run and a metrics
file; a run whose metrics file is complete is reused, not retrained. The table goes to
``OUT/ablation.md``, ``OUT/ablation.csv`` and a W&B table (an offline run without credentials).

**Seeds and intervals.** ``--seeds 0 1 2`` (or ``seeds:`` in the config) trains and evaluates
every row once per seed on the same shards. The table shows each metric as mean ± std over the
seeds, and each row's paired difference to the row above it (and GAR's to its shuffled control)
with a 95% bootstrap interval over the val queries, paired across the two rows and pooled over
the seeds (:mod:`mmai.evaluation.stats`), from the per-query outcomes every run saves (``per_query.npz``).
A difference is called a "gain" only when its interval excludes 0; otherwise the table says "no
measurable gain". The CSV and the W&B table hold every per-seed value.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmai_apps.resources import data_root

REPO = data_root()  # the installed package's folder: configs/ and sweeps/ are package data
METRICS_FILE = "ablation_metrics.json"
SETTING_KEYS = {"seed", "seeds", "out", "shard_dir", "synth", "bi_encoder", "reranker", "retrieval", "baseline", "clip",
                "quick", "stage1_only"}
RECALL_COLUMNS = [f"{direction}/{relevance}/R@{k}" for direction in ("t2i", "i2t")
                  for relevance in ("instance", "class") for k in (1, 5, 10)]
LATENCY_COLUMNS = ["stage1_ms", "rerank_ms", "gar_ms", "total_ms"]
#: The collapse guard of each row's stage-1 model (``val/stage1/diversity/...``): distinct top-1
#: images over the val captions as a fraction of the gallery, and mean pairwise cosines.
DIVERSITY_COLUMNS = ["distinct_top1", "text_mean_cosine", "image_mean_cosine"]
#: Recall under consistent relevance (any species the caption is true of, :mod:`mmai.data.consistency`)
#: and class precision in the top 10, from ``val/{stage}/...`` like the recall columns.
EXTRA_COLUMNS = ["t2i/consistent/R@1", "t2i/consistent/R@10", "t2i/class/P@10"]
#: The probes of each row's stage (:mod:`mmai.evaluation.probes`): binding scored directly by the stage's own
#: scorer, binding read from list positions, hard burst photos in the top 10.
PROBE_COLUMNS = ["probe/binding_direct", "probe/binding", "probe/burst@10"]
#: Which scorer the direct binding probe uses for each logged stage (GAR scores no pairs).
DIRECT_SCORER = {"stage1": "stage1", "two_stage": "two_stage"}
MISSING = "—"
#: The table's columns: (key, header); recall from ``val/{stage}/...``, probes from ``val/probe/...``.
SUMMARY_COLUMNS = [("t2i/class/R@1", "t2i class R@1"), ("t2i/consistent/R@1", "t2i consistent R@1"),
                   ("t2i/class/R@10", "t2i class R@10"), ("t2i/class/P@10", "t2i class P@10"),
                   ("i2t/class/R@1", "i2t class R@1"),
                   ("probe/binding_direct", "binding, direct"), ("probe/binding", "binding, list positions"),
                   ("probe/burst@10", "hard bursts in top 10")]
#: Paired comparisons: (row, against row, per-query outcome, what it measures). Intervals resample
#: independent units: species for recall and bursts, swap pairs for binding.
COMPARISONS = [
    (2, 1, "t2i/class/hit@1", "t2i class R@1"),
    (2, 1, "t2i/consistent/hit@1", "t2i consistent R@1"),
    (3, 2, "t2i/consistent/hit@1", "t2i consistent R@1"),
    (3, 2, "t2i/class/hit@1", "t2i class R@1"),
    (3, 2, "probe/binding_direct", "binding, direct"),
    (3, 2, "probe/binding", "binding, list positions"),
    (4, 3, "probe/burst@10", "hard bursts in top 10"),
    (4, 5, "probe/burst@10", "hard bursts in top 10"),
    (4, 3, "t2i/class/p@10", "t2i class P@10"),
    (4, 3, "t2i/class/hit@10", "t2i class R@10"),
    (4, 5, "t2i/class/hit@10", "t2i class R@10"),
]


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: which run it reads and which logged stage.

    Args:
        number: the row's number in the reference table (0 = CLIP zero-shot).
        label: the feature set, as the table prints it.
        run: the run it reads (``clip``, ``baseline``, ``queue_hn``, ``rerank``).
        stage: the logged stage (``stage1``, ``two_stage``, ``gar``, ``gar_control``).
    """

    number: int
    label: str
    run: str
    stage: str

    @property
    def t2i_only(self) -> bool:
        """GAR runs over the memory graph of gallery images: text→image only."""
        return self.stage.startswith("gar")


ROWS = (
    RowSpec(0, "CLIP zero-shot", "clip", "stage1"),
    RowSpec(1, "in-batch InfoNCE", "baseline", "stage1"),
    RowSpec(2, "+ momentum queue and hard negatives", "queue_hn", "stage1"),
    RowSpec(3, "+ fusion re-rank", "rerank", "two_stage"),
    RowSpec(4, "+ GAR", "rerank", "gar"),
    RowSpec(5, "+ GAR control (shuffled times/places)", "rerank", "gar_control"),
)


@dataclass
class RunSpec:
    """One training (or zero-shot evaluation) run of the ablation.

    Args:
        name: ``clip``, ``baseline``, ``queue_hn`` or ``rerank``.
        command: ``fit``, ``validate`` or ``rerank``.
        argv: its arguments (without ``--run_dir`` and the metrics callback, which follow from the dir).
        run_dir: ``OUT/runs/<name>-<hash of argv>``.
        status: ``trained``, ``reused`` or ``not run: <why>``.
        metrics: the last validation's metrics.
        seconds: wall time of this call (0 when reused).
    """

    name: str
    command: str
    argv: list[str]
    run_dir: Path
    status: str = "pending"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------------ settings
def load_settings(path: Path, quick: bool = False) -> dict[str, Any]:
    """Read an ablation config (``configs/experiments/ablation.yaml``); ``quick`` merges its ``quick`` block.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown key, or a missing required one; the message names the file and key.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ablation config {path} does not exist (see configs/experiments/ablation.yaml)")
    settings = yaml.safe_load(path.read_text()) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: an ablation config is a YAML mapping (seed, bi_encoder, reranker, retrieval, ...)")
    unknown = set(settings) - SETTING_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; an ablation config takes {sorted(SETTING_KEYS)}")
    quick_block = settings.pop("quick", None) or {}
    if quick:
        unknown = set(quick_block) - SETTING_KEYS
        if unknown:
            raise ValueError(f"{path}: quick has unknown key(s) {sorted(unknown)}")
        settings = _merge(settings, quick_block)
    for key in ("bi_encoder", "reranker"):
        if not isinstance(settings.get(key), dict) or not settings[key].get("configs"):
            raise ValueError(f"{path}: {key}.configs is required: the --config files of the run, e.g. "
                             "[configs/base.yaml, configs/profiles/tiny_cpu.yaml]")
    settings.setdefault("seed", 0)
    settings.setdefault("retrieval", {})
    settings.setdefault("baseline", {"model.bi_encoder.queue_size": 0, "model.bi_encoder.hard_negative_beta": 0.0})
    return settings


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in key by key (nested mappings merged, the rest replaced),
    by OmegaConf's merge; plain dicts in and out."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.create(copy.deepcopy(base)), OmegaConf.create(copy.deepcopy(override)))
    return OmegaConf.to_container(merged, resolve=True)


def flags(options: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"model.lr": 1e-4, "model.reranker": {...}}`` as CLI items ``["--model.lr", "0.0001", ...]``.

    Mappings and lists go as JSON (jsonargparse reads them); the rest through ``str``.
    """
    items = []
    for name, value in options.items():
        text = json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else str(value)
        items += [f"--{prefix}{name}", text]
    return items


def _config_path(name: str) -> str:
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path
    if not path.exists():
        raise FileNotFoundError(f"ablation config: --config file {name} does not exist (relative paths are read "
                                f"from the current folder, then from {REPO})")
    return str(path.resolve())


# ---------------------------------------------------------------------------------------- data
def prepare_shards(settings: dict[str, Any], out: Path, shard_dir: Path | None) -> tuple[Path, str]:
    """The shard folder of every run and a description of it: ``shard_dir`` (checked), or the
    ``synth`` data set synthesised (once) into ``out/data``."""
    from mmai.data.shards import read_manifest, write_shards
    from mmai.data.synth import synthesize

    shard_dir = shard_dir or (Path(settings["shard_dir"]) if settings.get("shard_dir") else None)
    if shard_dir is not None:
        read_manifest(shard_dir)  # a clear error when it is not a shard folder
        print(f"[ablate] data: shards {shard_dir}", flush=True)
        return Path(shard_dir).resolve(), f"shards {Path(shard_dir).resolve()}"
    synth = settings.get("synth") or {}
    root, shards = out / "data" / "synth", out / "data" / "shards"
    print(f"[ablate] data: synthetic CUB {synth} in {root}", flush=True)
    synthesize(root, audio=False, **synth)
    if not (shards / "manifest.json").exists():
        images = int(synth.get("images", 4000))
        write_shards(root, shards, samples_per_shard=max(8, min(128, images // 16)))
    described = ", ".join(f"{key} {value}" for key, value in synth.items())
    return shards.resolve(), f"synthetic CUB ({described}) at {shards.resolve()}"


# ---------------------------------------------------------------------------------------- runs
def plan_runs(settings: dict[str, Any], shards: Path, out: Path) -> dict[str, RunSpec]:
    """The runs of the table in order (``clip`` first, ``rerank`` last), named and hashed by their arguments."""
    seed = ["--seed_everything", str(settings["seed"])]
    data = ["--data.shard_dir", str(shards)]
    retrieval = flags(settings.get("retrieval") or {}, "retrieval.")
    bi_encoder = settings["bi_encoder"]
    epochs = int(bi_encoder.get("epochs", 4))
    fit = [*(a for c in bi_encoder["configs"] for a in ("--config", _config_path(c))), *seed, *data,
           "--trainer.max_epochs", str(epochs), "--trainer.check_val_every_n_epoch", str(epochs),
           *retrieval, *flags(bi_encoder.get("args") or {})]
    runs = {"clip": _run("clip", "validate", [*fit, *_clip_flags(settings.get("clip") or {})], out),
            "baseline": _run("baseline", "fit", [*fit, *flags(settings["baseline"])], out),
            "queue_hn": _run("queue_hn", "fit", fit, out)}
    reranker = settings["reranker"]
    rerank_epochs = int(reranker.get("epochs", 3))
    rerank = [*(a for c in reranker["configs"] for a in ("--config", _config_path(c))), *seed, *data,
              "--model.bi_encoder_ckpt", str(runs["queue_hn"].last_checkpoint),
              "--trainer.max_epochs", str(rerank_epochs), "--trainer.check_val_every_n_epoch", str(rerank_epochs),
              *retrieval, *flags(reranker.get("args") or {})]
    runs["rerank"] = _run("rerank", "rerank", rerank, out)
    return runs


def _clip_flags(clip: dict[str, Any]) -> list[str]:
    tower = {"model_name": clip.get("model_name", "openai/clip-vit-base-patch16"), "local_files_only": True}
    return ["--model.bi_encoder.clip", json.dumps(tower),
            "--model.bi_encoder.vision.image_size", str(clip.get("image_size", 224))]


def _run(name: str, command: str, argv: list[str], out: Path) -> RunSpec:
    digest = hashlib.sha1(json.dumps([command, *argv]).encode()).hexdigest()[:8]
    return RunSpec(name=name, command=command, argv=argv, run_dir=(out / "runs" / f"{name}-{digest}").resolve())


def clip_unavailable_reason(model_name: str) -> str | None:
    """None when CLIP ``model_name`` can be loaded offline (a local folder, or a hub id in the HF
    cache); otherwise why not and how to enable the row."""
    if Path(model_name).expanduser().is_dir():
        return None if (Path(model_name).expanduser() / "config.json").is_file() else \
            f"not run: {model_name} has no config.json (save a CLIPModel there with save_pretrained)"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = all(isinstance(try_to_load_from_cache(model_name, name), str)
                     for name in ("config.json", "tokenizer_config.json"))
        weights = any(isinstance(try_to_load_from_cache(model_name, name), str)
                      for name in ("model.safetensors", "pytorch_model.bin"))
    except Exception:  # an id the cache cannot even parse is not cached
        cached = weights = False
    if cached and weights:
        return None
    return (f"not run: no CLIP weights offline ({model_name} is not in the Hugging Face cache; with internet run "
            f"`huggingface-cli download {model_name}`, or set clip.model_name to a local CLIP folder)")


def run_or_reuse(spec: RunSpec) -> RunSpec:
    """Train (or evaluate) ``spec`` unless its run directory holds a complete run; read its metrics."""
    from mmai_apps.lightning_cli import cli_main, rerank_cli_main

    if _complete(spec):
        spec.status = "reused"
    else:
        callback = {"class_path": "callbacks.SweepMetricsCallback",
                    "init_args": {"path": str(spec.metrics_path)}}
        argv = [*spec.argv, "--run_dir", str(spec.run_dir), f"--trainer.callbacks+={json.dumps(callback)}"]
        resume = spec.command != "validate" and spec.last_checkpoint.is_file()
        if resume:  # an interrupted run: go on from its last checkpoint
            argv += ["--ckpt_path", str(spec.last_checkpoint)]
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        (spec.run_dir / "command.json").write_text(json.dumps({"command": spec.command, "argv": argv}, indent=1))
        start = time.perf_counter()
        try:
            if spec.command == "rerank":
                rerank_cli_main(["fit", *argv])
            else:
                cli_main([spec.command, *argv])
        finally:
            from lightning_glue.tracking import finish_wandb_run  # Lightning: imported only when a run ends

            finish_wandb_run()
        spec.seconds = time.perf_counter() - start
        (spec.run_dir / "wall_time.json").write_text(json.dumps({"seconds": round(spec.seconds, 1)}))
        spec.status = "resumed and trained" if resume else ("evaluated" if spec.command == "validate" else "trained")
    summary = json.loads(spec.metrics_path.read_text())
    if not summary["validations"]:
        raise RuntimeError(f"ablation run {spec.run_dir} logged no validation: see its logs")
    spec.metrics = summary["validations"][-1]
    return spec


def _complete(spec: RunSpec) -> bool:
    """Whether ``spec``'s run directory holds a finished run whose files read back. A metrics file or
    ``per_query.npz`` that does not (truncated, garbage) makes it unfinished: the directory is moved
    aside (kept, named) so that the run is trained again from scratch, not resumed from a checkpoint
    that has nothing left to train, and one line says which file and why."""
    import zipfile

    from callbacks.retrieval import PER_QUERY_FILE, load_outcomes

    if not spec.metrics_path.is_file():
        return False
    path = spec.metrics_path
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not the metrics object")
        path = spec.run_dir / PER_QUERY_FILE
        if path.is_file():
            load_outcomes(path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:  # JSONDecodeError is a ValueError
        aside = spec.run_dir.with_name(f"{spec.run_dir.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        spec.run_dir.rename(aside)
        print(f"ablate: {path} does not read back ({type(error).__name__}: {error}): the run counts as "
              f"unfinished and is retrained from scratch (its old files moved to {aside})", flush=True)
        return False
    if spec.command == "validate":
        return bool(summary.get("validations"))
    return bool(summary.get("finished")) and bool(summary.get("validations")) and spec.last_checkpoint.is_file()


# --------------------------------------------------------------------------------------- table
def table_rows(runs: dict[str, RunSpec]) -> list[dict[str, Any]]:
    """One dict per row of :data:`ROWS`: recall as fractions, latency in ms, ``None`` where it does
    not apply (GAR's i2t) or was not run."""
    rows = []
    for spec in ROWS:
        run = runs[spec.run]
        row: dict[str, Any] = {"row": spec.number, "feature set": spec.label, "status": run.status}
        if not run.metrics:
            rows.append({**row, **{c: None for c in [*RECALL_COLUMNS, *EXTRA_COLUMNS, *LATENCY_COLUMNS,
                                                     *DIVERSITY_COLUMNS, *PROBE_COLUMNS]}, "run_dir": ""})
            continue
        m = run.metrics
        for column in [*RECALL_COLUMNS, *EXTRA_COLUMNS]:
            skip = spec.t2i_only and column.startswith("i2t")
            row[column] = None if skip else m.get(f"val/{spec.stage}/{column}")
        row.update(_latency(spec, m))
        row.update({column: m.get(f"val/stage1/diversity/{column}") for column in DIVERSITY_COLUMNS})
        row["probe/binding"] = m.get(f"val/probe/binding/{spec.stage}")
        scorer = DIRECT_SCORER.get(spec.stage)
        row["probe/binding_direct"] = m.get(f"val/probe/binding_direct/{scorer}") if scorer else None
        row["probe/burst@10"] = m.get(f"val/probe/burst/{spec.stage}/R@10")
        row["run_dir"] = str(run.run_dir)
        rows.append(row)
    return rows


def _latency(spec: RowSpec, metrics: dict[str, float]) -> dict[str, float | None]:
    """Per-query latency of each stage a row runs (search only: queries are already encoded)."""
    stage1 = metrics.get("val/stage1/latency_ms")
    rerank = metrics.get("val/two_stage/rerank_latency_ms") if spec.stage != "stage1" else None
    gar = metrics.get("val/gar/latency_ms") if spec.stage == "gar" else None  # the control is not timed
    parts = [stage1, rerank, gar]
    total = None if spec.stage == "gar_control" else sum(p for p in parts if p is not None)
    return {"stage1_ms": stage1, "rerank_ms": rerank, "gar_ms": gar, "total_ms": total}


def protocol(settings: dict[str, Any], runs: dict[str, RunSpec], shards: Path, data: str,
             seconds: float) -> dict[str, Any]:
    """What every number of the table depends on: data, split, gallery, K, lambda, GAR, training, hardware."""
    from mmai_apps.bench import machine_info
    from mmai.data.shards import read_manifest

    manifest = read_manifest(shards)
    val = manifest["splits"]["val"]
    measured = next((r.metrics for r in runs.values() if r.metrics), {})
    retrieval = settings.get("retrieval") or {}
    machine = machine_info()
    return {
        "data": data,
        "split": f"{manifest['split']}/val",
        "gallery_images": int(measured.get("val/gallery_images", val["images"])),
        "gallery_captions": int(measured.get("val/queries_captions", val["captions"])),
        "gallery_classes": len(val["classes"]),
        "candidates_K": retrieval.get("candidates", 100),
        "rerank_k": int(runs["rerank"].metrics.get("val/two_stage/k", retrieval.get("rerank_k", 16))),
        "stage1_weight": retrieval.get("stage1_weight", 1.0),
        "gar_alpha": retrieval.get("gar_alpha", 0.5),
        "temporal_window_s": retrieval.get("temporal_window_s", 3600),
        "gar_damping": retrieval.get("gar_damping", 0.5),
        "bi_encoder_epochs": int(settings["bi_encoder"].get("epochs", 4)),
        "reranker_epochs": int(settings["reranker"].get("epochs", 3)),
        "bi_encoder_configs": " + ".join(settings["bi_encoder"]["configs"]),
        "reranker_configs": " + ".join(settings["reranker"]["configs"]),
        "hardware": f"{machine['processor']}, {machine['cpu_count']} cores, {machine.get('torch_threads')} torch "
                    f"threads, GPU {machine.get('cuda') or 'none'}",
        "run_wall_s": ", ".join(f"{name} {_run_seconds(run):.0f} s" for name, run in runs.items() if run.metrics),
        "wall_s": round(seconds, 1),
    }


def _run_seconds(run: RunSpec) -> float:
    """Wall time of the run when it was made (this call's, or the recorded one of a reused run)."""
    path = run.run_dir / "wall_time.json"
    return run.seconds or (json.loads(path.read_text())["seconds"] if path.is_file() else float("nan"))


def summarize(rows_by_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per table row: every numeric column as ``(mean, std, seeds)`` over the seeds that
    have it (None where no seed has it)."""
    from mmai.evaluation.stats import mean_std

    seeds = list(rows_by_seed)
    summary = []
    for index, first in enumerate(rows_by_seed[seeds[0]]):
        per_seed = [rows_by_seed[seed][index] for seed in seeds]
        row = {"row": first["row"], "feature set": first["feature set"],
               "status": ", ".join(sorted({r["status"] for r in per_seed}))}
        for column in [*RECALL_COLUMNS, *EXTRA_COLUMNS, *PROBE_COLUMNS, *LATENCY_COLUMNS, *DIVERSITY_COLUMNS]:
            values = [r[column] for r in per_seed if r.get(column) is not None]
            row[column] = (*mean_std(values), len(values)) if values else None
        summary.append(row)
    return summary


def _outcomes(run: RunSpec) -> dict[str, Any]:
    import zipfile

    from callbacks.retrieval import PER_QUERY_FILE, load_outcomes

    path = run.run_dir / PER_QUERY_FILE
    if not path.is_file():
        return {}
    try:
        return load_outcomes(path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} does not read back ({type(error).__name__}: {error}): delete it, or its run "
                         f"folder {run.run_dir} to retrain the run, and run mmai ablate again") from error


def compare(runs_by_seed: dict[int, dict[str, RunSpec]]) -> list[dict[str, Any]]:
    """Every comparison of :data:`COMPARISONS` with its paired bootstrap interval (pooled over the
    seeds), or the reason it could not be made."""
    from mmai.evaluation.stats import paired_bootstrap

    specs = {spec.number: spec for spec in ROWS}
    loaded: dict[tuple[int, str], dict] = {}
    results = []
    for row, against, metric, label in COMPARISONS:
        entry = {"row": row, "against": against, "metric": label, "outcome": metric}
        pairs, problem = [], None
        for seed, runs in runs_by_seed.items():
            sides = []
            for number in (against, row):
                spec = specs[number]
                key = (seed, spec.run)
                if key not in loaded:
                    loaded[key] = _outcomes(runs[spec.run]) if runs[spec.run].metrics else {}
                values = loaded[key].get(f"{spec.stage}/{metric}")
                queries, units = _queries_and_units(loaded[key], metric)
                sides.append((values, queries, units))
            (a, qa, _), (b, qb, units) = sides
            skipped = [runs[specs[n].run].status for n in (against, row)
                       if str(runs[specs[n].run].status).startswith("not run")]
            if skipped:
                problem = skipped[0]
                break
            if a is None or b is None:
                problem = "not measured (a run has no per-query outcomes for it)"
                break
            if qa is None or qb is None or not np.array_equal(qa, qb):
                problem = "the two runs scored different queries: not paired"
                break
            pairs.append((a, b, units))
        if problem is None and pairs:
            units = pairs[0][2]
            result = paired_bootstrap(np.stack([a for a, _, _ in pairs]), np.stack([b for _, b, _ in pairs]),
                                      units=units)
            entry.update(difference=result.difference, low=result.low, high=result.high, verdict=result.verdict,
                         queries=result.queries, seeds=result.seeds, units=result.units,
                         unit=_unit_name(metric) if units is not None else "queries")
        else:
            entry.update(difference=None, low=None, high=None, verdict=problem or "not measured", queries=0, seeds=0,
                         units=None, unit="")
        results.append(entry)
    return results


def _unit_name(metric: str) -> str:
    return "swap pairs" if metric.startswith("probe/binding") else "species"


def _queries_and_units(outcomes: dict[str, Any], metric: str) -> tuple[Any, Any]:
    """The query rows an outcome is over (to check that two runs pair) and each query's
    independent unit: the swap pair for binding, the caption's species otherwise (None when the
    run predates units: then queries are resampled)."""
    species = outcomes.get("query/species")
    if metric.startswith("probe/binding"):
        return outcomes.get("query/binding_text_rows"), outcomes.get("query/binding_units")
    if metric.startswith("probe/burst"):
        rows = outcomes.get("query/burst_text_rows")
        return rows, None if species is None or rows is None else species[rows]
    return outcomes.get("query/text_image_ids"), species


def _cell(value, std: bool = True) -> str:
    if value is None:
        return MISSING
    mean, spread, count = value
    return f"{100 * mean:.1f} ± {100 * spread:.1f}" if std and count > 1 else f"{100 * mean:.1f}"


def _difference(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if entry["difference"] is None:
        return f"{entry['metric']}: {entry['verdict']}"
    return (f"{entry['metric']} {100 * entry['difference']:+.1f} [{100 * entry['low']:+.1f}, "
            f"{100 * entry['high']:+.1f}] {entry['verdict']}")


#: The comparison shown in each row's "vs row above" cell: (row, against, outcome); the cell names
#: its metric and adds every other comparison of that row that is a loss, so none is hidden.
HEADLINE = {2: (2, 1, "t2i/class/hit@1"), 3: (3, 2, "probe/binding_direct"), 4: (4, 3, "probe/burst@10"),
            5: (4, 5, "probe/burst@10")}


def _headline(row: int, comparisons: list[dict[str, Any]]) -> str:
    key = HEADLINE.get(row)
    if key is None:
        return ""
    by_key = {(c["row"], c["against"], c["outcome"]): c for c in comparisons}
    cell = _difference(by_key.get(key))
    losses = [c for c in comparisons if (c["row"], c["against"]) == key[:2] and c["outcome"] != key[2]
              and c.get("verdict") == "loss"]
    if row == 5:  # the control row shows row 4 against it; its own losses are row 4's
        losses = [c for c in comparisons if (c["row"], c["against"]) == (4, 5) and c["outcome"] != key[2]
                  and c.get("verdict") == "loss"]
    return "; ".join([cell] + [f"loss: {_difference(c)}" for c in losses])


def format_markdown(rows: list[dict[str, Any]], facts: dict[str, Any], comparisons: list[dict[str, Any]] = (),
                    chance: dict[str, float] | None = None, ceiling: dict[str, float] | None = None) -> str:
    """The table in percent (mean ± std over the seeds; ``—`` where a cell does not apply or was
    not run), each row's paired difference to the row above, the chance row and the protocol."""
    head = ["#", "feature set", *(header for _, header in SUMMARY_COLUMNS),
            "vs row above (95% CI; row 5: row 4 vs this control)", "distinct top-1", "total ms", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["status"].startswith("not run"):
            cells = [MISSING] * (len(SUMMARY_COLUMNS) + 3)
        else:
            cells = [_cell(row.get(key)) for key, _ in SUMMARY_COLUMNS]
            cells.append(_headline(row["row"], comparisons))
            cells.append(_cell(row.get("distinct_top1"), std=False))
            total = row.get("total_ms")
            cells.append(MISSING if total is None else f"{total[0]:.3f}")
        lines.append("| " + " | ".join([str(row["row"]), row["feature set"], *cells, row["status"]]) + " |")
    if chance:
        cells = [f"{100 * chance[key]:.1f}" if key in chance else MISSING for key, _ in SUMMARY_COLUMNS]
        lines.append("| – | chance (random ranking) | " + " | ".join(cells) + " |  |  |  |  |")
    if ceiling:
        cells = [f"{100 * ceiling[key]:.1f}" if key in ceiling else MISSING for key, _ in SUMMARY_COLUMNS]
        lines.append("| – | perfect attribute reader (ceiling) | " + " | ".join(cells) + " |  |  |  |  |")
    labels = {spec.number: spec.label for spec in ROWS}
    differences = ["| row | against | metric | difference (pp) | 95% interval (pp) | verdict | queries x seeds "
                   "| units resampled |", "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        interval = (f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]" if c["low"] is not None else MISSING)
        difference = f"{100 * c['difference']:+.1f}" if c["difference"] is not None else MISSING
        units = f"{c['units']} {c['unit']}" if c.get("units") else (c.get("unit") or MISSING)
        differences.append(f"| {c['row']} {labels[c['row']]} | {c['against']} {labels[c['against']]} | {c['metric']} "
                           f"| {difference} | {interval} | {c['verdict']} | {c['queries']} x {c['seeds']} | {units} |")
    notes = [
        f"Ablation — in %, mean ± std over seeds {facts['seeds']}, split {facts['split']}: gallery "
        f"{facts['gallery_images']} images and {facts['gallery_captions']} captions ({facts['gallery_classes']} "
        f"classes); data {facts['data']}.",
        "", *lines, "",
        "Paired differences (row minus the row it is compared with), 95% bootstrap interval paired across the two "
        "rows and pooled over the seeds, resampling independent units (the caption's species for recall and "
        "bursts, the swap pair for binding; the last column says how many); \"gain\" only when the interval "
        "excludes 0:",
        "", *differences, "",
        "Protocol:",
        "- relevance: *instance* = the caption's own image (i2t: the image's own captions); *class* = any "
        "image (caption) of the same species; *consistent* = any image of a species that has every attribute the "
        "caption states (mmai_extras/caption_attributes.jsonl; synthetic data only). Recall@K over the whole "
        "gallery; the list length is fixed. Class P@10: the share of the top 10 of the caption's species. The "
        "perfect attribute reader ranks the images of every consistent species first, in random order: the "
        "class recall that reading the caption exactly allows.",
        "- binding: over captions that name a colour swapped between two species of the gallery (a swap pair), "
        "(caption, its own image, an image of the partner) triples; *direct* = the fraction where the row's own "
        "scorer (stage-1 cosine; the two-stage score) gives the own image the higher score; *list positions* = "
        "where the own image ranks higher in the row's list (a re-ranker of the top K can change it only when both "
        "are in the top K). 50% is a bag of words. Hard bursts in top 10: for captions of clear photos in a burst "
        "that also has hard photos (low light, blur, distance, occlusion), the fraction of those hard photos in "
        "the top 10.",
        f"- stage 1: exact cosine over the gallery (FAISS top K={facts['candidates_K']} feeds stage 2 and GAR); "
        f"re-rank: the top {facts['rerank_k']} re-scored, final = match logit + {facts['stage1_weight']} x cosine; "
        f"GAR: weight {facts['gar_alpha']}, damping {facts['gar_damping']}, temporal window "
        f"{facts.get('temporal_window_s', 3600)} s, over the two-stage list (rows 4-5), text→image only; the "
        "control shuffles the graph's times and places.",
        "- latency: ms per query, search/re-rank/GAR only (queries pre-encoded, gallery patch tokens cached).",
        "- collapse guard: distinct top-1 = distinct images that are some val caption's top-1, over the gallery "
        "size (near 1/gallery means a collapsed model).",
        f"- training: seeds {facts['seeds']}, the same shards for every run; bi-encoder {facts['bi_encoder_epochs']} "
        f"epoch(s) ({facts['bi_encoder_configs']}), re-ranker {facts['reranker_epochs']} epoch(s) on row 2's last "
        f"checkpoint of the same seed ({facts['reranker_configs']}).",
        f"- hardware: {facts['hardware']}; run wall times: {facts['run_wall_s']}; this call {facts['wall_s']} s.",
    ]
    return "\n".join(notes) + "\n"


def chance_row(shards: Path, metrics: dict[str, float] | None = None) -> dict[str, float]:
    """The table's metrics under a random ranking of this val gallery (consistent recall from a
    run's logged ``val/chance/...``, which depends on what the captions state)."""
    from mmai.data.shards import read_manifest
    from mmai.evaluation.metrics import chance_levels

    manifest = read_manifest(shards)
    chance = chance_levels(manifest)
    val = manifest["splits"]["val"]
    chance["t2i/class/P@10"] = 1.0 / max(1, len(val["classes"]))
    chance["probe/binding"] = chance["probe/binding_direct"] = 0.5
    chance["probe/burst@10"] = min(1.0, 10 / max(1, val["images"]))
    for key, value in (metrics or {}).items():
        if key.startswith("val/chance/"):
            chance[key[len("val/chance/"):]] = value
    return chance


def ceiling_row(metrics: dict[str, float] | None) -> dict[str, float]:
    """The perfect attribute reader's row (``val/ceiling/...``: it knows exactly what each caption
    states; consistent recall is 100% for it by definition); empty without caption records."""
    found = {key[len("val/ceiling/"):]: value for key, value in (metrics or {}).items()
             if key.startswith("val/ceiling/")}
    if found:
        found["t2i/consistent/R@1"] = found["t2i/consistent/R@10"] = 1.0
    return found


def write_csv(rows_by_seed: dict[int, list[dict[str, Any]]], facts: dict[str, Any], path: Path,
              comparisons: list[dict[str, Any]] = ()) -> None:
    """Every per-seed value as CSV (one line per row and seed: recall and probes as fractions,
    latency in ms, empty where not applicable), the protocol in every line; the paired
    differences go to ``ablation_differences.csv`` beside it."""
    columns = ["row", "feature set", "seed", *RECALL_COLUMNS, *EXTRA_COLUMNS, *PROBE_COLUMNS, *LATENCY_COLUMNS,
               *DIVERSITY_COLUMNS,
               "status", "run_dir", *facts]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for seed, rows in rows_by_seed.items():
            for row in rows:
                writer.writerow({**{c: row.get(c) for c in columns}, **facts, "seed": seed})
    fields = ["row", "against", "metric", "outcome", "difference", "low", "high", "verdict", "queries", "seeds"]
    with open(path.with_name("ablation_differences.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for entry in comparisons:
            writer.writerow({field: entry.get(field) for field in fields})


def log_wandb_table(rows_by_seed: dict[int, list[dict[str, Any]]], facts: dict[str, Any], out: Path,
                    comparisons: list[dict[str, Any]] = ()) -> str:
    """Log the per-seed table (``ablation/table``) and the paired differences
    (``ablation/differences``) to W&B in a run of its own; offline without credentials."""
    import wandb

    from lightning_glue.tracking import wandb_credentials_available

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    columns = ["row", "feature set", "seed", *RECALL_COLUMNS, *EXTRA_COLUMNS, *PROBE_COLUMNS, *LATENCY_COLUMNS,
               *DIVERSITY_COLUMNS,
               "status"]
    run = wandb.init(project="mmai", job_type="ablation", name="ablation", dir=str(out), config=facts,
                     mode="offline" if mode in {"offline", "dryrun"} else mode)
    data = [[seed if c == "seed" else row.get(c) for c in columns] for seed, rows in rows_by_seed.items() for row in rows]
    fields = ["row", "against", "metric", "difference", "low", "high", "verdict", "queries", "seeds"]
    run.log({"ablation/table": wandb.Table(columns=columns, data=data),
             "ablation/differences": wandb.Table(columns=fields, data=[[c.get(f) for f in fields] for c in comparisons])})
    where = run.dir
    run.finish()
    return str(Path(where).parent)


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmai ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs/experiments/ablation.yaml",
                        help="the ablation config (default configs/experiments/ablation.yaml)")
    parser.add_argument("--quick", action="store_true", help="merge the config's `quick` block: minutes on a CPU")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the config's `out`)")
    parser.add_argument("--shard-dir", type=Path, default=None,
                        help="shards to use (default: the config's shard_dir, else synthesise into OUT/data)")
    parser.add_argument("--no-wandb", action="store_true", help="skip the W&B table (markdown and CSV only)")
    parser.add_argument("--stage1-only", action="store_true",
                        help="train and compare rows 1-2 only (the bi-encoder settings), no re-ranker")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train and evaluate every row once per seed (default: the config's `seeds`, else its "
                             "`seed`); the table shows mean ± std and paired 95%% intervals")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mmai ablate --config FILE [--quick] [--out DIR] [--shard-dir DIR]``: train, evaluate, tabulate."""
    args = build_parser().parse_args(argv)
    settings = load_settings(args.config, quick=args.quick)
    out = Path(args.out or settings.get("out") or "runs/ablation").resolve()
    if args.seeds:
        settings["seeds"] = list(args.seeds)
    if args.stage1_only:
        settings["stage1_only"] = True
    run_ablation(settings, out, args.shard_dir, wandb=not args.no_wandb)
    return 0


def seeds_of(settings: dict[str, Any]) -> list[int]:
    """The seeds to run: ``seeds`` when given, else ``[seed]``."""
    seeds = settings.get("seeds") or [settings.get("seed", 0)]
    return [int(seed) for seed in seeds]


@dataclass
class Ablation:
    """What :func:`run_ablation` made: the runs of every seed, the summary rows and the comparisons."""

    runs_by_seed: dict[int, dict[str, RunSpec]]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    markdown: str

    @property
    def runs(self) -> dict[str, RunSpec]:
        """The first seed's runs (``runs["rerank"].last_checkpoint`` is its re-ranker)."""
        return next(iter(self.runs_by_seed.values()))


def run_ablation(settings: dict[str, Any], out: Path, shard_dir: Path | None = None,
                 wandb: bool = True) -> Ablation:
    """Train or reuse every run of every seed, write ``out/ablation.md`` and ``.csv`` (and the W&B
    table), print the table."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shards, data = prepare_shards(settings, out, shard_dir)
    reason = clip_unavailable_reason((settings.get("clip") or {}).get("model_name", "openai/clip-vit-base-patch16"))
    order = [("clip", "row 0"), ("baseline", "row 1"), ("queue_hn", "row 2"), ("rerank", "rows 3-5")]
    seeds = seeds_of(settings)
    runs_by_seed: dict[int, dict[str, RunSpec]] = {}
    for seed in seeds:
        runs = plan_runs({**settings, "seed": seed}, shards, out)
        for step, (name, rows_of) in enumerate(order, 1):
            spec = runs[name]
            where = f"[ablate] seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) {step}/{len(order)} {rows_of} ({name})"
            skip = reason if name == "clip" else (
                "not run (stage1_only: rows 1-2 only)" if name == "rerank" and settings.get("stage1_only") else None)
            if skip is not None:
                spec.status = skip
                if seed == seeds[0]:
                    print(f"{where}: {skip}", flush=True)
                continue
            print(f"{where}: {spec.run_dir}", flush=True)
            run_or_reuse(spec)
            print(f"{where}: {spec.status}" + (f" in {spec.seconds:.1f} s" if spec.seconds else ""), flush=True)
        runs_by_seed[seed] = runs
    rows_by_seed = {seed: table_rows(runs) for seed, runs in runs_by_seed.items()}
    rows = summarize(rows_by_seed)
    comparisons = compare(runs_by_seed)
    facts = protocol(settings, runs_by_seed[seeds[0]], shards, data, time.perf_counter() - start)
    facts["seeds"] = " ".join(str(seed) for seed in seeds)
    measured = {key: value for run in runs_by_seed[seeds[0]].values() for key, value in run.metrics.items()
                if key.startswith(("val/chance/", "val/ceiling/"))}  # the data's, the same in every run
    markdown = format_markdown(rows, facts, comparisons, chance_row(shards, measured), ceiling_row(measured))
    (out / "ablation.md").write_text(markdown)
    write_csv(rows_by_seed, facts, out / "ablation.csv", comparisons)
    print("\n" + markdown)
    if wandb:
        print(f"[ablate] W&B tables ablation/table and ablation/differences: "
              f"{log_wandb_table(rows_by_seed, facts, out, comparisons)}")
    print(f"[ablate] wrote {out / 'ablation.md'}, {out / 'ablation.csv'} and {out / 'ablation_differences.csv'}")
    return Ablation(runs_by_seed, rows, comparisons, markdown)
