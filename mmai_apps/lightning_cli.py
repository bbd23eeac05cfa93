"""LightningCLI for MMAI (``mmai fit|validate|test|predict``) and ``mmai data inspect``."""

from __future__ import annotations

import argparse
import time
from collections import Counter

#: Trainer defaults of every LightningCLI run this process starts (a config file or flag still
#: wins). Empty unless an app asks: :func:`mmai_apps.quiet.quiet_runs` turns the per-run model
#: summary off for the apps that run several trainings and print their own table (ablate, demo).
TRAINER_DEFAULTS: dict = {}


def inspect_main(argv: list[str]) -> int:
    """``mmai data inspect``: stream shards through CUBWebDataModule and summarise what comes out."""
    from datamodules import CUBWebDataModule

    parser = argparse.ArgumentParser(prog="mmai data inspect", description=inspect_main.__doc__)
    parser.add_argument("--shards", required=True, help="folder with manifest.json (mmai data shards --out)")
    parser.add_argument("--split", choices=["train", "val", "test"], default="train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--audio-seconds", type=float, default=None)
    parser.add_argument("--batches", type=int, default=0, help="stop after N batches (0: one full epoch)")
    parser.add_argument("--verify-full", action="store_true",
                        help="hash every shard (default: sizes, and sha256 of shards changed since last hashed)")
    args = parser.parse_args(argv)
    from mmai.data.shards import read_manifest, verify_shards

    hashed = verify_shards(args.shards, read_manifest(args.shards), full=args.verify_full)
    print(f"shards verified against the manifest ({hashed} hashed)")
    data = CUBWebDataModule(args.shards, batch_size=args.batch_size, num_workers=args.num_workers,
                            image_size=args.image_size, audio_seconds=args.audio_seconds, shuffle_buffer=500)
    manifest = data.manifest
    print(f"shards: {args.shards} (split {manifest['split']})")
    for name, info in manifest["splits"].items():
        print(f"  {name:>5}: {info['images']} images, {info['captions']} captions, "
              f"{len(info['classes'])} classes, {len(info['shards'])} shards")
    if not int(manifest["splits"].get(args.split, {}).get("images", 0)):
        raise ValueError(f"split {args.split!r} of {args.shards} has 0 images (nothing to inspect): pick another "
                         "--split, or write the shards again from more images (mmai data synth --images) or with "
                         "the other mmai data shards --split")
    loader = data.train_dataloader() if args.split == "train" else data.eval_dataloader(args.split)
    images = captions = batches = 0
    classes: Counter = Counter()
    distinct: set[int] = set()
    first = None
    start = time.perf_counter()
    for batch in loader:
        first = first or batch
        batches += 1
        images += int((~batch["is_pad"]).sum())
        distinct.update(batch["image_id"][~batch["is_pad"]].tolist())
        captions += len(batch["captions"])
        classes.update(batch["class_id"].tolist())
        if args.batches and batches >= args.batches:
            break
    seconds = time.perf_counter() - start
    if first is None:
        print("no batches: the split is empty or smaller than one batch")
        return 1
    total = int(manifest["splits"][args.split]["images"])
    repeat = (" (the training stream fills whole batches for every worker: shards are resampled, so images repeat)"
              if images > len(distinct) else "")
    print(f"{args.split}: {batches} batches, {images} images streamed, {len(distinct)} distinct of the split's {total}"
          f"{repeat}, {captions} captions, {len(classes)} classes in {seconds:.1f} s "
          f"({images / seconds:,.0f} images/s, {args.num_workers} workers)")
    print("batch: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in first.items() if hasattr(v, "shape")))
    print(f"example caption (image {int(first['image_id'][0])}, class {int(first['class_id'][0])}): "
          f"{first['captions'][0]!r}")
    if first["place"][0]:
        print(f"example diary entry: {first['place'][0]} at unix time {float(first['timestamp'][0]):.0f}")
    print(f"corrupt samples skipped: {data.corrupt_samples}")
    return 0


def _finish_wandb() -> None:
    """End this process's W&B run once its command is done: the service writes the run's files (the
    saliency panels, the summary) by then, not at some later point or at exit (an in-process
    caller such as a test, a sweep trial or the demo then reads them complete)."""
    import sys

    wandb = sys.modules.get("wandb")  # only when a logger imported it
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


class _AppHooks:
    """LightningCLI hooks of the apps: Lightning's default model summary is swapped for
    :class:`~callbacks.ParameterSummary` (no "Total FLOPs: 0"), and ``after_<subcommand>`` finishes
    the W&B run after a successful command (a failing one keeps it for its caller: a sweep trial
    marks it failed)."""

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        use_parameter_summary(trainer)
        return trainer

    def after_fit(self) -> None:
        _finish_wandb()

    def after_validate(self) -> None:
        _finish_wandb()

    def after_test(self) -> None:
        _finish_wandb()

    def after_predict(self) -> None:
        _finish_wandb()


def use_parameter_summary(trainer) -> None:
    """Replace the summary Lightning added (``enable_model_summary``, a plain ``ModelSummary`` or
    ``RichModelSummary``) with :class:`~callbacks.ParameterSummary` of the same depth: Lightning's
    prints FLOPs of 0 for modules it cannot run a forward on, which is all of MMAI's. A subclass
    that a config names stays as it is."""
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    from callbacks import ParameterSummary

    for position, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary):
            trainer.callbacks[position] = ParameterSummary(callback._max_depth, **callback._summarize_kwargs)


def _make_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class _CLI(_AppHooks, LightningCLI):
        """LightningCLI with MMAI's links: values the model and the data must agree on are set once."""

        def add_arguments_to_parser(self, parser) -> None:
            from callbacks import RetrievalEvalCallback

            parser.add_argument("--run_dir", default="runs", help="where logs, W&B runs and checkpoints go")
            # its own group, so that --retrieval.gar_alpha etc. are flags (sweepable), not list items
            parser.add_lightning_class_args(RetrievalEvalCallback, "retrieval")
            parser.link_arguments("data.batch_size", "model.batch_size")
            parser.link_arguments("model.bi_encoder", "data.image_size", compute_fn=_data_field("image_size"))
            parser.link_arguments("model.bi_encoder", "data.tokenizer", compute_fn=_data_field("tokenizer"))
            parser.link_arguments("model.bi_encoder", "data.max_length", compute_fn=_data_field("max_length"))
            parser.link_arguments("model.bi_encoder", "data.audio_seconds", compute_fn=_data_field("audio_seconds"))

        def before_fit(self) -> None:
            _check_ckpt_path(self.config_init.get(self.subcommand, self.config_init).get("ckpt_path"))

        def _parse_ckpt_path(self) -> None:
            _refuse_untyped_resume(self.config)
            super()._parse_ckpt_path()

    return _CLI


def _refuse_untyped_resume(config) -> None:
    """``--ckpt_path`` re-applies the checkpoint's hyperparameters as flags; a bi-encoder checkpoint
    written before the typed configs has flat ones, which today's flags do not take: say what works."""
    from pathlib import Path

    subcommand = config.get("subcommand")
    ckpt_path = config[subcommand].get("ckpt_path") if subcommand else None
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    from mmai.checkpoint import read_checkpoint

    hparams = read_checkpoint(ckpt_path, "--ckpt_path", mmap=True).get("hyper_parameters") or {}
    if hparams and "bi_encoder" not in hparams:
        raise ValueError(f"--ckpt_path {ckpt_path!r} was written before the typed model configs (flat "
                         "hyperparameters): its run cannot be resumed with today's flags. Start a new run from "
                         f"its weights with --model.init_from {ckpt_path} (and the same config), or load it "
                         "for search with mmai.inference.load_stage1")


def _data_field(name: str):
    """A link function: the value the data must agree on (``image_size``, ``tokenizer``,
    ``max_length``, ``audio_seconds``) of the parsed ``model.bi_encoder`` config."""
    def compute(bi_encoder):
        from mmai.config import data_settings

        return data_settings(bi_encoder)[name]

    compute.__name__ = f"bi_encoder_{name}"
    return compute


def _make_rerank_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class _RerankCLI(_AppHooks, LightningCLI):
        """LightningCLI of the re-ranker stage: the data follow the bi-encoder checkpoint's input
        size, tokenizer and caption length, read from the checkpoint itself."""

        def add_arguments_to_parser(self, parser) -> None:
            from callbacks import RetrievalEvalCallback

            parser.add_argument("--run_dir", default="runs/reranker", help="where logs, W&B runs and checkpoints go")
            parser.add_lightning_class_args(RetrievalEvalCallback, "retrieval")
            parser.link_arguments("data.batch_size", "model.batch_size")

        def before_instantiate_classes(self) -> None:
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            _data_from_bi_encoder(config)

        def before_fit(self) -> None:
            _check_ckpt_path(self.config_init.get(self.subcommand, self.config_init).get("ckpt_path"))

    return _RerankCLI


def _data_from_bi_encoder(config) -> None:
    """Set ``data.image_size/tokenizer/max_length`` from ``model.bi_encoder_ckpt``'s bi-encoder config."""
    from mmai.checkpoint import bi_encoder_config, read_checkpoint

    path = config.model.bi_encoder_ckpt
    if path is None:
        raise ValueError("mmai rerank: set --model.bi_encoder_ckpt to a checkpoint of `mmai fit` "
                         "(e.g. runs/<run>/checkpoints/last.ckpt)")
    hparams = read_checkpoint(path, "model.bi_encoder_ckpt", mmap=True)["hyper_parameters"]
    bi_encoder = bi_encoder_config(hparams, f"model.bi_encoder_ckpt {path!r}")
    config.data.image_size = bi_encoder.image_size
    config.data.tokenizer = bi_encoder.tokenizer
    config.data.max_length = bi_encoder.max_length
    config.data.audio_seconds = None


def rerank_cli_main(args: list[str] | None = None, run: bool = True):
    """``mmai rerank fit|validate|test --config configs/reranker.yaml --model.bi_encoder_ckpt …``:
    the stage-2 LightningCLI (:class:`~lightning_modules.reranker.RerankerModule`)."""
    from datamodules import CUBWebDataModule
    from lightning_modules.reranker import RerankerModule

    return _make_rerank_cli_class()(RerankerModule, CUBWebDataModule, args=args, run=run,
                                    trainer_defaults=dict(TRAINER_DEFAULTS),
                                    parser_kwargs={"parser_mode": "omegaconf+"},
                                    save_config_kwargs={"overwrite": True})


def _check_ckpt_path(ckpt_path) -> None:
    """`--ckpt_path` must be 'last', 'best', 'hpc', or an existing file: say so before Lightning starts."""
    from pathlib import Path

    if ckpt_path is None or ckpt_path in {"last", "best", "hpc", "registry"} or Path(ckpt_path).is_file():
        return
    raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist: pass a .ckpt file, or 'last' to resume "
                            "from the newest checkpoint of this run directory")


def cli_main(args: list[str] | None = None, run: bool = True):
    """``mmai fit|validate|test|predict --config …`` — LightningCLI with OmegaConf interpolation.

    Args:
        args: the argument list (``["fit", "--config", "configs/base.yaml", ...]``); None reads sys.argv.
        run: False parses and instantiates without running (give no subcommand then).
    """
    from datamodules import CUBWebDataModule
    from lightning_modules.bi_encoder import BiEncoderModule

    return _make_cli_class()(BiEncoderModule, CUBWebDataModule, args=args, run=run,
                             trainer_defaults=dict(TRAINER_DEFAULTS),
                             parser_kwargs={"parser_mode": "omegaconf+"},
                             save_config_kwargs={"overwrite": True})


def parse_config(args: list[str], rerank: bool = False):
    """Parse (and validate, links applied) a config without building anything: for configs whose
    weights are not here, such as the full GPU profile. ``rerank``: a ``mmai rerank fit`` command
    (its data settings read from the bi-encoder checkpoint). Returns the parsed namespace."""
    from datamodules import CUBWebDataModule

    if rerank:
        from lightning_modules.reranker import RerankerModule as module_class
        cli_class = _make_rerank_cli_class()
    else:
        from lightning_modules.bi_encoder import BiEncoderModule as module_class
        cli_class = _make_cli_class()

    class _ParseOnly(cli_class):
        def instantiate_classes(self) -> None:
            pass

        def _add_configure_optimizers_method_to_model(self, subcommand) -> None:
            pass

    return _ParseOnly(module_class, CUBWebDataModule, args=args, run=False,
                      parser_kwargs={"parser_mode": "omegaconf+"}).config
