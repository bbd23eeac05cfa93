"""Stage 2 end to end: `mmai rerank fit` over a bi-encoder checkpoint, its metrics, panels and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fit_helpers import REPO
from tiny_checkpoints import TINY_RERANKER, make_bi_encoder_ckpt, make_reranker_ckpt

RERANK = ["--config", str(REPO / "configs/reranker.yaml"), "--config", str(REPO / "configs/profiles/reranker_tiny_cpu.yaml")]


def _rerank_args(shards: Path, run_dir: Path, ckpt: Path, *extra: str) -> list[str]:
    metrics = {"class_path": "callbacks.SweepMetricsCallback",
               "init_args": {"path": str(run_dir / "metrics.json")}}
    return ["fit", *RERANK, "--model.bi_encoder_ckpt", str(ckpt), "--data.shard_dir", str(shards),
            "--run_dir", str(run_dir), "--data.batch_size", "4", "--data.num_workers", "0",
            "--data.shuffle_buffer", "16", "--model.reranker", json.dumps(TINY_RERANKER), "--retrieval.candidates", "16",
            "--retrieval.rerank_k", "8", f"--trainer.callbacks+={json.dumps(metrics)}", *extra]


@pytest.fixture(scope="module")
def rerank_run(synth_shards, tmp_path_factory):
    from mmai_apps.lightning_cli import rerank_cli_main

    root = tmp_path_factory.mktemp("rerank")
    ckpt = make_bi_encoder_ckpt(root)
    run_dir = root / "run"
    rerank_cli_main(_rerank_args(synth_shards, run_dir, ckpt, "--trainer.max_epochs", "2",
                                 "--model.finetune_towers", "false"))
    return ckpt, run_dir


def test_rerank_fit_logs_two_stage_recall_latency_and_grounding(rerank_run):
    _, run_dir = rerank_run
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    for stage in ("stage1", "two_stage", "two_stage_match"):
        for direction in ("t2i", "i2t"):
            for relevance in ("instance", "class"):
                for k in (1, 5, 10):
                    assert 0.0 <= final[f"val/{stage}/{direction}/{relevance}/R@{k}"] <= 1.0
    for key in ("gar/t2i/instance/R@10", "gar_control/t2i/class/R@1", "match_acc", "match_loss"):
        assert np.isfinite(final[f"val/{key}"]), key
    assert final["val/two_stage/k"] == 8.0
    assert final["val/two_stage/latency_ms"] >= final["val/two_stage/rerank_latency_ms"] > 0
    assert final["val/grounding/pairs"] > 0
    assert 0.0 <= final["val/grounding/pointing_game"] <= 1.0 and 0.0 < final["val/grounding/chance"] < 0.5


def test_panels_are_saved_each_epoch_at_full_size_and_logged_to_wandb(rerank_run):
    _, run_dir = rerank_run
    for epoch in ("epoch000", "epoch001"):
        panels = sorted((run_dir / "panels" / epoch).glob("probe*.png"))
        assert len(panels) == 4
        with Image.open(panels[0]) as panel:
            assert panel.width == 816 and panel.height > 300  # three 256 px tiles and margins
    logged = list((run_dir / "wandb").glob("offline-run-*/files/media/images/val/saliency_*.png"))
    assert len(logged) == 8  # 4 probes x 2 epochs


def test_frozen_towers_are_unchanged_and_the_checkpoint_loads_as_stage2(rerank_run):
    from mmai.inference import load_stage1, load_stage2

    bi_ckpt, run_dir = rerank_run
    stage2 = load_stage2(run_dir / "checkpoints" / "last.ckpt")
    before = load_stage1(bi_ckpt).model.state_dict()
    after = stage2.stage1.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    image = Image.new("RGB", (40, 30), (200, 120, 40))
    assert stage2.rerank("a bird with an orange beak", [image, image]).shape == (2,)


def test_finetuning_trains_towers_with_their_contrastive_loss_beside_the_match_loss(synth_shards, tmp_path):
    """ALBEF's ITC + ITM: the towers move, the momentum queue fills, and stage 1 is logged as trained."""
    from mmai_apps.lightning_cli import rerank_cli_main
    from mmai.checkpoint import read_checkpoint
    from mmai.inference import load_stage1

    ckpt = make_bi_encoder_ckpt(tmp_path)
    run_dir = tmp_path / "run"
    rerank_cli_main(_rerank_args(synth_shards, run_dir, ckpt, "--trainer.max_epochs", "1",
                                 "--model.finetune_towers", "true", "--model.itc_weight", "1.0"))
    before = load_stage1(ckpt).model.state_dict()
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert not torch.equal(state["bi_encoder.vision_proj.net.weight"], before["vision_proj.net.weight"])
    assert not torch.equal(state["bi_encoder.text_proj.net.weight"], before["text_proj.net.weight"])
    assert int(state["bi_encoder.queue.filled"]) > 0  # the momentum queue was fed
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert np.isfinite(final["train/itc_loss"]) and np.isfinite(final["val/two_stage/t2i/class/R@10"])


def test_saliency_command_renders_a_panel_from_a_checkpoint(tmp_path, capsys):
    from mmai_apps.cli import main

    ckpt = make_reranker_ckpt(tmp_path)
    Image.new("RGB", (90, 60), (30, 160, 90)).save(tmp_path / "bird.jpg")
    out = tmp_path / "out" / "panel.png"
    assert main(["saliency", "--checkpoint", str(ckpt), "--image", str(tmp_path / "bird.jpg"),
                 "--query", "a green bird with a short bill", "--out", str(out), "--rank", "3"]) == 0
    with Image.open(out) as panel:
        assert panel.width == 816
    assert "match logit" in capsys.readouterr().out


def test_saliency_command_names_a_missing_image_and_a_bi_encoder_checkpoint(tmp_path, capsys):
    from mmai_apps.cli import main

    ckpt = make_reranker_ckpt(tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):  # argparse-style: the message alone, exit 1
        main(["saliency", "--checkpoint", str(ckpt), "--image", str(tmp_path / "nope.jpg"), "--query", "q"])
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["saliency", "--checkpoint", str(tmp_path / "bi_encoder.ckpt"), "--image", str(tmp_path / "x.png"),
                 "--query", "q"]) == 2  # one line, no traceback (--debug raises)
    err = capsys.readouterr().err
    assert "bi-encoder checkpoint without a re-ranker" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="bi-encoder checkpoint without a re-ranker"):
        main(["--debug", "saliency", "--checkpoint", str(tmp_path / "bi_encoder.ckpt"), "--image",
              str(tmp_path / "x.png"), "--query", "q"])


def test_rerank_without_a_bi_encoder_checkpoint_says_what_to_pass(synth_shards, tmp_path):
    from mmai_apps.lightning_cli import rerank_cli_main

    with pytest.raises(ValueError, match="bi_encoder_ckpt"):
        rerank_cli_main(["fit", *RERANK, "--data.shard_dir", str(synth_shards), "--run_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rerank_cli_main(["fit", *RERANK, "--data.shard_dir", str(synth_shards), "--run_dir", str(tmp_path),
                         "--model.bi_encoder_ckpt", str(tmp_path / "missing.ckpt")])


def test_two_stage_metrics_equal_stage1_when_the_reranker_is_off():
    """The callback's two-stage path with the re-ranker switched off reproduces exact stage 1."""
    from callbacks import RetrievalEvalCallback
    from mmai.evaluation.metrics import evaluate_retrieval
    from mmai.retrieval.two_stage import evaluate_two_stage
    from test_retrieval_callback import _eval_set

    data = _eval_set()

    def off(data, k, mode, stage1_weight, length, also_modes):
        return evaluate_two_stage(None, None, None, None, data.image_embeddings, data.text_embeddings, data.image_ids,
                                  data.class_ids, data.text_image_ids, data.text_class_ids, k=k, length=length,
                                  progress=False, also_modes=also_modes)

    metrics = RetrievalEvalCallback(candidates=20, index_kind="flat").evaluate(data, off)
    exact = evaluate_retrieval(data.image_embeddings, data.image_ids, data.class_ids, data.text_embeddings,
                               data.text_image_ids, data.text_class_ids)
    for key, value in exact.items():
        assert metrics[f"two_stage/{key}"] == pytest.approx(value, abs=1e-9), key
