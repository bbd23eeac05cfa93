"""Reader of CUB-200-2011 (Wah et al., 2011) and its ten-captions-per-image release (Reed et al., CVPR 2016).

Real layout, as the two archives unpack::

    CUB_200_2011/images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
                 bounding_boxes.txt, images/NNN.Species/*.jpg
    cvpr2016_cub/text_c10/NNN.Species/<image stem>.txt      (ten captions per image)
                 trainclasses.txt, valclasses.txt, testclasses.txt, trainvalclasses.txt

MMAI's synthetic generator writes the same layout plus ``mmai_extras/`` (songs, part boxes,
diary), so this one reader serves both. Splits:

* ``zero-shot`` (default, the caption release's protocol): classes from ``trainclasses.txt`` /
  ``valclasses.txt`` / ``testclasses.txt`` (100/50/50 on real CUB). Where the release has only
  ``trainvalclasses.txt``, every third trainval class (sorted) is carved out as validation.
* ``standard``: images from ``train_test_split.txt``; validation is every tenth training image of
  each class (by image id), so val and test never share an image.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

SPLITS = ("train", "val", "test")
SPLIT_KINDS = ("zero-shot", "standard")
CUB_TABLES = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")
PARTS = ("bill", "head", "wing", "tail")


class CUBLayoutError(ValueError):
    """A CUB root that cannot be read; the message lists every problem with its path."""


@dataclasses.dataclass(frozen=True)
class CUBImage:
    """One image of CUB: ids are CUB's own (1-based), ``relpath`` is relative to ``images/``."""

    image_id: int
    class_id: int
    class_name: str
    relpath: str
    is_train: bool
    bbox: tuple[float, float, float, float] | None = None  # (x, y, width, height)

    @property
    def stem(self) -> str:
        """``NNN.Species/Name_0001_1`` — the key shared by the image, caption and audio files."""
        return self.relpath.rsplit(".", 1)[0]


@dataclasses.dataclass
class CUBIndex:
    """The parsed tables of a CUB root, its caption root and (if present) the MMAI extras."""

    root: Path
    captions_root: Path | None
    extras_root: Path | None
    images: list[CUBImage]
    classes: dict[int, str]
    class_split_files: dict[str, list[str]]

    def image_path(self, image: CUBImage) -> Path:
        return self.root / "images" / image.relpath

    def caption_path(self, image: CUBImage) -> Path | None:
        if self.captions_root is None:
            return None
        return self.captions_root / "text_c10" / f"{image.stem}.txt"

    def audio_path(self, image: CUBImage) -> Path | None:
        if self.extras_root is None:
            return None
        path = self.extras_root / "audio" / f"{image.stem}.wav"
        return path if path.exists() else None


def resolve_roots(cub_root: Path | str, captions_root: Path | str | None = None) -> tuple[Path, Path | None, Path | None]:
    """Find the CUB, caption and extras folders from what the user gave.

    ``cub_root`` may be ``CUB_200_2011`` itself or its parent (where the synthetic generator and
    the archives put ``CUB_200_2011/`` and ``cvpr2016_cub/`` side by side). The caption root
    defaults to a sibling or child ``cvpr2016_cub``; extras to a sibling ``mmai_extras``.
    """
    root = Path(cub_root).expanduser()
    if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
        root = root / "CUB_200_2011"
    if not root.is_dir():
        raise CUBLayoutError(f"CUB root {root} does not exist: pass the folder that holds images.txt "
                             "(CUB_200_2011/) or its parent")
    if captions_root is not None:
        captions = Path(captions_root).expanduser()
        if not (captions / "text_c10").is_dir():
            raise CUBLayoutError(f"caption root {captions} has no text_c10/ folder: pass the unpacked "
                                 "cvpr2016_cub/ folder of the caption release")
    else:
        candidates = [root.parent / "cvpr2016_cub", root / "cvpr2016_cub", root]
        captions = next((c for c in candidates if (c / "text_c10").is_dir()), None)
    extras = root.parent / "mmai_extras"
    return root, captions, extras if extras.is_dir() else None


def _read_utf8(path: Path) -> str:
    """The text of a CUB table; a file that is not UTF-8 is a CUBLayoutError naming it and the byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CUBLayoutError(f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                             f"{error.start}); re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_table(path: Path, columns: int, problems: list[str]) -> list[list[str]]:
    if not path.exists():
        problems.append(f"missing table: {path}")
        return []
    rows = []
    for number, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < columns:
            problems.append(f"{path}:{number}: expected {columns} fields, got {line!r}")
            continue
        rows.append(parts)
    return rows


def _read_class_list(path: Path) -> list[str]:
    return [line.strip() for line in _read_utf8(path).splitlines() if line.strip()]


def read_cub(cub_root: Path | str, captions_root: Path | str | None = None) -> CUBIndex:
    """Parse the CUB tables (and the caption release's class lists).

    Raises:
        CUBLayoutError: listing every missing table and malformed or inconsistent line at once.
    """
    root, captions, extras = resolve_roots(cub_root, captions_root)
    problems: list[str] = []
    paths = {row[0]: row[1] for row in _read_table(root / "images.txt", 2, problems)}
    labels = {row[0]: int(row[1]) for row in _read_table(root / "image_class_labels.txt", 2, problems)}
    classes = {int(row[0]): row[1] for row in _read_table(root / "classes.txt", 2, problems)}
    is_train = {row[0]: row[1] == "1" for row in _read_table(root / "train_test_split.txt", 2, problems)}
    boxes_path = root / "bounding_boxes.txt"
    boxes = ({row[0]: tuple(map(float, row[1:5])) for row in _read_table(boxes_path, 5, problems)}
             if boxes_path.exists() else {})
    images = []
    for key, relpath in paths.items():
        if key not in labels or key not in is_train:
            problems.append(f"image {key} ({relpath}) is in images.txt but not in "
                            f"{'image_class_labels.txt' if key not in labels else 'train_test_split.txt'}")
            continue
        if labels[key] not in classes:
            problems.append(f"image {key}: class {labels[key]} is not in classes.txt")
            continue
        images.append(CUBImage(int(key), labels[key], classes[labels[key]], relpath, is_train[key], boxes.get(key)))
    class_splits: dict[str, list[str]] = {}
    if captions is not None:
        for name in ("train", "val", "test", "trainval"):
            path = captions / f"{name}classes.txt"
            if path.exists():
                class_splits[name] = _read_class_list(path)
        unknown = {c for names in class_splits.values() for c in names} - set(classes.values())
        if unknown:
            problems.append(f"{captions}: class lists name classes not in classes.txt: {sorted(unknown)[:5]}")
    if problems:
        raise CUBLayoutError(f"cannot read CUB at {root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    images.sort(key=lambda image: image.image_id)
    return CUBIndex(root, captions, extras, images, classes, class_splits)


def zero_shot_classes(index: CUBIndex) -> dict[str, set[str]]:
    """Class names of train/val/test under the caption release's zero-shot class split."""
    lists = index.class_split_files
    if "test" not in lists or not ({"train", "val"} <= lists.keys() or "trainval" in lists):
        raise CUBLayoutError(
            f"the zero-shot split needs testclasses.txt and trainclasses.txt + valclasses.txt (or "
            f"trainvalclasses.txt) in {index.captions_root}; use --split standard for CUB's own split")
    if {"train", "val"} <= lists.keys():
        return {"train": set(lists["train"]), "val": set(lists["val"]), "test": set(lists["test"])}
    trainval = sorted(lists["trainval"])
    val = set(trainval[2::3])
    return {"train": set(trainval) - val, "val": val, "test": set(lists["test"])}


def split_images(index: CUBIndex, split: str = "zero-shot") -> dict[str, list[CUBImage]]:
    """Assign every image to train/val/test under ``split`` (see the module docstring)."""
    if split not in SPLIT_KINDS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLIT_KINDS)}")
    out: dict[str, list[CUBImage]] = {name: [] for name in SPLITS}
    if split == "zero-shot":
        by_class = zero_shot_classes(index)
        for image in index.images:
            for name in SPLITS:
                if image.class_name in by_class[name]:
                    out[name].append(image)
        return out
    seen_per_class: dict[int, int] = {}
    for image in index.images:  # sorted by image id
        if not image.is_train:
            out["test"].append(image)
            continue
        position = seen_per_class.get(image.class_id, 0)
        seen_per_class[image.class_id] = position + 1
        out["val" if position % 10 == 9 else "train"].append(image)
    return out


def clean_captions(text: str) -> list[str]:
    """The caption file's lines, stripped, blank ones dropped (the real release has strays)."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def read_captions(index: CUBIndex, image: CUBImage) -> list[str]:
    path = index.caption_path(image)
    if path is None:
        raise CUBLayoutError(f"no caption release found next to {index.root}: pass --captions-root")
    return clean_captions(path.read_text(encoding="utf-8", errors="replace"))


@dataclasses.dataclass
class Extras:
    """MMAI's side files (synthetic data only): part boxes, diary entries, species attributes."""

    part_boxes: dict[int, dict[str, tuple[float, float, float, float]]]
    episodes: dict[int, dict]
    species_attributes: dict


def read_extras(index: CUBIndex) -> Extras | None:
    """Read ``mmai_extras/`` if the root has one (see its README.md for the formats)."""
    if index.extras_root is None:
        return None
    root = index.extras_root
    parts: dict[int, dict[str, tuple[float, float, float, float]]] = {}
    if (root / "part_boxes.txt").exists():
        for line in (root / "part_boxes.txt").read_text().splitlines():
            if line.strip():
                image_id, part, *box = line.split()
                parts.setdefault(int(image_id), {})[part] = tuple(map(float, box))
    episodes: dict[int, dict] = {}
    if (root / "episodes.jsonl").exists():
        for number, line in enumerate((root / "episodes.jsonl").read_text().splitlines(), 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    episodes[int(entry["image_id"])] = entry
                except (json.JSONDecodeError, KeyError) as error:
                    raise CUBLayoutError(f"{root / 'episodes.jsonl'}:{number}: {error}") from error
    attributes = {}
    if (root / "species_attributes.json").exists():
        attributes = json.loads((root / "species_attributes.json").read_text())
    return Extras(parts, episodes, attributes)
