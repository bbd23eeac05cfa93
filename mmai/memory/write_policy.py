"""Write-time decisions: ADD, MERGE or DISCARD each new memory as it is ingested.

Seed 003's write path (and Mem0's ADD / UPDATE / NOOP, Chhikara et al. 2025): a burst of photos of
one bird is one moment, and storing every frame crowds search results with near-copies. At ingest,
each new memory is compared with the memories of its *burst* — same place, same modality, at
most ``burst_s`` seconds apart, whether stored before or added earlier in this ingest — and

* **DISCARD** when its stage-1 cosine to the closest burst-mate is ``>= discard_threshold``: it
  adds nothing (the same shot saved twice, a re-encoded copy). It is not stored; its path joins
  that memory's ``sources``, as an exact duplicate's does. Nothing is deleted: the file stays
  where it is, and ``mmai memory ingest --policy keep-all`` adds it.
* **MERGE** when the cosine is ``>= merge_threshold``: a near-identical frame. It joins the burst's
  kept memory (its sources, with its own media copy) the way ``mmai memory consolidate`` merges,
  with the same undo record, so ``mmai memory consolidate --undo`` brings it back as a memory of
  its own.
* **ADD** otherwise (and always for a memory of unknown time: it has no burst).

Decisions are made in time order, so the first frame of a burst is the one kept, and a memory
merges into a *kept* memory (never into one that was itself merged or discarded).
:func:`decide` is the whole rule, on arrays; the ingester and ``mmai bench writes`` both call it.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

import numpy as np

__all__ = ["ADD", "DISCARD", "MERGE", "POLICIES", "WritePolicy", "decide"]

ADD, MERGE, DISCARD = "add", "merge", "discard"


@dataclasses.dataclass(frozen=True)
class WritePolicy:
    """How :func:`decide` treats a new memory (defaults in brackets).

    Attributes:
        merge_threshold: stage-1 cosine to a burst-mate from which a new memory is merged [0.9].
        discard_threshold: cosine from which it is discarded as adding nothing [0.99].
        burst_s: memories at most this many seconds apart (same place, same modality) are one
            burst [120].
    """

    merge_threshold: float = 0.9
    discard_threshold: float = 0.99
    burst_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.merge_threshold <= 1 or not 0 < self.discard_threshold <= 1:
            raise ValueError(f"WritePolicy: thresholds must be in (0, 1], got merge {self.merge_threshold} and "
                             f"discard {self.discard_threshold}")
        if self.discard_threshold < self.merge_threshold:
            raise ValueError(f"WritePolicy: discard_threshold {self.discard_threshold} must be >= merge_threshold "
                             f"{self.merge_threshold} (a memory that adds nothing is also near-identical)")
        if not self.burst_s >= 0:
            raise ValueError(f"WritePolicy: burst_s must be >= 0 seconds, got {self.burst_s}")


#: ``mmai memory ingest --policy``: ``keep-all`` stores every file (the default, as before);
#: ``merge`` applies :class:`WritePolicy` with its defaults.
POLICIES = {"keep-all": None, "merge": WritePolicy()}


@dataclasses.dataclass(frozen=True)
class Decision:
    """One new memory's fate: ``action`` and, for MERGE/DISCARD, the kept memory it joins
    (``target``: an id of the stored memories or of the new ones) and the cosine that decided."""

    action: str
    target: Any = None
    cosine: float = float("nan")


def decide(
    policy: WritePolicy,
    new: dict[str, Any],
    stored: dict[str, Any] | None = None,
) -> list[Decision]:
    """ADD / MERGE / DISCARD for each new memory (see the module docstring).

    Args:
        policy: the thresholds and burst window.
        new, stored: ``{"ids": (n,), "vectors": (n, D) unit, "timestamps": (n,) seconds (NaN:
            unknown), "places": (n,) str, "modalities": (n,) str}`` of the memories being
            ingested and of the stored memories they may join (only their bursts matter: pass
            the stored memories near the new ones in time, or all of them).

    Returns:
        One :class:`Decision` per new memory, in the order given.
    """
    count = len(new["ids"])
    decisions: list[Decision] = [Decision(ADD)] * count
    # the kept memories by (place, modality), each list sorted by time: stored ones, then the new
    # ones kept so far (appended in time order, so sorted too)
    pools: dict[tuple[str, str], tuple[list[float], list[Any], list[np.ndarray]]] = {}

    def pool(place: Any, modality: Any):
        return pools.setdefault((str(place), str(modality)), ([], [], []))

    if stored is not None:
        stored_times = np.asarray(stored["timestamps"], np.float64)
        for j in np.argsort(stored_times, kind="stable").tolist():
            if not np.isnan(stored_times[j]):
                times_, ids_, vectors_ = pool(stored["places"][j], stored["modalities"][j])
                times_.append(float(stored_times[j]))
                ids_.append(stored["ids"][j])
                vectors_.append(np.asarray(stored["vectors"][j], np.float32))
    stored_counts = {key: len(value[0]) for key, value in pools.items()}
    times = np.asarray(new["timestamps"], np.float64)
    vectors = np.asarray(new["vectors"], np.float32)
    order = np.lexsort((np.arange(count), np.where(np.isnan(times), np.inf, times)))  # time order, stable
    for i in order.tolist():
        if np.isnan(times[i]):
            continue  # no burst: ADD
        key = (str(new["places"][i]), str(new["modalities"][i]))
        times_, ids_, vectors_ = pool(*key)
        split = stored_counts.get(key, 0)
        near: list[int] = []
        for low, high in ((0, split), (split, len(times_))):  # two sorted runs
            first = bisect.bisect_left(times_, times[i] - policy.burst_s, low, high)
            last = bisect.bisect_right(times_, times[i] + policy.burst_s, low, high)
            near += range(first, last)
        if near:
            cosines = np.stack([vectors_[j] for j in near]) @ vectors[i]  # (c,)
            best, cosine = near[int(np.argmax(cosines))], float(np.max(cosines))
            if cosine >= policy.discard_threshold:
                decisions[i] = Decision(DISCARD, ids_[best], cosine)
                continue
            if cosine >= policy.merge_threshold:
                decisions[i] = Decision(MERGE, ids_[best], cosine)
                continue
        times_.append(float(times[i]))
        ids_.append(new["ids"][i])
        vectors_.append(vectors[i])
    return decisions
