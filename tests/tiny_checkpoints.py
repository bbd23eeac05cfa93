"""Real tiny checkpoints (bi-encoder and re-ranker) in Lightning's format, built in seconds.

The weights are freshly initialised (the text tower is the offline MiniLM's architecture,
shrunk), which is what plumbing tests need: every loader, encoder and panel path runs for real.
For trained weights use `mmai fit` / `mmai rerank fit` (tests/test_reranker.py does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmai_apps.bench.memory import TINY_BI_ENCODER as TINY_BI_ENCODER_CONFIG
from mmai_apps.bench.memory import TINY_RERANKER as TINY_RERANKER_CONFIG

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

#: a tiny bi-encoder (32 px images, 16 patches, 64-D space) and fusion head: the benchmark's own.
TINY_BI_ENCODER: dict = TINY_BI_ENCODER_CONFIG.to_dict()
TINY_RERANKER: dict = TINY_RERANKER_CONFIG.to_dict()


def make_bi_encoder_ckpt(folder: Path, seed: int = 0, **overrides) -> Path:
    """Write ``folder/bi_encoder.ckpt`` from a freshly built tiny ``BiEncoderModule``; ``overrides``
    replace :class:`~mmai.config.BiEncoderConfig` fields (e.g. ``audio={...}``)."""
    from lightning_modules.bi_encoder import BiEncoderModule

    torch.manual_seed(seed)
    module = BiEncoderModule(bi_encoder={**TINY_BI_ENCODER, **overrides}, warmup_steps=2, batch_size=4)
    path = Path(folder) / "bi_encoder.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def make_reranker_module(folder: Path, seed: int = 0):
    """A tiny ``RerankerModule`` over :func:`make_bi_encoder_ckpt`'s model (written to ``folder``)."""
    from lightning_modules.reranker import RerankerModule

    bi_encoder = make_bi_encoder_ckpt(folder, seed)
    torch.manual_seed(seed)
    return RerankerModule(bi_encoder_ckpt=str(bi_encoder), reranker=TINY_RERANKER, batch_size=4)


def save_module_checkpoint(module, path: Path) -> Path:
    """``torch.save`` what Lightning writes of a module: weights, hyperparameters and what the
    module's ``on_save_checkpoint`` adds (e.g. the re-ranker's validated settings)."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return Path(path)


def make_reranker_ckpt(folder: Path, seed: int = 0) -> Path:
    """Write ``folder/reranker.ckpt`` (a tiny re-ranker over :func:`make_bi_encoder_ckpt`'s model)."""
    return save_module_checkpoint(make_reranker_module(folder, seed), Path(folder) / "reranker.ckpt")
