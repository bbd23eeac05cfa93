"""Training throughput of a profile, and Lightning's overhead against a plain PyTorch loop.

Both loops run the same module (``BiEncoderModule`` from the configs), the same optimiser and
schedule, on the same batches cached in memory (so data loading is out of both), alternating
Lightning and plain rounds so that drift on a shared machine hits both alike. The plain loop is
what Lightning's ``training_step`` does: forward → backward → clip → step → schedule → enqueue.
"""

from __future__ import annotations

import argparse
import time

from mmai_apps.bench import BenchResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="a shard folder (mmai data shards --out)")
    parser.add_argument("--config", action="append", default=None,
                        help="config files (default: configs/base.yaml + configs/profiles/tiny_cpu.yaml)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating Lightning/plain rounds")


def _load(args):
    from mmai_apps.lightning_cli import cli_main
    from mmai_apps.resources import data_root

    repo = data_root()
    configs = args.config or [str(repo / "configs/base.yaml"), str(repo / "configs/profiles/tiny_cpu.yaml")]
    argv = [x for c in configs for x in ("--config", c)] + ["--data.shard_dir", args.shards, "--data.num_workers", "0"]
    return cli_main(argv, run=False)


def _plain_steps(module, batches, clip: float) -> float:
    import torch

    optimizer, scheduler = module.build_optimizer(len(batches))
    module.train()
    start = time.perf_counter()
    for batch in batches:
        output = module.model(batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        module.model.enqueue(output)
    return time.perf_counter() - start


def _lightning_steps(module, batches, clip: float) -> float:
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, gradient_clip_val=clip, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> BenchResult:
    import copy
    import itertools
    import logging

    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cli = _load(args)
    data, template = cli.datamodule, cli.model
    loader = data.train_dataloader()
    epochs = itertools.chain.from_iterable(loader for _ in range(args.steps))  # more than one epoch if small
    batches = [data.on_after_batch_transfer(batch, 0) for batch in itertools.islice(epochs, args.steps)]
    batch_size = batches[0]["image"].shape[0]
    clip = cli.trainer.gradient_clip_val or 1.0
    torch.manual_seed(0)
    _plain_steps(copy.deepcopy(template), batches[:3], clip)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(args.rounds):
        times["lightning"].append(_lightning_steps(copy.deepcopy(template), batches, clip))
        times["plain"].append(_plain_steps(copy.deepcopy(template), batches, clip))
    rows = []
    best = {name: min(values) for name, values in times.items()}
    for name in ("plain", "lightning"):
        rows.append({"loop": name, "steps": args.steps, "best s": best[name],
                     "median s": sorted(times[name])[len(times[name]) // 2],
                     "samples/s": args.steps * batch_size / best[name]})
    rows.append({"loop": "lightning overhead", "best s": best["lightning"] - best["plain"],
                 "samples/s": None, "median s": None, "steps": None})
    meta = {"batch_size": batch_size, "image_size": data.hparams.image_size,
            "overhead_pct_best": 100 * (best["lightning"] / best["plain"] - 1),
            "text_model": template.config.text.model_name, "vision": template.hparams.bi_encoder["vision"],
            "note": "Lightning's time includes Trainer setup/teardown inside fit(); batches cached in memory"}
    print(f"Lightning overhead vs plain loop (best of {args.rounds}): {meta['overhead_pct_best']:+.1f}%")
    return BenchResult(rows, meta)
