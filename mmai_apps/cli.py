"""The ``mmai`` command: one entry point for data, training, evaluation and benchmarks.

This is the apps layer (``mmai_apps``): every subcommand is an app module beside this one, reached
by a plain import inside the function that runs it, so ``mmai --help`` and ``mmai data synth``
start without loading Lightning, Gradio or the models.

Expected user errors (a bad path, a bad value, a damaged input file: ``ValueError``,
``FileNotFoundError``, ``KeyError`` and their kin) of ``data``, ``fit``/``validate``/``test``/
``predict``, ``rerank``, ``saliency``, ``sweep`` and ``ablate`` print their message alone and exit 2; ``--debug`` (anywhere on the
command line) or ``MMAI_DEBUG=1`` shows the traceback instead.

A relative ``configs/...`` or ``sweeps/...`` path that is not in the working directory is read
from the installed package (:mod:`mmai_apps.resources`), so that ``mmai fit --config
configs/base.yaml`` works from any folder once mmai is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mmai_apps.quiet import quiet_known_warnings, quiet_runs
from mmai_apps.resources import resolve_path_args

APP_COMMANDS = {"fit", "validate", "test", "predict"}
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError)
USAGE = """usage: mmai COMMAND [args]

commands:
  data synth     write a synthetic dataset in the exact CUB-200-2011 + caption-release layout
  data shards    convert CUB (real or synthetic) into WebDataset shards + manifest
  data inspect   stream the shards through CUBWebDataModule and print a summary
  fit | validate | test | predict   LightningCLI (mmai fit --config configs/base.yaml ...)
  rerank fit | validate | test      stage-2 re-ranker LightningCLI (mmai rerank fit --config configs/reranker.yaml ...)
  saliency       render the saliency panel of a query and an image from a re-ranker checkpoint
  ablate         train and evaluate the reference table's rows on one dataset (mmai ablate --help)
  memory         personal memories: ingest | search | related | forget | stats | check | rebuild | consolidate
  serve          the browser dashboard over a memory store (Gradio, 127.0.0.1)
  demo           the whole pipeline on synthetic data on this machine (the README's main command)
  bench NAME     run a benchmark (mmai bench --list)
  sweep run FILE run a W&B sweep file's trials here, no W&B server (mmai sweep run --help)

`mmai COMMAND --help` for the flags of each."""


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmai data")
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="synthesise CUB-format data (procedural birds, captions, songs, diary)")
    synth.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or a previous run with the same args)")
    synth.add_argument("--classes", type=int, default=200)
    synth.add_argument("--images", type=int, default=11788)
    synth.add_argument("--captions-per-image", type=int, default=10)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--no-audio", action="store_true", help="skip the per-image songs")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.add_argument("--swap-share", type=float, default=0.75,
                       help="chance that a family gets a swap variant, the binding probe's pairs (default 0.75)")
    synth.add_argument("--variants", type=int, nargs=2, default=[1, 3], metavar=("LOW", "HIGH"),
                       help="one-attribute variants per family (default 1 3; 0 1 makes small families, so each "
                            "split holds more swap pairs)")
    synth.add_argument("--twins", action="store_true",
                       help="also render each training photo's counterfactual twin (two part colours exchanged): "
                            "the re-ranker's binding negatives (model.twin_negatives)")
    shards = sub.add_parser("shards", help="write WebDataset shards of CUB (real or synthetic)")
    shards.add_argument("--cub-root", type=Path, required=True, help="CUB_200_2011/ or its parent")
    shards.add_argument("--captions-root", type=Path, default=None, help="cvpr2016_cub/ (default: beside the CUB root)")
    shards.add_argument("--out", type=Path, required=True)
    shards.add_argument("--split", choices=["zero-shot", "standard"], default="zero-shot")
    shards.add_argument("--samples-per-shard", type=int, default=256)
    shards.add_argument("--seed", type=int, default=0, help="seed of the sample order within each split")
    shards.add_argument("--skip-bad", action="store_true", help="skip missing/unreadable files (counted in the manifest) instead of failing")
    sub.add_parser("inspect", help="iterate CUBWebDataModule over shards and print a summary", add_help=False)
    return parser


def _data(argv: list[str]) -> int:
    if argv[:1] == ["inspect"]:
        from mmai_apps.lightning_cli import inspect_main

        return inspect_main(argv[1:])
    args = _data_parser().parse_args(argv)
    start = time.perf_counter()
    if args.action == "synth":
        from mmai.data.synth import synthesize

        summary = synthesize(args.out, classes=args.classes, images=args.images,
                             captions_per_image=args.captions_per_image, image_size=args.image_size,
                             seed=args.seed, audio=not args.no_audio, workers=args.workers,
                             swap_share=args.swap_share, variants=tuple(args.variants), twins=args.twins)
        print(f"synthetic CUB at {args.out}: {summary}")
    else:
        from mmai.data.shards import write_shards

        try:
            manifest = write_shards(args.cub_root, args.out, split=args.split, captions_root=args.captions_root,
                                    samples_per_shard=args.samples_per_shard, skip_bad=args.skip_bad,
                                    seed=args.seed)
        except OSError as error:
            if isinstance(error, USER_ERRORS):  # a missing CUB file etc.: the user-error path
                raise
            where = error.filename or f"the temporary folder beside {args.out}"
            print(f"mmai data shards: error: {error.strerror or error} while writing {where}; {args.out} is "
                  "unchanged: free space there (or choose another --out) and run again", file=sys.stderr)
            return 1
        for name, info in manifest["splits"].items():
            print(f"{name:>5}: {info['images']:6d} images, {info['captions']:7d} captions, "
                  f"{len(info['classes']):3d} classes, {len(info['shards'])} shards")
        for name, info in manifest["splits"].items():
            if not info["images"]:
                hint = (" (the standard split sends every 10th training image of a species to val: a species "
                        "needs 10 or more training images)" if args.split == "standard" else "")
                print(f"warning: split {name!r} has 0 images{hint}; training or evaluating on it will fail: use "
                      f"more images (mmai data synth --images), or --split "
                      f"{'zero-shot' if args.split == 'standard' else 'standard'}", file=sys.stderr)
        print(f"split {manifest['split']}; skipped {manifest['skipped']['count']} bad file(s); "
              f"manifest: {args.out / 'manifest.json'}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def user_message(error: BaseException) -> str:
    """The message of a user error. For an optional config (``X | None``, e.g.
    ``model.bi_encoder.audio``) jsonargparse reports why each union member failed and then dumps
    the value; the only useful reason is X's own, so that reason alone is the message."""
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    if message.startswith("Does not validate against any of the Union subtypes"):
        reasons = [line[4:] for line in message.splitlines()
                   if line.startswith("  - ") and line[4:] != "Expected a <class 'NoneType'>"]
        if len(reasons) == 1:
            return reasons[0]
    return message


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MMAI_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    argv = resolve_path_args(argv)  # configs/... and sweeps/... also outside a checkout
    if not debug:
        quiet_known_warnings()
        if argv[:1] in (["ablate"], ["demo"]):
            quiet_runs()
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    if argv[0] in APP_COMMANDS | {"rerank", "data", "saliency", "sweep", "ablate"} and not debug:
        try:
            return _dispatch(argv[0], argv[1:])
        except USER_ERRORS as error:
            print(f"mmai {argv[0]}: error: {user_message(error)}\n(run with --debug or MMAI_DEBUG=1 for the "
                  "traceback)", file=sys.stderr)
            return 2
    return _dispatch(argv[0], argv[1:])


def _dispatch(command: str, rest: list[str]) -> int:
    if command in APP_COMMANDS:
        from mmai_apps.lightning_cli import cli_main

        cli_main([command, *rest])
        return 0
    if command == "rerank":
        if not rest or rest[0] not in {"fit", "validate", "test"}:
            print("usage: mmai rerank {fit,validate,test} --config configs/reranker.yaml "
                  "[--config configs/profiles/reranker_tiny_cpu.yaml] --model.bi_encoder_ckpt CKPT", file=sys.stderr)
            return 2
        from mmai_apps.lightning_cli import rerank_cli_main

        rerank_cli_main(rest)
        return 0
    if command == "saliency":
        from mmai_apps.explain import main as saliency_main

        return saliency_main(rest)
    if command == "ablate":
        from mmai_apps.ablate import main as ablate_main

        return ablate_main(rest)
    if command == "memory":
        from mmai_apps.memory_cli import main as memory_main

        return memory_main(rest)
    if command == "serve":
        from mmai_apps.serve import main as serve_main

        return serve_main(rest)
    if command == "demo":
        from mmai_apps.demo import main as demo_main

        return demo_main(rest)
    if command == "data":
        return _data(rest)
    if command == "sweep":
        from mmai_apps.sweep_runner import main as sweep_main

        return sweep_main(rest)
    if command == "bench":
        from mmai_apps.bench import main as bench_main

        return bench_main(rest)
    print(f"mmai: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
