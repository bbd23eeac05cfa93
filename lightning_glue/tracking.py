"""Weights & Biases tracking: online with credentials, offline (and a `wandb sync` hint) without.

The run records the resolved config (LightningCLI saves it), the code version (git commit and
whether the tree was dirty) and the dataset manifest (split, counts, shard hashes).
"""

from __future__ import annotations

import netrc
import os
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_available() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or in ``~/.netrc`` for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def code_version(root: Path | None = None) -> dict:
    """The installed package's version, and the git commit of the code with whether the working
    tree had uncommitted changes: only when ``root`` (default: the folder holding the packages) is
    itself a git checkout. An installed copy (site-packages) records no commit rather than the
    commit of whatever repository happens to enclose the environment."""
    root = root or Path(__file__).resolve().parent.parent
    facts: dict = {"package_version": _package_version(), "commit": None, "dirty": None}
    if not (root / ".git").exists():
        return facts
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return facts
    return {**facts, "commit": commit or None, "dirty": dirty if commit else None}


def _package_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("mmai")
    except metadata.PackageNotFoundError:
        return None


class MMAIWandbLogger(WandbLogger):
    """``WandbLogger`` that goes offline by itself when there are no credentials.

    ``WANDB_MODE`` set by the user always wins. Offline runs are written under ``save_dir`` and
    uploaded later with ``wandb sync``.
    """

    def __init__(self, project: str = "mmai", save_dir: str = "runs", name: str | None = None,
                 offline: bool | None = None, log_model: bool = False, **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "") in {"offline", "dryrun"} or (
                not wandb_credentials_available() and os.environ.get("WANDB_MODE") != "online")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, name=name, offline=offline,
                         log_model=log_model, **kwargs)
        # WandbLogger always hands wandb.init ``anonymous`` (None when unset), a setting wandb
        # deprecated: unset, it is left out, so wandb does not warn about a setting nobody chose.
        init = getattr(self, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        if offline:
            rank_zero_info(f"W&B is offline (no credentials found): the run is saved under {save_dir}/wandb; "
                           f"upload it later with `wandb sync {save_dir}/wandb/offline-run-*`")


def finish_wandb_run(exit_code: int = 0) -> None:
    """End the current W&B run, if this process started one: the next run's logger (the next
    ablation row, the next sweep trial) would otherwise reuse it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
