"""Which memories to keep under a budget: access-aware forgetting policies (issue 22, seed 004).

Every policy scores each memory from its *usage* (:class:`Usage`: when it was made, how often and
when it was last opened) and :func:`keep` keeps the ``budget`` best scored; the rest may be
forgotten. The scores:

* ``random``: a seeded random order (the control).
* ``newest``: the creation time.
* ``lru``: least recently used goes first: the last access (the creation time if never opened).
* ``lfu``: least frequently used goes first: the access count (ties: the more recent access).
* ``retention`` (MemoryBank, Zhong et al., AAAI 2024, after Ebbinghaus): the probability of still
  being recalled, ``R = exp(-dt / S)``, ``dt`` the time since the last access (or creation) and
  the strength ``S = strength_days * (1 + access count)``: every recall resets ``dt`` and makes
  the memory decay more slowly. Its *order* does not depend on ``strength_days`` (the order of
  ``dt / (1 + count)``); the value is the chance of recall the command line shows.
* ``generative_agents`` (Park et al., UIST 2023): ``recency + importance + relevance``, each
  min-max normalised to [0, 1]; recency ``decay ** hours since the last access``; importance
  :func:`derived_importance` (or given); relevance the best cosine of the memory to the user's
  recent queries (``relevance``; 0 without them).

:func:`derived_importance` learns importance from use, not only from the user: how often a memory
was recalled (``log1p`` of its count, scaled to [0, 1]) and how unusual it is (one minus its mean
cosine to its nearest neighbours, scaled to [0, 1]), averaged; a user-given importance, where one
exists, takes its place.

The usage of a :class:`~mmai.memory.personal.PersonalMemory` comes from its access log
(:class:`AccessLog`: ``ROOT/access.jsonl``, one line per opened memory), kept beside the journal:
an open appends a line and does not rewrite Chroma, so opening a result never invalidates the
FAISS index or the graph, ``rebuild`` (which restores Chroma from the journal) leaves it as it
is, and a store without the file opens with every memory never accessed (count 0).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["ACCESS_LOG", "POLICIES", "AccessLog", "AccessStats", "Usage", "derived_importance", "keep",
           "parse_budget", "scores"]

ACCESS_LOG = "access.jsonl"
#: policy name -> one line, for ``--help`` and the benchmark.
POLICIES = {
    "random": "a seeded random order (control)",
    "newest": "keep the newest",
    "lru": "forget the least recently used (last access, else creation)",
    "lfu": "forget the least frequently used (access count)",
    "retention": "MemoryBank's retention exp(-dt/S), S = strength x (1 + recalls)",
    "generative_agents": "Generative Agents' recency + importance + relevance",
}
STRENGTH_DAYS = 7.0  #: the retention's strength of a never-recalled memory, in days
DECAY_PER_HOUR = 0.995  #: Generative Agents' recency decay per hour since the last access


@dataclasses.dataclass
class Usage:
    """What the policies know of each memory (all arrays ``(N,)``, one row per memory).

    Attributes:
        created: creation time, unix seconds.
        counts: how often it was opened.
        last: the last open, unix seconds; NaN when never opened.
    """

    created: np.ndarray
    counts: np.ndarray
    last: np.ndarray

    def __post_init__(self) -> None:
        self.created = np.asarray(self.created, np.float64)
        self.counts = np.asarray(self.counts, np.float64)
        self.last = np.asarray(self.last, np.float64)
        if not (self.created.shape == self.counts.shape == self.last.shape) or self.created.ndim != 1:
            raise ValueError(f"Usage: created, counts and last must be (N,) arrays of one length, got "
                             f"{self.created.shape}, {self.counts.shape}, {self.last.shape}")

    def __len__(self) -> int:
        return len(self.created)

    @property
    def last_use(self) -> np.ndarray:
        """The last access, else the creation time."""
        return np.where(np.isnan(self.last), self.created, self.last)


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high - low <= 0 else (values - low) / (high - low)


def derived_importance(counts: np.ndarray, embeddings: np.ndarray | None = None, neighbours: int = 10,
                       given: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` importance in [0, 1] from use: the mean of how often a memory was recalled
    (``log1p(count) / log1p(max count)``) and how unusual it is (one minus its mean cosine to its
    ``neighbours`` nearest other memories, min-max scaled; needs ``embeddings`` (N, E),
    L2-normalised; without them, recall alone). ``given`` (N,) user importances (NaN: none) replace
    the derived value where present."""
    counts = np.asarray(counts, np.float64)
    top = counts.max() if len(counts) else 0.0
    recalled = np.zeros_like(counts) if top <= 0 else np.log1p(counts) / np.log1p(top)
    importance = recalled
    if embeddings is not None and len(counts) > 1:
        vectors = np.asarray(embeddings, np.float64)
        unusual = np.empty(len(counts))
        take = min(neighbours, len(counts) - 1)
        for first in range(0, len(counts), 2048):  # (chunk, N) similarities at a time
            block = vectors[first:first + 2048] @ vectors.T
            rows = np.arange(block.shape[0])
            block[rows, first + rows] = -np.inf  # not its own neighbour
            nearest = -np.partition(-block, take - 1, axis=1)[:, :take]
            unusual[first:first + block.shape[0]] = 1.0 - nearest.mean(axis=1)
        importance = 0.5 * recalled + 0.5 * _unit(unusual)
    if given is not None:
        given = np.asarray(given, np.float64)
        importance = np.where(np.isnan(given), importance, np.clip(given, 0.0, 1.0))
    return importance


def scores(policy: str, usage: Usage, now: float, *, seed: int = 0, strength_days: float = STRENGTH_DAYS,
           decay_per_hour: float = DECAY_PER_HOUR, importance: np.ndarray | None = None,
           relevance: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` keep scores of ``policy`` (higher: keep); see the module docstring.

    Raises:
        ValueError: an unknown policy or a non-positive strength or decay.
    """
    if policy not in POLICIES:
        raise ValueError(f"forget: unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    count = len(usage)
    if policy == "random":
        return np.random.default_rng(seed).random(count)
    if policy == "newest":
        return usage.created.copy()
    if policy == "lru":
        return usage.last_use
    if policy == "lfu":
        return usage.counts + _unit(usage.last_use) * 0.5 if count else usage.counts  # ties: the recent
    elapsed_s = np.maximum(now - usage.last_use, 0.0)
    if policy == "retention":
        if strength_days <= 0:
            raise ValueError(f"forget: the retention's strength must be > 0 days, got {strength_days}")
        return np.exp(-elapsed_s / (strength_days * 86_400.0 * (1.0 + usage.counts)))
    if not 0 < decay_per_hour <= 1:
        raise ValueError(f"forget: Generative Agents' decay must be in (0, 1], got {decay_per_hour}")
    recency = np.exp(np.log(decay_per_hour) * elapsed_s / 3600.0)
    importance = derived_importance(usage.counts) if importance is None else np.asarray(importance, np.float64)
    relevance = np.zeros(count) if relevance is None else np.asarray(relevance, np.float64)
    return _unit(recency) + _unit(importance) + _unit(relevance)


def keep(keep_scores: np.ndarray, budget: int, created: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the ``budget`` best scored memories (ties: the newer, then the lower index)."""
    keep_scores = np.asarray(keep_scores, np.float64)
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"forget: the budget must be >= 0 memories, got {budget}")
    created = np.zeros(len(keep_scores)) if created is None else np.asarray(created, np.float64)
    order = np.lexsort((np.arange(len(keep_scores)), -created, -keep_scores))
    return np.sort(order[:budget])


def parse_budget(text: str, total: int) -> int:
    """``--budget``: memories to keep, ``N`` or ``P%`` of ``total`` (rounded down)."""
    value = str(text).strip()
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            if not 0 <= share <= 100 or not math.isfinite(share):
                raise ValueError
            return int(total * share / 100.0)
        number = int(value)
        if number < 0:
            raise ValueError
        return number
    except ValueError:
        raise ValueError(f"forget: --budget {text!r} is not a count of memories to keep (e.g. 500) or a "
                         "share (e.g. 25%)") from None


# ---------------------------------------------------------------------- the access log
@dataclasses.dataclass
class AccessStats:
    """One memory's accesses: ``count`` opens, the ``last`` one (unix s; None: never)."""

    count: int = 0
    last: float | None = None


class AccessLog:
    """``ROOT/access.jsonl``: one line ``{"id", "time", "via"}`` per opened memory.

    Append-only (a torn last line, from a kill mid-write, is skipped when read); a missing file is
    a store whose memories were never opened. Appends and :meth:`prune`'s rewrite hold an
    ``fcntl`` lock on ``access.jsonl.lock`` (held for one write, never across a search or an
    ingest), so an open from another process during a forget is not lost.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.path = Path(root) / ACCESS_LOG

    @contextmanager
    def _locked(self):
        with open(self.path.with_name(ACCESS_LOG + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, ids: Iterable[str], when: float | None = None, via: str = "open") -> None:
        """Append one line per id (and fsync)."""
        when = time.time() if when is None else float(when)
        lines = "".join(json.dumps({"id": str(memory_id), "time": when, "via": via}) + "\n" for memory_id in ids)
        if not lines:
            return
        with self._locked(), open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.write(lines.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> dict[str, AccessStats]:
        """Memory id -> :class:`AccessStats` (ids never opened are absent)."""
        stats: dict[str, AccessStats] = {}
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return stats
        with handle:
            for raw in handle:
                try:
                    entry = json.loads(raw)
                    memory_id, when = str(entry["id"]), float(entry["time"])
                except (ValueError, TypeError, KeyError):
                    continue  # a torn line
                found = stats.setdefault(memory_id, AccessStats())
                found.count += 1
                found.last = when if found.last is None else max(found.last, when)
        return stats

    def prune(self, stored: set[str]) -> int:
        """Rewrite the log without the lines of memories no longer ``stored`` (atomically);
        returns how many lines went."""
        with self._locked():
            return self._prune(stored)

    def _prune(self, stored: set[str]) -> int:
        from mmai.memory.files import atomic_write

        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        kept = []
        for raw in lines:
            try:
                if str(json.loads(raw)["id"]) not in stored:
                    continue
            except (ValueError, TypeError, KeyError):
                continue  # a torn line goes too
            kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
        if len(kept) != len(lines):
            data = b"".join(kept)
            atomic_write(self.path, lambda file: file.write(data))
        return len(lines) - len(kept)

    def usage(self, ids: Sequence[str], created: Sequence[float]) -> Usage:
        """The :class:`Usage` of ``ids`` (their creation times given), from the log."""
        stats = self.read()
        counts = [stats[i].count if i in stats else 0 for i in ids]
        last = [stats[i].last if i in stats and stats[i].last is not None else math.nan for i in ids]
        return Usage(np.asarray(created, np.float64), np.asarray(counts), np.asarray(last))


def describe_usage(stats: AccessStats | None) -> str:
    """``opened 3 times, last 2024-05-01 07:00 UTC`` or ``never opened``."""
    if stats is None or not stats.count:
        return "never opened"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stats.last)) if stats.last is not None else "?"
    return f"opened {stats.count} time{'s' if stats.count != 1 else ''}, last {when}"


def usage_json(stats: AccessStats | None) -> dict[str, Any]:
    """``{"access_count", "last_accessed"}`` (``last_accessed`` None: never)."""
    return {"access_count": 0 if stats is None else stats.count,
            "last_accessed": None if stats is None else stats.last}
