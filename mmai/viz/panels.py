"""Drawing what the re-ranker looked at: "original | heatmap | overlay" panels.

The maps come from :mod:`mmai.reranker.saliency`; here they are coloured with a small built-in
jet/inferno colour map (NumPy LUT; no matplotlib), laid over the image, and set in a panel with the
query, score and rank as a title, optionally a row of per-token overlays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def token_maps_for_panel(
    token_maps: torch.Tensor, tokens: Sequence[str], attention_mask: torch.Tensor | None = None,
    skip: Sequence[str] = ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"), limit: int = 12,
) -> list[tuple[str, np.ndarray]]:
    """``[(token, map (H, W))]`` of one pair's real tokens, for :func:`render_panel`.

    Args:
        token_maps: ``(L, H, W)`` one pair's ``SaliencyMaps.tokens``.
        tokens: ``L`` token strings (``tokenizer.convert_ids_to_tokens(input_ids)``).
        attention_mask: ``(L,)``; padding tokens are skipped.
        skip: special tokens left out (default BERT's and RoBERTa's).
        limit: at most this many maps (default 12).
    """
    keep = [index for index, token in enumerate(tokens)
            if token not in skip and (attention_mask is None or bool(attention_mask[index]))]
    return [(tokens[index], _as_numpy(token_maps[index])) for index in keep[:limit]]


# ---------------------------------------------------------------------- colours and images
#: Anchor colours (position, RGB) of the colour maps; 256-entry LUTs are interpolated from them.
_COLORMAP_ANCHORS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "jet": [(0.0, (0, 0, 131)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.625, (255, 255, 0)),
            (0.875, (255, 0, 0)), (1.0, (128, 0, 0))],
    "inferno": [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
                (1.0, (252, 255, 164))],
}


def colormap_lut(name: str = "jet") -> np.ndarray:
    """``(256, 3)`` uint8 lookup table of ``"jet"`` (default) or ``"inferno"``."""
    if name not in _COLORMAP_ANCHORS:
        raise ValueError(f"saliency: colormap must be one of {tuple(_COLORMAP_ANCHORS)}, got {name!r}.")
    positions, colours = zip(*_COLORMAP_ANCHORS[name])
    levels = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(levels, positions, [colour[c] for colour in colours]) for c in range(3)]
    return np.clip(np.round(np.stack(channels, axis=1)), 0, 255).astype(np.uint8)


def colorize(heatmap: Any, colormap: str = "jet") -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours (values are clipped to [0, 1])."""
    values = np.clip(np.nan_to_num(_as_numpy(heatmap).astype(np.float32)), 0.0, 1.0)
    return colormap_lut(colormap)[np.round(values * 255).astype(np.int64)]


def denormalize_image(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo the model input normalisation: ``(3, H, W)`` float -> ``(H, W, 3)`` uint8.

    Use the vision tower's ``image_mean``/``image_std`` (default ImageNet's, as
    :func:`mmai.data.pipeline.normalize_images`).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    pixels = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1) * 255  # (3, H, W)
    return pixels.round().byte().permute(1, 2, 0).numpy()


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, ``(H, W, 3)``/``(H, W)`` array or ``(3, H, W)`` tensor -> ``(H, W, 3)`` uint8.

    Float arrays are taken as [0, 1]; for a *normalised* model input use :func:`denormalize_image`.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = _as_numpy(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"render_panel: image must be (H, W, 3), (H, W) or (3, H, W), got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return array


def overlay(image: np.ndarray, heatmap: Any, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend ``colorize(heatmap)`` over a same-size ``(H, W, 3)`` uint8 image with weight ``alpha``."""
    colours = colorize(heatmap, colormap).astype(np.float32)
    return np.round((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


def _resize_map(heatmap: Any, size: int) -> np.ndarray:
    values = Image.fromarray(np.ascontiguousarray(_as_numpy(heatmap), dtype=np.float32))  # mode "F"
    return np.asarray(values.resize((size, size), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------- panels
def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` px (the fixed bitmap font on Pillow < 10.1); panels and
    the dashboard's cards use it."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def wrap_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        words, line = paragraph.split(), ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Hg")
    return int(bottom - min(top, 0)) + 4


def _title_lines(query: str, score: float | None, rank: int | None, subtitle: str | None) -> tuple[str, str]:
    facts = []
    if rank is not None:
        facts.append(f"rank {rank}")
    if score is not None:
        facts.append(f"score {score:.3f}")
    if subtitle:
        facts.append(subtitle)
    return f"\u201c{query}\u201d", "   \u00b7   ".join(facts)


def _colorbar(width: int, height: int, colormap: str) -> Image.Image:
    ramp = np.tile(np.linspace(0.0, 1.0, width)[None, :], (height, 1))
    return Image.fromarray(colorize(ramp, colormap))


def render_panel(
    image: Any,
    heatmap: Any,
    query: str,
    score: float | None = None,
    rank: int | None = None,
    token_maps: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    subtitle: str | None = None,
    tile_size: int = 256,
    colormap: str = "jet",
    alpha: float = 0.5,
    font_size: int = 20,
    tokens_per_row: int = 6,
) -> Image.Image:
    """A readable "original | heatmap | overlay" panel titled with the query, rank and score.

    Args:
        image: the candidate image: PIL, ``(H, W, 3)`` uint8 array, or ``(3, H, W)`` tensor in
            [0, 1] (see :func:`denormalize_image` for model inputs).
        heatmap: ``(H, W)`` in [0, 1] at the image's resolution (e.g. ``SaliencyMaps.mean[i]``).
        query: the caption; wrapped to the panel width.
        score: shown as ``score 3.142`` (default None: not shown).
        rank: shown as ``rank 1`` (default None: not shown).
        token_maps: optional per-token maps ``{token: (H, W)}`` or ``[(token, (H, W)), ...]``
            (see :func:`token_maps_for_panel`), drawn as labelled overlays below.
        subtitle: extra text on the facts line, e.g. ``"grad x attention, last layer"``.
        tile_size: side of each of the three tiles in pixels (default 256: a panel is 816 px
            wide); small images are upscaled (bicubic), heatmaps bilinearly.
        colormap: ``"jet"`` (default) or ``"inferno"``.
        alpha: heatmap weight in the overlays (default 0.5).
        font_size: title font size in pixels (default 20; labels use 0.8 of it).
        tokens_per_row: per-token tiles per row (default 6).

    Returns:
        The panel, an RGB ``PIL.Image``.
    """
    rgb = to_rgb_array(image)
    heat = _as_numpy(heatmap)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"render_panel: heatmap {heat.shape} must match the image size {rgb.shape[:2]}; "
                         "upsample it first (saliency_maps does).")
    margin, gap = 12, 10
    width = 3 * tile_size + 4 * margin
    title_font, label_font = load_font(font_size), load_font(max(10, int(font_size * 0.8)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title, facts = _title_lines(query, score, rank, subtitle)
    title_lines = wrap_text(scratch, title, title_font, width - 2 * margin)
    title_h, label_h = _text_height(title_font), _text_height(label_font)
    header = margin + title_h * len(title_lines) + (label_h if facts else 0) + gap
    rows = _token_rows(token_maps, tokens_per_row)
    token_tile = (width - margin * (tokens_per_row + 1)) // tokens_per_row
    body = tile_size + label_h + 8 + 10  # tiles, labels, colour bar
    token_block = len(rows) * (token_tile + label_h + gap) + (label_h + gap if rows else 0)
    panel = Image.new("RGB", (width, header + body + token_block + margin), "white")
    draw = ImageDraw.Draw(panel)

    y = margin
    for line in title_lines:
        draw.text((margin, y), line, fill=(0, 0, 0), font=title_font)
        y += title_h
    if facts:
        draw.text((margin, y), facts, fill=(70, 70, 70), font=label_font)
    big = np.asarray(Image.fromarray(rgb).resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    big_heat = _resize_map(heat, tile_size)
    tiles = [("original", big), ("saliency (low to high)", colorize(big_heat, colormap)),
             ("overlay", overlay(big, big_heat, alpha, colormap))]
    for column, (label, tile) in enumerate(tiles):
        x = margin + column * (tile_size + margin)
        panel.paste(Image.fromarray(tile), (x, header))
        draw.text((x, header + tile_size + 4), label, fill=(0, 0, 0), font=label_font)
    panel.paste(_colorbar(tile_size, 8, colormap), (margin + tile_size + margin, header + tile_size + label_h + 6))

    y = header + body
    if rows:
        draw.text((margin, y), "per-token overlays", fill=(70, 70, 70), font=label_font)
        y += label_h + gap
    for row in rows:
        for column, (token, token_map) in enumerate(row):
            x = margin + column * (token_tile + margin)
            small = np.asarray(Image.fromarray(rgb).resize((token_tile, token_tile), Image.Resampling.BICUBIC))
            tile = overlay(small, _resize_map(token_map, token_tile), alpha, colormap)
            panel.paste(Image.fromarray(tile), (x, y))
            draw.text((x, y + token_tile + 2), _shorten(scratch, token, label_font, token_tile), fill=(0, 0, 0),
                      font=label_font)
        y += token_tile + label_h + gap
    return panel


def _token_rows(token_maps, per_row: int) -> list[list[tuple[str, Any]]]:
    if not token_maps:
        return []
    items = list(token_maps.items()) if isinstance(token_maps, Mapping) else list(token_maps)
    return [items[start:start + per_row] for start in range(0, len(items), per_row)]


def _shorten(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


def save_panel(panel: Image.Image, path: str | Path) -> Path:
    """Write a panel as PNG (parent folders are created); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_panel: {path} should end in .png (panels are saved losslessly as PNG).")
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.save(path, format="PNG")
    return path
