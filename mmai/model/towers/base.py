"""The contract every tower keeps: one forward, two outputs.

A tower encodes one modality and returns a :class:`TowerOutput`: the *pooled* feature that
stage 1 projects into the shared space, and the *token states* that stage 2 (the fusion
re-ranker, cross-attention over patches/tokens) consumes. Every tower exposes ``.width``, the
size of the pooled feature, which the projection that follows it needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class TowerOutput(NamedTuple):
    """What a tower returns; unpacks like a tuple: ``pooled, tokens = tower(x)``.

    Attributes:
        pooled: the retrieval feature, ``(B, D)``.
        tokens: the token states kept for stage 2, ``(B, N, D)``, or None when a tower has none.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None


class Lockable:
    """LiT-style locking for a tower ``nn.Module`` whose wrapped network is ``self.model``.

    ``locked`` freezes the network (no gradients, and eval mode whatever the module's mode, so
    BatchNorm statistics and dropout never move); ``tune_last_n`` leaves the top ``n`` of
    :meth:`units` trainable. Call :meth:`apply_lock` at the end of ``__init__``.
    """

    locked: bool = False
    tune_last_n: int = 0

    def units(self) -> list[nn.Module]:
        """The tower's units from bottom to top (CNN stages, transformer layers)."""
        raise NotImplementedError

    @property
    def fully_locked(self) -> bool:
        """Nothing in the tower trains: its outputs can be cached once per sample."""
        return self.locked and self.tune_last_n == 0

    def trainable_units(self) -> list[nn.Module]:
        """The modules that train: the whole network unlocked, else the last ``tune_last_n`` units."""
        if not self.locked:
            return [self.model]
        units = self.units()
        if self.tune_last_n > len(units):
            raise ValueError(f"tune_last_n={self.tune_last_n} but {self.model_name!r} has {len(units)} units.")
        return units[len(units) - self.tune_last_n:] if self.tune_last_n else []

    def apply_lock(self, locked: bool, tune_last_n: int) -> None:
        self.locked, self.tune_last_n = bool(locked), int(tune_last_n)
        if self.locked:
            self.model.requires_grad_(False)
            for unit in self.trainable_units():
                unit.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Locked parts stay in eval mode whatever ``mode`` says."""
        nn.Module.train(self, mode)
        if self.locked:
            self.model.eval()
            for unit in self.trainable_units():
                unit.train(mode)
        return self


class TimmPreprocessing:
    """``image_mean``/``image_std`` of a timm tower, from its ``data_config``."""

    data_config: dict

    @property
    def image_mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean the pretrained weights expect."""
        return tuple(self.data_config["mean"])

    @property
    def image_std(self) -> tuple[float, ...]:
        """Per-channel normalisation std the pretrained weights expect."""
        return tuple(self.data_config["std"])
