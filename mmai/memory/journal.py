"""The write side of a memory store's root: the writers' lock, the ingest journal, the generation.

* **Lock.** Writers (ingest, forget, consolidate, rebuild) take an exclusive ``fcntl`` lock on
  ``root/.lock``, so two processes never write at once. A writer that finds it held prints who
  holds it (the holder writes its pid and command line into the file) and waits, at most
  ``lock_timeout`` seconds, then raises :class:`StoreBusyError`. Within one object the lock is
  re-entrant: nested writes share it.
* **Journal.** ``root/ingest.journal.jsonl`` gets one line per ingested batch, naming its ids,
  after the batch is in Chroma (flushed and fsynced): a memory is *confirmed* once it is there.
* **Generation.** Every write to Chroma replaces ``root/.generation`` with a new token; readers
  compare it with the one they last saw to learn that another process wrote (an embedded Chroma
  client does not see other processes' writes until it is reopened).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mmai.memory.files import atomic_write

__all__ = ["Journal", "StoreBusyError"]


class StoreBusyError(TimeoutError):
    """Another process held the store's write lock for longer than ``lock_timeout``."""


class Journal:
    """The lock, journal and generation token of one memory root.

    Args:
        root: the memory folder.
        lock_timeout: seconds a writer waits for another process's lock (``None``: as long as it
            takes; ``0``: refuse at once).
        mutex: the owner's re-entrant lock (held while the file lock is taken and held).
        on_lock: called once the lock is taken (the owner sees other processes' writes there).
    """

    def __init__(self, root: Path, lock_timeout: float | None, mutex: threading.RLock,
                 on_lock: Callable[[], None] = lambda: None) -> None:
        self.root, self.lock_timeout, self._mutex, self._on_lock = Path(root), lock_timeout, mutex, on_lock
        self._depth = 0
        self.generation = self.read_generation()  # the token this process last saw

    @property
    def journal_path(self) -> Path:
        return self.root / "ingest.journal.jsonl"

    @property
    def generation_path(self) -> Path:
        return self.root / ".generation"

    # ------------------------------------------------------------------ generation
    def read_generation(self) -> str:
        """The token on disk (``""`` when none was written yet)."""
        try:
            return self.generation_path.read_text(encoding="utf-8")
        except OSError:
            return ""

    def changed(self) -> None:
        """Record that this process wrote Chroma (readers elsewhere see a new generation and reopen)."""
        self.generation = f"{uuid.uuid4().hex} {os.getpid()}\n"
        atomic_write(self.generation_path, lambda file: file.write(self.generation.encode()))

    # ------------------------------------------------------------------ journal
    def confirm(self, ids: list[str], paths: list[str]) -> None:
        """Append (and fsync) the line that confirms a batch of memories already in Chroma."""
        line = json.dumps({"time": time.time(), "pid": os.getpid(), "confirmed": ids, "paths": paths}) + "\n"
        with open(self.journal_path, "a", encoding="utf-8") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())

    # ------------------------------------------------------------------ lock
    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """The store's exclusive write lock (re-entrant within this object: nested writes share it)."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with open(self.root / ".lock", "a+") as handle:
                self._acquire(handle)
                self._depth = 1
                try:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:120]})\n")
                    handle.flush()
                    self._on_lock()
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _acquire(self, handle) -> None:
        """Take the exclusive lock; while another process holds it, say so once and wait (up to
        :attr:`lock_timeout` seconds)."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        limit = self.lock_timeout
        if limit is not None and limit <= 0:
            raise StoreBusyError(f"{self.root} is being written by {holder}; try again when it is done "
                                 "(or pass --lock-timeout SECONDS to wait)")
        wait = "" if limit is None else f" (up to {limit:g} s)"
        print(f"mmai memory: {self.root} is being written by {holder}; waiting for it to finish{wait}",
              file=sys.stderr, flush=True)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StoreBusyError(f"{self.root} is still being written by {holder} after {limit:g} s; "
                                         "try again later or raise --lock-timeout") from None
                time.sleep(0.05)
