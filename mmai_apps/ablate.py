"""``mmai ablate``: the reference table of ARCHITECTURE.md, reproduced on one data set and seed.

An ablation study adds one feature per row and keeps everything else fixed (the shards, the seed,
the retrieval settings, the gallery). The rows:

0. CLIP zero-shot (Radford et al., ICML 2021): ``mmai validate`` with ``model.clip``, only when
   the weights are on this machine; otherwise the row says why it was not run and how to enable it.
1. In-batch InfoNCE: ``mmai fit`` with ``model.queue_size 0`` and ``model.hard_negative_beta 0``.
2. + momentum queue and hard negatives (MoCo/ALBEF queue, similarity-weighted negatives): the
   config's own defaults.
3. + fusion re-rank: ``mmai rerank fit`` on row 2's last checkpoint; the two-stage list.
4. + GAR over the two-stage list (HippoRAG-style spreading activation on the episodic graph).
5. + GAR control: the same, on a graph whose times and places are shuffled.

Rows 3-5 come from one re-ranker run (the retrieval callback logs all three stages). Every run
lives in ``OUT/runs/<row>-<hash of its arguments>`` with its checkpoints, W&B run and a metrics
file; a run whose metrics file is complete is reused, not retrained. The table goes to
``OUT/ablation.md``, ``OUT/ablation.csv`` and a W&B table (an offline run without credentials).
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmai_apps.resources import data_root

REPO = data_root()  # the installed package's folder: configs/ and sweeps/ are package data
METRICS_FILE = "ablation_metrics.json"
SETTING_KEYS = {"seed", "out", "shard_dir", "synth", "bi_encoder", "reranker", "retrieval", "baseline", "clip",
                "quick"}
RECALL_COLUMNS = [f"{direction}/{relevance}/R@{k}" for direction in ("t2i", "i2t")
                  for relevance in ("instance", "class") for k in (1, 5, 10)]
LATENCY_COLUMNS = ["stage1_ms", "rerank_ms", "gar_ms", "total_ms"]
#: The collapse guard of each row's stage-1 model (``val/stage1/diversity/...``): distinct top-1
#: images over the val captions as a fraction of the gallery, and mean pairwise cosines.
DIVERSITY_COLUMNS = ["distinct_top1", "text_mean_cosine", "image_mean_cosine"]
MISSING = "—"


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
    settings.setdefault("baseline", {"model.queue_size": 0, "model.hard_negative_beta": 0.0})
    return settings


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in key by key (nested mappings merged, the rest replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flags(options: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"model.lr": 1e-4, "model.fusion": {...}}`` as CLI items ``["--model.lr", "0.0001", ...]``.

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
    return ["--model.clip", json.dumps(tower), "--model.image_size", str(clip.get("image_size", 224))]


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
        callback = {"class_path": "mmai_apps.sweep_runner.SweepMetricsCallback",
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
            _finish_wandb_run()
        spec.seconds = time.perf_counter() - start
        (spec.run_dir / "wall_time.json").write_text(json.dumps({"seconds": round(spec.seconds, 1)}))
        spec.status = "resumed and trained" if resume else ("evaluated" if spec.command == "validate" else "trained")
    summary = json.loads(spec.metrics_path.read_text())
    if not summary["validations"]:
        raise RuntimeError(f"ablation run {spec.run_dir} logged no validation: see its logs")
    spec.metrics = summary["validations"][-1]
    return spec


def _complete(spec: RunSpec) -> bool:
    if not spec.metrics_path.is_file():
        return False
    summary = json.loads(spec.metrics_path.read_text())
    if spec.command == "validate":
        return bool(summary.get("validations"))
    return bool(summary.get("finished")) and bool(summary.get("validations")) and spec.last_checkpoint.is_file()


def _finish_wandb_run() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# --------------------------------------------------------------------------------------- table
def table_rows(runs: dict[str, RunSpec]) -> list[dict[str, Any]]:
    """One dict per row of :data:`ROWS`: recall as fractions, latency in ms, ``None`` where it does
    not apply (GAR's i2t) or was not run."""
    rows = []
    for spec in ROWS:
        run = runs[spec.run]
        row: dict[str, Any] = {"row": spec.number, "feature set": spec.label, "status": run.status}
        if not run.metrics:
            rows.append({**row, **{c: None for c in [*RECALL_COLUMNS, *LATENCY_COLUMNS, *DIVERSITY_COLUMNS]},
                         "run_dir": ""})
            continue
        m = run.metrics
        for column in RECALL_COLUMNS:
            skip = spec.t2i_only and column.startswith("i2t")
            row[column] = None if skip else m.get(f"val/{spec.stage}/{column}")
        row.update(_latency(spec, m))
        row.update({column: m.get(f"val/stage1/diversity/{column}") for column in DIVERSITY_COLUMNS})
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
        "gar_damping": retrieval.get("gar_damping", 0.5),
        "seed": settings["seed"],
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


def format_markdown(rows: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    """The table in percent (``—`` where a cell does not apply or was not run) with its protocol."""
    head = ["#", "feature set", *RECALL_COLUMNS, "stage-1 ms", "re-rank ms", "GAR ms", "total ms",
            "distinct top-1", "text cos", "image cos", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["status"].startswith("not run"):
            cells = [MISSING] * (len(RECALL_COLUMNS) + len(LATENCY_COLUMNS) + len(DIVERSITY_COLUMNS))
        else:
            cells = [MISSING if row[c] is None else f"{100 * row[c]:.1f}" for c in RECALL_COLUMNS]
            cells += [MISSING if row[c] is None else f"{row[c]:.3f}" for c in LATENCY_COLUMNS]
            cells += [MISSING if row[c] is None else f"{row[c]:.2f}" for c in DIVERSITY_COLUMNS]
        lines.append("| " + " | ".join([str(row["row"]), row["feature set"], *cells, row["status"]]) + " |")
    notes = [
        f"Ablation — Recall@K in %, split {facts['split']}: gallery {facts['gallery_images']} images and "
        f"{facts['gallery_captions']} captions ({facts['gallery_classes']} classes); data {facts['data']}.",
        "", *lines, "",
        "Protocol:",
        "- relevance: *instance* = the caption's own image (i2t: the image's own captions); *class* = any "
        "image (caption) of the same species. Recall@K over the whole gallery; the list length is fixed.",
        f"- stage 1: FAISS over the gallery, top K={facts['candidates_K']}; re-rank: the top "
        f"{facts['rerank_k']} re-scored, final = match logit + {facts['stage1_weight']} x cosine; GAR: "
        f"alpha {facts['gar_alpha']}, damping {facts['gar_damping']}, over the two-stage list (rows 4-5), "
        "text→image only; the control shuffles the graph's times and places.",
        "- latency: ms per query per stage, search/re-rank/GAR only (queries pre-encoded, gallery patch "
        "tokens cached; encoding not included); the control's GAR is not timed.",
        "- collapse guard (the row's stage-1 model): distinct top-1 = distinct images that are some val caption's "
        "top-1, over the gallery size; text/image cos = mean pairwise cosine of the embeddings (near 1 and a "
        "distinct top-1 near 1/gallery mean a collapsed model).",
        f"- training: seed {facts['seed']}, same shards for every run; bi-encoder {facts['bi_encoder_epochs']} "
        f"epoch(s) ({facts['bi_encoder_configs']}), re-ranker {facts['reranker_epochs']} epoch(s) on row 2's last "
        f"checkpoint ({facts['reranker_configs']}).",
        f"- hardware: {facts['hardware']}; run wall times: {facts['run_wall_s']}; this call {facts['wall_s']} s.",
    ]
    return "\n".join(notes) + "\n"


def write_csv(rows: list[dict[str, Any]], facts: dict[str, Any], path: Path) -> None:
    """The table as CSV: recall as fractions, latency in ms, empty where not applicable; protocol in every row."""
    columns = ["row", "feature set", *RECALL_COLUMNS, *LATENCY_COLUMNS, *DIVERSITY_COLUMNS, "status", "run_dir",
               *facts]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: row.get(c) for c in columns}, **facts})


def log_wandb_table(rows: list[dict[str, Any]], facts: dict[str, Any], out: Path) -> str:
    """Log the table to W&B (``ablation/table``) in a run of its own; offline without credentials."""
    import wandb

    from lightning_glue.tracking import wandb_credentials_available

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    columns = ["row", "feature set", *RECALL_COLUMNS, *LATENCY_COLUMNS, *DIVERSITY_COLUMNS, "status"]
    run = wandb.init(project="mmai", job_type="ablation", name="ablation", dir=str(out), config=facts,
                     mode="offline" if mode in {"offline", "dryrun"} else mode)
    run.log({"ablation/table": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mmai ablate --config FILE [--quick] [--out DIR] [--shard-dir DIR]``: train, evaluate, tabulate."""
    args = build_parser().parse_args(argv)
    settings = load_settings(args.config, quick=args.quick)
    out = Path(args.out or settings.get("out") or "runs/ablation").resolve()
    run_ablation(settings, out, args.shard_dir, wandb=not args.no_wandb)
    return 0


def run_ablation(settings: dict[str, Any], out: Path, shard_dir: Path | None = None,
                 wandb: bool = True) -> dict[str, RunSpec]:
    """Train or reuse every run, write ``out/ablation.md`` and ``.csv`` (and the W&B table), print
    the table; returns the runs by name (``runs["rerank"].last_checkpoint`` is the re-ranker)."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shards, data = prepare_shards(settings, out, shard_dir)
    runs = plan_runs(settings, shards, out)
    reason = clip_unavailable_reason((settings.get("clip") or {}).get("model_name", "openai/clip-vit-base-patch16"))
    order = [("clip", "row 0"), ("baseline", "row 1"), ("queue_hn", "row 2"), ("rerank", "rows 3-5")]
    for step, (name, rows_of) in enumerate(order, 1):
        spec = runs[name]
        if name == "clip" and reason is not None:
            spec.status = reason
            print(f"[ablate] {step}/{len(order)} {rows_of} ({name}): {reason}", flush=True)
            continue
        print(f"[ablate] {step}/{len(order)} {rows_of} ({name}): {spec.run_dir}", flush=True)
        run_or_reuse(spec)
        print(f"[ablate] {step}/{len(order)} {rows_of} ({name}): {spec.status}"
              + (f" in {spec.seconds:.1f} s" if spec.seconds else ""), flush=True)
    rows = table_rows(runs)
    facts = protocol(settings, runs, shards, data, time.perf_counter() - start)
    markdown = format_markdown(rows, facts)
    (out / "ablation.md").write_text(markdown)
    write_csv(rows, facts, out / "ablation.csv")
    print("\n" + markdown)
    if wandb:
        print(f"[ablate] W&B table ablation/table: {log_wandb_table(rows, facts, out)}")
    print(f"[ablate] wrote {out / 'ablation.md'} and {out / 'ablation.csv'}")
    return runs
