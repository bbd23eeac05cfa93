"""Which species a caption is true of: consistency labels from what each caption states.

A CUB caption names 2-5 attributes ("a bird with a long orange beak and grey wings"), so it often
fits several species: counted on the synthetic set, 45% of same-family (caption, other species)
pairs are consistent with the caption. Class relevance calls all of them wrong, and training that
treats every other species as a negative teaches the model to separate birds the caption cannot
tell apart. Here a caption is *consistent* with a species when that species has every attribute
the caption states; it *contradicts* the species otherwise.

What a caption states comes from ``mmai_extras/caption_attributes.jsonl`` (written by
:func:`mmai.data.synth.synthesize`; :func:`mmai.data.shards.write_shards` copies it into the shard
folder as :data:`TABLE_FILE`, as bit masks over :data:`NAMES`), and what a species has from the
manifest's ``species`` annotations (``species_attributes.json``). Real CUB has neither: its captions
are free text and its 312 attribute annotations are per image and noisy, so there the tables are
absent, :func:`load_caption_table` returns None, and evaluation and training fall back to class
labels (a caption is consistent with its own species only).

Used for: consistent Recall@K and the perfect attribute reader's ceiling (evaluation), true
negatives for the re-ranker (a negative pair must contradict), and positives that are not
negatives for stage 1 (a consistent other species is neither pulled nor pushed).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from mmai.data.synth.captions import CAPTION_ATTRIBUTES as NAMES

#: The table of caption masks in a shard folder: ``{"names": NAMES, "masks": {image_id: [mask, ...]}}``.
TABLE_FILE = "caption_attributes.json"
#: A caption whose statements are unknown (no table, or more captions than the table lists).
UNKNOWN = -1


def attribute_mask(names: Sequence[str]) -> int:
    """The bit mask of attribute ``names`` (bit ``i`` = :data:`NAMES` ``[i]``)."""
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"attribute_mask: unknown attribute name(s) {unknown}; known: {list(NAMES)}")
    return sum(1 << NAMES.index(name) for name in set(names))


def write_caption_table(extras_root: Path | None, out: Path) -> bool:
    """Copy ``caption_attributes.jsonl`` of a synthetic CUB's extras into ``out/TABLE_FILE`` as
    masks; returns False (and writes nothing) when the extras have no such file (real CUB)."""
    from mmai.io import atomic_write_text

    source = None if extras_root is None else Path(extras_root) / "caption_attributes.jsonl"
    if source is None or not source.is_file():
        return False
    masks = {}
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            masks[str(int(entry["image_id"]))] = [attribute_mask(names) for names in entry["attributes"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}:{number}: not a caption attribute record ({error}); rewrite the data set "
                             "with `mmai data synth`") from error
    atomic_write_text(Path(out) / TABLE_FILE, json.dumps({"names": list(NAMES), "masks": masks}) + "\n")
    return True


def load_caption_table(shard_dir: str | Path | None) -> dict[int, list[int]] | None:
    """``image_id -> [mask of caption j]`` from a shard folder, or None where there is none."""
    path = None if shard_dir is None else Path(shard_dir) / TABLE_FILE
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable caption attribute table ({error}); write the shards again "
                         "(`mmai data shards`)") from error
    if list(data.get("names", [])) != list(NAMES):
        raise ValueError(f"{path}: attribute names {data.get('names')} differ from this MMAI's {list(NAMES)}; "
                         "write the shards again (`mmai data shards`)")
    return {int(image_id): list(masks) for image_id, masks in data["masks"].items()}


def caption_masks(text_image_ids, table: dict[int, list[int]] | None) -> np.ndarray:
    """``(Nt,)`` int64 mask of each caption row; captions of one image must come in the order of
    its caption file (the shards', the evaluation set's and the feature cache's order);
    :data:`UNKNOWN` where the table has no entry."""
    ids = np.asarray(text_image_ids).astype(np.int64)
    out = np.full(ids.shape[0], UNKNOWN, dtype=np.int64)
    if table is None:
        return out
    seen: dict[int, int] = {}
    for row, image_id in enumerate(ids.tolist()):
        j = seen.get(image_id, 0)
        seen[image_id] = j + 1
        masks = table.get(image_id)
        if masks is not None and j < len(masks):
            out[row] = masks[j]
    return out


@dataclasses.dataclass(frozen=True)
class SpeciesTable:
    """Pairwise attribute agreement of the species of one data set.

    Attributes:
        class_ids: ``(C,)`` the known class ids, sorted.
        agree: ``(C, C)`` int64: bit ``i`` set where the two species have equal :data:`NAMES` ``[i]``.
    """

    class_ids: np.ndarray
    agree: np.ndarray

    @classmethod
    def from_species(cls, species: Sequence[dict]) -> "SpeciesTable | None":
        """From the manifest's ``species`` (``class_id``, ``attributes``); None when empty."""
        entries = [entry for entry in species if entry.get("attributes")]
        if not entries:
            return None
        entries.sort(key=lambda entry: int(entry["class_id"]))
        values = np.array([[str(entry["attributes"].get(name)) for name in NAMES] for entry in entries])  # (C, 9)
        equal = values[:, None, :] == values[None, :, :]  # (C, C, 9)
        agree = (equal * (1 << np.arange(len(NAMES)))).sum(axis=2).astype(np.int64)
        return cls(np.array([int(entry["class_id"]) for entry in entries], dtype=np.int64), agree)

    def rows(self, class_ids) -> np.ndarray:
        """Row of each class id in :attr:`agree`, -1 for unknown classes."""
        class_ids = np.asarray(class_ids).astype(np.int64)
        rows = np.searchsorted(self.class_ids, class_ids).clip(0, len(self.class_ids) - 1)
        return np.where(self.class_ids[rows] == class_ids, rows, -1)

    def consistent(self, masks, text_class_ids, candidate_class_ids) -> np.ndarray:
        """``(Nt, M)`` bool: caption ``t`` (its mask and its image's class) is true of candidate
        class ``m``. A caption with an :data:`UNKNOWN` mask, or a class the table lacks, is
        consistent with its own class only."""
        masks = np.asarray(masks).astype(np.int64)
        query, candidate = self.rows(text_class_ids), self.rows(candidate_class_ids)
        agree = self.agree[np.maximum(query, 0)[:, None], np.maximum(candidate, 0)[None, :]]  # (Nt, M)
        known = (masks >= 0)[:, None] & (query >= 0)[:, None] & (candidate >= 0)[None, :]
        same = np.asarray(text_class_ids)[:, None] == np.asarray(candidate_class_ids)[None, :]
        return np.where(known, (masks[:, None] & ~agree) == 0, same) | same

    def consistent_torch(self, masks, text_class_ids, candidate_class_ids):
        """:meth:`consistent` for torch tensors (same device as the inputs)."""
        import torch

        result = self.consistent(masks.cpu().numpy(), text_class_ids.cpu().numpy(), candidate_class_ids.cpu().numpy())
        return torch.from_numpy(result).to(masks.device)


def consistent_hits(rankings: np.ndarray, consistent: np.ndarray, gallery_class_ids) -> np.ndarray:
    """``(Nt, R)`` bool: ranked gallery position ``rankings[t, r]`` is of a class caption ``t`` is
    consistent with (``consistent`` is ``(Nt, C)`` over the sorted unique ``gallery_class_ids``)."""
    classes = np.unique(np.asarray(gallery_class_ids))
    column = np.searchsorted(classes, np.asarray(gallery_class_ids))  # (Ni,) gallery row -> class column
    ranked = np.maximum(rankings, 0)
    hits = np.take_along_axis(consistent, column[ranked], axis=1)
    return hits & (rankings >= 0)


def random_recall(relevant, total, k: int) -> np.ndarray:
    """Per query, the chance that a uniformly random order of ``total`` items puts at least one of
    its ``relevant`` items in the top ``k``: ``1 - C(total - relevant, k) / C(total, k)``."""
    return np.array([1.0 - (math.comb(int(n - r), k) / math.comb(int(n), k) if n >= k else 0.0) if r > 0 else 0.0
                     for r, n in zip(np.asarray(relevant), np.asarray(total))])


def chance_consistent(consistent: np.ndarray, gallery_class_ids, ks: Sequence[int]) -> dict[int, float]:
    """Consistent Recall@k of a random ranking of the gallery (the chance row)."""
    _, per_class = np.unique(np.asarray(gallery_class_ids), return_counts=True)
    n = consistent.astype(np.int64) @ per_class
    total = np.full(n.shape, int(per_class.sum()))
    return {int(k): float(random_recall(n, total, k).mean()) for k in ks}


def reader_ceiling(consistent: np.ndarray, text_class_ids, gallery_class_ids, ks: Sequence[int]) -> dict[int, float]:
    """Class Recall@k of a *perfect attribute reader*: it ranks every image of a consistent species
    above every other image, in random order among them (it knows exactly what the caption states
    and nothing more). Expected over that order, per caption: ``1 - C(n - own, k) / C(n, k)`` with
    ``n`` consistent images of which ``own`` are of the caption's species; averaged over captions.
    ``consistent`` is ``(Nt, C)`` over the sorted unique ``gallery_class_ids``."""
    classes, per_class = np.unique(np.asarray(gallery_class_ids), return_counts=True)
    n = consistent.astype(np.int64) @ per_class  # (Nt,) consistent images
    own = per_class[np.searchsorted(classes, np.asarray(text_class_ids))]  # (Nt,)
    return {int(k): float(random_recall(own, n, k).mean()) for k in ks}
