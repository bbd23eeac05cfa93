"""Procedural bird pictures whose fine-grained attributes are visible at 128 px.

A bird is a list of coloured polygons in a local frame (facing right, y down, body half-length
1): tail, legs, body with belly, wing with optional bars, head with crown cap, eye with optional
ring, and a bill whose outline follows its shape and length. Every point goes through one
transform (flip, small rotation, scale, position), so part boxes and the whole-bird box are
exact in the saved image. Scenes add a blurred background (sky, foliage, water, reeds, dusk),
an optional perch and lighting jitter. Drawing happens at twice the size and is box-filtered
down, which anti-aliases the thin bills and bars.

Photos of one sighting share a :class:`Look` (scene kind, perch or not, facing direction and
the individual's plumage shade), so a burst looks like one bird at one spot. A photo's
*condition* (:data:`CONDITIONS`) makes it hard: ``low_light`` darkens it strongly, washes the
colours out and adds sensor noise; ``motion_blur`` smears it along one direction (camera shake);
``distant`` draws the bird at 35-45 % of its usual scale; ``occluded`` puts leaf clusters over
one or two parts (:attr:`Drawing.hidden_parts`).
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
#: Photo conditions, as in :data:`mmai.data.synth.diary.CONDITIONS`.
CONDITIONS = ("clear", "low_light", "motion_blur", "distant", "occluded")
#: Scale of a distant bird relative to the usual one.
DISTANT_SCALE = (0.35, 0.45)
#: Motion-blur streak length as a fraction of the image side.
BLUR_LENGTH = (0.07, 0.11)
#: Low light: brightness factor, colour saturation kept, sensor noise (standard deviation, 0-255).
LOW_LIGHT_BRIGHTNESS = (0.2, 0.3)
LOW_LIGHT_SATURATION = (0.1, 0.25)
LOW_LIGHT_NOISE = (5.0, 8.0)
#: An occluded part counts as hidden when leaves cover at least this fraction of its pixels.
HIDDEN_COVERAGE = 0.5
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
        hidden_parts: parts mostly covered by an occluding leaf cluster (only when occluded).
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


@dataclasses.dataclass(frozen=True)
class Look:
    """What the photos of one sighting share.

    Args:
        scene: background kind (a key of :data:`SCENES`).
        perched: whether a perch is drawn under the feet.
        flip: -1 when the bird faces left, 1 when it faces right.
        jitter: colour name -> RGB of this individual (the named colour plus a small deviation).
    """

    scene: str
    perched: bool
    flip: float
    jitter: dict[str, np.ndarray]


def random_look(rng: np.random.Generator) -> Look:
    """A sighting's look, from the sighting's own generator."""
    jitter = {name: np.array(rgb) + rng.normal(0.0, 9.0, 3) for name, rgb in COLOURS.items()}
    scene = list(SCENES)[int(rng.integers(len(SCENES)))]
    perched = scene != "sky" or bool(rng.random() < 0.5)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    return Look(scene, perched, flip, jitter)


def _place(layers, size: int, rng: np.random.Generator, flip: float, scale_factor: float = 1.0):
    """Rotation, scale and position (and the given flip); returns the layers in image pixels."""
    angle = float(rng.uniform(-0.26, 0.26))  # about ±15°
    scale = size * float(rng.uniform(0.15, 0.22)) * scale_factor  # pixels per body unit
    moved = [(part, _rotate(points * (flip, 1.0), angle) * scale, fill) for part, points, fill in layers]
    everything = np.concatenate([points for _, points, _ in moved])
    low, high = everything.min(axis=0), everything.max(axis=0)
    margin = 0.03 * size
    shrink = min(1.0, 0.999 * (size - 2 * margin) / float((high - low).max()))
    low, high = low * shrink, high * shrink
    offset = np.array([rng.uniform(margin - low[i], max(margin - low[i], size - margin - high[i]))
                       for i in range(2)])
    return [(part, points * shrink + offset, fill) for part, points, fill in moved], shrink * scale


def _background(size: int, rng: np.random.Generator, scene: str) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float64) for c in SCENES[scene])
    cells = 6
    ramp = np.linspace(0.0, 1.0, cells)[:, None, None]  # (cells, 1, 1)
    brightness = rng.normal(0.0, 22.0, (cells, cells, 1))  # blotches of light and shade
    tint = rng.normal(0.0, 7.0, (cells, cells, 3))
    grid = top * (1 - ramp) + bottom * ramp + brightness + tint  # (cells, cells, 3)
    small = Image.fromarray(grid.clip(0, 255).astype(np.uint8), "RGB")
    smooth = small.resize((32, 32), Image.BICUBIC)  # two steps: no visible grid of cells
    return smooth.resize((size, size), Image.BILINEAR)


def _draw_perch(draw: ImageDraw.ImageDraw, feet: np.ndarray, unit: float, size: int, rng) -> None:
    angle = float(rng.uniform(-0.25, 0.25))
    direction = np.array([math.cos(angle), math.sin(angle)]) * size * 2
    start, end = feet - direction, feet + direction
    brown = tuple(int(c) for c in np.clip(np.array(COLOURS["brown"]) * rng.uniform(0.5, 0.9), 0, 255))
    draw.line([tuple(start), tuple(end)], fill=brown, width=max(2, int(0.22 * unit)))


def _leaf(draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, outline: np.ndarray, rng) -> None:
    green = tuple(int(c) for c in np.clip(np.array(COLOURS["green"]) * rng.uniform(0.5, 1.1), 0, 255))
    points = [tuple(p) for p in outline]
    draw.polygon(points, fill=green, outline=_shade(green, 0.6))
    mask.polygon(points, fill=255)


def _occlude(draw: ImageDraw.ImageDraw, layers, size: int, unit: float, rng) -> set[str]:
    """Leaf clusters over one or two random parts; returns the parts they hide.

    Each targeted part gets three crossed leaves sized to its extent (plus more while less than
    90 % of its pixels are covered); a part counts as hidden when at least
    :data:`HIDDEN_COVERAGE` of its pixels lie under leaves (the targets always do).
    """
    targets = [PARTS[i] for i in sorted(rng.choice(len(PARTS), size=int(rng.integers(1, 3)), replace=False))]
    leaves = Image.new("L", (size, size), 0)
    leaf_mask = ImageDraw.Draw(leaves)
    part_masks = {}
    for part in PARTS:
        mask = Image.new("L", (size, size), 0)
        for name, points, _ in layers:
            if name == part:
                ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
        part_masks[part] = np.asarray(mask) > 0

    def coverage(part: str) -> float:
        pixels = part_masks[part]
        return float((np.asarray(leaves)[pixels] > 0).mean()) if pixels.any() else 1.0

    for part in targets:
        points = np.concatenate([p for name, p, _ in layers if name == part])
        low, high = points.min(axis=0), points.max(axis=0)
        centre, radius = (low + high) / 2, float((high - low).max()) / 2 + 0.1 * unit
        base = float(rng.uniform(0, math.pi))
        for k in range(6):
            if k >= 3 and coverage(part) >= 0.9:
                break
            angle = base + k * math.pi / 3 + float(rng.normal(0, 0.15))
            shift = rng.normal(0, 0.1 * radius, 2)
            _leaf(draw, leaf_mask, _ellipse(centre + shift, 1.3 * radius, 0.75 * radius, angle, count=16), rng)
    return set(targets) | {part for part in PARTS if coverage(part) >= HIDDEN_COVERAGE}


def _light(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-photo exposure and contrast jitter and a little noise; ``pixels`` (H, W, 3) float."""
    mean = pixels.mean()
    pixels = (pixels - mean) * float(rng.uniform(0.8, 1.2)) + mean * float(rng.uniform(0.75, 1.2))
    pixels = pixels + rng.normal(0.0, 2.5, pixels.shape).astype(np.float32)
    return pixels.clip(0, 255)


def _motion_blur(pixels: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average of the image shifted along one direction over ``length`` pixels (edges repeated)."""
    steps = max(2, int(round(length)))
    pad = int(math.ceil(length / 2)) + 1
    height, width = pixels.shape[:2]
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    total = np.zeros_like(pixels, dtype=np.float32)
    for t in np.linspace(-length / 2, length / 2, steps):
        dx, dy = int(round(t * math.cos(angle))), int(round(t * math.sin(angle)))
        total += padded[pad + dy: pad + dy + height, pad + dx: pad + dx + width]
    return total / steps


def _low_light(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = pixels.mean(axis=2, keepdims=True)
    washed = grey + (pixels - grey) * float(rng.uniform(*LOW_LIGHT_SATURATION))
    dark = washed * float(rng.uniform(*LOW_LIGHT_BRIGHTNESS))
    return dark + rng.normal(0.0, float(rng.uniform(*LOW_LIGHT_NOISE)), pixels.shape)


def draw_bird(attributes: Attributes, rng: np.random.Generator, image_size: int = 128,
              grayscale: bool = False, condition: str = "clear", look: Look | None = None) -> Drawing:
    """Render one picture of a bird with ``attributes``.

    Args:
        attributes: the species' visual attributes.
        rng: the image's own generator (all per-photo randomness comes from it).
        image_size: side of the square picture in pixels (default 128).
        grayscale: return a single-channel ``L`` image, as ~1 % of real CUB photos are.
        condition: one of :data:`CONDITIONS` (default ``"clear"``; see the module docstring).
        look: what the photos of its sighting share (default: drawn from ``rng``).
    """
    if condition not in CONDITIONS:
        raise ValueError(f"draw_bird: condition={condition!r}; expected one of {CONDITIONS}")
    if look is None:
        look = random_look(rng)
    size = image_size * SUPERSAMPLE

    def colour(name: str) -> tuple[int, int, int]:
        return tuple(int(c) for c in np.clip(look.jitter[name], 0, 255))

    scale_factor = float(rng.uniform(*DISTANT_SCALE)) if condition == "distant" else 1.0
    layers, unit = _place(bird_shapes(attributes, colour), size, rng, look.flip, scale_factor)
    image = _background(size, rng, look.scene)
    draw = ImageDraw.Draw(image)
    if look.perched:
        feet = np.concatenate([points for part, points, _ in layers if part == "legs"])
        _draw_perch(draw, feet[feet[:, 1].argmax()], unit, size, rng)
    for _, points, fill in layers:
        draw.polygon([tuple(p) for p in points], fill=fill, outline=_shade(fill, 0.6))
    bird = np.concatenate([points for _, points, _ in layers])
    boxes = {part: _box(np.concatenate([p for name, p, _ in layers if name == part]) / SUPERSAMPLE, image_size)
             for part in PARTS}
    hidden = _occlude(draw, layers, size, unit, rng) if condition == "occluded" else set()
    pixels = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32)
    if condition == "motion_blur":
        length = image_size * float(rng.uniform(*BLUR_LENGTH))
        pixels = _motion_blur(pixels, length, float(rng.uniform(0, math.pi)))
    pixels = _light(pixels, rng)
    if condition == "low_light":
        pixels = _low_light(pixels, rng)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    if grayscale:
        image = image.convert("L")
    return Drawing(image, _box(bird / SUPERSAMPLE, image_size), boxes, hidden)
