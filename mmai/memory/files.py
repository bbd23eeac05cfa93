"""Crash-safe file writes for the memory layer: write a temporary file beside the target, then
``os.replace`` it over the target, so a reader (or a process restarted after a kill) sees the old
file or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically with ``write(file)``.

    Args:
        path: the target file (its folder must exist).
        write: fills the open binary temporary file.
        fsync: flush the data to disk before the rename (default True), so the new file also
            survives a power loss, not only a killed process.

    Returns:
        ``path``.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` atomically (no fsync: a copy can be redone from its source)."""
    with open(source, "rb") as original:
        return atomic_write(target, lambda file: shutil.copyfileobj(original, file), fsync=False)
