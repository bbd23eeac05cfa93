"""Crash-safe file writes for the memory layer, through the project's one atomic-write helper
(:func:`mmai.io.atomic_write`: a temporary file beside the target, fsynced, ``os.replace``d over
the target, then the folder fsynced), so a reader, or a process restarted after a kill or a power
loss, sees the old file or the new one, never half of one."""

from __future__ import annotations

import shutil
from pathlib import Path

from mmai.io import atomic_write

__all__ = ["atomic_copy", "atomic_write"]


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` atomically and durably: the store's copy of a memory's media
    must survive a power loss even after the user deletes the original."""
    with open(source, "rb") as original:
        return atomic_write(target, lambda file: shutil.copyfileobj(original, file))
