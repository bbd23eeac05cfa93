"""`mmai predict`: the embeddings of a split written to the run directory."""

from __future__ import annotations

import lightning
import torch

from fit_helpers import tiny_args
from mmai_apps.cli import main
from tiny_checkpoints import make_bi_encoder_ckpt


def test_predict_writes_the_embeddings_of_a_split(synth_shards, tmp_path, capsys):
    ckpt = make_bi_encoder_ckpt(tmp_path / "ckpt")
    checkpoint = torch.load(ckpt, weights_only=True)  # what `mmai fit` writes also names Lightning's version
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, ckpt)
    run_dir = tmp_path / "runs"
    assert main(["predict", *tiny_args(synth_shards, run_dir), "--data.predict_split", "val",
                 "--trainer.logger", "false", "--ckpt_path", str(ckpt)]) == 0
    path = run_dir / "embeddings-val.pt"
    assert str(path) in capsys.readouterr().out
    saved = torch.load(path, weights_only=True)
    import json

    images = json.loads((synth_shards / "manifest.json").read_text())["splits"]["val"]["images"]
    assert saved["image_embeddings"].shape == (images, 64)
    assert sorted(saved["image_ids"].tolist()) == sorted(set(saved["image_ids"].tolist()))
    assert saved["text_embeddings"].shape[0] == len(saved["text_image_ids"]) == len(saved["captions"]) > 0
    assert set(saved["text_image_ids"].tolist()) <= set(saved["image_ids"].tolist())
    assert saved["split"] == "val"
