"""Loader throughput: training samples/s of the shard pipeline with 0, 1, 2 dataloader workers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmai_apps.bench import BenchResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="a shard folder (mmai data shards --out)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=60, help="batches timed per setting (after 3 warm-up)")
    parser.add_argument("--audio-seconds", type=float, default=None, help="also decode songs")


def _time_loader(shards: Path, workers: int, args: argparse.Namespace) -> tuple[float, int]:
    from mmai.data.pipeline import Collator, CorruptCounter, SampleDecoder, SharedEpoch, train_pipeline
    from mmai.data.shards import read_manifest, shard_urls
    from torch.utils.data import DataLoader

    manifest = read_manifest(shards)
    dataset = train_pipeline(
        shard_urls(shards, "train", manifest), num_samples=manifest["splits"]["train"]["images"] * 100,
        batch_size=args.batch_size, world_size=1, num_workers=workers,
        decoder=SampleDecoder(args.image_size, True, args.audio_seconds),
        collator=Collator("sentence-transformers/all-MiniLM-L6-v2"), corrupt=CorruptCounter(),
        epoch=SharedEpoch(), resampled=len(manifest["splits"]["train"]["shards"]) < max(1, workers))
    loader = iter(DataLoader(dataset, batch_size=None, num_workers=workers))
    for _ in range(3):
        next(loader)
    start = time.perf_counter()
    samples = sum(len(next(loader)["image_id"]) for _ in range(args.batches))
    return time.perf_counter() - start, samples


def run(args: argparse.Namespace) -> BenchResult:
    rows = []
    for workers in args.workers:
        seconds, samples = _time_loader(args.shards, workers, args)
        rows.append({"workers": workers, "samples": samples, "seconds": seconds, "samples/s": samples / seconds})
    return BenchResult(rows, {"shards": str(args.shards), "image_size": args.image_size,
                              "batch_size": args.batch_size, "audio": bool(args.audio_seconds),
                              "pipeline": "train: decode + random resized crop + flip + tokenise 1 caption"})
