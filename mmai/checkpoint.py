"""Reading MMAI's Lightning checkpoints without Lightning: their configs, weights and records.

A Lightning ``.ckpt`` is a ``torch.save`` dict holding ``state_dict`` and ``hyper_parameters``
(the module's ``__init__`` arguments, the model configs of :mod:`mmai.config` as plain dicts).
Both MMAI stages can be rebuilt from it alone:

* a **bi-encoder** checkpoint (``BiEncoderModule``): weights under ``model.``, the
  :class:`~mmai.config.BiEncoderConfig` under ``hyper_parameters["bi_encoder"]``;
* a **re-ranker** checkpoint (``RerankerModule``): the frozen bi-encoder under ``bi_encoder.``
  (its config copied into ``hyper_parameters["bi_encoder"]``, so the file stands alone) and the
  :class:`~mmai.reranker.fusion.FusionReranker` under ``reranker.`` (its
  :class:`~mmai.config.RerankerConfig` under ``hyper_parameters["reranker"]``).

Checkpoints written before the typed configs (flat hyperparameters, a ``fusion`` dict) load too.
A re-ranker checkpoint records the ``rerank_k`` and ``stage1_weight`` its validation used under
:data:`VALIDATED_WITH` (:func:`rerank_settings`; older ones fall back to their hyperparameters).
The models built from a checkpoint for search, serving and panels are :mod:`mmai.inference`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mmai.config import BiEncoderConfig, RerankerConfig
from mmai.model.bi_encoder import BiEncoder
from mmai.reranker.fusion import FusionReranker

#: the checkpoint key of ``{"rerank_k", "stage1_weight", "epoch", "step"}``: the re-rank settings the
#: re-ranker's last validation used (written by ``RerankerModule.on_save_checkpoint``).
VALIDATED_WITH = "mmai_validated_with"

def bi_encoder_config(hparams: dict[str, Any], where: str = "checkpoint") -> BiEncoderConfig:
    """The :class:`~mmai.config.BiEncoderConfig` of a checkpoint's ``hyper_parameters``: a
    bi-encoder's or a re-ranker's (both keep it under ``bi_encoder``), or the flat hyperparameters
    of a bi-encoder checkpoint written before the typed configs."""
    found = hparams.get("bi_encoder")
    if found is None:
        if any(key.startswith("reranker") or key == "fusion" for key in hparams):
            raise ValueError(f"{where} is a re-ranker checkpoint without hyper_parameters['bi_encoder']")
        found = hparams  # an older bi-encoder checkpoint: flat hyperparameters
    return BiEncoderConfig.from_dict(found, f"{where}: the bi-encoder config")


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint",
                    require_hyperparameters: bool = True, mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint (tensors and plain data only: ``weights_only``) with
    clear errors for a missing or foreign file; ``what`` names the argument in the messages.
    ``mmap`` maps the tensors instead of reading them, for a caller that needs only the
    hyperparameters (a command line reading a model's config before the model loads it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist: pass a .ckpt written by `mmai fit` "
                                "(runs/<run>/checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise  # unreadable (permissions, I/O): torch's message says so
    except Exception as error:  # noqa: BLE001 - garbage bytes raise anything (UnpicklingError, struct.error, ...)
        # torch's own message advises weights_only=False, i.e. running code from an unknown file: not here
        kind = type(error).__name__ if type(error).__module__ == "builtins" else \
            f"{type(error).__module__.lstrip('_')}.{type(error).__name__}"
        raise ValueError(f"{what} {str(path)!r} is not a checkpoint (torch.load cannot read it as tensors and "
                         f"plain data: {kind}; a truncated or foreign file?): pass a .ckpt written "
                         "by `mmai fit` or `mmai rerank fit` (runs/<run>/checkpoints/last.ckpt)") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{what} {str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    if require_hyperparameters and "hyper_parameters" not in checkpoint:
        raise ValueError(f"{what} {str(path)!r} has no 'hyper_parameters': it was not written by an MMAI module")
    return checkpoint


def is_reranker_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """True for a ``RerankerModule`` checkpoint (fusion weights inside)."""
    return any(key.startswith("reranker.") for key in checkpoint["state_dict"])


def _sub_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def build_reranker(config: RerankerConfig, bi_encoder: BiEncoder) -> FusionReranker:
    """The :class:`~mmai.reranker.fusion.FusionReranker` of ``config`` over ``bi_encoder``'s token widths."""
    text_width = bi_encoder.text.width
    vision_width = getattr(bi_encoder.vision, "patch_width", bi_encoder.vision.width)
    return FusionReranker(text_width, vision_width, **config.fusion_kwargs())


def rerank_settings(checkpoint: dict[str, Any]) -> tuple[int, float, str]:
    """``(rerank_k, stage1_weight, source)`` of a re-ranker checkpoint: the values its validation
    used (:data:`VALIDATED_WITH`), else (a checkpoint written before that record, or never
    validated) its config's (:class:`~mmai.config.RerankerConfig`: 16 and 1.0 by default)."""
    record = checkpoint.get(VALIDATED_WITH)
    if isinstance(record, dict) and record.get("rerank_k") is not None and record.get("stage1_weight") is not None:
        when = ", ".join(f"{key} {record[key]}" for key in ("epoch", "step") if record.get(key) is not None)
        return (int(record["rerank_k"]), float(record["stage1_weight"]),
                "the checkpoint's validation" + (f" at {when}" if when else ""))
    config = RerankerConfig.from_hparams(checkpoint.get("hyper_parameters") or {})
    return config.rerank_k, config.stage1_weight, "the checkpoint's defaults: it records no validation"
