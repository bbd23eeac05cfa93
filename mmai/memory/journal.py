"""The write side of a memory store's root: the writers' lock, the ingest journal, the generation.

* **Lock.** Writers (ingest, forget, consolidate, rebuild) take an exclusive ``fcntl`` lock on
  ``root/.lock``, so two processes never write at once. A writer that finds it held prints who
  holds it (the holder writes its pid and command line into the file) and waits, at most
  ``lock_timeout`` seconds, then raises :class:`StoreBusyError`. Within one object the lock is
  re-entrant: nested writes share it.
* **Journal.** ``root/ingest.journal.jsonl`` gets one line per ingested batch, naming its ids and
  holding their records (metadata and document), after the batch is in Chroma (flushed and
  fsynced): a memory is *confirmed* once it is there. Changes of metadata (``updated``) and
  forgets (``forgotten``) are journaled too, so that the journal and the media copies are the
  store of record: :meth:`Journal.replay` gives the memories that should be in Chroma, and
  ``mmai memory rebuild`` restores a lost or damaged Chroma database from it. A torn last line
  (a kill mid-append) is skipped by the replay and never glued onto the next record.
* **Generation.** Every write to Chroma replaces ``root/.generation`` with a new token; readers
  compare it with the one they last saw to learn that another process wrote (an embedded Chroma
  client does not see other processes' writes until it is reopened). A damaged token (not the
  text this module writes) is an error naming the file, repaired by ``mmai memory rebuild``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mmai.memory.files import atomic_write

__all__ = ["DamagedGenerationError", "Journal", "JournalState", "StoreBusyError"]

_TOKEN = re.compile(r"[0-9a-f]{32} [0-9]+\n?")


class DamagedGenerationError(ValueError):
    """``root/.generation`` does not hold a generation token (e.g. overwritten with garbage)."""


@dataclasses.dataclass
class JournalState:
    """What the journal says the store holds (:meth:`Journal.replay`).

    Attributes:
        records: ``{id: {"metadata": dict, "document": str | None}}`` of every confirmed memory
            not forgotten since, with its latest metadata.
        bare: confirmed ids (not forgotten) whose line holds no record (journals written before
            records were kept): only their id and path are known.
        forgotten: ids forgotten after being confirmed.
        bad_lines: 1-based numbers of lines that do not parse (a torn last line after a kill).
    """

    records: dict[str, dict] = dataclasses.field(default_factory=dict)
    bare: dict[str, str] = dataclasses.field(default_factory=dict)
    forgotten: set[str] = dataclasses.field(default_factory=set)
    why: dict[str, str] = dataclasses.field(default_factory=dict)  # forgotten id -> its line's "why"
    bad_lines: list[int] = dataclasses.field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        """Every memory the journal says is stored."""
        return set(self.records) | set(self.bare)


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
                 on_lock: Callable[[], None] = lambda: None, *, repair: bool = False) -> None:
        self.root, self.lock_timeout, self._mutex, self._on_lock = Path(root), lock_timeout, mutex, on_lock
        self._depth = 0
        self.on_changed: Callable[[], None] = lambda: None  # called after this process wrote Chroma
        self.repaired_generation = False
        try:
            self.generation = self.read_generation()  # the token this process last saw
        except DamagedGenerationError:
            if not repair:
                raise
            self.changed()  # a fresh token: readers elsewhere reopen, which is all it does
            self.repaired_generation = True

    @property
    def journal_path(self) -> Path:
        return self.root / "ingest.journal.jsonl"

    @property
    def generation_path(self) -> Path:
        return self.root / ".generation"

    # ------------------------------------------------------------------ generation
    def read_generation(self) -> str:
        """The token on disk (``""`` when none was written yet).

        Raises:
            DamagedGenerationError: the file holds something else (named, with what to do).
        """
        try:
            data = self.generation_path.read_bytes()
        except FileNotFoundError:
            return ""
        except OSError as error:
            raise DamagedGenerationError(f"{self.generation_path} cannot be read ({error.strerror or error}); "
                                         "fix its permissions, or run `mmai memory rebuild` to write a new one") from None
        text = data.decode("ascii", errors="replace")
        if not _TOKEN.fullmatch(text):
            raise DamagedGenerationError(
                f"{self.generation_path} is damaged (holds {len(data)} bytes that are not a generation token, "
                f"e.g. {data[:16]!r}); run `mmai memory rebuild --root {self.root}` to write a new one "
                "(the file holds no memories: nothing is lost)")
        return text

    def changed(self) -> None:
        """Record that this process wrote Chroma (readers elsewhere see a new generation and reopen)."""
        self.generation = f"{uuid.uuid4().hex} {os.getpid()}\n"
        atomic_write(self.generation_path, lambda file: file.write(self.generation.encode()))
        self.on_changed()

    # ------------------------------------------------------------------ journal
    def confirm(self, ids: list[str], paths: list[str], records: list[dict] | None = None) -> None:
        """Append (and fsync) the line that confirms a batch of memories already in Chroma.

        Args:
            ids, paths: the memories and the files they were read from.
            records: per memory ``{"metadata": dict, "document": str | None}`` (what Chroma
                holds), from which ``rebuild`` restores a lost Chroma.
        """
        entry = {"time": time.time(), "pid": os.getpid(), "confirmed": ids, "paths": paths}
        if records is not None:
            entry["records"] = records
        self._append(entry)

    def updated(self, ids: list[str], metadatas: list[dict]) -> None:
        """Journal new metadata of stored memories (new sources, a merge)."""
        if ids:
            self._append({"time": time.time(), "pid": os.getpid(), "updated": ids, "metadatas": metadatas})

    def forgotten(self, ids: list[str], why: str = "forget") -> None:
        """Journal that memories were removed (``rebuild`` must not bring them back)."""
        if ids:
            self._append({"time": time.time(), "pid": os.getpid(), "forgotten": ids, "why": why})

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry) + "\n"
        with open(self.journal_path, "a+b") as journal:
            journal.seek(0, os.SEEK_END)
            if journal.tell():
                journal.seek(-1, os.SEEK_END)
                if journal.read(1) != b"\n":  # a torn last line (killed mid-append): end it first
                    line = "\n" + line
            journal.write(line.encode("utf-8"))
            journal.flush()
            os.fsync(journal.fileno())

    def replay(self) -> JournalState:
        """What the journal says the store holds (see :class:`JournalState`)."""
        state = JournalState()
        try:
            handle = open(self.journal_path, "rb")
        except FileNotFoundError:
            return state
        with handle:
            for number, raw in enumerate(handle, 1):
                try:
                    entry = json.loads(raw)
                    if not isinstance(entry, dict):
                        raise ValueError(entry)
                    self._apply(state, entry)
                except (ValueError, TypeError, KeyError, AttributeError):
                    if raw.strip():
                        state.bad_lines.append(number)
        return state

    @staticmethod
    def _apply(state: JournalState, entry: dict) -> None:
        if "confirmed" in entry:
            records = entry.get("records")
            paths = entry.get("paths") or [""] * len(entry["confirmed"])
            for i, memory_id in enumerate(entry["confirmed"]):
                memory_id = str(memory_id)
                state.forgotten.discard(memory_id)
                if records is not None and isinstance(records[i], dict):
                    state.records[memory_id] = {"metadata": dict(records[i].get("metadata") or {}),
                                                "document": records[i].get("document")}
                    state.bare.pop(memory_id, None)
                elif memory_id not in state.records:
                    state.bare[memory_id] = str(paths[i]) if i < len(paths) else ""
        elif "updated" in entry:
            for memory_id, metadata in zip(entry["updated"], entry["metadatas"]):
                if memory_id in state.records and isinstance(metadata, dict):
                    state.records[memory_id]["metadata"] = dict(metadata)
        elif "forgotten" in entry:
            for memory_id in entry["forgotten"]:
                state.records.pop(memory_id, None)
                state.bare.pop(memory_id, None)
                state.forgotten.add(memory_id)
                state.why[memory_id] = str(entry.get("why", "forget"))

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

    @property
    def holds_lock(self) -> bool:
        """Whether this object holds the write lock now (inside :meth:`write_lock`)."""
        return self._depth > 0

    @contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        """The write lock if no other process holds it (``True``), else ``False`` at once, never
        waiting: a reader that repaired derived files in memory writes them only so. Does not
        call ``on_lock`` (the caller has just looked at the store)."""
        with self._mutex:
            if self._depth:
                yield True
                return
            with open(self.root / ".lock", "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                self._depth = 1
                try:
                    yield True
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
