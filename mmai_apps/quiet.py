"""What the apps leave out of their output: third-party warnings and notices known to be harmless.

Each message below was read and checked against this project's code; anything else still shows,
and ``--debug`` (or ``MMAI_DEBUG=1``) shows everything. Only the apps install these filters: the
library and the adapters never touch the warning or logging configuration of the process.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

#: Third-party warnings known to be harmless in these apps:
#:
#: * a deprecation inside Lightning's own pytree helper (Lightning calls the old API, not us);
#: * webdataset's note that ``with_length`` does not change an epoch, and Lightning's caution that
#:   an ``IterableDataset`` with ``__len__`` may miscount with several workers: the training
#:   pipeline deals shards to workers itself and cuts every worker's stream with ``with_epoch``,
#:   so its length (``with_epoch`` batches times workers) is exact by construction;
#: * LightningCLI's caution about ``args`` beside ``sys.argv`` (the apps pass ``args`` on purpose).
KNOWN_HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"\.with_length\(\) only sets the value of __len__",
    r"Your `IterableDataset` has `__len__` defined",
    r"LightningCLI's args parameter is intended to run from within Python",
)

#: Log records known to be noise: Lightning's advertisements of its cloud services, logged as
#: info by every Trainer ("💡 Tip: ... try installing litlogger / litmodels").
KNOWN_HARMLESS_LOG_MESSAGES = (r"^💡 Tip: ",)

#: the loggers that Lightning's ``rank_zero_info`` writes through (names of both packagings)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


def quiet_known_warnings() -> None:
    """Hide :data:`KNOWN_HARMLESS_WARNINGS` and :data:`KNOWN_HARMLESS_LOG_MESSAGES` in this process.

    Call it before Lightning is imported or after; calling it twice adds nothing twice."""
    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropMessages) for existing in logger.filters):
            logger.addFilter(DropMessages(KNOWN_HARMLESS_LOG_MESSAGES))


def quiet_runs() -> None:
    """For the apps that run several trainings in one process and print their own table of them
    (``mmai ablate``, ``mmai demo``): no model summary per run, and no W&B history/summary panel
    per run (``WANDB_QUIET``; set ``WANDB_QUIET=false`` to see them). Each run still says where
    its offline W&B run is and how to sync it."""
    from mmai_apps import lightning_cli

    os.environ.setdefault("WANDB_QUIET", "true")
    lightning_cli.TRAINER_DEFAULTS.setdefault("enable_model_summary", False)
