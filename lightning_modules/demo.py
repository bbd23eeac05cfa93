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


def random_recall(relevant: int, gallery: int, k: int) -> float:
    """Recall@k of a random ranking: P(at least one of ``relevant`` items among ``k`` of ``gallery``)."""
    if gallery - relevant < k:
        return 1.0
    return 1.0 - math.prod((gallery - relevant - j) / (gallery - j) for j in range(k))


def _print_table(metrics: dict, manifest: dict, split: str = "val") -> None:
    info = manifest["splits"][split]
    images, captions, classes = info["images"], info["captions"], len(info["classes"])
    per_image, per_class = captions // images, images / classes  # synthetic classes are near-equal
    relevant = {("t2i", "instance"): 1, ("t2i", "class"): round(per_class),
                ("i2t", "instance"): per_image, ("i2t", "class"): round(per_class * per_image)}
    print(f"\nStage-1 Recall@K (%) — split {manifest['split']}/{split}: gallery {images} images and "
          f"{captions} captions, {classes} classes unseen in training; this CPU, tiny profile")
    print(f"| {'direction/relevance':<20} | {'R@1':>6} | {'R@5':>6} | {'R@10':>6} | chance R@10 |")
    print(f"| {'-' * 20} | {'-' * 6} | {'-' * 6} | {'-' * 6} | {'-' * 11} |")
    for (direction, relevance), count in relevant.items():
        values = [float(metrics[f"{split}/stage1/{direction}/{relevance}/R@{k}"]) for k in (1, 5, 10)]
        chance = random_recall(count, images if direction == "t2i" else captions, 10)
        print(f"| {direction + '/' + relevance:<20} | " + " | ".join(f"{100 * v:6.1f}" for v in values)
              + f" | {100 * chance:11.1f} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmai demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("data/demo"))
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=4000, help="synthetic images (CUB has 11,788)")
    parser.add_argument("--epochs", type=int, default=8,
                        help="the tiny profile sits on a plateau for ~200 steps before it learns")
    args = parser.parse_args(argv)

    from lightning_modules.cli import cli_main, inspect_main
    from mmai.data.shards import read_manifest, write_shards
    from mmai.data.synth import synthesize

    synth, shards, runs = args.workdir / "synth", args.workdir / "shards", args.workdir / "runs"
    print(f"[1/4] synthetic CUB ({args.classes} species, {args.images} images) in {synth}")
    synthesize(synth, classes=args.classes, images=args.images, audio=False)
    if not (shards / "manifest.json").exists():
        print(f"[2/4] writing WebDataset shards to {shards}")
        # about half the images are training images: keep at least 8 training shards for the workers
        write_shards(synth, shards, samples_per_shard=max(8, min(128, args.images // 16)))
    else:
        print(f"[2/4] shards exist: {shards}")
    manifest = read_manifest(shards)
    print("[3/4] one pass over the validation stream of CUBWebDataModule")
    inspect_main(["--shards", str(shards), "--split", "val", "--batches", "4", "--num-workers", "2"])
    configs = ["--config", str(REPO / "configs/base.yaml"), "--config", str(REPO / "configs/profiles/tiny_cpu.yaml")]
    # validation embeds every caption of the gallery (minutes on 2 cores): once, after the last epoch
    common = [*configs, "--data.shard_dir", str(shards), "--run_dir", str(runs), "--trainer.max_epochs",
              str(args.epochs), "--trainer.check_val_every_n_epoch", str(args.epochs)]
    resume = ["--ckpt_path", "last"] if (runs / "checkpoints" / "last.ckpt").exists() else []
    print(f"[4/4] training the bi-encoder for {args.epochs} epochs (tiny CPU profile; resumes if a run exists)")
    metrics = cli_main(["fit", *common, *resume]).trainer.callback_metrics
    if "val/stage1/t2i/instance/R@10" not in metrics:  # the run was already complete: evaluate it
        metrics = cli_main(["validate", *common, "--ckpt_path", "last"]).trainer.callback_metrics
    _print_table(metrics, manifest)
    print(f"\ncheckpoints: {runs / 'checkpoints'}   W&B (offline): {runs / 'wandb'}")
    return 0
