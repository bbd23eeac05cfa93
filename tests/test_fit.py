"""`mmai fit` end to end on tiny synthetic shards: configs, logging, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from fit_helpers import BASE, REPO, callbacks_arg, tiny_args
from tiny_configs import TINY_CLAP
from mmai_apps.lightning_cli import cli_main, parse_config
from mmai.data.shards import write_shards
from mmai.data.synth import synthesize


#: what the RetrievalEvalCallback logs each validation epoch
RETRIEVAL_KEYS = [f"val/{stage}/t2i/{relevance}/R@{k}" for stage in ("gar", "gar_control")
                  for relevance in ("instance", "class") for k in (1, 5, 10)] + [
    "val/stage1/latency_ms", "val/gar/latency_ms", "val/graph/nodes", "val/graph/temporal_edges",
    "val/graph/semantic_edges", "val/graph/episodes", "val/graph/schemas", "val/graph/mean_degree"]


@pytest.fixture(scope="module")
def shards(synth_shards):
    return synth_shards


def test_every_profile_parses_with_links_applied():
    tiny = parse_config(BASE)
    assert tiny.data.image_size == tiny.model.bi_encoder.vision.image_size == 64
    assert tiny.data.tokenizer == tiny.model.bi_encoder.text.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert tiny.data.max_length == tiny.model.bi_encoder.text.max_length == 40
    assert tiny.model.batch_size == tiny.data.batch_size == 32
    assert tiny.model.bi_encoder.queue_size % tiny.data.batch_size == 0
    full = parse_config(["--config", str(REPO / "configs/base.yaml"), "--config",
                         str(REPO / "configs/profiles/full_gpu.yaml")])
    assert (full.data.image_size, full.model.bi_encoder.queue_size, full.trainer.precision) == (224, 4096, "bf16-mixed")
    assert full.data.tokenizer == "bert-base-uncased" and full.data.audio_seconds == 1.0
    lit = parse_config(["--config", str(REPO / "configs/base.yaml"), "--config", str(REPO / "configs/profiles/lit_cpu.yaml")])
    encoder = lit.model.bi_encoder
    assert lit.data.image_size == encoder.vision.image_size == 224 and encoder.queue_size % lit.data.batch_size == 0
    assert encoder.vision.tower == "cnn" and encoder.vision.locked and encoder.text.locked


def test_run_dir_override_propagates_through_interpolation(tmp_path):
    config = parse_config([*BASE, "--run_dir", str(tmp_path / "elsewhere")])
    assert config.trainer.default_root_dir == str(tmp_path / "elsewhere")
    checkpoint = next(cb for cb in config.trainer.callbacks if cb.class_path.endswith("ModelCheckpoint"))
    assert checkpoint.init_args.dirpath == str(tmp_path / "elsewhere" / "checkpoints")


def test_tiny_config_instantiates_the_real_offline_minilm():
    cli = cli_main([*BASE], run=False)
    text = cli.model.model.text
    assert text.width == 384 and cli.datamodule.hparams.tokenizer == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_fit_logs_losses_recall_and_writes_checkpoints(shards, tmp_path):
    cli = cli_main(["fit", *tiny_args(shards, tmp_path / "runs", "--trainer.max_epochs", "2",
                                     "--trainer.limit_train_batches", "3")])
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/loss_i2t", "train/loss_t2i", "train/temperature", "train/queue_fill",
                "val/stage1/t2i/instance/R@1", "val/stage1/t2i/class/R@10", "val/stage1/i2t/instance/R@5",
                *RETRIEVAL_KEYS):
        assert key in metrics, key
    assert float(metrics["train/queue_fill"]) == pytest.approx(min(1.0, 6 * 4 / 64))
    assert (tmp_path / "runs" / "checkpoints" / "last.ckpt").exists()
    saved = torch.load(tmp_path / "runs" / "checkpoints" / "last.ckpt", weights_only=False)
    assert "model.queue.image_queue" in saved["state_dict"] and "model.vision_m.model.cls_token" in saved["state_dict"]


def test_missing_checkpoint_path_is_a_clear_error(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt.*'last'"):
        cli_main(["fit", *tiny_args(shards, tmp_path / "runs"), "--ckpt_path", str(tmp_path / "nope.ckpt")])


def test_unknown_tower_is_a_clear_error(shards, tmp_path):
    with pytest.raises(ValueError, match="vit_does_not_exist"):
        cli_main([*tiny_args(shards, tmp_path / "runs"), "--model.bi_encoder.vision", '{"model_name": "vit_does_not_exist"}'],
                 run=False)


@pytest.mark.slow
def test_init_from_a_checkpoint_with_another_embed_dim_is_a_clear_error(shards, tmp_path, caplog):
    cli_main(["fit", *tiny_args(shards, tmp_path / "a", "--trainer.max_steps", "1")])
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="trained with embed_dim=64.*embed_dim=32"):
        cli_main([*tiny_args(shards, tmp_path / "b", "--model.bi_encoder.embed_dim", "32"), "--model.init_from", str(ckpt)],
                 run=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = cli_main([*tiny_args(shards, tmp_path / "c"), "--model.init_from", str(ckpt)], run=False)
    assert any("model.init_from: loaded" in r.getMessage() and str(ckpt) in r.getMessage() for r in caplog.records)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(cli.model.model.queue.image_queue, saved["model.queue.image_queue"])
    with pytest.raises(FileNotFoundError, match="init_from"):
        cli_main([*tiny_args(shards, tmp_path / "d"), "--model.init_from", str(tmp_path / "missing.ckpt")], run=False)


def _run_mmai(args: list[str], tmp_path, check: bool = True) -> subprocess.CompletedProcess:
    # this checkout first (not whichever mmai the interpreter has installed), and the tests folder for the probes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "mmai_apps.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"mmai {' '.join(args[:1])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.mark.slow
def test_killed_run_resumes_from_last_with_queue_and_twins_restored(shards, tmp_path):
    run_dir = tmp_path / "runs"
    step_checkpoints = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 2,
                                      "save_last": True, "save_top_k": 0}}
    killer = {"class_path": "lightning_probes.KillAtStep", "init_args": {"step": 5}}
    args = tiny_args(shards, run_dir, "--trainer.max_steps", "50", "--trainer.max_epochs", "-1")
    killed = _run_mmai(["fit", *args, *callbacks_arg(step_checkpoints, killer)], tmp_path, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no clean-up ran
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 4
    probe_file = tmp_path / "state_at_start.pt"
    probe = {"class_path": "lightning_probes.StateAtStartProbe", "init_args": {"out_file": str(probe_file)}}
    resume = tiny_args(shards, run_dir, "--trainer.max_steps", "6", "--trainer.max_epochs", "-1")
    cli = cli_main(["fit", *resume, *callbacks_arg(step_checkpoints, probe), "--ckpt_path", "last"])
    restored = torch.load(probe_file, weights_only=False)
    assert restored["global_step"] == 4
    assert restored["state"], "probe saw no queue or twin tensors"
    for key, value in restored["state"].items():
        assert torch.equal(value, saved["state_dict"][f"model.{key}"]), key
    assert cli.trainer.global_step == 6


@pytest.mark.slow
def test_two_process_ddp_advances_the_queue_by_the_global_batch_and_keeps_ranks_identical(shards, tmp_path):
    probe = {"class_path": "lightning_probes.QueueProbe", "init_args": {"out_dir": str(tmp_path / "probe")}}
    args = tiny_args(shards, tmp_path / "runs", "--trainer.max_steps", "3", "--trainer.devices", "2",
                     "--trainer.strategy", "ddp", "--trainer.limit_val_batches", "0")
    _run_mmai(["fit", *args, *callbacks_arg(probe)], tmp_path)
    ranks = [[json.loads(line) for line in (tmp_path / "probe" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    for step, (a, b) in enumerate(zip(*ranks), 1):
        assert a["world_size"] == 2
        assert a["ptr"] == b["ptr"] == (step * 2 * a["batch"]) % 64  # global batch = 2 ranks x 4
        assert a["image_ids"] == b["image_ids"] and a["image_queue_sum"] == b["image_queue_sum"]
    filled = [i for i in ranks[0][-1]["image_ids"] if i >= 0]
    assert len(filled) == 3 * 2 * 4 and len(set(filled)) == len(filled)  # both ranks' images, no repeats


@pytest.mark.slow
def test_two_process_validation_logs_every_retrieval_key_without_deadlock_or_sync_dist_warnings(shards, tmp_path):
    csv_logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                             "init_args": {"save_dir": str(tmp_path / "csv"), "name": "run"}})
    args = tiny_args(shards, tmp_path / "runs", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                     "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.logger", csv_logger)
    result = _run_mmai(["fit", *args], tmp_path)
    header = next((tmp_path / "csv" / "run").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for key in [*RETRIEVAL_KEYS, "val/stage1/t2i/instance/R@10", "val/stage1/diversity/distinct_top1",
                "val/gallery_images"]:
        assert key in header, key
    # the epoch-level values are the same on both ranks (broadcast, or computed from the gathered set) and
    # logged as such: Lightning's "use sync_dist=True ... in distributed setting" warning has no case left
    output = result.stdout + result.stderr
    assert "sync_dist=True" not in output, [line for line in output.splitlines() if "sync_dist" in line][:3]
    assert "Total params" in output and "Total FLOPs" not in output  # the summary, without an unmeasured 0


@pytest.mark.slow
def test_fit_with_songs_trains_the_audio_tower_on_every_audio_term(tmp_path):
    synthesize(tmp_path / "synth", classes=4, images=24, image_size=64, audio=True, workers=1, progress=False)
    write_shards(tmp_path / "synth", tmp_path / "shards", samples_per_shard=4, progress=False)
    tiny_clap = {"pretrained": False, "max_length_s": 0.5, "config_overrides": TINY_CLAP, "seconds": 0.5}
    cli = cli_main(["fit", *tiny_args(tmp_path / "shards", tmp_path / "runs", "--trainer.max_steps", "2",
                                      "--model.bi_encoder.audio", json.dumps(tiny_clap),
                                      "--trainer.limit_val_batches", "0")])
    assert cli.datamodule.hparams.audio_seconds == 0.5
    for term in ("a2t", "t2a", "a2i", "i2a"):
        assert f"train/loss_{term}" in cli.trainer.callback_metrics, term
    assert int(cli.model.model.queue.filled) > 0 and cli.model.model.queue.valid_mask("audio").any()


def test_validation_scores_the_whole_manifest_with_workers_and_fails_when_cut_short(shards, tmp_path):
    """Two loader workers used to end on two partial batches that Lightning never fetched (half
    the gallery scored, exit 0); a loader cut short must now fail instead of logging."""
    from mmai.data.shards import read_manifest

    val = read_manifest(shards)["splits"]["val"]
    cli = cli_main(["validate", *tiny_args(shards, tmp_path / "runs", "--data.num_workers", "2",
                                          "--data.batch_size", "4", "--trainer.logger", "false")])
    metrics = cli.trainer.callback_metrics
    assert metrics["val/gallery_images"] == val["images"] and metrics["val/queries_captions"] == val["captions"]
    with pytest.raises(RuntimeError, match=r"val evaluation scored 4 images and \d+ captions, but the manifest"):
        cli_main(["validate", *tiny_args(shards, tmp_path / "runs2", "--trainer.limit_val_batches", "1",
                                        "--trainer.logger", "false")])


def test_a_rerun_in_the_same_run_dir_replaces_last_ckpt_instead_of_writing_last_v1(shards, tmp_path):
    """A killed run retrained from scratch in its run dir: one last.ckpt (the new one), no stale
    last.ckpt beside a last-v1.ckpt that nothing reads (ablate and the docs read last.ckpt)."""
    run_dir = tmp_path / "runs"
    args = ["fit", *tiny_args(shards, run_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1")]
    cli_main(args)
    first = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    cli_main(args)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert not any("-v1" in n for n in names), names
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns > first
    import yaml  # the re-ranker's config names its checkpoints the same way

    for config in ("configs/base.yaml", "configs/reranker.yaml"):
        callbacks = yaml.safe_load((REPO / config).read_text())["trainer"]["callbacks"]
        checkpoint = next(cb for cb in callbacks if cb["class_path"].endswith("ModelCheckpoint"))
        assert checkpoint["init_args"]["enable_version_counter"] is False, config
