"""The CUB-200-2011 (Wah et al., 2011) and caption-release (Reed et al., CVPR 2016) file layout.

Plans which image belongs to which class and split, and writes the plain-text tables of both
archives exactly as the real ones are laid out, so :mod:`mmai.data.cub` reads synthetic and real
data alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mmai.data.synth.species import Species

CUB_DIR = "CUB_200_2011"
CAPTIONS_DIR = "cvpr2016_cub"
EXTRAS_DIR = "mmai_extras"


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    """One image to synthesise: ids, file stem (``Name_0001_1``) and CUB train/test flag."""

    image_id: int
    class_id: int
    index_in_class: int
    class_dir: str
    stem: str
    is_train: bool

    @property
    def relpath(self) -> str:
        """``NNN.Species/Name_0001_1`` without extension (the image, caption and audio key)."""
        return f"{self.class_dir}/{self.stem}"


def images_per_class(classes: int, images: int) -> list[int]:
    """``images`` spread over ``classes`` as evenly as possible (the first ones get the remainder)."""
    base, extra = divmod(images, classes)
    return [base + (1 if index < extra else 0) for index in range(classes)]


def plan_images(species: list[Species], images: int, seed: int = 0) -> list[PlannedImage]:
    """Every image in CUB order (class, then index); about half of each class is ``is_train``."""
    rng = np.random.default_rng([seed, 0x5B117])
    planned = []
    image_id = 1
    for s, count in zip(species, images_per_class(len(species), images)):
        train = set(rng.permutation(count)[: (count + int(rng.integers(2))) // 2].tolist())
        for index in range(count):
            stem = f"{s.name}_{index + 1:04d}_{image_id}"
            planned.append(PlannedImage(image_id, s.class_id, index + 1, s.class_dir, stem, index in train))
            image_id += 1
    return planned


def class_splits(species: list[Species], seed: int = 0) -> dict[str, list[str]]:
    """Zero-shot class split of the caption release: half train, a quarter val, the rest test.

    Classes are assigned at random (seeded), so one-attribute partners often straddle splits, as
    in real CUB. Every split has at least one class (``classes >= 4``).
    """
    rng = np.random.default_rng([seed, 0xC1A55])
    classes = len(species)
    train_count, val_count = classes // 2, max(1, classes // 4)
    order = rng.permutation(classes)
    names = [s.class_dir for s in species]
    split = {
        "train": sorted(names[i] for i in order[:train_count]),
        "val": sorted(names[i] for i in order[train_count: train_count + val_count]),
        "test": sorted(names[i] for i in order[train_count + val_count:]),
    }
    split["trainval"] = sorted(split["train"] + split["val"])
    return split


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_cub_tables(root: Path, species: list[Species], planned: list[PlannedImage]) -> None:
    """``images.txt``, ``image_class_labels.txt``, ``classes.txt``, ``train_test_split.txt``."""
    cub = root / CUB_DIR
    _write_lines(cub / "images.txt", (f"{p.image_id} {p.relpath}.jpg" for p in planned))
    _write_lines(cub / "image_class_labels.txt", (f"{p.image_id} {p.class_id}" for p in planned))
    _write_lines(cub / "classes.txt", (f"{s.class_id} {s.class_dir}" for s in species))
    _write_lines(cub / "train_test_split.txt", (f"{p.image_id} {int(p.is_train)}" for p in planned))


def write_class_lists(root: Path, splits: dict[str, list[str]]) -> None:
    """``trainclasses.txt``, ``valclasses.txt``, ``testclasses.txt``, ``trainvalclasses.txt``."""
    for name, class_dirs in splits.items():
        _write_lines(root / CAPTIONS_DIR / f"{name}classes.txt", class_dirs)


def _box_text(box) -> str:
    return " ".join(f"{value:.1f}" for value in box)


def write_boxes(root: Path, boxes: dict[int, tuple], parts: dict[int, dict[str, tuple]]) -> None:
    """``bounding_boxes.txt`` (whole bird) and ``mmai_extras/part_boxes.txt``, by image id."""
    _write_lines(root / CUB_DIR / "bounding_boxes.txt",
                 (f"{image_id} {_box_text(boxes[image_id])}" for image_id in sorted(boxes)))
    _write_lines(root / EXTRAS_DIR / "part_boxes.txt",
                 (f"{image_id} {part} {_box_text(box)}"
                  for image_id in sorted(parts) for part, box in parts[image_id].items()))
