"""Procedural bird pictures whose fine-grained attributes are visible at 128 px.

A bird is a list of coloured polygons in a local frame (facing right, y down, body half-length
1): tail, legs, body with belly, wing with optional bars, head with crown cap, eye with optional
ring, and a bill whose outline follows its shape and length. Every point goes through one
transform (flip, small rotation, scale, position), so part boxes and the whole-bird box are
exact in the saved image. Scenes add a blurred background (sky, foliage, water, reeds, dusk),
an optional perch, an occasional occluding leaf cluster and lighting jitter. Drawing happens at
twice the size and is box-filtered down, which anti-aliases the thin bills and bars.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from mmai.data.synth.species import Attributes

#: Named colours (RGB) shared by attributes and captions.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (35, 35, 38), "white": (238, 238, 232), "grey": (150, 150, 155),
    "red": (205, 35, 40), "orange": (240, 135, 30), "yellow": (245, 210, 45),
    "blue": (45, 90, 205), "brown": (130, 85, 45), "green": (55, 145, 65), "buff": (222, 196, 150),
}

#: Scene -> (top colour, bottom colour) of the background gradient.
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "sky": ((115, 165, 225), (205, 225, 245)),
    "foliage": ((45, 85, 40), (120, 155, 75)),
    "water": ((70, 120, 150), (30, 70, 100)),
    "reeds": ((190, 175, 125), (140, 125, 75)),
    "dusk": ((235, 175, 125), (115, 100, 140)),
}

PARTS = ("bill", "head", "wing", "tail")
SUPERSAMPLE = 2
BODY_TILT = -0.3  # radians; the front of the body points up
HEAD_CENTRE = np.array([0.95, -0.72])
HEAD_RADIUS = 0.42
BILL_ANGLE = 0.15  # radians below horizontal
#: (length, half height at the root) of the bill by shape and length, in body units.
BILL_SIZE = {
    ("straight", "short"): (0.42, 0.11), ("straight", "long"): (0.95, 0.11),
    ("curved", "short"): (0.45, 0.11), ("curved", "long"): (1.0, 0.11),
    ("hooked", "short"): (0.42, 0.14), ("hooked", "long"): (0.85, 0.15),
    ("conical", "short"): (0.3, 0.2), ("conical", "long"): (0.52, 0.24),
}
TAIL_LENGTH = {"short": 0.55, "long": 1.3}


@dataclasses.dataclass
class Drawing:
    """A rendered bird.

    Args:
        image: the picture, ``image_size`` square, mode ``RGB`` (or ``L`` when grayscale).
        bird_box: (x, y, width, height) of the whole bird in pixels.
        part_boxes: part name (bill, head, wing, tail) -> (x, y, width, height) in pixels.
        hidden_parts: parts mostly covered by an occluding leaf cluster.
    """

    image: Image.Image
    bird_box: tuple[float, float, float, float]
    part_boxes: dict[str, tuple[float, float, float, float]]
    hidden_parts: set[str]


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])  # (N, 2) row vectors rotated by angle


def _ellipse(centre, rx: float, ry: float, angle: float = 0.0, start: float = 0.0,
             stop: float = 2 * math.pi, count: int = 28) -> np.ndarray:
    t = np.linspace(start, stop, count)
    points = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)  # (count, 2)
    return _rotate(points, angle) + np.asarray(centre)


def _bill(shape: str, length_name: str) -> np.ndarray:
    """Bill outline in its own frame: root at the origin, pointing along +x, y down."""
    length, half = BILL_SIZE[(shape, length_name)]
    if shape == "curved":
        bend = 1.0 if length_name == "long" else 0.75
        t = np.linspace(0.0, 1.0, 10)
        phi = bend * t
        radius = length / bend
        centre = np.stack([radius * np.sin(phi), radius * (1 - np.cos(phi))], axis=1)  # (10, 2)
        normal = np.stack([np.sin(phi), -np.cos(phi)], axis=1)
        width = (half * (1 - t) ** 0.8 + 0.012)[:, None]
        return np.concatenate([centre + normal * width, (centre - normal * width)[::-1]])
    if shape == "hooked":
        ratios = [(0, -1), (0.6, -0.8), (0.88, -0.5), (1.0, 0.1), (0.95, 1.35), (0.86, 0.45), (0.55, 0.6), (0, 1)]
    elif shape == "conical":
        ratios = [(0, -1), (0.55, -0.55), (1.0, 0.05), (0.55, 0.6), (0, 1)]
    else:
        ratios = [(0, -1), (1.0, 0.05), (0, 1)]
    return np.array([(x * length, y * half) for x, y in ratios])


def _wing(centre, rx: float, ry: float) -> np.ndarray:
    points = _ellipse((0, 0), rx, ry, count=32)
    points[:, 0] = np.where(points[:, 0] < 0, points[:, 0] * 1.4, points[:, 0])  # pointed rear tip
    return _rotate(points, BODY_TILT) + np.asarray(centre)


def _wing_bars(centre, rx: float, ry: float) -> list[np.ndarray]:
    bars = []
    for x in (0.2, -0.15):
        span = 0.8 * ry * math.sqrt(1 - (x / rx) ** 2)
        quad = np.array([[x + 0.1, -span], [x + 0.19, -span], [x + 0.01, span], [x - 0.08, span]])
        bars.append(_rotate(quad, BODY_TILT) + np.asarray(centre))
    return bars


def _tail(length: float) -> np.ndarray:
    direction = np.array([-math.cos(BODY_TILT), -math.sin(BODY_TILT)])  # back and down
    normal = np.array([-direction[1], direction[0]])
    root = np.array([-0.75, 0.2])
    tip = root + direction * length
    return np.array([root + normal * 0.16, tip + normal * 0.28, root + direction * length * 0.93,
                     tip - normal * 0.28, root - normal * 0.16])


def bird_shapes(attributes: Attributes, colour) -> list[tuple[str, np.ndarray, tuple]]:
    """The bird as (part, polygon, fill) layers in drawing order, in the local frame.

    Args:
        attributes: the species' attributes.
        colour: callable name -> RGB (lets the caller jitter colours per image).
    """
    a = attributes
    wing_rgb, belly_rgb = colour(a.wing_colour), colour(a.belly_colour)
    dark = colour("black")
    legs = [np.array([[x - 0.03, 0.5], [x + 0.03, 0.5], [x + 0.03, 0.95], [x - 0.03, 0.95]])
            for x in (0.08, -0.2)]
    head_front = HEAD_CENTRE + 0.85 * HEAD_RADIUS * np.array([math.cos(BILL_ANGLE), math.sin(BILL_ANGLE)])
    eye = HEAD_CENTRE + np.array([0.4, 0.0]) * HEAD_RADIUS
    wing_centre = (-0.15, -0.12)
    layers = [("legs", leg, colour("grey")) for leg in legs]
    layers += [
        ("tail", _tail(TAIL_LENGTH[a.tail_length]), _shade(wing_rgb, 0.75)),
        ("body", _ellipse((0, 0), 1.0, 0.62, BODY_TILT), _shade(wing_rgb, 0.85)),
        ("belly", _ellipse((0, 0), 1.0, 0.62, BODY_TILT, -0.2, math.pi + 0.2), belly_rgb),
        ("wing", _wing(wing_centre, 0.8, 0.38), wing_rgb),
    ]
    if a.wing_bars:
        layers += [("bars", bar, colour("white")) for bar in _wing_bars(wing_centre, 0.8, 0.38)]
    layers += [
        ("head", _ellipse(HEAD_CENTRE, HEAD_RADIUS, HEAD_RADIUS), belly_rgb),
        ("crown", _ellipse(HEAD_CENTRE, HEAD_RADIUS, HEAD_RADIUS, 0, math.pi - 0.1, 2 * math.pi - 0.35),
         colour(a.crown_colour)),
    ]
    if a.eye_ring:
        layers += [("eye_ring", _ellipse(eye, 0.17, 0.17, count=16), dark),
                   ("eye_ring", _ellipse(eye, 0.145, 0.145, count=16), colour("white"))]
    layers.append(("eye", _ellipse(eye, 0.075, 0.075, count=12), dark))
    bill = _rotate(_bill(a.bill_shape, a.bill_length), BILL_ANGLE) + head_front
    layers.append(("bill", bill, colour(a.bill_colour)))
    return layers


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in rgb)


def _box(points: np.ndarray, size: int) -> tuple[float, float, float, float]:
    low = [round(float(v), 1) for v in np.clip(points.min(axis=0), 0, size)]
    high = [round(float(v), 1) for v in np.clip(points.max(axis=0), 0, size)]
    return low[0], low[1], round(high[0] - low[0], 1), round(high[1] - low[1], 1)


def _place(layers, size: int, rng: np.random.Generator):
    """Random flip, rotation, scale and position; returns the layers in image pixels."""
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = float(rng.uniform(-0.26, 0.26))  # about ±15°
    scale = size * float(rng.uniform(0.15, 0.22))  # pixels per body unit
    moved = [(part, _rotate(points * (flip, 1.0), angle) * scale, fill) for part, points, fill in layers]
    everything = np.concatenate([points for _, points, _ in moved])
    low, high = everything.min(axis=0), everything.max(axis=0)
    margin = 0.03 * size
    shrink = min(1.0, 0.999 * (size - 2 * margin) / float((high - low).max()))
    low, high = low * shrink, high * shrink
    offset = np.array([rng.uniform(margin - low[i], max(margin - low[i], size - margin - high[i]))
                       for i in range(2)])
    return [(part, points * shrink + offset, fill) for part, points, fill in moved], shrink * scale


def _background(size: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    scene = list(SCENES)[int(rng.integers(len(SCENES)))]
    top, bottom = (np.array(c, dtype=np.float64) for c in SCENES[scene])
    cells = 6
    ramp = np.linspace(0.0, 1.0, cells)[:, None, None]  # (cells, 1, 1)
    brightness = rng.normal(0.0, 22.0, (cells, cells, 1))  # blotches of light and shade
    tint = rng.normal(0.0, 7.0, (cells, cells, 3))
    grid = top * (1 - ramp) + bottom * ramp + brightness + tint  # (cells, cells, 3)
    small = Image.fromarray(grid.clip(0, 255).astype(np.uint8), "RGB")
    smooth = small.resize((32, 32), Image.BICUBIC)  # two steps: no visible grid of cells
    return smooth.resize((size, size), Image.BILINEAR), scene


def _draw_perch(draw: ImageDraw.ImageDraw, feet: np.ndarray, unit: float, size: int, rng) -> None:
    angle = float(rng.uniform(-0.25, 0.25))
    direction = np.array([math.cos(angle), math.sin(angle)]) * size * 2
    start, end = feet - direction, feet + direction
    brown = tuple(int(c) for c in np.clip(np.array(COLOURS["brown"]) * rng.uniform(0.5, 0.9), 0, 255))
    draw.line([tuple(start), tuple(end)], fill=brown, width=max(2, int(0.22 * unit)))


def _occluder(draw: ImageDraw.ImageDraw, bird: np.ndarray, unit: float, rng) -> np.ndarray:
    """A leaf cluster over a random point of the bird; returns its outline points (pixels)."""
    centre = bird[int(rng.integers(len(bird)))] + rng.normal(0, 0.3 * unit, 2)
    leaves = []
    for _ in range(int(rng.integers(2, 5))):
        leaf = _ellipse(centre + rng.normal(0, 0.35 * unit, 2), 0.5 * unit, 0.2 * unit,
                        float(rng.uniform(0, math.pi)), count=16)
        green = tuple(int(c) for c in np.clip(np.array(COLOURS["green"]) * rng.uniform(0.5, 1.1), 0, 255))
        draw.polygon([tuple(p) for p in leaf], fill=green, outline=_shade(green, 0.6))
        leaves.append(leaf)
    return np.concatenate(leaves)


def _overlap(box, other) -> float:
    """Fraction of ``box``'s area covered by ``other`` (both x, y, w, h)."""
    width = min(box[0] + box[2], other[0] + other[2]) - max(box[0], other[0])
    height = min(box[1] + box[3], other[1] + other[3]) - max(box[1], other[1])
    return max(width, 0) * max(height, 0) / max(box[2] * box[3], 1e-6)


def _light(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    mean = pixels.mean()
    pixels = (pixels - mean) * float(rng.uniform(0.8, 1.2)) + mean * float(rng.uniform(0.75, 1.2))
    pixels += rng.normal(0.0, 2.5, pixels.shape).astype(np.float32)
    return pixels.clip(0, 255).astype(np.uint8)


def draw_bird(attributes: Attributes, rng: np.random.Generator, image_size: int = 128,
              grayscale: bool = False) -> Drawing:
    """Render one picture of a bird with ``attributes``.

    Args:
        attributes: the species' visual attributes.
        rng: the image's own generator (all randomness comes from it).
        image_size: side of the square picture in pixels (default 128).
        grayscale: return a single-channel ``L`` image, as ~1 % of real CUB photos are.
    """
    size = image_size * SUPERSAMPLE
    jitter = {name: np.array(rgb) + rng.normal(0.0, 9.0, 3) for name, rgb in COLOURS.items()}

    def colour(name: str) -> tuple[int, int, int]:
        return tuple(int(c) for c in np.clip(jitter[name], 0, 255))

    layers, unit = _place(bird_shapes(attributes, colour), size, rng)
    image, scene = _background(size, rng)
    draw = ImageDraw.Draw(image)
    if scene != "sky" or rng.random() < 0.5:
        feet = np.concatenate([points for part, points, _ in layers if part == "legs"])
        _draw_perch(draw, feet[feet[:, 1].argmax()], unit, size, rng)
    for _, points, fill in layers:
        draw.polygon([tuple(p) for p in points], fill=fill, outline=_shade(fill, 0.6))
    bird = np.concatenate([points for _, points, _ in layers])
    boxes = {part: _box(np.concatenate([p for name, p, _ in layers if name == part]) / SUPERSAMPLE, image_size)
             for part in PARTS}
    hidden: set[str] = set()
    if rng.random() < 0.12:
        leaf_box = _box(_occluder(draw, bird, unit, rng) / SUPERSAMPLE, image_size)
        hidden = {part for part, box in boxes.items() if _overlap(box, leaf_box) > 0.4}
    image = Image.fromarray(_light(image.reduce(SUPERSAMPLE), rng), "RGB")
    if grayscale:
        image = image.convert("L")
    return Drawing(image, _box(bird / SUPERSAMPLE, image_size), boxes, hidden)
