"""``SweepMetricsCallback``: a run's validation metrics in a JSON file, for a sweep runner in another process."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from mmai.io import atomic_write_text


class SweepMetricsCallback(L.Callback):
    """Write the run's metrics to a JSON file after every validation and at the end of fit.

    The file holds ``validations`` (one ``{"epoch", "step", key: value, ...}`` per validation),
    ``final`` (``trainer.callback_metrics`` when last written) and ``finished`` (fit ended). It is
    how the sweep runner reads the metric of a run it started as another process.

    Args:
        path: the JSON file (its folder is created).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)
        self.validations: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.validations.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                 **_floats(trainer.callback_metrics)})
        self._write(trainer, finished=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(trainer, finished=True)

    def _write(self, trainer: L.Trainer, finished: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"finished": finished, "validations": self.validations, "final": _floats(trainer.callback_metrics)}
        atomic_write_text(self.path, json.dumps(payload, indent=1))  # a reader never sees half a file


def _floats(metrics: dict) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if getattr(value, "numel", lambda: 1)() == 1}
