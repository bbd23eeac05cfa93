"""Finding the edges of the episodic graph without comparing all pairs.

Two kinds of association link memories (as in episodic-memory models such as Tulving's
"what-where-when" and the temporal-context model of Howard & Kahana, 2002):

* **temporal** — two memories recorded within ``window_s`` seconds of each other (optionally at
  the same place). Found by sorting the timestamps once and sweeping: for each memory a binary
  search gives the last memory inside its window, and the pairs in between are enumerated with
  vectorised index arithmetic. Cost ``O(N log N + edges)``.
* **semantic** — two memories whose embeddings have cosine ``>= threshold``. Found with a FAISS
  kNN search of every memory against all memories (``max_degree + 1`` neighbours, so the node
  itself can be dropped), keeping neighbours above the threshold. Cost ``O(N · search)``.

All functions work on positions ``0..N-1`` and return each undirected pair once, ``i < j``.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from mmai.retrieval.index import VectorIndex

_SEARCH_CHUNK = 8_192  # queries per FAISS search call


def _window_pairs(sorted_times: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)``, ``a < b``, of sorted positions with ``t[b] - t[a] <= window_s``."""
    count = len(sorted_times)
    ends = np.searchsorted(sorted_times, sorted_times + window_s, side="right")  # (N,)
    partners = ends - np.arange(count) - 1  # (N,) how many later memories fall in the window
    firsts = np.repeat(np.arange(count), partners)  # (P,)
    offsets = np.arange(partners.sum()) - np.repeat(np.cumsum(partners) - partners, partners)  # (P,)
    return firsts, firsts + 1 + offsets


def temporal_pairs(
    timestamps: np.ndarray, window_s: float, places: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memories recorded within ``window_s`` seconds of each other (inclusive).

    Args:
        timestamps: ``(N,)`` unix seconds; NaN (unknown time, as in real CUB) has no temporal edge.
        window_s: the temporal window in seconds (``>= 0``).
        places: ``(N,)`` place labels; when given, only memories at the same place are paired.

    Returns:
        ``(rows, cols, gaps)``: int64 positions with ``rows < cols`` and the float64 time gaps
        ``|t[row] - t[col]|`` in seconds, one entry per pair.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    groups = [np.arange(len(timestamps))] if places is None else _group_positions(places)
    rows, cols = [], []
    for members in groups:
        members = members[np.isfinite(timestamps[members])]
        order = members[np.argsort(timestamps[members], kind="stable")]  # (n,) sorted by time
        firsts, seconds = _window_pairs(timestamps[order], window_s)
        rows.append(order[firsts])
        cols.append(order[seconds])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
    return rows.astype(np.int64), cols.astype(np.int64), np.abs(timestamps[rows] - timestamps[cols])


def _group_positions(labels: np.ndarray) -> list[np.ndarray]:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def semantic_pairs(
    embeddings: np.ndarray,
    threshold: float,
    max_degree: int,
    *,
    index_kind: str = "flat",
    index: VectorIndex | None = None,
    ids: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memories whose embeddings have cosine ``>= threshold``, at most ``max_degree`` per memory.

    Each memory keeps its ``max_degree`` most similar other memories that pass the threshold
    (:func:`semantic_choices`); the undirected edge set is the union of these choices (so a
    popular memory can end up with more than ``max_degree`` edges, chosen by others).

    Args:
        embeddings: ``(N, D)`` unit vectors.
        threshold: minimum cosine, e.g. 0.85.
        max_degree: neighbours each memory may choose (e.g. 10).
        index_kind: ``"flat"`` (exact, default) or ``"hnsw"`` (approximate, faster for large N)
            for the index built here.
        index: an existing :class:`VectorIndex` holding these memories (e.g. the stage-1
            index), searched instead of building one; then ``ids`` ``(N,)`` gives the memory id
            of each embedding row, and results outside ``ids`` are ignored.
        progress: tqdm bar over query chunks when N is large.

    Returns:
        ``(rows, cols, cosines)``: int64 positions with ``rows < cols`` and float32 cosines.
    """
    found, scores = semantic_choices(embeddings, threshold, max_degree, index_kind=index_kind, index=index,
                                     ids=ids, progress=progress)
    return choice_pairs(found, scores)


def semantic_choices(
    embeddings: np.ndarray,
    threshold: float,
    max_degree: int,
    *,
    index_kind: str = "flat",
    index: VectorIndex | None = None,
    ids: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Each memory's chosen semantic neighbours: its ``max_degree`` most similar others with
    cosine ``>= threshold``, best first.

    Arguments as :func:`semantic_pairs`; ``queries`` ``(Q,)`` positions limits the search to
    those memories (default: all), as an incremental update needs.

    Returns:
        ``(found, cosines)``: ``(Q, max_degree)`` int64 positions (``-1``: no choice) and
        float32 cosines (``-inf`` where there is no choice).
    """
    count = len(embeddings)
    queries = np.arange(count) if queries is None else np.asarray(queries, dtype=np.int64)
    width = max(int(max_degree), 0)
    empty = (np.full((len(queries), width), -1, np.int64), np.full((len(queries), width), -np.inf, np.float32))
    if count < 2 or width < 1 or len(queries) == 0:
        return empty
    if index is None:
        index, ids = VectorIndex.build(embeddings, np.arange(count), kind=index_kind, progress=progress), None
    elif ids is None or len(ids) != count:
        raise ValueError("semantic_pairs: with an existing index, pass ids (N,) naming each embedding row")
    neighbours = min(width + 1, len(index))
    found_ids, found_scores = [], []
    starts = range(0, len(queries), _SEARCH_CHUNK)
    for start in tqdm(starts, desc="semantic edges", disable=not progress or len(starts) <= 1):
        chunk = queries[start : start + _SEARCH_CHUNK]
        scores, found = index.search(embeddings[chunk], neighbours)  # (n, k+1)
        found_scores.append(scores)
        found_ids.append(found if ids is None else _positions(found, ids))
    scores, found = _drop_self(np.concatenate(found_scores), np.concatenate(found_ids), neighbours - 1, queries)
    keep = (found >= 0) & (scores >= threshold)
    choices, cosines = empty
    choices[:, : found.shape[1]] = np.where(keep, found, -1)
    cosines[:, : found.shape[1]] = np.where(keep, scores, -np.inf)
    return _best_first(choices, cosines)


def choice_pairs(found: np.ndarray, cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The undirected edges of :func:`semantic_choices` (row ``i`` of ``found`` is memory ``i``):
    ``(rows, cols, cosines)`` with ``rows < cols``, each pair once."""
    rows = np.repeat(np.arange(len(found)), found.shape[1])  # (N * k,)
    keep = found.ravel() >= 0
    return _unique_pairs(rows[keep], found.ravel()[keep], cosines.ravel()[keep])


def merge_choices(
    found: np.ndarray, cosines: np.ndarray, candidates: np.ndarray, candidate_cosines: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add new candidates to each memory's choices and keep the best ``k`` that pass the threshold.

    Exact when ``found`` holds each memory's top ``k`` among the old memories and ``candidates``
    ``(N, C)`` are all the new ones with their cosines: the top ``k`` of the union is the top ``k``
    among old and new memories.
    """
    width = found.shape[1]
    candidate_cosines = np.where(candidate_cosines >= threshold, candidate_cosines, -np.inf).astype(np.float32)
    candidates = np.where(np.isfinite(candidate_cosines), candidates, -1)
    merged, merged_cosines = np.concatenate([found, candidates], axis=1), np.concatenate([cosines, candidate_cosines], 1)
    return _best_first(merged, merged_cosines, width)


def _best_first(found: np.ndarray, cosines: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by descending cosine (ties by position), cut to ``width`` columns."""
    width = found.shape[1] if width is None else width
    order = np.lexsort((found, -cosines.astype(np.float64)), axis=1)[:, :width]
    return np.take_along_axis(found, order, 1), np.take_along_axis(cosines, order, 1)


def _positions(found: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Memory ids -> row positions in ``ids`` (``-1`` for ids not among them)."""
    order = np.argsort(ids, kind="stable")
    slots = np.clip(np.searchsorted(ids[order], found), 0, len(ids) - 1)
    return np.where(ids[order][slots] == found, order[slots], -1)


def _drop_self(
    scores: np.ndarray, ids: np.ndarray, keep: int, own: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own position ``own`` (default: the row number; if absent, its last
    result); ``keep`` columns remain."""
    own = np.arange(len(ids)) if own is None else own
    is_self = ids == own[:, None]  # (N, k+1)
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    is_self &= np.cumsum(is_self, axis=1) == 1  # drop exactly one entry per row
    return scores[~is_self].reshape(len(ids), keep), ids[~is_self].reshape(len(ids), keep)


def _unique_pairs(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical ``i < j`` pairs, duplicates merged (keeping the larger score)."""
    low, high = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((-scores, high, low))
    low, high, scores = low[order], high[order], scores[order]
    first = np.ones(len(low), dtype=bool)
    first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return low[first].astype(np.int64), high[first].astype(np.int64), scores[first].astype(np.float32)
