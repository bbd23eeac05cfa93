"""Callbacks that tests attach to real `mmai fit` runs (also in subprocesses) to record state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch


class QueueProbe(L.Callback):
    """After every training step, write this rank's queue pointer and a hash of its queues."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        queue = pl_module.model.queue
        record = {
            "step": trainer.global_step, "rank": trainer.global_rank, "world_size": trainer.world_size,
            "batch": int(batch["image_id"].shape[0]), "ptr": int(queue.ptr), "batch_ids": batch["image_id"].tolist(),
            "image_queue_sum": float(queue.image_queue.double().sum()),
            "image_ids": queue.image_id_queue.tolist(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


class StateAtStartProbe(L.Callback):
    """At the start of training, save the model's queue buffers and momentum twins to a file."""

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file

    def on_train_start(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()
                 if k.startswith("queue.") or "_m." in k}
        torch.save({"global_step": trainer.global_step, "state": state}, self.out_file)
        os.sync()


class KillAtStep(L.Callback):
    """SIGKILL this process once training reaches ``step`` (a crash with no cleanup at all)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
