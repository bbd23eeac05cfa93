"""``mmai demo``: the main job on a CPU machine, end to end on synthetic data.

Synthesise a CUB-format dataset (if missing) → write shards (if missing) → show a batch of the
DataModule → train the bi-encoder on the tiny CPU profile (resuming if a run exists) → validate
and print full-gallery Recall@K next to chance. Idempotent: a second run reuses everything.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def chance_recall(class_sizes: list[int], gallery: int, k: int) -> tuple[float, float]:
    """Recall@k of a random ranking: instance (one relevant item) and class (the query's class
    holds ``n`` of the ``gallery`` items), averaged over the classes weighted by their size."""
    instance = min(1.0, k / gallery)
    total = sum(class_sizes)
    miss = 0.0
    for n in class_sizes:
        p_miss = math.prod((gallery - n - j) / (gallery - j) for j in range(min(k, gallery - n)))
        miss += n / total * (p_miss if gallery - n >= k else 0.0)
    return instance, 1.0 - miss


def _print_table(metrics: dict, manifest: dict, split: str = "val") -> None:
    info = manifest["splits"][split]
    images, captions = info["images"], info["captions"]
    sizes = [images // len(info["classes"])] * len(info["classes"])  # synthetic classes are near-equal
    print(f"\nStage-1 Recall@K — split {manifest['split']}/{split}: gallery {images} images, "
          f"{captions} caption queries, {len(info['classes'])} unseen classes; CPU, tiny profile")
    print(f"| {'direction/relevance':<20} | {'R@1':>6} | {'R@5':>6} | {'R@10':>6} | chance R@10 |")
    print(f"| {'-' * 20} | {'-' * 6} | {'-' * 6} | {'-' * 6} | {'-' * 11} |")
    for direction in ("t2i", "i2t"):
        for relevance in ("instance", "class"):
            values = [float(metrics[f"{split}/stage1/{direction}/{relevance}/R@{k}"]) for k in (1, 5, 10)]
            gallery = images if direction == "t2i" else captions
            per_class = sizes if direction == "t2i" else [s * captions // images for s in sizes]
            instance, klass = chance_recall(per_class, gallery, 10)
            if direction == "i2t" and relevance == "instance":
                instance = 1.0 - math.prod((gallery - captions // images - j) / (gallery - j) for j in range(10))
            chance = instance if relevance == "instance" else klass
            print(f"| {direction + '/' + relevance:<20} | " + " | ".join(f"{100 * v:6.1f}" for v in values)
                  + f" | {100 * chance:11.1f} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmai demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("data/demo"))
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=4000, help="synthetic images (CUB has 11,788)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    from lightning_modules.cli import cli_main, inspect_main
    from mmai.data.shards import read_manifest, write_shards
    from mmai.data.synth import synthesize

    synth, shards, runs = args.workdir / "synth", args.workdir / "shards", args.workdir / "runs"
    print(f"[1/4] synthetic CUB ({args.classes} species, {args.images} images) in {synth}")
    synthesize(synth, classes=args.classes, images=args.images, audio=False)
    if not (shards / "manifest.json").exists():
        print(f"[2/4] writing WebDataset shards to {shards}")
        write_shards(synth, shards, samples_per_shard=128)
    else:
        print(f"[2/4] shards exist: {shards}")
    manifest = read_manifest(shards)
    print("[3/4] one pass over the validation stream of CUBWebDataModule")
    inspect_main(["--shards", str(shards), "--split", "val", "--batches", "4", "--num-workers", "2"])
    configs = ["--config", str(REPO / "configs/base.yaml"), "--config", str(REPO / "configs/profiles/tiny_cpu.yaml")]
    common = [*configs, "--data.shard_dir", str(shards), "--run_dir", str(runs), "--trainer.max_epochs", str(args.epochs)]
    resume = ["--ckpt_path", "last"] if (runs / "checkpoints" / "last.ckpt").exists() else []
    print(f"[4/4] training the bi-encoder for {args.epochs} epochs (tiny CPU profile; resumes if a run exists)")
    cli_main(["fit", *common, *resume])
    validation = cli_main(["validate", *common, "--ckpt_path", "last"])
    _print_table(validation.trainer.callback_metrics, manifest)
    print(f"\ncheckpoints: {runs / 'checkpoints'}   W&B (offline): {runs / 'wandb'}")
    return 0
