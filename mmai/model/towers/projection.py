"""Projection into the shared embedding space, followed by L2 normalisation.

As in CLIP (Radford et al., 2021) and ALBEF (Li et al., NeurIPS 2021): each tower's pooled
feature goes through a linear map (here optionally a two-layer MLP, as SimCLR's head) to
``embed_dim`` and onto the unit sphere, so that dot products are cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """Linear (or MLP) map to ``embed_dim`` followed by L2 normalisation.

    Args:
        in_dim: the tower's width D.
        embed_dim: size of the shared space E (default 512).
        hidden_dim: None for a single linear layer (default); an int for
            Linear(D, hidden) -> GELU -> Linear(hidden, E).
        dropout: dropout before the (first) linear layer (default 0.0).
        input_norm: LayerNorm the features first (default False). Locked pretrained features
            (LiT) are far from zero-mean and unit-scale; normalising them lets the few trained
            steps go into the mapping rather than into undoing their offset and scale.
    """

    def __init__(self, in_dim: int, embed_dim: int = 512, hidden_dim: int | None = None, dropout: float = 0.0,
                 input_norm: bool = False) -> None:
        super().__init__()
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.dropout = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout)) if input_norm else nn.Dropout(dropout)
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, embed_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> unit-norm ``(B, E)``."""
        return F.normalize(self.net(self.dropout(features)), dim=-1)  # (B, E)


class NormalizedLinear(nn.Module):
    """An existing linear layer (e.g. CLIP's own ``visual_projection``) followed by L2 normalisation.

    Args:
        linear: the layer to wrap; its weights are used, not copied.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.in_dim, self.embed_dim = linear.in_features, linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> unit-norm ``(B, E)``."""
        return F.normalize(self.linear(features), dim=-1)  # (B, E)
