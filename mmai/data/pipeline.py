"""Streaming CUB shards with WebDataset: the stages of the training and evaluation pipelines.

Training follows open_clip's ``get_wds_dataset``: shards → per-epoch deterministic shuffle →
split by node → split by worker → tar samples → shuffle buffer → decode → batch. Each worker
repeats its own shards endlessly (the shuffle buffer drains at every pass boundary) and the
stream is cut with ``with_epoch``, so every rank yields exactly the same number of batches (no
DDP hang when shards do not divide evenly) and ranks never share a shard within an epoch. Evaluation streams every sample exactly
once in shard order: rank ``r`` of ``W`` takes samples ``i ≡ r (mod W)``, and ranks left one short
get a padding copy flagged ``is_pad`` so that all ranks run the same number of steps.

A sample that fails to decode is skipped with a warning and counted (``CorruptCounter``); never
silently.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset
from torchvision.transforms import v2

from mmai.pretrained import load_or_explain, resolve_model_path

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 48_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CorruptCounter:
    """A process-shared count of skipped samples, and the webdataset handler that feeds it."""

    def __init__(self) -> None:
        self._value = multiprocessing.get_context("fork").Value("i", 0)

    @property
    def value(self) -> int:
        return self._value.value

    def __call__(self, error: Exception) -> bool:
        with self._value.get_lock():
            self._value.value += 1
        log.warning("skipping a corrupt sample (%d so far): %s: %s", self.value, type(error).__name__, error)
        return True  # webdataset: continue with the next sample


class SharedEpoch:
    """The epoch number, visible to dataloader workers (forked or persistent)."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = multiprocessing.get_context("fork").Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return self._value.value


def image_transform(image_size: int, train: bool) -> Callable:
    """PIL image → uint8 tensor (3, H, W). Training: random resized crop (scale 0.6–1) and flip;
    evaluation: resize + centre crop. Normalisation waits for :func:`normalize_images` on the
    device: uint8 batches cost a quarter of float32 to pass from workers to the trainer."""
    if train:
        geometry = [v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.PILToTensor(), *geometry])


def normalize_images(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 normalised, on the images' device."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t  # (B, 3, H, W)


def decode_audio(raw: bytes, num_samples: int, train: bool) -> torch.Tensor:
    """A WAV as float mono at 48 kHz, cropped (random in training) or zero-padded to ``num_samples``."""
    import soundfile

    wave, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    if rate != AUDIO_SAMPLE_RATE:
        raise ValueError(f"audio at {rate} Hz, expected {AUDIO_SAMPLE_RATE} Hz")
    wave = wave.mean(axis=1)
    if len(wave) > num_samples:
        start = random.randint(0, len(wave) - num_samples) if train else 0
        wave = wave[start:start + num_samples]
    out = np.zeros(num_samples, dtype=np.float32)
    out[: len(wave)] = wave
    return torch.from_numpy(out)


class SampleDecoder:
    """Raw tar sample → dict of tensors and metadata (picklable, so it runs in workers)."""

    def __init__(self, image_size: int, train: bool, audio_seconds: float | None = None) -> None:
        self.train = train
        self.transform = image_transform(image_size, train)
        self.audio_samples = int(round(audio_seconds * AUDIO_SAMPLE_RATE)) if audio_seconds else 0

    def __call__(self, sample: dict) -> dict:
        meta = json.loads(sample["json"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            pixels = self.transform(image.convert("RGB"))  # (3, H, W) uint8
        captions = meta["captions"]
        if not captions:
            raise ValueError(f"sample {sample['__key__']} has no captions")
        episode = meta.get("episode") or {}
        out = {
            "image": pixels,
            "captions": [random.choice(captions)] if self.train else captions,
            "image_id": meta["image_id"],
            "class_id": meta["class_id"],
            "timestamp": _unix_seconds(episode.get("timestamp")),
            "latitude": float(episode.get("latitude", math.nan)),
            "longitude": float(episode.get("longitude", math.nan)),
            "place": episode.get("place", ""),
            "sighting_id": int(episode.get("sighting_id", -1)),  # burst of one bird (synthetic diary); -1 unknown
            "condition": str(episode.get("condition", "")),  # clear / low_light / ...; "" unknown
            "is_pad": bool(sample.get("__pad__", False)),
        }
        if self.audio_samples:
            has_audio = "wav" in sample
            out["audio"] = (decode_audio(sample["wav"], self.audio_samples, self.train) if has_audio
                            else torch.zeros(self.audio_samples))
            out["has_audio"] = has_audio
        return out


def _unix_seconds(iso: str | None) -> float:
    if not iso:
        return math.nan
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Collator:
    """Decoded samples → a batch: images stacked, captions flattened and tokenised.

    ``caption_owner`` maps each caption row to its image's row (training: one caption each, so
    ``arange(B)``; evaluation: all of them). The tokenizer is loaded lazily in each worker.
    """

    def __init__(self, tokenizer_name: str, max_length: int = 64) -> None:
        self.tokenizer_name, self.max_length = tokenizer_name, max_length
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            path = resolve_model_path(self.tokenizer_name, tower="text")
            self._tokenizer = load_or_explain(AutoTokenizer.from_pretrained, path, "text")
        return self._tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        captions = [c for s in samples for c in s["captions"]]
        owner = [row for row, s in enumerate(samples) for _ in s["captions"]]
        tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        batch = {
            "image": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W) uint8
            "input_ids": tokens["input_ids"],  # (Bt, L)
            "attention_mask": tokens["attention_mask"],  # (Bt, L)
            "caption_owner": torch.tensor(owner, dtype=torch.long),  # (Bt,)
            "captions": captions,
            "image_id": torch.tensor([s["image_id"] for s in samples], dtype=torch.long),
            "class_id": torch.tensor([s["class_id"] for s in samples], dtype=torch.long),
            "timestamp": torch.tensor([s["timestamp"] for s in samples], dtype=torch.float64),
            "latitude": torch.tensor([s["latitude"] for s in samples], dtype=torch.float64),
            "longitude": torch.tensor([s["longitude"] for s in samples], dtype=torch.float64),
            "place": [s["place"] for s in samples],
            "sighting_id": torch.tensor([s["sighting_id"] for s in samples], dtype=torch.long),
            "condition": [s["condition"] for s in samples],
            "is_pad": torch.tensor([s["is_pad"] for s in samples], dtype=torch.bool),
        }
        if "audio" in samples[0]:
            batch["audio"] = torch.stack([s["audio"] for s in samples])  # (B, S)
            batch["has_audio"] = torch.tensor([s["has_audio"] for s in samples], dtype=torch.bool)
        return batch


def shard_samples(urls: list[str], handler: Callable[[Exception], bool] = wds.reraise_exception) -> wds.DataPipeline:
    """The raw samples of the shards ``urls``, in shard order and tar order within a shard:
    ``{"__key__", "__url__", "jpg": bytes, "json": bytes, ...}`` as WebDataset groups a tar's
    members by key. ``handler`` decides what a corrupt tar does (default: raise)."""
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))


class _EpochShardSamples(IterableDataset):
    """Endless passes over this rank's and worker's shards, shuffled within each pass.

    The epoch's seeded shard permutation is split by node then by worker, once, so ranks never
    share a shard within an epoch; each pass reshuffles the same shards and drains its shuffle
    buffer before the next pass starts, so a sample repeats only after all of this worker's
    samples have been seen.
    """

    def __init__(self, urls: list[str], seed: int, epoch: SharedEpoch, shuffle_buffer: int,
                 corrupt: CorruptCounter) -> None:
        self.urls, self.seed, self.epoch, self.shuffle_buffer, self.corrupt = urls, seed, epoch, shuffle_buffer, corrupt

    def __iter__(self) -> Iterator[dict]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        epoch = self.epoch.get()
        order = list(self.urls)
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        mine = order[rank::world_size][worker::num_workers]
        pass_index = 0
        while True:
            rng = random.Random(f"{self.seed}/{epoch}/{rank}/{worker}/{pass_index}")
            yield from wds.DataPipeline(
                wds.SimpleShardList(rng.sample(mine, len(mine))),
                wds.tarfile_to_samples(handler=self.corrupt),
                wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 200), rng=rng),
            )
            pass_index += 1


def train_pipeline(urls: list[str], *, num_samples: int, batch_size: int, world_size: int, num_workers: int,
                   decoder: SampleDecoder, collator: Collator, corrupt: CorruptCounter, epoch: SharedEpoch,
                   seed: int = 0, shuffle_buffer: int = 1000, resampled: bool = False) -> wds.DataPipeline:
    """The training stream; ``len()`` is the number of batches every rank yields per epoch.

    Args:
        num_samples: training images per epoch over all ranks (the manifest's count).
        resampled: draw shards with replacement (open_clip's ``--dataset-resampled``) instead of
            splitting them; needed when there are fewer shards than ranks × workers.

    Raises:
        ValueError: fewer shards than ranks × workers without ``resampled``.
    """
    workers = max(1, num_workers)
    if not resampled and len(urls) < world_size * workers:
        raise ValueError(f"{len(urls)} training shards cannot feed {world_size} rank(s) × {workers} worker(s): "
                         "write smaller shards (mmai data shards --samples-per-shard N), use fewer workers, "
                         "or set data.resampled=true")
    global_batch = batch_size * world_size
    num_batches = max(1, num_samples // global_batch)  # drop_last over the whole epoch
    worker_batches = math.ceil(num_batches / workers)
    if resampled:
        samples = [wds.ResampledShards(urls, seed=seed, deterministic=True), wds.tarfile_to_samples(handler=corrupt),
                   wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 200))]
    else:
        samples = [_EpochShardSamples(urls, seed, epoch, shuffle_buffer, corrupt)]
    pipeline = wds.DataPipeline(
        *samples,
        wds.map(decoder, handler=corrupt),
        wds.batched(batch_size, partial=False, collation_fn=collator),
    )
    return pipeline.with_epoch(worker_batches).with_length(worker_batches * workers)


class EvalStream(IterableDataset):
    """Every sample of the shards exactly once, split across ranks and workers by sample index.

    Rank ``r`` of ``W`` takes the samples with ``index % W == r``; within a rank, worker ``w``
    takes every ``num_workers``-th of the rank's samples. Every rank yields ``ceil(N / W)`` rows:
    a rank left one short, and every sample that fails to decode, is made up by a copy of the
    worker's first decodable sample flagged ``is_pad=True`` (drop those rows when gathering).
    """

    def __init__(self, urls: list[str], num_samples: int, decoder: SampleDecoder, corrupt: CorruptCounter) -> None:
        self.urls, self.num_samples, self.decoder, self.corrupt = urls, num_samples, decoder, corrupt

    def __iter__(self) -> Iterator[dict]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        per_rank = math.ceil(self.num_samples / world_size)
        position, owed, pad_source = 0, 0, None  # position: index among this rank's samples
        raw = shard_samples(self.urls, handler=self.corrupt)
        for index, sample in enumerate(raw):
            if index % world_size != rank:
                continue
            mine = position % num_workers == worker
            position += 1
            if not mine:
                continue
            decoded = self._decode(sample)
            if decoded is None:
                owed += 1  # a corrupt sample becomes a padding row: every rank keeps the same length
                continue
            pad_source = pad_source or sample
            yield decoded
        owed += sum(1 for p in range(position, per_rank) if p % num_workers == worker)  # ranks one short
        if owed and pad_source is None:
            log.warning("evaluation worker %d of rank %d decoded no sample to pad with: its rank runs %d "
                        "step(s) short", worker, rank, owed)
            return
        if owed:
            padding = self.decoder({**pad_source, "__pad__": True})
            yield from (padding for _ in range(owed))

    def _decode(self, sample: dict) -> dict | None:
        try:
            return self.decoder(sample)
        except Exception as error:  # noqa: BLE001 - any decode failure is a corrupt sample
            self.corrupt(error)
            return None

    def __len__(self) -> int:
        return math.ceil(self.num_samples / world_size())


def worker_rows(num_samples: int, world_size: int, num_workers: int) -> list[int]:
    """Rows each dataloader worker of one rank yields in :class:`EvalStream` (padding included):
    the rank's ``ceil(N / W)`` positions dealt round-robin over ``max(1, num_workers)`` workers."""
    per_rank, workers = math.ceil(num_samples / world_size), max(1, num_workers)
    return [len(range(worker, per_rank, workers)) for worker in range(workers)]


class EvalBatches(IterableDataset):
    """:class:`EvalStream` batched inside each worker, with an exact ``len()``.

    A ``DataLoader(batch_size=B)`` over a sample stream lets each of its workers emit its own
    partial last batch, so it yields more than ``ceil(rows / B)`` batches while its ``len()``
    says ``ceil(rows / B)``; Lightning stops at ``len()`` and silently leaves samples unscored.
    Here every worker batches its own rows and ``len()`` is the sum of the workers' batch
    counts, so the loader (``batch_size=None``) yields exactly ``len()`` batches and every sample.
    """

    def __init__(self, stream: EvalStream, batch_size: int, num_workers: int, collator: Callable) -> None:
        if batch_size < 1:
            raise ValueError(f"evaluation batch_size must be >= 1, got {batch_size}")
        self.stream, self.batch_size, self.num_workers, self.collator = stream, batch_size, num_workers, collator

    def __iter__(self) -> Iterator[dict]:
        rows: list[dict] = []
        for row in self.stream:
            rows.append(row)
            if len(rows) == self.batch_size:
                yield self.collator(rows)
                rows = []
        if rows:
            yield self.collator(rows)

    def __len__(self) -> int:
        counts = worker_rows(self.stream.num_samples, world_size(), self.num_workers)
        return sum(math.ceil(count / self.batch_size) for count in counts)


def world_size() -> int:
    """Ranks taking part: from ``WORLD_SIZE`` or the process group, as WebDataset sees them."""
    return wds.utils.pytorch_worker_info()[1]

