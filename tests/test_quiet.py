"""The apps hide the third-party warnings and notices known to be harmless, and only those."""

from __future__ import annotations

import logging
import os
import warnings

from mmai_apps.quiet import RANK_ZERO_LOGGERS, quiet_known_warnings


def test_the_known_harmless_warnings_are_hidden_and_real_ones_stay():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("Your `IterableDataset` has `__len__` defined. In combination with multi-process data "
                      "loading (when num_workers > 1), `__len__` could be inaccurate")
        warnings.warn("LightningCLI's args parameter is intended to run from within Python like if it were")
        warnings.warn("The number of training batches (3) is smaller than the logging interval")  # real
    assert [str(w.message) for w in caught] == ["The number of training batches (3) is smaller than the logging interval"]


def test_lightning_advertisements_are_dropped_and_its_other_notices_kept(caplog):
    quiet_known_warnings()
    quiet_known_warnings()  # idempotent: one filter per logger
    logger = logging.getLogger(RANK_ZERO_LOGGERS[0])
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("GPU available: False, used: False")
    assert [record.getMessage() for record in caplog.records] == ["GPU available: False, used: False"]


def test_the_wandb_logger_leaves_out_the_deprecated_anonymous_setting_unless_given(tmp_path):
    from lightning_glue.tracking import MMAIWandbLogger

    assert "anonymous" not in MMAIWandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
    assert MMAIWandbLogger(save_dir=str(tmp_path), offline=True, anonymous=True)._wandb_init["anonymous"] == "allow"


def test_quiet_runs_turn_off_the_per_run_model_summary_and_wandb_panel(synth_shards, monkeypatch):
    from lightning.pytorch.callbacks import ModelSummary

    from fit_helpers import BASE
    from mmai_apps import lightning_cli
    from mmai_apps.quiet import quiet_runs

    monkeypatch.setattr(lightning_cli, "TRAINER_DEFAULTS", {})
    monkeypatch.delenv("WANDB_QUIET", raising=False)
    args = [*BASE, "--data.shard_dir", str(synth_shards), "--data.num_workers", "0", "--trainer.logger", "false"]
    loud = lightning_cli.cli_main(args, run=False)
    assert any(isinstance(callback, ModelSummary) for callback in loud.trainer.callbacks)
    quiet_runs()
    assert lightning_cli.TRAINER_DEFAULTS == {"enable_model_summary": False}
    assert os.environ["WANDB_QUIET"] == "true"
    quiet = lightning_cli.cli_main(args, run=False)
    assert not any(isinstance(callback, ModelSummary) for callback in quiet.trainer.callbacks)
    flag = lightning_cli.cli_main([*args, "--trainer.enable_model_summary", "true"], run=False)
    assert any(isinstance(callback, ModelSummary) for callback in flag.trainer.callbacks)  # a flag still wins
