"""Why did it match? Saliency of the fusion re-ranker on the candidate's patches, and panels.

Two maps per (caption, image) pair, per caption token and averaged over the caption's tokens:

* **attention** — the raw cross-attention weights text token -> patch, averaged over heads.
* **gradcam** — gradient x attention, the Grad-CAM variant of ALBEF (Li et al., NeurIPS 2021,
  after Grad-CAM, Selvaraju et al., ICCV 2017): ``mean_heads(A * clamp(dL/dA, min=0))`` with ``A``
  a layer's cross-attention and ``L`` the match logit; it keeps the attention that *raises* the
  match score, so it is non-negative by construction.

Layers: ``layers="all"`` (default) averages the per-layer maps of every fusion layer (a plain
mean, not attention rollout); ``"last"`` or an int picks one layer. Note for
gradcam: in the last layer only the [CLS] token's cross-attention reaches the match head (no
self-attention follows it), so the gradient there is exactly zero on every other token's map;
their gradcam maps come from the earlier layers, whose maps reach [CLS] through a later
self-attention (ALBEF, too, reads a middle layer of its fusion encoder). On a toy task with a
planted matching patch (tests/test_saliency.py), "all" pointed at it most often for both methods.

Padding tokens never contribute: their maps are zero and the averaged map is the mean over the
tokens of ``token_mask`` (default: the attention mask; zero [CLS] and [SEP] there to average
content words only). The ``N`` patch scores are laid on their ``(h, w)`` grid (square by
default), upsampled bilinearly to the image size and min-max normalised to [0, 1] per map (a
constant map becomes all zeros).

The maps only: panels ("original | heatmap | overlay") are drawn by :mod:`mmai.viz.panels`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

SALIENCY_METHODS = ("gradcam", "attention")


# ---------------------------------------------------------------------- maps
@dataclasses.dataclass
class SaliencyMaps:
    """Saliency of a batch of (caption, image) pairs.

    Attributes:
        mean: ``(B, H, W)`` in [0, 1], averaged over the tokens of ``token_mask``.
        tokens: ``(B, L, H, W)`` in [0, 1], one map per caption token; zero for padding tokens.
        patch_scores: ``(B, L, N)`` the unnormalised per-token patch relevance before upsampling
            (zero rows for padding tokens).
        logits: ``(B,)`` match logits of the pairs (detached).
        method: ``"gradcam"`` or ``"attention"``; layers: the ``layers`` argument used.
    """

    mean: torch.Tensor
    tokens: torch.Tensor
    patch_scores: torch.Tensor
    logits: torch.Tensor
    method: str
    layers: str | int


def _pick_layers(maps: list[torch.Tensor], layers: str | int) -> list[torch.Tensor]:
    if layers == "last":
        return maps[-1:]
    if layers == "all":
        return maps
    if isinstance(layers, int) and -len(maps) <= layers < len(maps):
        return [maps[layers]]
    raise ValueError(f"saliency: layers must be 'all', 'last' or a layer index in [-{len(maps)}, {len(maps)}), "
                     f"got {layers!r}.")


def patch_relevance(
    model: torch.nn.Module,
    text_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    patches: torch.Tensor,
    method: str = "gradcam",
    layers: str | int = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token patch relevance of (caption, image) pairs.

    Runs ``model`` in eval mode (its training flag is restored) and, for ``"gradcam"``, with
    gradients on, also inside ``torch.no_grad()``/``torch.inference_mode()`` (inputs are cloned
    into ordinary tensors); only the attention maps are differentiated, parameter ``.grad``s
    are left untouched.

    Args:
        model: a :class:`~mmai.reranker.fusion.FusionReranker`.
        text_tokens: ``(B, L, Dt)``; attention_mask ``(B, L)``; patches ``(B, N, Dv)``.
        method: ``"gradcam"`` (default) or ``"attention"``.
        layers: ``"all"`` (default: mean over layers), ``"last"`` or a layer index; see the
            module docstring.

    Returns:
        ``scores (B, L, N)`` (padding token rows zeroed; non-negative) and ``logits (B,)``.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"saliency: method must be one of {SALIENCY_METHODS}, got {method!r}.")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.set_grad_enabled(method == "gradcam"):
            text = text_tokens.detach().clone().requires_grad_(method == "gradcam")  # (B, L, Dt)
            mask, image = attention_mask.detach().clone(), patches.detach().clone()  # (B, L), (B, N, Dv)
            output = model(text, mask, image)
            attentions = _pick_layers(output.cross_attentions, layers)  # each (B, h, L, N)
            if method == "gradcam":
                grads = torch.autograd.grad(output.logits.sum(), attentions)
                per_layer = [(attn * grad.clamp(min=0)).mean(dim=1) for attn, grad in zip(attentions, grads)]
            else:
                per_layer = [attn.mean(dim=1) for attn in attentions]  # (B, L, N)
            scores = torch.stack(per_layer).mean(dim=0).detach()  # (B, L, N)
    finally:
        model.train(was_training)
    return scores * mask[..., None].to(scores.dtype), output.logits.detach()


def grid_shape(num_patches: int, grid_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(h, w)`` patch grid: ``grid_size`` if given, else the square root of ``num_patches``."""
    if grid_size is not None:
        if grid_size[0] * grid_size[1] != num_patches:
            raise ValueError(f"saliency: grid_size={tuple(grid_size)} does not hold {num_patches} patches.")
        return int(grid_size[0]), int(grid_size[1])
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"saliency: {num_patches} patches are not a square grid; pass grid_size=(h, w).")
    return side, side


def patches_to_image(scores: torch.Tensor, image_size: int | tuple[int, int],
                     grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Lay patch scores ``(..., N)`` on their grid and upsample bilinearly to ``(..., H, W)``."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rows, cols = grid_shape(scores.shape[-1], grid_size)
    grid = scores.reshape(-1, 1, rows, cols).float()  # (M, 1, h, w)
    upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)  # (M, 1, H, W)
    return upsampled.reshape(*scores.shape[:-1], height, width)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each ``(H, W)`` map of ``(..., H, W)`` to [0, 1]; constant maps -> 0."""
    flat = maps.flatten(-2)  # (..., H*W)
    low, high = flat.min(dim=-1, keepdim=True).values, flat.max(dim=-1, keepdim=True).values
    span = high - low
    normed = torch.where(span > eps, (flat - low) / span.clamp(min=eps), torch.zeros_like(flat))
    return normed.reshape(maps.shape)


def _normalize_per_caption(token_maps: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``(B, L, H, W)`` with one min and max per pair over its real tokens."""
    real = attention_mask.detach().to(token_maps.device).bool()[..., None, None]  # (B, L, 1, 1)
    low = token_maps.masked_fill(~real, torch.inf).amin(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    high = token_maps.masked_fill(~real, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return ((token_maps - low) / (high - low).clamp(min=1e-12)).clamp(0, 1) * real


def saliency_maps(
    model: torch.nn.Module,
    text_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    patches: torch.Tensor,
    image_size: int | tuple[int, int],
    method: str = "gradcam",
    layers: str | int = "all",
    token_mask: torch.Tensor | None = None,
    grid_size: tuple[int, int] | None = None,
    token_normalization: str = "per_token",
) -> SaliencyMaps:
    """Per-token and averaged saliency maps at image resolution.

    Args:
        model: a :class:`~mmai.reranker.fusion.FusionReranker`.
        text_tokens: ``(B, L, Dt)`` caption token states; attention_mask ``(B, L)``.
        patches: ``(B, N, Dv)`` the candidate images' patch tokens.
        image_size: ``H`` (square) or ``(H, W)`` of the model input image.
        method: ``"gradcam"`` (default) or ``"attention"``.
        layers: ``"all"`` (default: mean over layers), ``"last"`` or a layer index; see the
            module docstring.
        token_mask: ``(B, L)`` tokens averaged into ``mean`` (default: ``attention_mask``);
            always intersected with ``attention_mask``.
        grid_size: ``(h, w)`` patch grid (default: square).
        token_normalization: ``"per_token"`` (default): each token map is min-max normalised on
            its own; ``"per_caption"``: a pair's token maps share one min and max over its real
            tokens, so a token that barely moves the score stays dim in a panel.

    Returns:
        :class:`SaliencyMaps`.
    """
    if token_normalization not in ("per_token", "per_caption"):
        raise ValueError(f"saliency: token_normalization must be 'per_token' or 'per_caption', "
                         f"got {token_normalization!r}.")
    scores, logits = patch_relevance(model, text_tokens, attention_mask, patches, method, layers)  # (B, L, N)
    valid = attention_mask.detach().to(scores.device, scores.dtype)  # (B, L)
    if token_mask is not None:
        valid = valid * token_mask.detach().to(scores.device, scores.dtype)
    mean_scores = (scores * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (B, N)
    token_maps = patches_to_image(scores, image_size, grid_size)  # (B, L, H, W)
    if token_normalization == "per_token":
        token_maps = normalize_maps(token_maps)
    else:
        token_maps = _normalize_per_caption(token_maps, attention_mask)
    mean_map = normalize_maps(patches_to_image(mean_scores, image_size, grid_size))  # (B, H, W)
    return SaliencyMaps(mean_map, token_maps, scores, logits, method, layers)
