"""Atomic file writes: a reader, or a process restarted after a crash, sees the old file or the new
one, never half of one.

Every write goes to a temporary file in the target's folder (so the rename never crosses a file
system), is flushed and fsynced, ``os.replace``s the target, and then the folder is fsynced so
the rename itself survives a power loss (on POSIX; where the OS or file system cannot fsync a
folder, that step is skipped). If anything fails before the rename, the target keeps its old
content and the temporary file is removed.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: a whole payload;
* :func:`atomic_write`: a writer callback that fills the open binary file (``np.savez``,
  ``torch.save``, ``shutil.copyfileobj``...);
* :func:`atomic_open`: the same as a context manager, for writers that need the file open across
  several calls (a ``tarfile`` written sample by sample).

The new file gets the permissions any newly created file gets (``0o666`` less the umask), not
those of the file it replaces. The temporary file is ``.NAME.XXXXXXXX.tmp`` beside the target
(``NAME`` without a leading dot), hidden from ``ls`` and from globs such as ``*.json``.

Library code: standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

#: ``errno`` values of an ``fsync`` the file system does not support (on a folder, some do not).
_FSYNC_UNSUPPORTED = {errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)}
#: Folders can be opened and fsynced (POSIX); elsewhere (Windows) the folder fsync is skipped.
FOLDER_FSYNC = os.name == "posix"


def temp_path(path: Path | str) -> Path:
    """A fresh temporary file name beside ``path`` (the file is not created)."""
    path = Path(path)
    return path.with_name(f".{path.name.lstrip('.')}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: Path | str) -> bool:
    """Flush a folder's entries (a rename into it) to disk; returns False where this is not
    supported (not POSIX, a folder that cannot be opened, a file system without folder fsync).

    Raises:
        OSError: the fsync itself failed (e.g. an I/O error): the rename may not be on disk.
    """
    if not FOLDER_FSYNC:
        return False
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. a folder we may write into but not read
        return False
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno in _FSYNC_UNSUPPORTED:
            return False
        raise
    finally:
        os.close(handle)
    return True


@contextlib.contextmanager
def atomic_open(path: Path | str, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` when the ``with`` block ends normally.

    On leaving the block: flush, fsync, ``os.replace`` over ``path``, fsync of the folder. On an
    exception (any, ``KeyboardInterrupt`` included): the temporary file is removed, ``path`` is
    untouched, and the exception propagates.

    Args:
        path: the target file; its folder must exist.
        fsync: flush the file and the folder to disk (default True). False only for files that
            can be made again (a copy, a cache): the replace stays atomic for readers, but the new
            content may be lost on a power cut.

    Yields:
        The open temporary file (binary, write-only; closing it early is allowed).
    """
    path = Path(path)
    while True:
        temp = temp_path(path)
        try:
            handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            if not file.closed:
                file.flush()
                if fsync:
                    os.fsync(file.fileno())
            elif fsync:  # the writer closed it: its data are written, reopen to fsync them
                _fsync_path(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if fsync:
        fsync_dir(path.parent)


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically with ``write(file)`` on an open binary temporary file.

    Args:
        path: the target file; its folder must exist.
        write: fills the file, e.g. ``lambda f: np.savez(f, **arrays)``; if it raises, ``path``
            keeps its old content and no temporary file is left.
        fsync: see :func:`atomic_open`.

    Returns:
        ``path``.
    """
    with atomic_open(path, fsync=fsync) as file:
        write(file)
    return Path(path)


def atomic_write_bytes(path: Path | str, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns ``path``."""
    return atomic_write(path, lambda file: file.write(data), fsync=fsync)


def atomic_write_text(path: Path | str, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
