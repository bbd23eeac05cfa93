"""Run a function on two CPU ranks (gloo, a real process group) and collect what each returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch


def _rank_entry(rank: int, body: Callable[[int], Any], init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(body(rank), os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_two_cpu_ranks(body: Callable[[int], Any], tmp_path: Path) -> list[Any]:
    """``[body(0), body(1)]`` computed in two spawned processes of one process group.

    ``body`` must be a module-level function (it is pickled into the workers)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_entry, args=(body, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
