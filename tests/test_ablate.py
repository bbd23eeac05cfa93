"""`mmai ablate`: settings, the planned runs, the table, and a real --quick run on tiny shards."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from fit_helpers import REPO
from mmai_apps.ablate import (LATENCY_COLUMNS, RECALL_COLUMNS, ROWS, SUMMARY_COLUMNS, RunSpec, clip_unavailable_reason, compare,
                              flags, format_markdown, load_settings, main, plan_runs, summarize, table_rows)

#: tests/fit_helpers.TINY_MODEL as ablation-config args: a step takes well under a second.
TINY_BI_ENCODER_ARGS = {
    "model.bi_encoder.vision": {"model_name": "vit_tiny_patch16_224", "pretrained": False, "image_size": 32,
                                "model_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}},
    "model.bi_encoder.text": {"pretrained": False, "config_overrides": {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}},
    "model.bi_encoder.queue_size": 64, "model.bi_encoder.embed_dim": 64, "model.warmup_steps": 2,
    "data.batch_size": 4, "data.num_workers": 0, "data.shuffle_buffer": 16,
}
TINY_RERANKER_ARGS = {"model.reranker": {"hidden_dim": 32, "num_layers": 2, "num_heads": 2}, "model.negatives": "batch",
                      "data.batch_size": 4, "data.num_workers": 0, "data.shuffle_buffer": 16}


def _tiny_config(tmp_path, **changes) -> dict:
    config = yaml.safe_load((REPO / "configs/experiments/ablation.yaml").read_text())
    config["quick"] = {"bi_encoder": {"configs": ["configs/base.yaml", "configs/profiles/tiny_cpu.yaml"], "epochs": 1,
                                      "args": TINY_BI_ENCODER_ARGS},
                       "reranker": {"configs": ["configs/reranker.yaml", "configs/profiles/reranker_tiny_cpu.yaml"],
                                    "epochs": 1, "args": TINY_RERANKER_ARGS},
                       "retrieval": {"candidates": 20, "rerank_k": 4}}
    config.update(changes)
    return config


def _write(tmp_path, config: dict, name: str = "ablation.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ settings
def test_quick_merges_its_block_key_by_key():
    full = load_settings(REPO / "configs/experiments/ablation.yaml")
    quick = load_settings(REPO / "configs/experiments/ablation.yaml", quick=True)
    assert quick["bi_encoder"]["epochs"] < full["bi_encoder"]["epochs"]
    assert quick["reranker"]["args"]["data.num_workers"] == 0  # merged key by key
    assert quick["reranker"]["configs"][-1].endswith("reranker_tiny_cpu.yaml")  # replaced
    assert full["reranker"]["configs"][-1].endswith("reranker_lit_cpu.yaml")
    assert quick["seeds"] == full["seeds"]  # kept: not in the quick block
    assert quick["bi_encoder"]["configs"][-1].endswith("tiny_cpu.yaml")  # replaced: the test-speed profile
    assert full["bi_encoder"]["configs"][-1].endswith("lit_cpu.yaml")
    assert quick["retrieval"]["stage1_weight"] == full["retrieval"]["stage1_weight"]
    assert quick["retrieval"]["candidates"] != full["retrieval"]["candidates"]
    assert "quick" not in quick and "quick" not in full


def test_an_unknown_key_names_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, {**_tiny_config(tmp_path), "rerank": {}}, "broken.yaml")
    with pytest.raises(ValueError, match=r"broken\.yaml: unknown key\(s\) \['rerank'\]"):
        load_settings(path)
    config = _tiny_config(tmp_path)
    del config["reranker"]
    with pytest.raises(ValueError, match=r"reranker\.configs is required"):
        load_settings(_write(tmp_path, config, "no_reranker.yaml"))


def test_flags_write_mappings_as_json_and_the_rest_as_text():
    assert flags({"model.lr": 0.001, "model.reranker": {"hidden_dim": 32}, "model.bi_encoder.class_positives": True},
                 prefix="") == ["--model.lr", "0.001", "--model.reranker", '{"hidden_dim": 32}',
                                "--model.bi_encoder.class_positives", "true"]
    assert flags({"rerank_k": 8}, prefix="retrieval.") == ["--retrieval.rerank_k", "8"]


# ---------------------------------------------------------------------------------------- runs
def test_rows_share_data_seed_and_retrieval_and_differ_only_in_their_feature(tmp_path):
    settings = load_settings(_write(tmp_path, _tiny_config(tmp_path)), quick=True)
    runs = plan_runs(settings, tmp_path / "shards", tmp_path / "out")
    baseline, full = runs["baseline"].argv, runs["queue_hn"].argv
    assert baseline[:len(full)] == full  # row 1 = row 2's command + its two overrides (which come last)
    assert baseline[len(full):] == ["--model.bi_encoder.queue_size", "0", "--model.bi_encoder.hard_negative_beta", "0.0"]
    for spec in runs.values():
        argv = spec.argv
        assert argv[argv.index("--seed_everything") + 1] == "0"
        assert argv[argv.index("--data.shard_dir") + 1] == str(tmp_path / "shards")
        assert argv[argv.index("--retrieval.rerank_k") + 1] == "4"
    rerank = runs["rerank"].argv
    assert rerank[rerank.index("--model.bi_encoder_ckpt") + 1] == str(runs["queue_hn"].last_checkpoint)
    assert "--model.bi_encoder.clip" in runs["clip"].argv and runs["clip"].command == "validate"
    assert len({spec.run_dir for spec in runs.values()}) == 4


def test_a_changed_setting_gets_a_new_run_directory_and_the_rest_are_kept(tmp_path):
    first = plan_runs(load_settings(_write(tmp_path, _tiny_config(tmp_path)), quick=True), tmp_path, tmp_path)
    config = _tiny_config(tmp_path)
    config["quick"]["reranker"]["epochs"] = 2
    second = plan_runs(load_settings(_write(tmp_path, config, "b.yaml"), quick=True), tmp_path, tmp_path)
    assert first["rerank"].run_dir != second["rerank"].run_dir
    assert first["queue_hn"].run_dir == second["queue_hn"].run_dir  # reused by the second ablation


def test_clip_row_says_why_it_was_not_run_and_accepts_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reason = clip_unavailable_reason("mmai-tests/no-such-clip")
    assert reason.startswith("not run: no CLIP weights offline") and "huggingface-cli download" in reason
    folder = tmp_path / "clip"
    folder.mkdir()
    assert "has no config.json" in clip_unavailable_reason(str(folder))
    (folder / "config.json").write_text("{}")
    assert clip_unavailable_reason(str(folder)) is None


# --------------------------------------------------------------------------------------- table
def _fake_runs(tmp_path) -> dict[str, RunSpec]:
    stages = ("stage1", "two_stage", "gar", "gar_control")
    metrics = {f"val/{stage}/{column}": 0.1 * (i + 1) for i, stage in enumerate(stages) for column in RECALL_COLUMNS
               if not (stage.startswith("gar") and column.startswith("i2t"))}
    metrics.update({"val/stage1/latency_ms": 0.5, "val/two_stage/rerank_latency_ms": 10.0, "val/gar/latency_ms": 2.0,
                    "val/stage1/diversity/distinct_top1": 0.62, "val/stage1/diversity/text_mean_cosine": 0.2,
                    "val/stage1/diversity/image_mean_cosine": 0.4})
    runs = {name: RunSpec(name, "fit", [], tmp_path / name, status="trained", metrics=dict(metrics))
            for name in ("baseline", "queue_hn", "rerank")}
    runs["clip"] = RunSpec("clip", "validate", [], tmp_path / "clip", status="not run: no CLIP weights offline (x)")
    return runs


def _facts():
    return {"split": "zero-shot/val", "gallery_images": 10, "gallery_captions": 100, "gallery_classes": 2,
            "data": "d", "candidates_K": 20, "rerank_k": 4, "stage1_weight": 1.0, "gar_alpha": 0.5,
            "gar_damping": 0.5, "seed": 0, "seeds": "0 1", "bi_encoder_epochs": 1, "reranker_epochs": 1,
            "bi_encoder_configs": "a", "reranker_configs": "b", "hardware": "cpu", "run_wall_s": "", "wall_s": 1.0}


def test_table_reads_each_row_from_its_stage_and_marks_gar_i2t_as_not_applicable(tmp_path):
    rows = table_rows(_fake_runs(tmp_path))
    assert [row["row"] for row in rows] == [spec.number for spec in ROWS] == [0, 1, 2, 3, 4, 5]
    by_number = {row["row"]: row for row in rows}
    assert by_number[2]["t2i/instance/R@1"] == pytest.approx(0.1)
    assert by_number[3]["i2t/class/R@10"] == pytest.approx(0.2)
    assert by_number[4]["t2i/class/R@5"] == pytest.approx(0.3) and by_number[4]["i2t/class/R@5"] is None
    assert by_number[5]["t2i/instance/R@10"] == pytest.approx(0.4)
    assert (by_number[2]["rerank_ms"], by_number[2]["total_ms"]) == (None, 0.5)
    assert by_number[3]["total_ms"] == pytest.approx(10.5) and by_number[4]["total_ms"] == pytest.approx(12.5)
    assert by_number[5]["gar_ms"] is None and by_number[0]["t2i/instance/R@1"] is None


def test_summary_is_mean_and_std_over_seeds_and_the_table_says_not_run(tmp_path):
    first, second = table_rows(_fake_runs(tmp_path)), table_rows(_fake_runs(tmp_path))
    for row in second:
        if row.get("t2i/class/R@1") is not None:
            row["t2i/class/R@1"] += 0.2  # seed 1 scores 20 points more
    summary = {row["row"]: row for row in summarize({0: first, 1: second})}
    mean, std, seeds = summary[4]["t2i/class/R@1"]
    assert (mean, seeds) == (pytest.approx(0.4), 2) and std == pytest.approx(0.1414, abs=1e-3)
    assert summary[4]["i2t/class/R@1"] is None  # GAR is text→image only
    lines = format_markdown(list(summary.values()), _facts(), [], {"t2i/class/R@1": 0.1}).splitlines()
    gar_line = next(line for line in lines if line.startswith("| 4 |"))
    i2t = 2 + [key for key, _ in SUMMARY_COLUMNS].index("i2t/class/R@1")
    assert gar_line.split(" | ")[2] == "40.0 ± 14.1" and gar_line.split(" | ")[i2t] == "—"
    assert "not run: no CLIP weights offline" in next(line for line in lines if line.startswith("| 0 |"))
    assert next(line for line in lines if "chance (random ranking)" in line).split(" | ")[2] == "10.0"


def _save_outcomes(folder, **arrays):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "per_query.npz", **arrays)


def test_comparisons_pair_queries_across_runs_and_call_a_gain_only_when_the_interval_excludes_zero(tmp_path):
    runs_by_seed = {}
    queries = np.arange(400)
    for seed in (0, 1):
        runs = _fake_runs(tmp_path / str(seed))
        rng = np.random.default_rng(seed)
        base = (rng.random(400) < 0.3).astype(float)
        better = np.maximum(base, (rng.random(400) < 0.3).astype(float))  # the queue row wins queries, never loses
        _save_outcomes(runs["baseline"].run_dir, **{"query/text_image_ids": queries, "stage1/t2i/class/hit@1": base})
        _save_outcomes(runs["queue_hn"].run_dir, **{"query/text_image_ids": queries, "stage1/t2i/class/hit@1": better})
        same = (rng.random(400) < 0.5).astype(float)
        _save_outcomes(runs["rerank"].run_dir, **{
            "query/text_image_ids": queries, "two_stage/t2i/class/hit@1": better, "gar/t2i/class/hit@10": same,
            "gar_control/t2i/class/hit@10": same, "query/burst_text_rows": queries[:5]})
        runs_by_seed[seed] = runs
    results = {(c["row"], c["against"], c["outcome"]): c for c in compare(runs_by_seed)}
    queue = results[(2, 1, "t2i/class/hit@1")]
    assert queue["verdict"] == "gain" and queue["low"] > 0 and queue["seeds"] == 2 and queue["queries"] == 400
    assert results[(3, 2, "t2i/class/hit@1")]["difference"] == 0.0  # identical outcomes
    assert results[(3, 2, "t2i/class/hit@1")]["verdict"] == "no measurable gain"
    assert results[(4, 5, "t2i/class/hit@10")]["verdict"] == "no measurable gain"
    assert results[(3, 2, "probe/binding")]["verdict"].startswith("not measured")
    runs_by_seed[1]["queue_hn"].run_dir.joinpath("per_query.npz").unlink()
    _save_outcomes(runs_by_seed[1]["queue_hn"].run_dir, **{"query/text_image_ids": queries + 1000,
                                                           "stage1/t2i/class/hit@1": np.zeros(400)})  # other images
    assert "not paired" in {(c["row"], c["against"], c["outcome"]): c for c in compare(runs_by_seed)}[
        (2, 1, "t2i/class/hit@1")]["verdict"]


# ------------------------------------------------------------------------------ the real thing
def _read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_ablate_quick_writes_every_row_and_column_and_reuses_its_runs(synth_shards, tmp_path, capsys):
    """`mmai ablate --quick` on the 64-image fixture: three real runs, one table; then all reused."""
    config = _write(tmp_path, _tiny_config(tmp_path))
    out = tmp_path / "out"
    args = ["--config", str(config), "--quick", "--out", str(out), "--shard-dir", str(synth_shards)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = _read_csv(out / "ablation.csv")
    assert [int(row["row"]) for row in rows] == [0, 1, 2, 3, 4, 5]
    assert set(RECALL_COLUMNS + LATENCY_COLUMNS) <= set(rows[0])
    assert {"split", "gallery_images", "gallery_captions", "candidates_K", "rerank_k", "hardware",
            "bi_encoder_epochs"} <= set(rows[0])
    assert rows[0]["status"].startswith("not run: no CLIP weights offline")
    for row in rows[1:]:
        assert row["status"] == "trained"
        for column in RECALL_COLUMNS:
            if int(row["row"]) >= 4 and column.startswith("i2t"):
                assert row[column] == ""  # GAR is text→image only
            else:
                assert 0.0 <= float(row[column]) <= 1.0, (row["row"], column)
        assert float(row["stage1_ms"]) > 0
    assert float(rows[3]["rerank_ms"]) > 0 and float(rows[4]["gar_ms"]) > 0 and rows[5]["gar_ms"] == ""
    assert rows[1]["split"] == "zero-shot/val" and int(rows[1]["rerank_k"]) == 4
    queue_hn = json.loads(next((out / "runs").glob("queue_hn-*/ablation_metrics.json")).read_text())
    rerank = json.loads(next((out / "runs").glob("rerank-*/ablation_metrics.json")).read_text())
    stage1 = [key for key in queue_hn["validations"][-1] if key.startswith("val/stage1/") and "/R@" in key]
    assert stage1 and all(queue_hn["validations"][-1][k] == rerank["validations"][-1][k] for k in stage1), \
        "the re-ranker did not run on row 2's bi-encoder"
    markdown = (out / "ablation.md").read_text()
    assert all(spec.label in markdown for spec in ROWS) and "Protocol:" in markdown and "zero-shot/val" in markdown
    assert "| 5 | + GAR control" in printed and list(out.glob("wandb/offline-run-*"))

    assert main([*args, "--no-wandb"]) == 0  # idempotent: nothing is retrained
    printed = capsys.readouterr().out
    assert printed.count(": reused") == 3 and "trained in" not in printed
    again = _read_csv(out / "ablation.csv")
    assert [{c: r[c] for c in RECALL_COLUMNS} for r in again] == [{c: r[c] for c in RECALL_COLUMNS} for r in rows]
    assert (out / "runs").joinpath(next((out / "runs").glob("rerank-*")).name, "per_query.npz").is_file()

    assert main([*args, "--no-wandb", "--seeds", "0", "1"]) == 0  # seed 0 reused, seed 1 trained
    printed = capsys.readouterr().out
    assert printed.count(": reused") == 3 and printed.count("trained in") == 3
    per_seed = _read_csv(out / "ablation.csv")
    assert [(int(r["row"]), int(r["seed"])) for r in per_seed] == [(n, s) for s in (0, 1) for n in range(6)]
    differences = _read_csv(out / "ablation_differences.csv")
    measured = [d for d in differences if d["difference"]]
    assert measured and all(int(d["seeds"]) == 2 and float(d["low"]) <= float(d["difference"]) <= float(d["high"])
                            for d in measured)
    assert all(d["verdict"] in ("gain", "loss", "no measurable gain", "too few units to tell (1)") for d in measured)
    assert "± " in (out / "ablation.md").read_text()

    assert main([*args, "--no-wandb", "--stage1-only"]) == 0  # rows 1-2 only (reused); the re-ranker not run
    printed = capsys.readouterr().out
    assert printed.count(": reused") == 2 and "not run (stage1_only" in printed
    only = _read_csv(out / "ablation.csv")
    assert all(r["status"].startswith("not run (stage1_only") for r in only if int(r["row"]) >= 3)
    assert all(r["status"] == "reused" or r["status"] == "trained" for r in only if int(r["row"]) in (1, 2))


# ------------------------------------------------------------------------- damaged finished runs
def _finished_fit_run(tmp_path) -> RunSpec:
    spec = RunSpec(name="queue_hn", command="fit", argv=[], run_dir=tmp_path / "runs" / "queue_hn-0")
    spec.last_checkpoint.parent.mkdir(parents=True)
    spec.last_checkpoint.write_bytes(b"weights")
    spec.metrics_path.write_text(json.dumps({"finished": True, "validations": [{"val/x": 1.0}], "final": {}}))
    np.savez(spec.run_dir / "per_query.npz", **{"query/text_image_ids": np.arange(4)})
    return spec


@pytest.mark.parametrize("damaged", ["per_query.npz", "ablation_metrics.json"])
def test_a_damaged_file_of_a_finished_run_makes_it_unfinished_and_names_the_file(tmp_path, capsys, damaged):
    from mmai_apps.ablate import _complete, _outcomes

    spec = _finished_fit_run(tmp_path)
    assert _complete(spec)
    path = spec.run_dir / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a truncated copy
    assert not _complete(spec)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and str(path) in printed and "retrain" in printed
    # retrained from scratch: the finished run's checkpoint must not be resumed (nothing left to train)
    assert not spec.last_checkpoint.exists() and not path.exists()
    assert list(tmp_path.glob("runs/queue_hn-0.damaged*/checkpoints/last.ckpt"))
    assert _outcomes(spec) == {}


def test_outcomes_of_a_damaged_per_query_file_name_the_file(tmp_path):
    from mmai_apps.ablate import _outcomes

    spec = _finished_fit_run(tmp_path)
    path = spec.run_dir / "per_query.npz"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="per_query.npz"):
        _outcomes(spec)


def test_a_damaged_evaluation_is_run_again(synth_shards, tmp_path, capsys):
    """A real (tiny) zero-shot evaluation run; its metrics file truncated, it is evaluated again."""
    from fit_helpers import BASE, TINY_MODEL
    from mmai_apps.ablate import run_or_reuse

    argv = [*BASE, *TINY_MODEL, "--data.shard_dir", str(synth_shards), "--trainer.logger", "false"]
    spec = run_or_reuse(RunSpec(name="clip", command="validate", argv=argv, run_dir=tmp_path / "runs" / "clip-0"))
    assert spec.status == "evaluated" and spec.metrics
    spec.metrics_path.write_text('{"finished": false, "validations": [{"val/')
    capsys.readouterr()
    again = run_or_reuse(RunSpec(name="clip", command="validate", argv=argv, run_dir=tmp_path / "runs" / "clip-0"))
    assert again.status == "evaluated" and again.metrics
    assert str(spec.metrics_path) in capsys.readouterr().out
