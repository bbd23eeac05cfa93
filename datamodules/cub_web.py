"""``CUBWebDataModule``: CUB-200-2011 with ten captions per image, streamed from WebDataset shards."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from mmai.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, Collator, CorruptCounter, EvalBatches, EvalStream, SampleDecoder, SharedEpoch, normalize_images, train_pipeline, world_size
from mmai.data.shards import read_manifest, shard_urls, verify_shards
from mmai.data.feature_cache import CachedTrainBatches, SplitFeatures

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisers run inside dataloader workers


class _EpochLoader(DataLoader):
    """A DataLoader that tells the shard shuffle which epoch it is before workers start."""

    def __init__(self, *args, epoch: SharedEpoch, epoch_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self._shared_epoch, self._epoch_fn = epoch, epoch_fn

    def __iter__(self):
        self._shared_epoch.set(self._epoch_fn())
        return super().__iter__()


class CUBWebDataModule(L.LightningDataModule):
    """Streams the shards written by ``mmai data shards``.

    Images leave the workers as uint8 and are normalised after the transfer to the device
    (``on_after_batch_transfer``). Training batches hold one random caption of the ten per image (``drop_last``, equal length on
    every rank); validation/test batches hold all captions of each image, every sample exactly
    once across ranks (padding rows flagged ``is_pad``). See ``mmai.data.pipeline`` for the stages.

    Args:
        shard_dir: folder with ``manifest.json`` and the ``{split}-NNNNN.tar`` shards.
        batch_size: images per rank per step (default 64).
        num_workers: dataloader workers per rank (default 2).
        image_size: square input size of the vision tower (default 224).
        tokenizer: Hugging Face id or folder of the text tower's tokenizer (default: the offline MiniLM).
        max_length: caption token limit (default 64).
        audio_seconds: crop/pad length of songs; None leaves audio out (default None).
        shuffle_buffer: samples in the training shuffle buffer (default 1000).
        resampled: draw training shards with replacement (needed with fewer shards than ranks × workers).
        seed: shard-order seed (default 0).
        mean, std: image normalisation of the vision tower (default ImageNet's).
        predict_split: the split ``mmai predict`` embeds (``train``, ``val`` or ``test``; default test).
    """

    def __init__(self, shard_dir: str = "data/shards", batch_size: int = 64, num_workers: int = 2,
                 image_size: int = 224, tokenizer: str = "sentence-transformers/all-MiniLM-L6-v2",
                 max_length: int = 64, audio_seconds: float | None = None, shuffle_buffer: int = 1000,
                 resampled: bool = False, seed: int = 0, eval_batch_size: int | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 predict_split: str = "test"):
        super().__init__()
        if predict_split not in ("train", "val", "test"):
            raise ValueError(f"data.predict_split {predict_split!r}: use train, val or test")
        self.save_hyperparameters()
        self.shard_dir = Path(shard_dir)
        self.corrupt = CorruptCounter()
        self._epoch = SharedEpoch()
        self._manifest: dict | None = None

    @property
    def manifest(self) -> dict:
        """The shard folder's manifest, its shards checked once: sizes always, sha256 for shards
        changed (size or mtime) or never hashed here (``mmai.data.shards.verify_shards``)."""
        if self._manifest is None:
            manifest = read_manifest(self.shard_dir)
            verify_shards(self.shard_dir, manifest)
            self._manifest = manifest
        return self._manifest

    def num_images(self, split: str) -> int:
        return self.manifest["splits"][split]["images"]

    @property
    def corrupt_samples(self) -> int:
        """Samples skipped because they failed to decode, summed over all workers of this rank."""
        return self.corrupt.value

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else world_size()

    def _collator(self) -> Collator:
        return Collator(self.hparams.tokenizer, self.hparams.max_length)

    def _decoder(self, train: bool) -> SampleDecoder:
        hp = self.hparams
        return SampleDecoder(hp.image_size, train, hp.audio_seconds)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Normalise the uint8 images on the device they were moved to (cached batches have none)."""
        if "image" in batch:
            batch["image"] = normalize_images(batch["image"], self.hparams.mean, self.hparams.std)
        return batch

    def use_train_features(self, features: SplitFeatures | None) -> None:
        """Serve training batches from a locked towers' feature cache (None: stream the shards)."""
        self._train_features = features

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        epoch_fn = lambda: self.trainer.current_epoch if self.trainer is not None else 0  # noqa: E731
        if getattr(self, "_train_features", None) is not None:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            batches = CachedTrainBatches(self._train_features, hp.batch_size, self._world_size(), rank, hp.seed,
                                         epoch_fn)
            return DataLoader(batches, batch_size=None, num_workers=0)
        dataset = train_pipeline(
            shard_urls(self.shard_dir, "train", self.manifest), num_samples=self.num_images("train"),
            batch_size=hp.batch_size, world_size=self._world_size(), num_workers=hp.num_workers,
            decoder=self._decoder(True), collator=self._collator(), corrupt=self.corrupt, epoch=self._epoch,
            seed=hp.seed, shuffle_buffer=hp.shuffle_buffer, resampled=hp.resampled)
        return _EpochLoader(dataset, batch_size=None, num_workers=hp.num_workers, epoch=self._epoch,
                            epoch_fn=epoch_fn, persistent_workers=False, pin_memory=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every sample of ``split`` exactly once across ranks, all captions per image."""
        hp = self.hparams
        stream = EvalStream(shard_urls(self.shard_dir, split, self.manifest), self.num_images(split),
                            self._decoder(False), self.corrupt)
        batches = EvalBatches(stream, hp.eval_batch_size or hp.batch_size, hp.num_workers, self._collator())
        return DataLoader(batches, batch_size=None, num_workers=hp.num_workers)

    def expected_counts(self, split: str) -> tuple[int, int]:
        """``(images, captions)`` the manifest lists for ``split``: what an evaluation must score."""
        info = self.manifest["splits"][split]
        return int(info["images"]), int(info["captions"])

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """Every sample of ``data.predict_split`` once, all captions per image (what ``mmai predict`` embeds)."""
        return self.eval_dataloader(self.hparams.predict_split)
