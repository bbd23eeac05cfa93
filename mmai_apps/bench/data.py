"""Synthesis and sharding at CUB scale: seconds and throughput of `mmai data synth` + `mmai data shards`."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mmai_apps.bench import BenchResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=11788, help="default: full CUB scale")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir, removed after)")


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run(args: argparse.Namespace) -> BenchResult:
    from mmai.data.shards import write_shards
    from mmai.data.synth import synthesize

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmai-bench-data-"))
    try:
        start = time.perf_counter()
        synthesize(workdir / "synth", classes=args.classes, images=args.images, image_size=args.image_size,
                   audio=not args.no_audio, workers=args.workers)
        synth_s = time.perf_counter() - start
        start = time.perf_counter()
        manifest = write_shards(workdir / "synth", workdir / "shards")
        shard_s = time.perf_counter() - start
        captions = sum(info["captions"] for info in manifest["splits"].values())
        rows = [
            {"stage": "synthesise", "seconds": synth_s, "images/s": args.images / synth_s,
             "output MB": _size_mb(workdir / "synth")},
            {"stage": "write shards", "seconds": shard_s, "images/s": args.images / shard_s,
             "output MB": _size_mb(workdir / "shards")},
            {"stage": "total", "seconds": synth_s + shard_s, "images/s": args.images / (synth_s + shard_s)},
        ]
        meta = {"images": args.images, "captions": captions, "classes": args.classes,
                "image_size": args.image_size, "audio": not args.no_audio, "split": manifest["split"]}
        return BenchResult(rows, meta)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
