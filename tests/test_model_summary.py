"""The fit's model summary: parameters always, FLOPs only when Lightning measured them (no "Total FLOPs: 0")."""

from __future__ import annotations

import lightning as L
import torch

from callbacks import ParameterSummary
from callbacks.model_summary import NOT_MEASURED


class _Linear(L.LightningModule):
    def __init__(self, example: bool):
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)
        if example:
            self.example_input_array = torch.zeros(2, 8)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_output(module: L.LightningModule, callbacks: list, capsys) -> str:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 8)), batch_size=2)
    trainer = L.Trainer(max_steps=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, accelerator="cpu", devices=1)
    capsys.readouterr()
    trainer.fit(module, data)
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_lightning_default_summary_prints_a_total_flops_of_zero_for_a_module_without_example_input(capsys):
    # what this module works around: if Lightning stops printing the 0, ParameterSummary can go
    from lightning.pytorch.callbacks import RichModelSummary

    assert "Total FLOPs: 0" in _fit_output(_Linear(example=False), [RichModelSummary()], capsys)


def test_without_example_input_the_summary_says_flops_were_not_measured(capsys):
    out = _fit_output(_Linear(example=False), [ParameterSummary()], capsys)
    assert "Total params: 36" in out and "Trainable params: 36" in out  # 8 x 4 + 4
    assert "FLOPs" not in out.replace(NOT_MEASURED, "")  # no column, no total
    assert NOT_MEASURED in out


def test_measured_flops_are_printed(capsys):
    out = _fit_output(_Linear(example=True), [ParameterSummary()], capsys)
    assert "Total FLOPs: 128" in out  # (2 x 8) @ (8 x 4): 2 * 2 * 8 * 4 multiply-adds counted as 2
    assert NOT_MEASURED not in out


def test_mmai_fit_uses_the_parameter_summary_in_place_of_lightnings(synth_shards, monkeypatch):
    from lightning.pytorch.callbacks import ModelSummary

    from fit_helpers import tiny_args
    from mmai_apps import lightning_cli

    monkeypatch.setattr(lightning_cli, "TRAINER_DEFAULTS", {})
    cli = lightning_cli.cli_main([*tiny_args(synth_shards, "runs"), "--trainer.logger", "false"], run=False)
    summaries = [callback for callback in cli.trainer.callbacks if isinstance(callback, ModelSummary)]
    assert [type(callback) for callback in summaries] == [ParameterSummary]
    assert summaries[0]._max_depth == 1  # Lightning's default depth kept


def test_without_rich_the_summary_is_a_text_table_in_the_log(capsys, caplog, monkeypatch):
    import logging

    from callbacks import model_summary

    monkeypatch.setattr(model_summary, "_rich_available", lambda: False)  # Lightning then uses its text summary
    with caplog.at_level(logging.INFO, logger=model_summary.__name__):
        _fit_output(_Linear(example=False), [ParameterSummary()], capsys)
    text = "\n".join(record.getMessage() for record in caplog.records if record.name == model_summary.__name__)
    assert "| Name  | Type   | Params | Mode" in text and "Total params: 36" in text
    assert NOT_MEASURED in text and "Total FLOPs" not in text
