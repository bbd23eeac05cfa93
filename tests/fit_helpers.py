"""Shared pieces of the `mmai fit` tests: a tiny synthetic shard set and tiny model overrides."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["--config", str(REPO / "configs/base.yaml"), "--config", str(REPO / "configs/profiles/tiny_cpu.yaml")]

#: The tiny CPU profile, shrunk further so that a test step takes well under a second.
TINY_MODEL = [
    "--model.bi_encoder.vision", json.dumps({
        "model_name": "vit_tiny_patch16_224", "pretrained": False, "image_size": 32,
        "model_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}}),
    "--model.bi_encoder.text", json.dumps({"pretrained": False, "config_overrides": {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}}),
    "--model.bi_encoder.queue_size", "64", "--model.bi_encoder.embed_dim", "64", "--model.warmup_steps", "2",
    "--data.batch_size", "4", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
]


def tiny_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*BASE, *TINY_MODEL, "--data.shard_dir", str(shards), "--run_dir", str(run_dir), *extra]


def callbacks_arg(*callbacks: dict) -> list[str]:
    """Append callbacks to the config's list (`--trainer.callbacks+=...`)."""
    return [f"--trainer.callbacks+={json.dumps(cb)}" for cb in callbacks]
