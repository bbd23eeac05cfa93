"""Entropy-driven top-down retrieval over the schema -> episode -> memory hierarchy (seed 003).

A coarse-to-fine search in the manner of RAPTOR's tree traversal (Sarthi et al., ICLR 2024) and
MemTree (Rezazadeh et al., 2024): the query meets the few hundred schema centroids first and
only the memories under the branches it keeps are scored, instead of every memory.

For one query ``q`` (unit vector) and settings ``mass``, ``entropy_stop``, ``temperature``:

1. **Schemas.** ``p = softmax(cos(q, schema centroid) / temperature)`` over the populated
   schemas. The schemas are sorted by ``p`` and kept until their cumulative probability reaches
   ``mass`` (at least one, and more until they hold ``k`` memories, so a search returns ``k``
   results whenever the memory holds them; ``mass >= 1`` keeps every schema). The normalised entropy
   ``H = -sum p log p / log S`` (in [0, 1]; 0 for one schema) says how sure the choice is.
2. **Stop or descend.** If ``H < entropy_stop`` the choice is sure: the descent stops and every
   memory of the kept schemas is scored. Otherwise the query descends one level: the *episode
   branches* of the kept schemas (the memories of one episode that belong to one kept schema,
   scored by their normalised mean embedding) get a softmax of their own, are kept up to
   ``mass`` in the same way (again at least ``k`` memories), and only their memories are scored.
3. **Memories.** Exact cosines over the memories of the kept branches; the best ``k`` are returned
   with how many memories were scored.

With ``mass >= 1`` every branch is kept at every level, so the result is flat exact search
(the exactness test). The memories are stored sorted by (schema, episode), so a kept branch is a
contiguous block: a few kept schemas are scored in place, many small episode branches by one gather.

Example:
    >>> index = TopDownIndex.from_graph(graph)                   # or TopDownIndex.build(...)
    >>> result = index.search(query_vector, k=10, settings=TopDownSettings(mass=0.9))
    >>> result.ids, result.memories_scored, result.entropy
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmai.retrieval.hierarchy import cluster_schemas, default_num_schemas, group_means, segment_episodes
from mmai.retrieval.vectors import as_ids, as_unit_vectors

__all__ = ["TopDownIndex", "TopDownResult", "TopDownSettings", "auroc"]


@dataclasses.dataclass(frozen=True)
class TopDownSettings:
    """How a top-down search prunes (defaults chosen on the validation queries of
    ``mmai bench topdown``, seeds 0-2, never on its test queries; see the README).

    The validation grid (mass 0.9-0.999, entropy stop 0 / 0.3 / 0.5 / 1.01, temperature
    0.01-0.05) chose, for the fewest vectors scored (centroids + memories) with class R@1, class
    R@10 and instance R@10 within 1 pp of flat, temperature 0.05 in every case (3 seeds x 10k and
    117,880 memories), mass 0.99 and 0.95 three times each (0.99, the more conservative, is kept)
    and an entropy stop above 1: the descent to episode branches never paid for the branch
    centroids it scores, so by default it does not run (``entropy_stop=0`` makes it always run).

    Attributes:
        mass: cumulative softmax probability of the branches kept at each level, in (0, 1]
            (1: keep every branch, i.e. flat exact search) [0.99].
        entropy_stop: stop descending below the schemas when their normalised softmax entropy
            is below this, in [0, 1+] (0: always descend to episodes; above 1: never) [1.01].
        temperature: softmax temperature over cosines (> 0) [0.05].
    """

    mass: float = 0.99
    entropy_stop: float = 1.01
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.mass <= 1:
            raise ValueError(f"top-down search: mass must be in (0, 1], got {self.mass}")
        if not self.entropy_stop >= 0:
            raise ValueError(f"top-down search: entropy_stop must be >= 0, got {self.entropy_stop}")
        if not self.temperature > 0:
            raise ValueError(f"top-down search: temperature must be > 0, got {self.temperature}")


@dataclasses.dataclass
class TopDownResult:
    """One top-down search.

    Attributes:
        ids: ``(n,)`` int64 memory ids, best first (``n = min(k, memories_scored)``).
        scores: ``(n,)`` their cosines to the query.
        memories_scored: memories whose cosine was computed.
        schemas_kept: schemas kept at level 1 (of ``schemas``).
        schemas: populated schemas scored.
        entropy: the normalised softmax entropy over the schemas, in [0, 1].
        mass: the cumulative probability of the kept schemas.
        descended: whether the search went down to episode branches (entropy >= ``entropy_stop``).
        branches_kept: episode branches kept (``0`` when it did not descend).
        branches_scored: episode branches scored (``0`` when it did not descend).
    """

    ids: np.ndarray
    scores: np.ndarray
    memories_scored: int
    schemas_kept: int
    schemas: int
    entropy: float
    mass: float
    descended: bool
    branches_kept: int = 0
    branches_scored: int = 0

    def describe(self, total: int) -> str:
        """E.g. ``"top-down: scored 1,204 of 10,000 memories (12.0%); 3 of 71 schemas (mass 0.99,
        entropy 0.41 < stop: no descent)"``."""
        share = self.memories_scored / max(total, 1)
        where = (f"descended to {self.branches_kept} of {self.branches_scored} episode branches"
                 if self.descended else "stopped at the schemas")
        return (f"top-down: scored {self.memories_scored:,} of {total:,} memories ({share:.1%}); "
                f"{self.schemas_kept} of {self.schemas} schemas kept (mass {self.mass:.3f}, entropy "
                f"{self.entropy:.2f}), {where}")


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    logits = (scores - scores.max()) / temperature
    weights = np.exp(logits)
    return weights / weights.sum()


def _normalised_entropy(probabilities: np.ndarray) -> float:
    if len(probabilities) < 2:
        return 0.0
    positive = probabilities[probabilities > 0]
    return float(-(positive * np.log(positive)).sum() / np.log(len(probabilities)))


def _keep(probabilities: np.ndarray, mass: float, sizes: np.ndarray, minimum: int) -> tuple[np.ndarray, float]:
    """Indices of the most probable entries up to cumulative ``mass`` (at least one), and more in
    the same order until they hold at least ``minimum`` memories (``sizes``: memories per entry);
    and their probability mass."""
    order = np.argsort(-probabilities, kind="stable")
    if mass >= 1:
        return order, 1.0
    cumulative = np.cumsum(probabilities[order])
    count = int(min(np.searchsorted(cumulative, mass) + 1, len(order)))
    held = np.cumsum(sizes[order])
    count = max(count, int(min(np.searchsorted(held, minimum) + 1, len(order))))
    return order[:count], float(cumulative[count - 1])


class TopDownIndex:
    """Memories sorted by (schema, episode), with the centroids a top-down search scores.

    Args:
        ids: ``(N,)`` int64 memory ids.
        embeddings: ``(N, D)`` embeddings (normalised here if needed).
        schema_of: ``(N,)`` the schema of each memory.
        schema_centroids: ``(S, D)`` unit schema centroids (rows of unpopulated schemas are ignored).
        episode_of: ``(N,)`` the episode of each memory.
    """

    def __init__(self, ids: Any, embeddings: Any, schema_of: Any, schema_centroids: Any, episode_of: Any) -> None:
        embeddings = as_unit_vectors(embeddings, name="TopDownIndex embeddings")  # (N, D)
        count = len(embeddings)
        ids = as_ids(ids, count, name="TopDownIndex ids")
        schema_of = np.asarray(schema_of, dtype=np.int64)
        episode_of = np.asarray(episode_of, dtype=np.int64)
        if schema_of.shape != (count,) or episode_of.shape != (count,):
            raise ValueError(f"TopDownIndex: schema_of and episode_of must have shape ({count},), got "
                             f"{schema_of.shape} and {episode_of.shape}")
        if count == 0:
            raise ValueError("TopDownIndex: no memories")
        order = np.lexsort((episode_of, schema_of))  # (N,): by schema, then episode
        self.ids = ids[order]
        self.embeddings = np.ascontiguousarray(embeddings[order], dtype=np.float32)  # (N, D)
        sorted_schemas, sorted_episodes = schema_of[order], episode_of[order]
        # episode branches: maximal runs of one (schema, episode) pair in the sorted order
        starts = np.flatnonzero(np.r_[True, (np.diff(sorted_schemas) != 0) | (np.diff(sorted_episodes) != 0)])
        self.branch_start = starts  # (B,)
        self.branch_end = np.r_[starts[1:], count]  # (B,)
        self.branch_schema = sorted_schemas[starts]  # (B,)
        self.branch_centroids = group_means(self.embeddings, np.repeat(np.arange(len(starts)),
                                                                       self.branch_end - starts), len(starts))  # (B, D)
        # schemas: the populated ones, each a contiguous block of branches
        self.schemas, schema_first = np.unique(self.branch_schema, return_index=True)  # (S',)
        self.schema_branch_start = schema_first  # (S',) first branch of each schema
        self.schema_branch_end = np.r_[schema_first[1:], len(starts)]
        centroids = np.asarray(schema_centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.embeddings.shape[1] or self.schemas.max() >= len(centroids):
            raise ValueError(f"TopDownIndex: schema_centroids must be (S, {self.embeddings.shape[1]}) with a row for "
                             f"every schema in schema_of, got {centroids.shape}")
        self.schema_centroids = as_unit_vectors(centroids[self.schemas], name="TopDownIndex schema centroids")
        self.schema_start = starts[schema_first]  # (S',) memory offsets
        self.schema_end = np.r_[self.schema_start[1:], count]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_graph(cls, graph: Any) -> "TopDownIndex":
        """The index of an :class:`~mmai.retrieval.graph.EpisodicGraph`'s schemas and episodes."""
        return cls(graph.ids, graph.embeddings, graph.schema_of, graph.schema_centroids, graph.episode_of)

    @classmethod
    def build(cls, ids: Any, embeddings: Any, timestamps: Any, places: Any = None, *, num_schemas: int | None = None,
              max_schemas: int = 256, episode_gap_s: float = 7200.0, seed: int = 0) -> "TopDownIndex":
        """The hierarchy alone (k-means schemas and time/place episodes, as
        :class:`~mmai.retrieval.graph.EpisodicGraph` builds them with the same settings), without
        the graph's edges."""
        embeddings = as_unit_vectors(embeddings, name="TopDownIndex embeddings")
        episode_of = segment_episodes(np.asarray(timestamps, dtype=np.float64), episode_gap_s,
                                      None if places is None else np.asarray(["" if p is None else str(p)
                                                                              for p in places]))
        schema_of, centroids = cluster_schemas(
            embeddings, num_schemas or default_num_schemas(len(embeddings), max_schemas), seed=seed)
        return cls(ids, embeddings, schema_of, centroids, episode_of)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ search
    def schema_entropy(self, query: Any, temperature: float) -> float:
        """The normalised softmax entropy over the schemas for one query (step 1's ``H``)."""
        vector = as_unit_vectors(query, dim=self.embeddings.shape[1], name="top-down query")[0]
        return _normalised_entropy(_softmax(self.schema_centroids @ vector, temperature))

    def search(self, query: Any, k: int = 10, settings: TopDownSettings | None = None) -> TopDownResult:
        """Top-down search for one ``(D,)`` query (see the module docstring)."""
        settings = settings or TopDownSettings()
        if int(k) < 1:
            raise ValueError(f"top-down search: k must be >= 1, got {k}")
        vector = as_unit_vectors(query, dim=self.embeddings.shape[1], name="top-down query")[0]  # (D,)
        probabilities = _softmax(self.schema_centroids @ vector, settings.temperature)  # (S',)
        entropy = _normalised_entropy(probabilities)
        kept, kept_mass = _keep(probabilities, settings.mass, self.schema_end - self.schema_start, int(k))
        descended = entropy >= settings.entropy_stop and settings.mass < 1
        branches_kept = branches_scored = 0
        if descended:
            first, last = self.schema_branch_start[kept], self.schema_branch_end[kept]
            counts = last - first
            branches = np.repeat(first - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
            branch_probabilities = _softmax(self.branch_centroids[branches] @ vector, settings.temperature)
            chosen, _ = _keep(branch_probabilities, settings.mass,
                              self.branch_end[branches] - self.branch_start[branches], int(k))
            picked = np.sort(branches[chosen])
            starts, ends = self.branch_start[picked], self.branch_end[picked]
            branches_kept, branches_scored = len(chosen), len(branches)
        else:
            picked = np.sort(kept)
            starts, ends = self.schema_start[picked], self.schema_end[picked]
        if len(starts) <= 16:  # a few blocks: score the stored rows in place
            scores = np.concatenate([self.embeddings[a:b] @ vector for a, b in zip(starts, ends)])  # (n,)
            offsets = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])  # (n,)
        else:  # many small branches: one gather, one product
            lengths = ends - starts
            offsets = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
            scores = self.embeddings[offsets] @ vector
        top = min(int(k), len(scores))
        best = np.argpartition(-scores, top - 1)[:top] if top < len(scores) else np.arange(len(scores))
        best = best[np.lexsort((offsets[best], -scores[best]))]  # by score, ties by stored order
        return TopDownResult(self.ids[offsets[best]], scores[best].astype(np.float64), int(len(scores)),
                             int(len(kept)), int(len(self.schemas)), entropy, kept_mass, bool(descended),
                             branches_kept, branches_scored)


def auroc(scores: Any, positives: Any) -> float:
    """Area under the ROC curve of ``scores`` as a predictor of ``positives`` (ties count half):
    the probability that a random positive scores above a random negative; NaN without both."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    if count_pos == 0 or count_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks: ties count half
    return float((ranks[positives].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def top_down_rankings(index: TopDownIndex, queries: Any, k: int,
                      settings: TopDownSettings | None = None) -> dict[str, np.ndarray | float]:
    """Top-down search for a batch of queries, as the evaluation needs it.

    Args:
        index: the gallery's :class:`TopDownIndex`.
        queries: ``(Q, D)`` query embeddings.
        k: list length.
        settings: :class:`TopDownSettings` (default its defaults).

    Returns:
        ``ranked`` ``(Q, k)`` int64 ids (``-1`` pads a list shorter than ``k``), ``fraction_scored``
        ``(Q,)`` memories scored / gallery size, ``entropy`` ``(Q,)`` the schemas' normalised
        entropy, ``descended`` ``(Q,)`` bool, and ``latency_ms`` per query (searches only).
    """
    import time

    queries = as_unit_vectors(queries, dim=index.embeddings.shape[1], name="top-down queries")
    ranked = np.full((len(queries), int(k)), -1, dtype=np.int64)
    fraction, entropy, descended = (np.zeros(len(queries)) for _ in range(3))
    start = time.perf_counter()
    for row, query in enumerate(queries):
        result = index.search(query, k, settings)
        ranked[row, : len(result.ids)] = result.ids
        fraction[row], entropy[row] = result.memories_scored / len(index), result.entropy
        descended[row] = result.descended
    latency = 1e3 * (time.perf_counter() - start) / max(len(queries), 1)
    return {"ranked": ranked, "fraction_scored": fraction, "entropy": entropy, "descended": descended.astype(bool),
            "latency_ms": latency}
