"""The CUB-200-2011 (Wah et al., 2011) and caption-release (Reed et al., CVPR 2016) file layout.

Plans which image belongs to which class and split, and writes the plain-text tables of both
archives exactly as the real ones are laid out, so :mod:`mmai.data.cub` reads synthetic and real
data alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mmai.data.synth.species import Species, swap_partners

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


SPLITS = ("train", "val", "test")


def class_splits(species: list[Species], seed: int = 0) -> dict[str, list[str]]:
    """Zero-shot class split of the caption release, by whole families: about half of the classes
    train, a quarter val, the rest test.

    A family (a founder and its variants, :mod:`mmai.data.synth.species`) never straddles two
    splits, so a zero-shot split never holds a species whose one-attribute or swap partner was
    trained on. Families that hold a swap pair (:func:`~mmai.data.synth.species.swap_partners`)
    are stratified: when there are ``n >= 2`` of them, val and test each get at least one, and
    about ``round(n * target / classes)`` of them. Placement: families are shuffled (seeded),
    swap families first, then the others, each largest first into the split furthest below its
    class target (``classes // 2`` train, ``max(1, classes // 4)`` val, the rest test), every
    split getting at least one family (build_species makes at least three); then single moves
    and exchanges of families between splits are applied while they reduce the sum of the
    distances of the class counts and swap-family counts from their targets, never emptying a
    split nor taking the last swap family out of val or test. Deterministic in ``seed``.

    Real CUB keeps the caption release's own class lists (``mmai.data.cub`` reads them as they
    are); this rule is only for the synthetic data.

    Raises:
        ValueError: fewer than three families (a split would be empty).
    """
    rng = np.random.default_rng([seed, 0xC1A55])
    classes = len(species)
    families: dict[int, list[Species]] = {}
    for s in species:
        families.setdefault(s.family, []).append(s)
    if len(families) < 3:
        raise ValueError(f"class_splits: {len(families)} families; train, val and test need one each")
    keys = sorted(families)
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    size = {f: len(families[f]) for f in keys}
    targets = {"train": classes // 2, "val": max(1, classes // 4)}
    targets["test"] = classes - targets["train"] - targets["val"]
    partners = swap_partners(species)
    family_of = {s.class_id: s.family for s in species}
    swap = {f: int(any(family_of[p] == f for s in families[f] for p in partners[s.class_id])) for f in keys}
    n = sum(swap.values())
    stratify = n >= 2
    quota = {name: max(1, round(n * targets[name] / classes)) if stratify else 0 for name in ("val", "test")}
    quota["train"] = n - quota["val"] - quota["test"] if stratify else 0
    split_of: dict[int, str] = {}
    count = dict.fromkeys(SPLITS, 0)
    swaps = dict.fromkeys(SPLITS, 0)

    def put(family: int, name: str) -> None:
        split_of[family] = name
        count[name] += size[family]
        swaps[name] += swap[family]

    def furthest_below(allowed) -> str:
        return max(allowed, key=lambda name: targets[name] - count[name])  # first of ties: train, val, test

    by_size = sorted(shuffled, key=lambda f: (-swap[f] if stratify else 0, -size[f]))  # stable
    for position, family in enumerate(by_size):
        if stratify and swap[family]:
            put(family, furthest_below([name for name in SPLITS if swaps[name] < quota[name]]))
            continue
        empty = [name for name in SPLITS if not count[name]]
        put(family, furthest_below(empty if len(by_size) - position <= len(empty) else SPLITS))

    def cost(counts: dict[str, int], swap_counts: dict[str, int]) -> int:
        return sum(abs(counts[name] - targets[name]) + abs(swap_counts[name] - quota[name]) for name in SPLITS)

    def allowed(counts: dict[str, int], swap_counts: dict[str, int]) -> bool:
        return all(counts.values()) and (not stratify or (swap_counts["val"] >= 1 and swap_counts["test"] >= 1))

    def after(changes: list[tuple[int, str]]):
        counts, swap_counts = dict(count), dict(swaps)
        for family, name in changes:
            counts[split_of[family]] -= size[family]
            swap_counts[split_of[family]] -= swap[family]
            counts[name] += size[family]
            swap_counts[name] += swap[family]
        return counts, swap_counts

    while True:  # local search: each step strictly lowers an integer cost, so it ends
        best, best_cost = None, cost(count, swaps)
        for i, family in enumerate(shuffled):
            options = [[(family, name)] for name in SPLITS if name != split_of[family]]
            options += [[(family, split_of[other]), (other, split_of[family])] for other in shuffled[i + 1:]
                        if split_of[other] != split_of[family]]
            for changes in options:
                counts, swap_counts = after(changes)
                if allowed(counts, swap_counts) and cost(counts, swap_counts) < best_cost:
                    best, best_cost = changes, cost(counts, swap_counts)
        if best is None:
            break
        for family, name in best:
            old = split_of[family]
            count[old] -= size[family]
            swaps[old] -= swap[family]
            put(family, name)
    split = {name: sorted(s.class_dir for f in keys if split_of[f] == name for s in families[f]) for name in SPLITS}
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
