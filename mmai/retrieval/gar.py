"""Graph-Augmented Retrieval (GAR): spread the hits' activation over the episodic graph and re-rank.

As in HippoRAG (Gutiérrez et al., NeurIPS 2024), the stage-1 hits seed a personalised PageRank
(random walk with restart to the seeds) over the memory graph; memories associated with many
strong hits — same outing, similar content — gain activation. The final score fuses both:

    fused = gar_weight * retrieval + (1 - gar_weight) * activation
            + recency_weight * recency + importance_weight * importance + access_weight * access

* ``retrieval``: the hit scores normalised per query (min-max to [0, 1] by default, a softmax
  with ``seed_temperature``, or ``"rank"``: reciprocal-rank fusion ``(rrf_k + 1) / (rrf_k + rank)``
  of the hit order, which needs no scores); a memory that was not a hit has retrieval score 0.
  ``rerank(..., seed_scores=...)`` normalises other scores than the list's own (e.g. the stage-1
  cosine of every candidate when the list's top carries re-ranker logits and its tail cosines).
* ``activation``: the PageRank vector divided by its per-query maximum (so in [0, 1]).
* the last three terms are Generative Agents' memory scores (Park et al., 2023); their
  weights default to 0 (off).

**Burst rule** (``burst_hits`` > 0). Each of the first ``burst_hits`` hits (an *anchor*) is
followed in the list, right after it, by its burst-mates: its temporal neighbours at most
``burst_window_s`` apart (photos of the same sighting), at most ``max_burst_mates`` of them, best
fused score first — even those stage 1 gave no score (hard photos: blur, low light, distance).
They carry their anchor's fused score, so scores never rise down the list; their explanation
starts with ``same outing (hit <anchor>)``.

**Modes** (:data:`GAR_MODES`, :meth:`GraphAugmentedRetriever.from_mode`):

* ``"legacy"``: the constructor's defaults — every hit seeds, min-max of the given scores, both
  edge kinds walked, no burst rule (GAR before issue 19).
* ``"burst"``: one scale (``seed_normalisation="rank"``), the top 5 hits seed
  (``num_seeds=5``, as HippoRAG), the walk follows temporal edges only (``semantic_edges=False``;
  semantic links repeat what stage 1 knows) and the burst rule for the top 3 hits.

The list length stays fixed: ``k`` results (default ``K``, the number of hits) are taken from
all memories by fused score; nothing is appended. Equal fused scores are broken in favour of
stage-1 hits, in their stage-1 order (hits are given best first), so ``gar_weight=1`` returns the
stage-1 list unchanged — with min-max the weakest hit scores 0, like every non-hit.

:func:`~mmai.retrieval.ppr.personalized_pagerank` (``ppr.py``, re-exported here) is the batched
power iteration, numerically the same as ``networkx.pagerank(G, alpha=damping, personalization=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import sparse

from mmai.retrieval.edges import temporal_pairs
from mmai.retrieval.graph import EDGE_REASONS, EpisodicGraph
from mmai.retrieval.ppr import Transition, personalized_pagerank, power_iteration, push_pagerank

__all__ = ["GAR_MODES", "Contribution", "Explanation", "GARResult", "GraphAugmentedRetriever",
           "personalized_pagerank"]

#: Named settings of :class:`GraphAugmentedRetriever` (see the module docstring); a mode's
#: values override the constructor's defaults, explicit arguments override the mode's.
GAR_MODES: dict[str, dict[str, Any]] = {
    "legacy": {},
    "burst": {"num_seeds": 5, "seed_normalisation": "rank", "semantic_edges": False, "burst_hits": 3},
}
SEED_NORMALISATIONS = ("minmax", "softmax", "rank")
PPR_METHODS = ("global", "local")  #: how the walk is computed: power iteration, or push from the seeds

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
        contributions: strongest seed contributions (one or two hops), strongest first; a
            burst-mate's first one is its anchor's ``"same outing"`` link.
        burst_of: the anchor hit whose burst-mate this memory is (burst rule), else ``None``.
    """

    memory_id: int
    hit_rank: int | None
    contributions: list[Contribution]
    burst_of: int | None = None

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
        burst_of: ``(Q, k)`` the anchor id of each burst-mate the burst rule placed, else -1.
        explanations: per query, one :class:`Explanation` per returned id (when asked for).
        seed_weights: ``(Q, K)`` each hit's weight as a seed (0 for the hits that do not seed), for
            :meth:`GraphAugmentedRetriever.explain` of a part of the list.
    """

    ids: np.ndarray
    scores: np.ndarray
    retrieval: np.ndarray
    activation: np.ndarray
    burst_of: np.ndarray | None = None
    explanations: list[list[Explanation]] | None = None
    seed_weights: np.ndarray | None = None


def normalise_scores(
    scores: np.ndarray, valid: np.ndarray, method: str = "minmax", temperature: float = 0.05, rrf_k: float = 60.0
) -> np.ndarray:
    """Per-row hit scores ``(Q, K)`` to [0, 1] weights; invalid entries get 0.

    ``"minmax"``: ``(s - min) / (max - min)`` over the row's valid hits (all 1 when they tie).
    ``"softmax"``: ``softmax(s / temperature)`` over valid hits, divided by its maximum.
    ``"rank"``: reciprocal-rank fusion of the column order, ``(rrf_k + 1) / (rrf_k + rank)`` with
    ``rank`` 1 for the row's first valid hit (so 1, 0.98, ... for ``rrf_k=60``); scores are not read,
    so a list whose head and tail were scored on different scales is still on one scale.
    """
    if method == "rank":
        rank = np.cumsum(valid, axis=1)  # (Q, K) 1-based among valid hits
        return np.where(valid, (rrf_k + 1) / (rrf_k + rank), 0.0)
    scores = np.where(valid, scores, np.nan).astype(np.float64)
    low, high = np.nanmin(scores, axis=1, keepdims=True), np.nanmax(scores, axis=1, keepdims=True)
    if method == "minmax":
        spread = high - low
        weights = np.where(spread > 0, (scores - low) / np.where(spread > 0, spread, 1), 1.0)
    elif method == "softmax":
        weights = np.exp((scores - high) / temperature)  # max-normalised softmax
    else:
        raise ValueError(f"seed normalisation {method!r} is not known; use 'minmax', 'softmax' or 'rank'")
    return np.where(valid, weights, 0.0)


class GraphAugmentedRetriever:
    """Re-rank stage-1 hits by personalised PageRank over an :class:`EpisodicGraph`.

    The defaults are the ``"legacy"`` mode; :meth:`from_mode` builds the ``"burst"`` mode (one
    scale, 5 seeds, temporal walk, burst rule), which is what the evaluation callback and the
    personal memory use by default.

    Args:
        graph: the episodic graph over (at least) every memory that can be a hit.
        gar_weight: weight of the retrieval score against the activation (default 0.5).
        damping: probability of following an edge in the walk (default 0.5, HippoRAG's).
        num_seeds: how many top hits seed the walk (default ``None``: all hits).
        seed_normalisation: ``"minmax"`` (default), ``"softmax"`` or ``"rank"`` — how hit scores
            become retrieval scores and seed weights (see :func:`normalise_scores`).
        seed_temperature: softmax temperature (default 0.05).
        rrf_k: the constant of ``"rank"`` (default 60, as reciprocal-rank fusion).
        semantic_edges: the walk follows semantic edges too (default ``True``); ``False`` walks
            the temporal weights alone (a semantic-only edge is no edge), whatever the graph holds.
        burst_hits: the burst rule's anchors: the first this-many hits (default 0: off).
        burst_window_s: a burst-mate is a temporal neighbour at most this far in time (default
            120 s, one sighting of the synthetic diary); capped by the graph's temporal window.
        max_burst_mates: burst-mates placed after each anchor (default 5; ``None``: all).
        recency_weight, importance_weight, access_weight: Generative Agents' memory scores
            added to the fused score (default 0 each, i.e. off).
        recency_half_life_s: recency half-life in seconds (default 30 days).
        tol, max_iter: PageRank convergence (defaults 1e-10, 100).
        batch_size: queries per PageRank batch (default 64; memory ~ 3 x batch x N x 8 bytes).
        ppr: ``"global"`` (default): power iteration over the whole graph (batched);
            ``"local"``: forward push from the seeds (:func:`~mmai.retrieval.ppr.push_pagerank`), which
            touches only their neighbourhood: one query's cost no longer grows with the graph.
        push_eps: the push's residual bound per node (default 1e-10 of the seed mass).
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
        rrf_k: float = 60.0,
        semantic_edges: bool = True,
        burst_hits: int = 0,
        burst_window_s: float = 120.0,
        max_burst_mates: int | None = 5,
        recency_weight: float = 0.0,
        importance_weight: float = 0.0,
        access_weight: float = 0.0,
        recency_half_life_s: float = 30 * 86_400.0,
        tol: float = 1e-10,
        max_iter: int = 100,
        batch_size: int = 64,
        ppr: str = "global",
        push_eps: float = 1e-10,
    ) -> None:
        if not 0 <= gar_weight <= 1 or not 0 <= damping < 1:
            raise ValueError(f"GAR: need 0 <= gar_weight <= 1 and 0 <= damping < 1, got gar_weight={gar_weight}, "
                             f"damping={damping}")
        if seed_normalisation not in SEED_NORMALISATIONS:
            raise ValueError(f"GAR: seed_normalisation must be 'minmax', 'softmax' or 'rank', "
                             f"got {seed_normalisation!r}")
        if ppr not in PPR_METHODS:
            raise ValueError(f"GAR: ppr must be one of {PPR_METHODS}, got {ppr!r}")
        if num_seeds is not None and num_seeds < 1:
            raise ValueError(f"GAR: num_seeds must be >= 1 or None, got {num_seeds}")
        if burst_hits < 0 or burst_window_s < 0 or (max_burst_mates is not None and max_burst_mates < 0):
            raise ValueError(f"GAR: need burst_hits >= 0, burst_window_s >= 0 and max_burst_mates >= 0, got "
                             f"{burst_hits}, {burst_window_s}, {max_burst_mates}")
        self.graph = graph
        self.gar_weight, self.damping, self.num_seeds = gar_weight, damping, num_seeds
        self.seed_normalisation, self.seed_temperature, self.rrf_k = seed_normalisation, seed_temperature, rrf_k
        self.semantic_edges = bool(semantic_edges)
        self.burst_hits, self.burst_window_s, self.max_burst_mates = int(burst_hits), burst_window_s, max_burst_mates
        self.recency_weight, self.importance_weight = recency_weight, importance_weight
        self.access_weight = access_weight
        self.recency_half_life_s = recency_half_life_s
        self.tol, self.max_iter, self.batch_size = tol, max_iter, batch_size
        self.ppr, self.push_eps = ppr, float(push_eps)
        self.edge_kinds = ("temporal", "semantic") if self.semantic_edges else ("temporal",)
        self.transition = Transition.from_adjacency(graph.to_csr(weight="weight" if self.semantic_edges
                                                                 else "temporal_weight"))
        self._mates = self._burst_mates() if self.burst_hits else None

    @classmethod
    def from_mode(cls, graph: EpisodicGraph, mode: str = "burst", **overrides: Any) -> "GraphAugmentedRetriever":
        """A retriever in a named mode of :data:`GAR_MODES`; ``overrides`` whose value is ``None``
        keep the mode's value (so callers can pass their optional settings through), others win.

        ``num_seeds=0`` in ``overrides`` means all hits (``None`` would keep the mode's 5).
        """
        if mode not in GAR_MODES:
            raise ValueError(f"GAR: mode must be one of {sorted(GAR_MODES)}, got {mode!r}")
        settings = {**GAR_MODES[mode], **{name: value for name, value in overrides.items() if value is not None}}
        if settings.get("num_seeds") == 0:
            settings["num_seeds"] = None
        return cls(graph, **settings)

    def _burst_mates(self) -> sparse.csr_matrix:
        """``(N, N)`` temporal neighbours at most ``burst_window_s`` apart, stored as ``1 + gap``
        (so a zero gap is still an entry)."""
        config = self.graph.config
        window = min(self.burst_window_s, config.temporal_window_s)
        places = self.graph.places if config.same_place_only else None
        rows, cols, gaps = temporal_pairs(self.graph.timestamps, window, places)
        count = len(self.graph)
        mates = sparse.coo_matrix((np.concatenate([gaps, gaps]) + 1.0,
                                   (np.concatenate([rows, cols]), np.concatenate([cols, rows]))), shape=(count, count))
        return mates.tocsr()

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
        self, hit_ids: Any, hit_scores: Any, k: int | None = None, *, seed_scores: Any = None, explain: bool = False,
        now: float | None = None,
    ) -> GARResult:
        """Re-rank stage-1 hits.

        Args:
            hit_ids: ``(Q, K)`` memory ids from stage 1, best first (``-1`` = no hit, ignored).
            hit_scores: ``(Q, K)`` their scores (not read by ``seed_normalisation="rank"``).
            k: results per query (default ``K``).
            seed_scores: ``(Q, K)`` scores on one scale for every hit (e.g. the stage-1 cosine),
                normalised into the retrieval term and seed weights instead of ``hit_scores``
                (default ``None``: ``hit_scores``). The hit order is still ``hit_ids``' own.
            explain: also build :class:`Explanation` objects (Python loops; for a few queries).
            now: reference time for recency (default: newest memory).

        Returns:
            :class:`GARResult` with ``(Q, k)`` ids and scores.

        Raises:
            ValueError: shapes differ, a hit id is not in the graph, a query has no valid hit,
                or ``k`` exceeds the number of memories.
        """
        hit_ids = np.atleast_2d(np.asarray(hit_ids, dtype=np.int64))  # (Q, K)
        hit_scores = np.atleast_2d(np.asarray(hit_scores if seed_scores is None else seed_scores, dtype=np.float64))
        if hit_ids.shape != hit_scores.shape:
            name = "hit_scores" if seed_scores is None else "seed_scores"
            raise ValueError(f"GAR: hit_ids {hit_ids.shape} and {name} {hit_scores.shape} differ in shape")
        k = hit_ids.shape[1] if k is None else int(k)
        if not 1 <= k <= len(self.graph):
            raise ValueError(f"GAR: k must be in [1, {len(self.graph)}] (memories in the graph), got {k}")
        positions = self._hit_positions(hit_ids)  # (Q, K)
        valid = positions >= 0
        if not valid.any(axis=1).all():
            raise ValueError(f"GAR: query {int(np.flatnonzero(~valid.any(axis=1))[0])} has no valid hit")
        retrieval = normalise_scores(hit_scores, valid, self.seed_normalisation, self.seed_temperature,
                                     self.rrf_k)  # (Q, K)
        seed_weights = self._seed_weights(retrieval)  # (Q, K)
        anchors = np.where(valid & (np.cumsum(valid, axis=1) <= self.burst_hits), positions, -1)  # (Q, K)
        prior = self._prior(now)
        outputs = [
            self._rerank_batch(positions[batch], retrieval[batch], seed_weights[batch], anchors[batch], k, prior)
            for batch in (slice(s, s + self.batch_size) for s in range(0, len(positions), self.batch_size))
        ]
        ids, scores, parts_r, parts_a, burst_of = (np.concatenate(column) for column in zip(*outputs))
        result = GARResult(ids, scores, parts_r, parts_a, burst_of, seed_weights=seed_weights)
        if explain:
            result.explanations = [self.explain(hit_ids[q], seed_weights[q], ids[q], burst_of=burst_of[q])
                                   for q in range(len(ids))]
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
        if self.ppr == "local":
            activation = np.stack([push_pagerank(self.transition, column, self.damping, self.push_eps)
                                   for column in personalization.T])  # (b, N)
        else:
            activation = power_iteration(self.transition, personalization, self.damping, self.tol, self.max_iter).T
        return activation / activation.max(axis=1, keepdims=True)  # (b, N)

    def _rerank_batch(self, positions, retrieval, seed_weights, anchors, k: int, prior: np.ndarray | float):
        """Fused top-k for a batch of queries: positions/retrieval/seed_weights/anchors are ``(b, K)``."""
        activation = self.spread(self._scatter(positions, seed_weights, np.add))  # (b, N)
        dense_retrieval = self._scatter(positions, retrieval, np.maximum)  # (b, N), 0 for non-hits
        fused = self.gar_weight * dense_retrieval + (1 - self.gar_weight) * activation + prior  # (b, N)
        hits = positions.shape[1]
        stage1_order = self._scatter(positions, (hits - np.arange(hits)) / hits, np.maximum)  # (b, N)
        ranked = fused + _TIE_BREAK * stage1_order  # ties: hits first, in stage-1 order
        if self._mates is None:
            top = _top_k(ranked, k)  # (b, k)
            list_scores, burst_of = np.take_along_axis(fused, top, axis=1), np.full(top.shape, -1)
        else:
            top, list_scores, burst_of = self._with_bursts(ranked, fused, anchors, k)
        take = lambda matrix: np.take_along_axis(matrix, top, axis=1)  # noqa: E731
        burst_ids = np.where(burst_of >= 0, self.graph.ids[np.maximum(burst_of, 0)], -1)
        return self.graph.ids[top], list_scores, take(dense_retrieval), take(activation), burst_ids

    def _with_bursts(self, ranked: np.ndarray, fused: np.ndarray, anchors: np.ndarray, k: int):
        """The burst rule on a batch: positions ``(b, k)``, list scores ``(b, k)``, anchor positions
        ``(b, k)`` (-1 where not a burst-mate)."""
        mates_of = self._mates
        cap = self.max_burst_mates
        extra = self.burst_hits * (cap if cap is not None else max(int(np.diff(mates_of.indptr).max(initial=0)), 0))
        order = _top_k(ranked, min(len(self.graph), k + extra))  # (b, k + extra)
        top = np.empty((len(ranked), k), dtype=np.int64)
        scores, burst_of = np.empty((len(ranked), k)), np.full((len(ranked), k), -1, dtype=np.int64)
        for row in range(len(ranked)):
            anchor_set = set(anchors[row][anchors[row] >= 0].tolist())
            placed: list[int] = []
            seen: set[int] = set()
            for position in order[row].tolist():
                if len(placed) >= k:
                    break
                if position in seen:
                    continue
                seen.add(position)
                placed.append(position)
                scores[row, len(placed) - 1] = fused[row, position]
                if position not in anchor_set:
                    continue
                start, end = mates_of.indptr[position], mates_of.indptr[position + 1]
                mates = [m for m in mates_of.indices[start:end].tolist() if m not in seen]
                mates.sort(key=lambda m: -ranked[row, m])
                for mate in mates[:cap]:
                    if len(placed) >= k:
                        break
                    seen.add(mate)
                    placed.append(mate)
                    scores[row, len(placed) - 1] = fused[row, position]  # the anchor's slot score
                    burst_of[row, len(placed) - 1] = position
            top[row] = placed
        return top, scores, burst_of

    # ------------------------------------------------------------------ explanations
    def explain(
        self, hit_ids: np.ndarray, seed_weights: np.ndarray, memory_ids: np.ndarray, max_reasons: int = 3,
        burst_of: np.ndarray | None = None,
    ) -> list[Explanation]:
        """Explanations for ``memory_ids`` of one query, given its hits ``(K,)`` and seed weights ``(K,)``.

        A memory's contributions are the seeds it is linked to directly (one hop) or, if none,
        through one intermediate memory (two hops), strongest first, at most ``max_reasons``; only
        the edge kinds the walk follows count. ``burst_of`` (per memory, the anchor id or -1, as
        :attr:`GARResult.burst_of`) puts a burst-mate's ``"same outing"`` link to its anchor first.
        """
        seeds = {int(h): float(w) for h, w in zip(hit_ids, seed_weights) if h >= 0 and w > 0}
        rank_of = {int(h): r for r, h in enumerate(hit_ids) if h >= 0}
        anchors = [-1] * len(memory_ids) if burst_of is None else [int(a) for a in burst_of]
        graph = self.graph.graph
        explanations = []
        for memory_id, anchor in zip(map(int, memory_ids), anchors):
            found = self._one_hop(graph, memory_id, seeds) or self._two_hops(graph, memory_id, seeds)
            found.sort(key=lambda c: -c.strength)
            if anchor >= 0:
                data = graph[memory_id][anchor]
                mate = Contribution(anchor, ("temporal",), EDGE_REASONS["temporal"],
                                    seeds.get(anchor, 1.0) * data["temporal_weight"])
                found = [mate] + [c for c in found if c.seed_id != anchor or c.via is not None]
            explanations.append(Explanation(memory_id, rank_of.get(memory_id), found[:max_reasons],
                                            None if anchor < 0 else anchor))
        return explanations

    def _walked(self, data: dict) -> tuple[tuple[str, ...], float]:
        """An edge's kinds and weight as the walk sees them (``((), 0.0)`` when it is not walked)."""
        if self.semantic_edges:
            return tuple(data["types"]), data["weight"]
        return (("temporal",), data["temporal_weight"]) if "temporal" in data["types"] else ((), 0.0)

    def _one_hop(self, graph, memory_id: int, seeds: dict[int, float]) -> list[Contribution]:
        found = []
        for neighbour, data in graph[memory_id].items():
            types, weight = self._walked(data)
            if neighbour in seeds and types:
                found.append(Contribution(neighbour, types, _reason(types), seeds[neighbour] * weight))
        return found

    def _two_hops(self, graph, memory_id: int, seeds: dict[int, float]) -> list[Contribution]:
        found = []
        for via, near in graph[memory_id].items():
            near_types, near_weight = self._walked(near)
            if not near_types:
                continue
            for seed, far in graph[via].items():
                far_types, far_weight = self._walked(far)
                if seed in seeds and seed != memory_id and far_types:
                    reason = f"{_reason(far_types)} -> {_reason(near_types)}"
                    found.append(Contribution(seed, far_types + near_types, reason,
                                              seeds[seed] * far_weight * near_weight, via))
        return found


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices ``(b, k)`` of each row's ``k`` largest scores, best first."""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k) unordered
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _reason(types: tuple[str, ...]) -> str:
    return " and ".join(EDGE_REASONS[t] for t in types)
