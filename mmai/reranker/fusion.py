"""Stage-2 fusion re-ranker: caption tokens cross-attend to image patches, a head scores the match.

The image-text matching (ITM) model of ALBEF (Li et al., "Align before Fuse", NeurIPS 2021) in a
small, self-contained form. The stage-1 towers' outputs are its inputs: caption token states
``(Bt, L, Dt)`` and image patch tokens ``(Bt, N, Dv)``, so a re-ranker never re-encodes an image
(the caller caches patch tokens). Each :class:`FusionLayer` is pre-norm and residual::

    x = x + SelfAttention(LN(x), key padding mask)        # text tokens among themselves
    x = x + CrossAttention(LN(x), patches)                # text queries, image patches as keys/values
    x = x + FeedForward(LN(x))

and the match head reads the fused first token ([CLS]).

**Match head: one logit, not ALBEF's two.** ALBEF's ``Linear(d, 2)`` + softmax cross-entropy is
equivalent to a single logit ``z = l_match - l_no_match`` trained with binary cross-entropy
(:func:`match_loss`); the single logit is the log-odds of a match, an unbounded score that adds
directly to the stage-1 similarity in two-stage ranking (``z + stage1_weight * cosine``) and is
the quantity gradient x attention differentiates.

**Word-region agreement (``head="agreement"``).** A [CLS] head must learn from scratch to
compare a caption with an image through two attention layers; with a few hundred CPU steps it
stays a constant predictor. The agreement head adds the comparison as structure, after SCAN
(Lee et al., "Stacked Cross Attention for Image-Text Matching", ECCV 2018) and FILIP's
token-wise late interaction (Yao et al., ICLR 2022): every caption token (its fused state)
attends to the patches with one more cross-attention whose queries and keys live in a shared
space, the token's agreement is the cosine between it and the patches it attends to, and the
logit adds the gated mean agreement over the caption's words (gates learned per token, so
function words weigh little) to the [CLS] logit. A colour word bound to "bill" by the text
tower's context must then find that colour *on the bill* to agree, which is what tells "an
orange bill and a grey belly" from the swapped bird. Its attention map is returned as one more
(single-head) entry of ``cross_attentions``, so saliency reads where each word found its match.

**Attention is written out** (no ``scaled_dot_product_attention``): the softmax weights are
exact, returned per layer as ``cross_attentions`` ``(Bt, heads, L, N)`` and stay in the autograd
graph, so :mod:`mmai.reranker.saliency` can take the gradient of the logit with respect to them.

**Broadcasting.** Every operation works on arbitrary leading batch dimensions and broadcasts
text against patches: ``text (1, L, Dt)`` with ``patches (K, N, Dv)`` scores one caption
against K images, ``text (K, L, Dt)`` with ``patches (1, N, Dv)`` one image against K captions,
each with the shared side's projections computed once. :meth:`FusionReranker.score_candidates`
builds on this to score ``Q`` queries x ``K`` candidates in one batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmai.config import RerankerConfig


@dataclasses.dataclass
class FusionOutput:
    """What :meth:`FusionReranker.forward` returns (``*B`` is the broadcast batch shape, ``(Bt,)``
    for the usual paired inputs).

    Attributes:
        logits: ``(*B,)`` match log-odds (higher = better match).
        cross_attentions: one ``(*B, heads, L, N)`` softmax map per layer, text token -> patch,
            rows of padding tokens included (mask them with the attention mask); in the autograd
            graph when the forward ran with gradients enabled.
        fused: ``(*B, L, hidden_dim)`` final fused token states (after the last layer norm).
    """

    logits: torch.Tensor
    cross_attentions: list[torch.Tensor]
    fused: torch.Tensor


def match_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits (ALBEF's ITM loss in single-logit form).

    Args:
        logits: ``(P,)`` from :class:`FusionReranker`.
        labels: ``(P,)`` 1 for matching pairs, 0 for negatives (any numeric dtype).

    Returns:
        Scalar mean loss.
    """
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class Attention(nn.Module):
    """Multi-head attention with an explicit softmax that returns its weights.

    Args:
        dim: width of queries, keys and values.
        num_heads: heads; ``dim`` must be divisible by it.
        dropout: dropout on the attention weights used for the values (default 0.0); the returned
            weights are the exact softmax, before dropout.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: hidden_dim={dim} is not divisible by num_heads={num_heads}.")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        """``(*B, S, D) -> (*B, heads, S, head_dim)``."""
        return states.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(
        self, queries: torch.Tensor, keys_values: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend ``queries`` to ``keys_values``; leading batch dimensions broadcast.

        Args:
            queries: ``(*B, L, D)``.
            keys_values: ``(*B', S, D)``, ``*B'`` broadcastable to ``*B``.
            key_padding_mask: ``(*B'', S)`` bool, True for keys that may be attended to, or None.

        Returns:
            ``out (*B, L, D)`` and ``weights (*B, heads, L, S)`` (softmax over S, before dropout).
        """
        query = self._split(self.query(queries))  # (*B, h, L, d)
        key = self._split(self.key(keys_values))  # (*B', h, S, d)
        value = self._split(self.value(keys_values))  # (*B', h, S, d)
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (*B, h, L, S)
        if key_padding_mask is not None:
            blocked = ~key_padding_mask.bool()[..., None, None, :]  # (*B'', 1, 1, S)
            scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)  # (*B, h, L, S)
        mixed = self.dropout(weights) @ value  # (*B, h, L, d)
        return self.out(mixed.transpose(-3, -2).flatten(-2)), weights  # (*B, L, D), (*B, h, L, S)


class FeedForward(nn.Sequential):
    """``Linear(D, ratio*D) -> GELU -> Dropout -> Linear(ratio*D, D) -> Dropout``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class FusionLayer(nn.Module):
    """Pre-norm text self-attention -> cross-attention to patches -> feed-forward, each residual.

    Args:
        dim: hidden width.
        num_heads: attention heads.
        dropout: dropout on attention weights, residual branches and the feed-forward (default 0.1).
        mlp_ratio: feed-forward expansion (default 4.0).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.patch_norm = nn.LayerNorm(dim)
        self.cross_attention = Attention(dim, num_heads, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, dropout)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(
        self, text: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse one step.

        Args:
            text: ``(*B, L, D)`` token states.
            attention_mask: ``(*B, L)``, 1 for real tokens (padding tokens are never attended to).
            patches: ``(*B', N, D)`` projected patch tokens, broadcastable against ``text``.

        Returns:
            ``text (*B, L, D)`` updated, and the cross-attention weights ``(*B, heads, L, N)``.
        """
        normed = self.self_norm(text)  # (*B, L, D)
        attended, _ = self.self_attention(normed, normed, attention_mask)  # (*B, L, D)
        text = text + self.residual_dropout(attended)
        crossed, weights = self.cross_attention(self.cross_norm(text), self.patch_norm(patches))  # (*B, L, D)
        text = text + self.residual_dropout(crossed)
        return text + self.mlp(self.mlp_norm(text)), weights  # (*B, L, D), (*B, h, L, N)


FUSION_HEADS = ("cls", "agreement")


#: Width of the fixed 2-D sine-cosine code of a patch's position (:func:`grid_positions`).
POSITION_DIM = 32


def grid_positions(count: int, dim: int = POSITION_DIM) -> torch.Tensor:
    """``(count, dim)`` sine-cosine codes of the patches of a square grid, row by row (the order a
    flattened CNN feature map has): ``dim / 4`` frequencies each of sin and cos of row and column."""
    side = int(round(math.sqrt(count)))
    if side * side != count or dim % 4:
        raise ValueError(f"grid_positions: {count} patches are not a square grid, or dim={dim} is not a multiple of 4")
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    frequencies = torch.exp(torch.arange(dim // 4) * (-math.log(100.0) / (dim // 4)))
    codes = [fn(axis.flatten()[:, None].float() * frequencies) for axis in (rows, columns) for fn in (torch.sin, torch.cos)]
    return torch.cat(codes, dim=1)


class FusionReranker(nn.Module):
    """Cross-attention fusion of caption tokens with image patches and a match head.

    Args:
        text_width: Dt, width of the text tower's token states (``TextTower.width``).
        vision_width: Dv, width of the vision tower's patch tokens (``VisionTower.width``).
        hidden_dim: fusion width (default 256).
        num_layers: fusion layers (default 2; 0 is allowed with ``head="agreement"``: the words,
            contextualised by the text tower alone, then meet the patches only in the agreement).
        num_heads: attention heads per layer (default 4).
        dropout: dropout everywhere in the layers (default 0.1).
        mlp_ratio: feed-forward expansion (default 4.0).
        head: ``"cls"`` (default: ALBEF's match head on the fused [CLS]) or ``"agreement"``
            ([CLS] logit + scaled word-region agreement, see the module docstring).
        agreement_temperature: softmax temperature of the agreement attention over patches
            (default 0.1: close to each word's best-matching patches).
        agreement_attention: ``"cosine"`` (default: a word attends to the patches it matches) or
            ``"keyed"`` (query/key projections of their own: where to look, apart from what matches).
        patch_positions: add the patches' 2-D sine-cosine positions (square grid, learned
            projection) to the agreement attention's keys (default False).

    Attributes:
        text_proj, patch_proj: ``Linear`` input projections to ``hidden_dim``.
        layers: the :class:`FusionLayer` stack.
        norm: final LayerNorm.
        head: ``Linear(hidden_dim, 1)``, the match head on the fused first token ([CLS]).
    """

    def __init__(
        self,
        text_width: int,
        vision_width: int,
        hidden_dim: int = RerankerConfig.hidden_dim,
        num_layers: int = RerankerConfig.num_layers,
        num_heads: int = RerankerConfig.num_heads,
        dropout: float = RerankerConfig.dropout,
        mlp_ratio: float = RerankerConfig.mlp_ratio,
        head: str = RerankerConfig.head,
        agreement_temperature: float = RerankerConfig.agreement_temperature,
        agreement_attention: str = RerankerConfig.agreement_attention,
        patch_positions: bool = RerankerConfig.patch_positions,
    ) -> None:
        super().__init__()
        if head not in FUSION_HEADS:
            raise ValueError(f"FusionReranker: head must be one of {FUSION_HEADS}, got {head!r}.")
        if num_layers < (0 if head == "agreement" else 1):
            raise ValueError(f"FusionReranker: num_layers must be >= 1 (>= 0 with head='agreement', whose own "
                             f"cross-attention compares words with patches), got {num_layers}.")
        if hidden_dim % num_heads:
            raise ValueError(f"FusionReranker: hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}.")
        self.text_width, self.vision_width = text_width, vision_width
        self.hidden_dim, self.num_heads = hidden_dim, num_heads
        self.text_proj = nn.Linear(text_width, hidden_dim)
        self.patch_proj = nn.Linear(vision_width, hidden_dim)
        self.layers = nn.ModuleList(FusionLayer(hidden_dim, num_heads, dropout, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, 1)
        self.head_kind, self.agreement_temperature = head, float(agreement_temperature)
        if head == "agreement":
            self.word_proj = nn.Linear(hidden_dim, hidden_dim)  # fused token -> shared space
            self.region_norm = nn.LayerNorm(vision_width)
            self.region_proj = nn.Linear(vision_width, hidden_dim)  # patch -> shared space
            self.word_gate = nn.Linear(hidden_dim, 1)
            self.agreement_scale = nn.Parameter(torch.tensor(10.0))
            if agreement_attention == "keyed":
                self.attention_query = nn.Linear(hidden_dim, hidden_dim)
                self.attention_key = nn.Linear(vision_width, hidden_dim)
            if patch_positions:
                self.position_proj = nn.Linear(POSITION_DIM, hidden_dim)
        if agreement_attention not in ("cosine", "keyed"):
            raise ValueError(f"FusionReranker: agreement_attention must be 'cosine' or 'keyed', got "
                             f"{agreement_attention!r}.")
        if (agreement_attention == "keyed" or patch_positions) and head != "agreement":
            raise ValueError("FusionReranker: agreement_attention='keyed' and patch_positions belong to the "
                             "agreement head (head='agreement').")
        if patch_positions and agreement_attention != "keyed":
            raise ValueError("FusionReranker: patch_positions are added to the keyed attention's keys; set "
                             "agreement_attention='keyed' too.")
        self.agreement_attention, self.patch_positions = agreement_attention, bool(patch_positions)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def _check(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor) -> None:
        if text_tokens.shape[-1] != self.text_width:
            raise ValueError(f"FusionReranker: text_tokens have width {text_tokens.shape[-1]}, "
                             f"expected text_width={self.text_width} (shape {tuple(text_tokens.shape)}).")
        if patches.shape[-1] != self.vision_width:
            raise ValueError(f"FusionReranker: patches have width {patches.shape[-1]}, "
                             f"expected vision_width={self.vision_width} (shape {tuple(patches.shape)}).")
        if attention_mask.shape[-1] != text_tokens.shape[-2]:
            raise ValueError(f"FusionReranker: attention_mask {tuple(attention_mask.shape)} does not fit "
                             f"text_tokens {tuple(text_tokens.shape)} (same length L expected).")

    def forward(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor) -> FusionOutput:
        """Score (caption, image) pairs.

        Args:
            text_tokens: ``(Bt, L, Dt)`` caption token states, [CLS] first (any leading dims
                ``*B`` that broadcast against ``patches``'s).
            attention_mask: ``(Bt, L)``, 1 for real tokens, 0 for padding.
            patches: ``(Bt, N, Dv)`` image patch tokens of each pair's image.

        Returns:
            :class:`FusionOutput` with ``logits (Bt,)`` and per-layer ``cross_attentions
            (Bt, heads, L, N)``.
        """
        self._check(text_tokens, attention_mask, patches)
        text = self.text_proj(text_tokens)  # (*B, L, H)
        image = self.patch_proj(patches)  # (*B', N, H)
        cross_attentions = []
        for layer in self.layers:
            text, weights = layer(text, attention_mask, image)  # (*B, L, H), (*B, h, L, N)
            cross_attentions.append(weights)
        fused = self.norm(text)  # (*B, L, H)
        logits = self.head(fused[..., 0, :]).squeeze(-1)  # (*B,)
        if self.head_kind == "agreement":
            agreement, weights = self._agreement(fused, attention_mask, patches)
            logits = logits + self.agreement_scale * agreement
            cross_attentions.append(weights)
        return FusionOutput(logits, cross_attentions, fused)  # logits (*B,)

    def _agreement(self, fused: torch.Tensor, attention_mask: torch.Tensor,
                   patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated mean word-region cosine ``(*B,)`` and its attention ``(*B, 1, L, N)``."""
        words = F.normalize(self.word_proj(fused), dim=-1)  # (*B, L, H)
        normed = self.region_norm(patches)  # (*B', N, Dv)
        regions = F.normalize(self.region_proj(normed), dim=-1)  # (*B', N, H)
        cosine = words @ regions.transpose(-1, -2)  # (*B, L, N)
        if self.agreement_attention == "keyed":  # where to look, learned apart from what matches
            keys = self.attention_key(normed)  # (*B', N, H)
            if self.patch_positions:
                keys = keys + self.position_proj(grid_positions(patches.shape[-2], POSITION_DIM).to(keys))
            scores = self.attention_query(fused) @ keys.transpose(-1, -2) / math.sqrt(self.hidden_dim)
            weights = scores.softmax(dim=-1).unsqueeze(-3)  # (*B, 1, L, N)
        else:
            weights = (cosine / self.agreement_temperature).softmax(dim=-1).unsqueeze(-3)  # (*B, 1, L, N)
        agreement = (weights.squeeze(-3) * cosine).sum(dim=-1)  # (*B, L): each word's match in the image
        mask = attention_mask.to(agreement.dtype).clone()
        mask[..., 0] = 0  # [CLS] has its own head
        gates = F.softplus(self.word_gate(fused).squeeze(-1)) * mask  # (*B, L)
        pooled = (gates * agreement).sum(dim=-1) / gates.sum(dim=-1).clamp_min(1e-6)  # (*B,)
        return pooled, weights

    def score_candidates(
        self,
        text_tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        candidate_patches: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Match logits of every query caption against its candidates, in one batch.

        The captions are expanded (broadcast) over the candidates; candidate patch tokens come
        from the caller's cache, so no image is re-encoded.

        Args:
            text_tokens: ``(Q, L, Dt)`` query caption token states (``Q = 1`` for one query).
            attention_mask: ``(Q, L)``.
            candidate_patches: ``(K, N, Dv)`` candidates shared by all queries, or
                ``(Q, K, N, Dv)`` each query's own candidates (two-stage re-ranking).
            chunk_size: at most this many queries per forward, to bound memory (default None:
                all ``Q`` at once).

        Returns:
            ``(Q, K)`` match logits; ``[q, k]`` equals ``forward(text_tokens[q:q+1],
            attention_mask[q:q+1], candidate_patches[..., k, :, :]).logits`` up to float rounding.
        """
        if text_tokens.ndim != 3 or candidate_patches.ndim not in (3, 4):
            raise ValueError(f"score_candidates: expected text_tokens (Q, L, Dt) and candidate_patches (K, N, Dv) "
                             f"or (Q, K, N, Dv), got {tuple(text_tokens.shape)} and {tuple(candidate_patches.shape)}.")
        if candidate_patches.ndim == 4 and candidate_patches.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"score_candidates: candidate_patches {tuple(candidate_patches.shape)} has "
                             f"{candidate_patches.shape[0]} query rows, text_tokens has {text_tokens.shape[0]}.")
        chunk = chunk_size or text_tokens.shape[0]
        scores = []
        for start in range(0, text_tokens.shape[0], chunk):
            stop = start + chunk
            patches = candidate_patches if candidate_patches.ndim == 3 else candidate_patches[start:stop]
            patches = patches if patches.ndim == 4 else patches.unsqueeze(0)  # (Q or 1, K, N, Dv)
            text = text_tokens[start:stop].unsqueeze(1)  # (q, 1, L, Dt)
            mask = attention_mask[start:stop].unsqueeze(1)  # (q, 1, L)
            scores.append(self(text, mask, patches).logits)  # (q, K)
        return torch.cat(scores)  # (Q, K)
