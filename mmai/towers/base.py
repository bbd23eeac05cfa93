"""The contract every tower keeps: one forward, two outputs.

A tower encodes one modality and returns a :class:`TowerOutput`: the *pooled* feature that
stage 1 projects into the shared space, and the *token states* that stage 2 (the fusion
re-ranker, cross-attention over patches/tokens) consumes. Every tower exposes ``.width``, the
size of the pooled feature, which the projection that follows it needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TowerOutput(NamedTuple):
    """What a tower returns; unpacks like a tuple: ``pooled, tokens = tower(x)``.

    Attributes:
        pooled: the retrieval feature, ``(B, D)``.
        tokens: the token states kept for stage 2, ``(B, N, D)``, or None when a tower has none.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None
