"""Graph-Augmented Retrieval (GAR): spread the hits' activation over the episodic graph and re-rank.

As in HippoRAG (Gutiérrez et al., NeurIPS 2024), the stage-1 hits seed a personalised PageRank
(random walk with restart to the seeds) over the memory graph; memories associated with many
strong hits — same outing, similar content — gain activation. The final score fuses both:

    fused = gar_weight * retrieval + (1 - gar_weight) * activation
            + recency_weight * recency + importance_weight * importance + access_weight * access

* ``retrieval``: the hit scores normalised per query (min-max to [0, 1] by default, or a
  softmax with ``seed_temperature``); a memory that was not a hit has retrieval score 0.
* ``activation``: the PageRank vector divided by its per-query maximum (so in [0, 1]).
* the last three terms are Generative Agents' memory scores (Park et al., 2023); their
  weights default to 0 (off).

The list length stays fixed: ``k`` results (default ``K``, the number of hits) are taken from
all memories by fused score; nothing is appended. Equal fused scores are broken in favour of
stage-1 hits, in their stage-1 order (hits are given best first), so ``gar_weight=1`` returns the
stage-1 list unchanged — with min-max the weakest hit scores 0, like every non-hit.

:func:`~mmai.memory.ppr.personalized_pagerank` (``ppr.py``, re-exported here) is the batched
power iteration, numerically the same as ``networkx.pagerank(G, alpha=damping, personalization=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmai.memory.graph import EDGE_REASONS, EpisodicGraph
from mmai.memory.ppr import Transition, personalized_pagerank, power_iteration

__all__ = ["Contribution", "Explanation", "GARResult", "GraphAugmentedRetriever", "personalized_pagerank"]

_TIE_BREAK = 1e-9  # far below any score difference that matters, far above float64 rounding


@dataclasses.dataclass
class Contribution:
    """Why a seed hit raised a memory: the path's edge types in words.

    Attributes:
        seed_id: the hit that contributed.
        edge_types: edge types along the path (``"temporal"`` / ``"semantic"``).
        reason: e.g. ``"same outing"``, ``"similar content"``, or two hops joined by ``" -> "``.
        strength: seed weight times edge weight(s) along the path.
        via: the intermediate memory for a two-hop path, else ``None``.
    """

    seed_id: int
    edge_types: tuple[str, ...]
    reason: str
    strength: float
    via: int | None = None


@dataclasses.dataclass
class Explanation:
    """Why a memory is in the re-ranked list.

    Attributes:
        memory_id: the returned memory.
        hit_rank: its rank among the stage-1 hits (0-based), or ``None`` if it was not a hit.
        contributions: strongest seed contributions (one or two hops), strongest first.
    """

    memory_id: int
    hit_rank: int | None
    contributions: list[Contribution]

    @property
    def summary(self) -> str:
        """One line, e.g. ``"direct hit (rank 1); same outing (hit 42); similar content (hit 7, via 9)"``."""
        parts = [] if self.hit_rank is None else [f"direct hit (rank {self.hit_rank + 1})"]
        for contribution in self.contributions:
            via = "" if contribution.via is None else f", via {contribution.via}"
            parts.append(f"{contribution.reason} (hit {contribution.seed_id}{via})")
        return "; ".join(parts) or "no graph path to a hit"


@dataclasses.dataclass
class GARResult:
    """Re-ranked memories.

    Attributes:
        ids: ``(Q, k)`` int64 memory ids, best first.
        scores: ``(Q, k)`` fused scores.
        retrieval: ``(Q, k)`` the normalised retrieval part of each score (0 for non-hits).
        activation: ``(Q, k)`` the normalised activation part.
        explanations: per query, one :class:`Explanation` per returned id (when asked for).
    """

    ids: np.ndarray
    scores: np.ndarray
    retrieval: np.ndarray
    activation: np.ndarray
    explanations: list[list[Explanation]] | None = None


def normalise_scores(
    scores: np.ndarray, valid: np.ndarray, method: str = "minmax", temperature: float = 0.05
) -> np.ndarray:
    """Per-row hit scores ``(Q, K)`` to [0, 1] weights; invalid entries get 0.

    ``"minmax"``: ``(s - min) / (max - min)`` over the row's valid hits (all 1 when they tie).
    ``"softmax"``: ``softmax(s / temperature)`` over valid hits, divided by its maximum.
    """
    scores = np.where(valid, scores, np.nan).astype(np.float64)
    low, high = np.nanmin(scores, axis=1, keepdims=True), np.nanmax(scores, axis=1, keepdims=True)
    if method == "minmax":
        spread = high - low
        weights = np.where(spread > 0, (scores - low) / np.where(spread > 0, spread, 1), 1.0)
    elif method == "softmax":
        weights = np.exp((scores - high) / temperature)  # max-normalised softmax
    else:
        raise ValueError(f"seed normalisation {method!r} is not known; use 'minmax' or 'softmax'")
    return np.where(valid, weights, 0.0)


class GraphAugmentedRetriever:
    """Re-rank stage-1 hits by personalised PageRank over an :class:`EpisodicGraph`.

    Args:
        graph: the episodic graph over (at least) every memory that can be a hit.
        gar_weight: weight of the retrieval score against the activation (default 0.5).
        damping: probability of following an edge in the walk (default 0.5, HippoRAG's).
        num_seeds: how many top hits seed the walk (default ``None``: all hits).
        seed_normalisation: ``"minmax"`` (default) or ``"softmax"`` — how hit scores become
            retrieval scores and seed weights (see :func:`normalise_scores`).
        seed_temperature: softmax temperature (default 0.05).
        recency_weight, importance_weight, access_weight: Generative Agents' memory scores
            added to the fused score (default 0 each, i.e. off).
        recency_half_life_s: recency half-life in seconds (default 30 days).
        tol, max_iter: PageRank convergence (defaults 1e-10, 100).
        batch_size: queries per PageRank batch (default 64; memory ~ 3 x batch x N x 8 bytes).
    """

    def __init__(
        self,
        graph: EpisodicGraph,
        gar_weight: float = 0.5,
        damping: float = 0.5,
        num_seeds: int | None = None,
        *,
        seed_normalisation: str = "minmax",
        seed_temperature: float = 0.05,
        recency_weight: float = 0.0,
        importance_weight: float = 0.0,
        access_weight: float = 0.0,
        recency_half_life_s: float = 30 * 86_400.0,
        tol: float = 1e-10,
        max_iter: int = 100,
        batch_size: int = 64,
    ) -> None:
        if not 0 <= gar_weight <= 1 or not 0 <= damping < 1:
            raise ValueError(f"GAR: need 0 <= gar_weight <= 1 and 0 <= damping < 1, got gar_weight={gar_weight}, "
                             f"damping={damping}")
        if seed_normalisation not in ("minmax", "softmax"):
            raise ValueError(f"GAR: seed_normalisation must be 'minmax' or 'softmax', got {seed_normalisation!r}")
        self.graph = graph
        self.gar_weight, self.damping, self.num_seeds = gar_weight, damping, num_seeds
        self.seed_normalisation, self.seed_temperature = seed_normalisation, seed_temperature
        self.recency_weight, self.importance_weight = recency_weight, importance_weight
        self.access_weight = access_weight
        self.recency_half_life_s = recency_half_life_s
        self.tol, self.max_iter, self.batch_size = tol, max_iter, batch_size
        self.transition = Transition.from_adjacency(graph.to_csr())

    def _hit_positions(self, hit_ids: np.ndarray) -> np.ndarray:
        positions = self.graph.positions(hit_ids)  # (Q, K)
        unknown = (positions < 0) & (hit_ids >= 0)
        if unknown.any():
            raise ValueError(
                f"GAR: hit id {hit_ids[unknown][0]} is not in the episodic graph; "
                "build the graph over the same memories as the index"
            )
        return positions

    def _prior(self, now: float | None) -> np.ndarray | float:
        prior = 0.0
        if self.recency_weight:
            prior = prior + self.recency_weight * self.graph.recency(now, self.recency_half_life_s)
        if self.importance_weight:
            prior = prior + self.importance_weight * self.graph.importance
        if self.access_weight:
            prior = prior + self.access_weight * self.graph.access_scores()
        return prior

    def rerank(
        self, hit_ids: Any, hit_scores: Any, k: int | None = None, *, explain: bool = False, now: float | None = None
    ) -> GARResult:
        """Re-rank stage-1 hits.

        Args:
            hit_ids: ``(Q, K)`` memory ids from stage 1 (``-1`` = no hit, ignored).
            hit_scores: ``(Q, K)`` their similarity scores.
            k: results per query (default ``K``).
            explain: also build :class:`Explanation` objects (Python loops; for a few queries).
            now: reference time for recency (default: newest memory).

        Returns:
            :class:`GARResult` with ``(Q, k)`` ids and scores.

        Raises:
            ValueError: shapes differ, a hit id is not in the graph, a query has no valid hit,
                or ``k`` exceeds the number of memories.
        """
        hit_ids = np.atleast_2d(np.asarray(hit_ids, dtype=np.int64))  # (Q, K)
        hit_scores = np.atleast_2d(np.asarray(hit_scores, dtype=np.float64))  # (Q, K)
        if hit_ids.shape != hit_scores.shape:
            raise ValueError(f"GAR: hit_ids {hit_ids.shape} and hit_scores {hit_scores.shape} differ in shape")
        k = hit_ids.shape[1] if k is None else int(k)
        if not 1 <= k <= len(self.graph):
            raise ValueError(f"GAR: k must be in [1, {len(self.graph)}] (memories in the graph), got {k}")
        positions = self._hit_positions(hit_ids)  # (Q, K)
        valid = positions >= 0
        if not valid.any(axis=1).all():
            raise ValueError(f"GAR: query {int(np.flatnonzero(~valid.any(axis=1))[0])} has no valid hit")
        retrieval = normalise_scores(hit_scores, valid, self.seed_normalisation, self.seed_temperature)  # (Q, K)
        seed_weights = self._seed_weights(retrieval)  # (Q, K)
        prior = self._prior(now)
        outputs = [
            self._rerank_batch(positions[batch], retrieval[batch], seed_weights[batch], k, prior)
            for batch in (slice(s, s + self.batch_size) for s in range(0, len(positions), self.batch_size))
        ]
        ids, scores, parts_r, parts_a = (np.concatenate(column) for column in zip(*outputs))
        result = GARResult(ids, scores, parts_r, parts_a)
        if explain:
            result.explanations = [self.explain(hit_ids[q], seed_weights[q], ids[q]) for q in range(len(ids))]
        return result

    def _seed_weights(self, retrieval: np.ndarray) -> np.ndarray:
        """Seed weights ``(b, K)``: the normalised scores of the top ``num_seeds`` hits."""
        if self.num_seeds is None or self.num_seeds >= retrieval.shape[1]:
            seeds = retrieval.copy()
        else:
            keep = np.argsort(-retrieval, axis=1, kind="stable")[:, : self.num_seeds]
            seeds = np.zeros_like(retrieval)
            np.put_along_axis(seeds, keep, np.take_along_axis(retrieval, keep, axis=1), axis=1)
        return seeds  # the best hit has weight 1, so every row has seed mass

    def _scatter(self, positions: np.ndarray, values: np.ndarray, reduce: np.ufunc) -> np.ndarray:
        """Per-hit ``values`` ``(b, K)`` placed at their graph ``positions``: dense ``(b, N)``."""
        dense = np.zeros((len(positions), len(self.graph)))  # (b, N)
        rows = np.repeat(np.arange(len(positions)), positions.shape[1])  # (b * K,)
        columns, values = positions.ravel(), np.broadcast_to(values, positions.shape).ravel()
        valid = columns >= 0
        reduce.at(dense, (rows[valid], columns[valid]), values[valid])
        return dense

    def spread(self, seeds: np.ndarray) -> np.ndarray:
        """Activation ``(b, N)`` in [0, 1]: personalised PageRank of dense ``seeds`` ``(b, N)``,
        divided by each row's maximum."""
        personalization = (seeds / seeds.sum(axis=1, keepdims=True)).T  # (N, b)
        activation = power_iteration(self.transition, personalization, self.damping, self.tol, self.max_iter).T
        return activation / activation.max(axis=1, keepdims=True)  # (b, N)

    def _rerank_batch(self, positions, retrieval, seed_weights, k: int, prior: np.ndarray | float):
        """Fused top-k for a batch of queries: positions/retrieval/seed_weights are ``(b, K)``."""
        activation = self.spread(self._scatter(positions, seed_weights, np.add))  # (b, N)
        dense_retrieval = self._scatter(positions, retrieval, np.maximum)  # (b, N), 0 for non-hits
        fused = self.gar_weight * dense_retrieval + (1 - self.gar_weight) * activation + prior  # (b, N)
        hits = positions.shape[1]
        stage1_order = self._scatter(positions, (hits - np.arange(hits)) / hits, np.maximum)  # (b, N)
        top = _top_k(fused + _TIE_BREAK * stage1_order, k)  # (b, k); ties: hits first, in stage-1 order
        take = lambda matrix: np.take_along_axis(matrix, top, axis=1)  # noqa: E731
        return self.graph.ids[top], take(fused), take(dense_retrieval), take(activation)

    # ------------------------------------------------------------------ explanations
    def explain(
        self, hit_ids: np.ndarray, seed_weights: np.ndarray, memory_ids: np.ndarray, max_reasons: int = 3
    ) -> list[Explanation]:
        """Explanations for ``memory_ids`` of one query, given its hits ``(K,)`` and seed weights ``(K,)``.

        A memory's contributions are the seeds it is linked to directly (one hop) or, if none,
        through one intermediate memory (two hops), strongest first, at most ``max_reasons``.
        """
        seeds = {int(h): float(w) for h, w in zip(hit_ids, seed_weights) if h >= 0 and w > 0}
        rank_of = {int(h): r for r, h in enumerate(hit_ids) if h >= 0}
        graph = self.graph.graph
        explanations = []
        for memory_id in map(int, memory_ids):
            found = self._one_hop(graph, memory_id, seeds) or self._two_hops(graph, memory_id, seeds)
            found.sort(key=lambda c: -c.strength)
            explanations.append(Explanation(memory_id, rank_of.get(memory_id), found[:max_reasons]))
        return explanations

    @staticmethod
    def _one_hop(graph, memory_id: int, seeds: dict[int, float]) -> list[Contribution]:
        return [
            Contribution(neighbour, tuple(data["types"]), _reason(data["types"]), seeds[neighbour] * data["weight"])
            for neighbour, data in graph[memory_id].items() if neighbour in seeds
        ]

    @staticmethod
    def _two_hops(graph, memory_id: int, seeds: dict[int, float]) -> list[Contribution]:
        found = []
        for via, near in graph[memory_id].items():
            for seed, far in graph[via].items():
                if seed in seeds and seed != memory_id:
                    types = tuple(far["types"]) + tuple(near["types"])
                    reason = f"{_reason(far['types'])} -> {_reason(near['types'])}"
                    found.append(Contribution(seed, types, reason, seeds[seed] * far["weight"] * near["weight"], via))
        return found


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices ``(b, k)`` of each row's ``k`` largest scores, best first."""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k) unordered
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _reason(types: tuple[str, ...]) -> str:
    return " and ".join(EDGE_REASONS[t] for t in types)
