"""Does the saliency point at the part the caption names? The pointing game.

The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016):
a saliency map *hits* when its maximum lies inside the annotated box of the object (here: the
bird part the query names); the score is the hit rate over queries. Its chance level is the
hit rate of a uniformly random point, ``mean(box area / image area)``.

Boxes are ``(x, y, width, height)`` in pixels, as CUB's ``bounding_boxes.txt`` and MMAI's
``part_boxes.txt``. They are annotated on the original image, so :func:`rescale_boxes` maps them
into the model input frame of :func:`mmai.data.pipeline.image_transform` with ``train=False``:
``Resize(image_size)`` (shorter side to ``image_size``, aspect kept) then
``CenterCrop(image_size)``.

Query words map to the parts of the synthetic data (:data:`PART_WORDS`): bill/beak -> bill;
crown/head/cap/eye -> head; wing/wings/wing bars -> wing; tail -> tail.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import torch

#: Part boxes in the order of :func:`part_boxes_tensor`.
PARTS = ("bill", "head", "wing", "tail")

#: word -> part. Matching is per lower-case word, so "wing bars" and "eye ring" count through
#: "wing" and "eye"; plurals and the one-word spellings of the captions are listed.
PART_WORDS: dict[str, str] = {
    **{word: "bill" for word in ("bill", "bills", "beak", "beaks", "billed", "beaked")},
    **{word: "head" for word in ("crown", "crowned", "head", "heads", "cap", "capped", "eye", "eyes",
                                 "eyering", "eyerings", "eyebrow", "eyebrows", "nape", "forehead")},
    **{word: "wing" for word in ("wing", "wings", "wingbar", "wingbars", "winged", "secondaries")},
    **{word: "tail" for word in ("tail", "tails", "tailed")},
}

_WORD = re.compile(r"[a-z]+")


def word_part(word: str) -> str | None:
    """The part a single word names (``"beak" -> "bill"``), or None."""
    return PART_WORDS.get(word.strip().lower().lstrip("#"))


def named_parts(caption: str) -> list[str]:
    """The parts a caption names, in order of first mention, without repeats."""
    parts: list[str] = []
    for word in _WORD.findall(caption.lower()):
        part = PART_WORDS.get(word)
        if part is not None and part not in parts:
            parts.append(part)
    return parts


def caption_part(caption: str) -> str | None:
    """The first part a caption names (``"a bird with a long curved beak" -> "bill"``), or None."""
    parts = named_parts(caption)
    return parts[0] if parts else None


def part_boxes_tensor(parts: dict[str, Sequence[float]], names: Sequence[str] = PARTS) -> torch.Tensor:
    """The shards' ``parts`` JSON (``{"bill": [x, y, w, h], ...}``) as a ``(len(names), 4)`` tensor.

    A part missing from ``parts`` is a row of NaN, which :func:`pointing_game` skips.
    """
    rows = [list(map(float, parts[name])) if name in parts else [float("nan")] * 4 for name in names]
    return torch.tensor(rows, dtype=torch.float32)


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` from an int (square) or a ``(width, height)`` pair."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_crop_geometry(original_size: int | tuple[int, int], image_size: int) -> tuple[float, float, int, int]:
    """Scale and crop offset of ``Resize(image_size)`` + ``CenterCrop(image_size)``.

    Follows torchvision: the shorter side becomes ``image_size`` and the longer
    ``int(image_size * long / short)``; the crop starts at ``round((resized - image_size) / 2)``.

    Args:
        original_size: ``(width, height)`` of the original image, or one int for a square.
        image_size: the model input side.

    Returns:
        ``(scale_x, scale_y, left, top)``: a point ``(x, y)`` goes to
        ``(x * scale_x - left, y * scale_y - top)``.
    """
    width, height = _size_pair(original_size)
    short, long = min(width, height), max(width, height)
    new_long = int(image_size * long / short)
    new_width, new_height = (image_size, new_long) if width <= height else (new_long, image_size)
    left, top = int(round((new_width - image_size) / 2.0)), int(round((new_height - image_size) / 2.0))
    return new_width / width, new_height / height, left, top


def rescale_boxes(boxes: Any, original_size: int | tuple[int, int], image_size: int) -> torch.Tensor:
    """Map ``(x, y, w, h)`` boxes from the original image into the evaluation input frame.

    Args:
        boxes: ``(..., 4)`` boxes in original pixels (tensor, array or list).
        original_size: ``(width, height)`` of the original image (128 for the synthetic data).
        image_size: the model input side (``image_transform(image_size, train=False)``).

    Returns:
        ``(..., 4)`` float boxes in input pixels, clipped to the crop (a box cut off entirely
        gets zero width or height).
    """
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not isinstance(boxes, torch.Tensor) else boxes)
    boxes = boxes.float()
    scale_x, scale_y, left, top = resize_crop_geometry(original_size, image_size)
    x0 = (boxes[..., 0] * scale_x - left).clamp(0, image_size)
    y0 = (boxes[..., 1] * scale_y - top).clamp(0, image_size)
    x1 = ((boxes[..., 0] + boxes[..., 2]) * scale_x - left).clamp(0, image_size)
    y1 = ((boxes[..., 1] + boxes[..., 3]) * scale_y - top).clamp(0, image_size)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def _check(heatmaps: torch.Tensor, boxes: torch.Tensor) -> None:
    if heatmaps.ndim != 3 or boxes.shape != (heatmaps.shape[0], 4):
        raise ValueError(f"pointing_game: expected heatmaps (B, H, W) and boxes (B, 4), got "
                         f"{tuple(heatmaps.shape)} and {tuple(boxes.shape)}.")


def point_hits(heatmaps: Any, boxes: Any, tolerance: float = 0.0) -> torch.Tensor:
    """Whether each heatmap's maximum falls in its box.

    The maximum is the first arg-max pixel (row-major); pixel ``(row, col)`` is the point
    ``(col + 0.5, row + 0.5)``, a hit when ``x - tolerance <= col + 0.5 <= x + w + tolerance``
    and likewise for y (Zhang et al. use a 15 px tolerance on 224 px images; default 0).

    Args:
        heatmaps: ``(B, H, W)``.
        boxes: ``(B, 4)`` ``(x, y, w, h)`` in the heatmaps' pixel frame (see :func:`rescale_boxes`).
        tolerance: pixels added around each box (default 0.0).

    Returns:
        ``(B,)`` bool.
    """
    heatmaps, boxes = torch.as_tensor(heatmaps), torch.as_tensor(boxes, dtype=torch.float32)
    _check(heatmaps, boxes)
    width = heatmaps.shape[-1]
    flat = heatmaps.flatten(1).argmax(dim=1)  # (B,)
    px, py = (flat % width).float() + 0.5, torch.div(flat, width, rounding_mode="floor").float() + 0.5
    boxes = boxes.to(px.device)
    inside_x = (px >= boxes[:, 0] - tolerance) & (px <= boxes[:, 0] + boxes[:, 2] + tolerance)
    inside_y = (py >= boxes[:, 1] - tolerance) & (py <= boxes[:, 1] + boxes[:, 3] + tolerance)
    return inside_x & inside_y


def _valid(boxes: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def pointing_game(heatmaps: Any, boxes: Any, tolerance: float = 0.0) -> float:
    """Hit rate of the pointing game over the pairs whose box is valid (finite, non-empty).

    Args:
        heatmaps: ``(B, H, W)`` saliency maps.
        boxes: ``(B, 4)`` ``(x, y, w, h)`` of the named part in the heatmaps' frame; rows with NaN
            or zero size (part absent or cropped away) are skipped.
        tolerance: see :func:`point_hits` (default 0.0).

    Returns:
        The fraction of hits, or NaN when no box is valid.
    """
    heatmaps, boxes = torch.as_tensor(heatmaps), torch.as_tensor(boxes, dtype=torch.float32)
    _check(heatmaps, boxes)
    valid = _valid(boxes)
    if not bool(valid.any()):
        return float("nan")
    return point_hits(heatmaps[valid], boxes[valid], tolerance).float().mean().item()


def chance_level(boxes: Any, image_size: int | tuple[int, int]) -> float:
    """Hit rate of a uniformly random point: ``mean(box area / image area)`` over valid boxes.

    Args:
        boxes: ``(B, 4)`` boxes in the heatmaps' frame (clipped to the image here).
        image_size: heatmap side, or ``(width, height)``.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    width, height = _size_pair(image_size)
    boxes = boxes[_valid(boxes)]
    if not len(boxes):
        return float("nan")
    x0, y0 = boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height)
    x1, y1 = (boxes[:, 0] + boxes[:, 2]).clamp(0, width), (boxes[:, 1] + boxes[:, 3]).clamp(0, height)
    return ((x1 - x0) * (y1 - y0) / (width * height)).mean().item()


# ----------------------------------------------------------------- grounding supervision
#: Words a caption uses for colours (the synthetic vocabulary; real CUB's captions use these too).
COLOUR_TOKENS = frozenset({"black", "orange", "yellow", "grey", "gray", "red", "blue", "brown", "white", "green",
                           "buff", "tan", "cream"})
_LINKS = frozenset({"that", "is", "are", "and", "colored", "coloured"})


def token_parts(tokens: Sequence[str]) -> list[int]:
    """The part (index into :data:`PARTS`) each word-piece token of a caption names, -1 for none.

    A part noun names its part ("beak" -> bill); a colour word names the part of the noun it
    describes: the next part noun within three tokens ("an orange beak", "orange and grey wings"),
    or else the part noun it follows as a predicate within four tokens ("wings that are grey").
    Word pieces after the first (``##...``) and special tokens name nothing.
    """
    words = [token.lower() for token in tokens]
    parts = [PARTS.index(PART_WORDS[word]) if word in PART_WORDS else -1 for word in words]
    out = list(parts)
    for index, word in enumerate(words):
        if word not in COLOUR_TOKENS:
            continue
        ahead = [parts[j] for j in range(index + 1, min(index + 4, len(words))) if parts[j] >= 0]
        behind = [parts[j] for j in range(index - 1, max(index - 5, -1), -1)
                  if parts[j] >= 0 and all(words[k] in _LINKS for k in range(j + 1, index))]
        out[index] = ahead[0] if ahead else (behind[0] if behind else -1)
    return out


def part_patch_masks(boxes: Any, original_size: int | tuple[int, int], image_size: int, patches: int) -> torch.Tensor:
    """``(len(PARTS), patches)`` bool: which cells of the square patch grid (row by row, the CNN's
    stride-16 map flattened) overlap each part's box once the image is resized and centre-cropped
    to ``image_size``; a missing (NaN) box selects nothing."""
    side = int(round(math.sqrt(patches)))
    boxes = rescale_boxes(boxes, original_size, image_size)  # (P, 4) in input pixels
    cell = image_size / side
    edges = torch.arange(side, dtype=torch.float32) * cell  # cell starts
    x0, y0 = boxes[:, 0:1], boxes[:, 1:2]
    x1, y1 = x0 + boxes[:, 2:3], y0 + boxes[:, 3:4]
    columns = (edges[None, :] < x1) & (edges[None, :] + cell > x0)  # (P, side)
    rows = (edges[None, :] < y1) & (edges[None, :] + cell > y0)  # (P, side)
    masks = rows[:, :, None] & columns[:, None, :]  # (P, side, side)
    valid = torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    return (masks.reshape(len(boxes), -1) & valid[:, None])


def grounding_loss(weights: torch.Tensor, parts: torch.Tensor, part_masks: torch.Tensor) -> torch.Tensor:
    """Attention supervision from part boxes: for every token that names a part, minus the log
    of the attention mass it puts inside that part's box, averaged over such tokens (0 when none).

    Args:
        weights: ``(P, L, N)`` each token's attention over the patches (rows sum to 1).
        parts: ``(P, L)`` long, :func:`token_parts` per token (-1: names no part).
        part_masks: ``(P, len(PARTS), N)`` bool, :func:`part_patch_masks` of each pair's image.
    """
    named = parts >= 0
    if not bool(named.any()):
        return weights.sum() * 0.0
    boxes = torch.gather(part_masks, 1, parts.clamp(min=0)[..., None].expand(-1, -1, part_masks.shape[-1]))
    inside = (weights * boxes.to(weights.dtype)).sum(dim=-1)  # (P, L)
    has_box = boxes.any(dim=-1) & named
    if not bool(has_box.any()):
        return weights.sum() * 0.0
    return -(inside[has_box].clamp_min(1e-6)).log().mean()


def split_grounding_targets(shard_dir, split: str, text_image_ids: torch.Tensor, image_ids: torch.Tensor, tokenizer,
                            max_length: int, image_size: int, patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grounding targets of a cached split: ``(token_parts (Nt, max_length) int8, part_patches
    (Ni, len(PARTS), patches) bool)`` in the cache's row order (captions of an image in their file
    order), from the shards' captions and part boxes (``parts``: the synthetic data's
    ``part_boxes.txt``; real CUB's ``parts/part_locs.txt`` would give points, not boxes, and is not
    read here: images without boxes get empty masks, so they add nothing to the loss)."""
    import io
    import json

    from PIL import Image

    from mmai.data.pipeline import shard_samples
    from mmai.data.shards import shard_urls

    captions: dict[int, list[str]] = {}
    boxes: dict[int, tuple[dict, tuple[int, int]]] = {}
    for sample in shard_samples(shard_urls(shard_dir, split)):
        meta = json.loads(sample["json"])
        image_id = int(meta["image_id"])
        captions[image_id] = list(meta["captions"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            boxes[image_id] = (meta.get("parts") or {}, image.size)
    seen: dict[int, int] = {}
    texts = []
    for image_id in text_image_ids.tolist():
        j = seen.get(image_id, 0)
        seen[image_id] = j + 1
        texts.append(captions[image_id][j])
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
    parts = torch.tensor([token_parts(tokenizer.convert_ids_to_tokens(ids)) for ids in encoded["input_ids"]],
                         dtype=torch.int8)
    masks = torch.stack([part_patch_masks(part_boxes_tensor(boxes[int(i)][0]), boxes[int(i)][1], image_size, patches)
                         for i in image_ids.tolist()])
    return parts, masks
