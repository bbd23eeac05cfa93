"""Features of locked towers, computed once per sample and stored at the lock boundary.

With Locked-image Tuning (LiT, Zhai et al., CVPR 2022) only the projections above a locked tower
train, so the tower's output for a sample never changes: it is computed once, stored, and every
training and validation epoch reads it back (an epoch takes seconds instead of re-running the
towers). MMAI caches the pooled features of both stage-1 towers when both are fully locked:

* one image feature ``(Dv,)`` per image, from the evaluation transform (resize + centre crop).
  No augmented views are cached: with the tower locked and only a linear (or small MLP)
  projection training, random crops and flips of 128-px synthetic birds mostly move the feature
  along directions the projection cannot use, while each extra view multiplies the caching
  cost; LiT's own recipe likewise trains on precomputed single-view features;
* one text feature ``(Dt,)`` for every caption of every image (all ten), so training draws a
  random caption per image and step as the streaming pipeline does.

The fusion re-ranker (stage 2) reads the towers' token states, not their pooled features, so its
cache (``stage2``) also holds each image's patch tokens ``(N, Dp)`` and each caption's token
states ``(L, Dt)`` with their attention mask, in float16 (:data:`IMAGE_EXTRAS`,
:data:`TEXT_EXTRAS`): ~44 KB per 224-px image (196 x 112) and ~30 KB per 40-token caption (40 x
384), e.g. 0.2 GB for the demo's 600 training images and 6,000 captions.

A cache file belongs to exactly one (tower weights, preprocessing, split shards) combination: its
key hashes the towers' weights, the image size, the token limit, the tokenizer, and the sha256s
the shard manifest records for the split. A file whose key differs (other weights, rewritten
shards) is stale and a file that fails to load or whose checksum does not match is corrupt: both
are rebuilt, never used (:func:`load_features` raises :class:`StaleCache` / :class:`CorruptCache`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import IterableDataset

from mmai.io import atomic_write

FORMAT_VERSION = 2  # 2: optional stage-2 fields; checksum over the sorted field names
TENSOR_FIELDS = ("image_ids", "class_ids", "image_features", "text_image_ids", "text_features")
#: Stage-2 fields (optional): per image row / per caption row.
IMAGE_EXTRAS = ("image_patches", "part_patches")  # part_patches: grounding targets, attached at run time, never saved
TEXT_EXTRAS = ("text_tokens", "attention_mask", "swapped_tokens", "swapped_mask")


class StaleCache(Exception):
    """The cache file was written for other weights, preprocessing or shards."""


class CorruptCache(Exception):
    """The cache file cannot be read, or its contents do not match their checksum."""


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes and values): changes with any weight."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(*, vision: str, text: str, image_size: int, max_length: int, tokenizer: str,
              mean: tuple[float, ...], std: tuple[float, ...], split: str, shard_sha256s: list[str],
              stage2: bool = False, swapped: bool = False) -> str:
    """The key a cache file must carry to be used (see the module docstring)."""
    fields = {"format": FORMAT_VERSION, "vision": vision, "text": text, "image_size": int(image_size),
              "max_length": int(max_length), "tokenizer": tokenizer, "mean": [float(m) for m in mean],
              "std": [float(s) for s in std], "split": split, "shards": list(shard_sha256s)}
    if stage2:
        fields["stage2"] = True
    if swapped:
        fields["swapped"] = True
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class SplitFeatures:
    """The cached features of one split; image rows sorted by id, captions grouped by image.

    Attributes:
        image_ids, class_ids: ``(N,)`` long.
        image_features: ``(N, Dv)`` float32 pooled features of the vision tower.
        text_image_ids: ``(Nt,)`` long, the image of each caption, in image-row order.
        text_features: ``(Nt, Dt)`` float32 pooled features of the text tower.
        extras: stage-2 fields, empty for a stage-1 cache: ``image_patches (N, P, Dp)`` float16,
            ``text_tokens (Nt, L, Dt)`` float16 and ``attention_mask (Nt, L)`` bool.
    """

    image_ids: torch.Tensor
    class_ids: torch.Tensor
    image_features: torch.Tensor
    text_image_ids: torch.Tensor
    text_features: torch.Tensor
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_rows(cls, image_ids, class_ids, image_features, text_image_ids, text_features,
                  **extras: torch.Tensor) -> "SplitFeatures":
        """Sort gathered rows (any rank order) by image id, keeping each image's caption order."""
        order = torch.argsort(image_ids, stable=True)
        text_order = torch.argsort(text_image_ids, stable=True)
        unknown = set(extras) - set(IMAGE_EXTRAS) - set(TEXT_EXTRAS)
        if unknown:
            raise ValueError(f"SplitFeatures: unknown extra field(s) {sorted(unknown)}")
        sorted_extras = {name: value[order if name in IMAGE_EXTRAS else text_order] for name, value in extras.items()}
        features = cls(image_ids[order].long(), class_ids[order].long(), image_features[order].float(),
                       text_image_ids[text_order].long(), text_features[text_order].float(), sorted_extras)
        features.validate()
        return features

    def stage1(self) -> "SplitFeatures":
        """The same rows without the stage-2 fields (what a bi-encoder trains on)."""
        return dataclasses.replace(self, extras={})

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored field by name (the extras included)."""
        return {**{name: getattr(self, name) for name in TENSOR_FIELDS}, **self.extras}

    def validate(self) -> None:
        """Raise :class:`CorruptCache` unless rows are consistent (unique images, captions of known images)."""
        n = self.image_ids.shape[0]
        if not (self.class_ids.shape[0] == self.image_features.shape[0] == n
                and self.text_image_ids.shape[0] == self.text_features.shape[0]):
            raise CorruptCache("row counts of the cached fields differ")
        if torch.unique(self.image_ids).numel() != n:
            raise CorruptCache("an image appears twice")
        if not bool(torch.isin(self.text_image_ids, self.image_ids).all()):
            raise CorruptCache("a caption belongs to no cached image")
        for name, value in self.extras.items():
            rows = n if name in IMAGE_EXTRAS else self.text_image_ids.shape[0]
            if value.shape[0] != rows:
                raise CorruptCache(f"the cached {name} has {value.shape[0]} rows, expected {rows}")

    @functools.cached_property
    def caption_start(self) -> torch.Tensor:
        """``(N,)`` first caption row of each image row (computed once: the fields never change)."""
        counts = self.caption_count
        return torch.cumsum(counts, 0) - counts

    @functools.cached_property
    def caption_count(self) -> torch.Tensor:
        """``(N,)`` number of captions of each image row."""
        rows = torch.searchsorted(self.image_ids, self.text_image_ids)
        return torch.bincount(rows, minlength=self.image_ids.shape[0])

    def rows_of(self, image_ids: torch.Tensor) -> torch.Tensor:
        """Rows of these image ids; raises :class:`StaleCache` naming an id the cache lacks."""
        ids = image_ids.cpu().long()
        rows = torch.searchsorted(self.image_ids, ids).clamp(max=max(0, self.image_ids.shape[0] - 1))
        missing = self.image_ids[rows] != ids
        if bool(missing.any()):
            raise StaleCache(f"image id {int(ids[missing][0])} is not in the feature cache")
        return rows

    def lookup(self, batch: dict) -> dict[str, torch.Tensor]:
        """``image_features`` and ``text_features`` of an evaluation batch (all captions of each
        image, in order), on the batch's device.

        Raises:
            StaleCache: an image is not cached, or its caption count differs from the cache's.
        """
        rows = self.rows_of(batch["image_id"])  # (B,)
        owner = batch["caption_owner"].cpu()  # (Bt,)
        per_image = torch.bincount(owner, minlength=rows.shape[0])  # (B,)
        if not torch.equal(per_image, self.caption_count[rows]):
            raise StaleCache("an image's caption count differs from the feature cache's")
        position = torch.arange(owner.shape[0]) - (torch.cumsum(per_image, 0) - per_image)[owner]  # (Bt,)
        text_rows = self.caption_start[rows][owner] + position  # (Bt,)
        device = batch["image_id"].device
        found = {"image_features": self.image_features[rows].to(device),
                 "text_features": self.text_features[text_rows].to(device)}
        for name, value in self.extras.items():
            found[name] = value[rows if name in IMAGE_EXTRAS else text_rows].to(device)
        return found

    def save(self, path: Path, key: str) -> None:
        """Write atomically (:func:`mmai.io.atomic_write`: temporary file, fsync, rename, fsync of the folder)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.cpu().contiguous() for name, value in self.tensors.items()}
        payload = {"format": FORMAT_VERSION, "key": key, "checksum": _checksum(tensors), "tensors": tensors}
        atomic_write(path, lambda handle: torch.save(payload, handle))


def load_features(path: Path, key: str) -> SplitFeatures:
    """Read a cache file written for ``key``.

    Raises:
        FileNotFoundError: no such file.
        StaleCache: written for another key (other weights, preprocessing or shards).
        CorruptCache: unreadable, or the contents do not match the stored checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        tensors = payload["tensors"]
        stored_key, checksum, version = payload["key"], payload["checksum"], payload["format"]
    except Exception as error:  # noqa: BLE001 - any failure to read is a corrupt file
        raise CorruptCache(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    if version != FORMAT_VERSION or stored_key != key:
        raise StaleCache(f"{path}: written for other tower weights, preprocessing or shards")
    allowed = set(TENSOR_FIELDS) | set(IMAGE_EXTRAS) | set(TEXT_EXTRAS)
    if (not isinstance(tensors, dict) or not set(TENSOR_FIELDS) <= set(tensors) <= allowed
            or _checksum(tensors) != checksum):
        raise CorruptCache(f"{path}: contents do not match their checksum")
    features = SplitFeatures(**{name: tensors[name] for name in TENSOR_FIELDS},
                             extras={name: tensors[name] for name in tensors if name not in TENSOR_FIELDS})
    features.validate()
    return features


class CachedTrainBatches(IterableDataset):
    """Training batches straight from the cache: an epoch is a seeded permutation of the images,
    cut into global batches (``drop_last``), each rank taking its own slice; every image comes
    with one of its captions drawn at random, as the streaming pipeline draws one.

    Args:
        features: the train split's :class:`SplitFeatures`.
        batch_size: images per rank per step.
        world_size, rank: this rank's place among the ranks.
        seed: the data seed; the epoch comes from ``epoch_fn()`` when iteration starts.
        epoch_fn: returns the current epoch (the trainer's).
    """

    def __init__(self, features: SplitFeatures, batch_size: int, world_size: int, rank: int, seed: int,
                 epoch_fn) -> None:
        self.features, self.batch_size, self.world_size, self.rank = features, batch_size, world_size, rank
        self.seed, self.epoch_fn = seed, epoch_fn
        if len(self) == 0:
            raise ValueError(f"the feature cache holds {features.image_ids.shape[0]} training images, fewer than one "
                             f"global batch ({batch_size} x {world_size} ranks): lower data.batch_size")

    def __len__(self) -> int:
        return self.features.image_ids.shape[0] // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[dict]:
        epoch = int(self.epoch_fn())
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) % (2 ** 31))
        order = torch.randperm(self.features.image_ids.shape[0], generator=generator)
        start, count = self.features.caption_start, self.features.caption_count
        for step in range(len(self)):
            first = (step * self.world_size + self.rank) * self.batch_size
            rows = order[first:first + self.batch_size]  # (B,)
            draw = torch.rand(rows.shape[0], generator=generator)
            captions = start[rows] + (draw * count[rows]).long()  # (B,)
            extras = {name: value[rows if name in IMAGE_EXTRAS else captions]
                      for name, value in self.features.extras.items()}
            yield {**extras, "image_features": self.features.image_features[rows],
                   "text_features": self.features.text_features[captions],
                   "image_id": self.features.image_ids[rows], "class_id": self.features.class_ids[rows],
                   "caption_owner": torch.arange(rows.shape[0]),
                   "is_pad": torch.zeros(rows.shape[0], dtype=torch.bool)}


# ------------------------------------------------------------------------ counterfactual twins
@dataclasses.dataclass
class TwinBank:
    """Stage-2 patch tokens of the training photos' counterfactual twins
    (:func:`mmai.data.synth.writer.render_twin`: two part colours exchanged, nothing else).

    Attributes:
        image_ids: ``(T,)`` long, the photo each twin is of.
        swapped_bits: ``(T,)`` long, the attribute mask (:func:`mmai.data.consistency.attribute_mask`) of
            the two exchanged colour attributes: a caption stating any of them contradicts the twin.
        patches: ``(T, N, Dp)`` float16 patch tokens of the locked vision tower.
    """

    image_ids: torch.Tensor
    swapped_bits: torch.Tensor
    patches: torch.Tensor

    def rows_of(self, image_ids: torch.Tensor) -> torch.Tensor:
        """``(B,)`` twin row of each image id, -1 for photos without a twin."""
        order = torch.argsort(self.image_ids)
        sorted_ids = self.image_ids[order]
        at = torch.searchsorted(sorted_ids, image_ids.cpu()).clamp(max=max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[at] == image_ids.cpu()) if len(sorted_ids) else torch.zeros_like(image_ids, dtype=torch.bool)
        return torch.where(found, order[at], torch.full_like(at, -1)).to(image_ids.device)


def read_twin_table(path: Path) -> list[dict]:
    """The records of ``mmai_extras/twins.jsonl`` (``image_id``, ``file`` relative to it, ``swapped``)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
                records.append({"image_id": int(entry["image_id"]), "file": str(entry["file"]),
                                "swapped": [str(name) for name in entry["swapped"]]})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: not a twin record ({error}); synthesise the data again") from error
    return records


@torch.no_grad()
def twin_bank(vision: nn.Module, table: Path, image_size: int, mean, std, cache_dir: Path,
              device: torch.device | str = "cpu", batch_size: int = 64, progress: bool = True) -> TwinBank:
    """The twins' patch tokens through the locked ``vision`` tower (evaluation transform, as the
    stage-2 cache), cached in ``cache_dir`` under a key of the tower's weights, the preprocessing
    and the table's bytes; a file that does not load or match is recomputed."""
    from PIL import Image
    from tqdm import tqdm

    from mmai.data.consistency import attribute_mask
    from mmai.data.pipeline import image_transform, normalize_images
    from mmai.io import atomic_write

    table = Path(table)
    key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "vision": module_fingerprint(vision),
                                     "image_size": int(image_size), "mean": [float(m) for m in mean],
                                     "std": [float(s) for s in std],
                                     "table": hashlib.sha256(table.read_bytes()).hexdigest()}).encode()).hexdigest()
    path = Path(cache_dir) / f"twins-stage2-{key[:20]}.pt"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] == key and _checksum(payload["tensors"]) == payload["checksum"]:
            return TwinBank(**payload["tensors"])
    except Exception:  # noqa: BLE001 - missing or unreadable: recompute
        pass
    records = read_twin_table(table)
    transform = image_transform(image_size, train=False)
    vision = vision.to(device).eval()
    patches = []
    for start in tqdm(range(0, len(records), batch_size), desc="caching twin photos (stage 2)", unit="batch",
                      disable=not progress):
        pixels = []
        for record in records[start:start + batch_size]:
            with Image.open(table.parent / record["file"]) as image:
                pixels.append(transform(image.convert("RGB")))
        images = normalize_images(torch.stack(pixels).to(device), mean, std)
        patches.append(vision(images).tokens.half().cpu())
    tensors = {"image_ids": torch.tensor([r["image_id"] for r in records], dtype=torch.long),
               "swapped_bits": torch.tensor([attribute_mask(r["swapped"]) for r in records], dtype=torch.long),
               "patches": torch.cat(patches) if patches else torch.zeros(0, 0, 0, dtype=torch.float16)}
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"key": key, "checksum": _checksum(tensors), "tensors": tensors}
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return TwinBank(**tensors)
