"""Episodic memory graph: memories linked by time and by content, with episodes and schemas above.

The design follows HippoRAG (Gutiérrez et al., NeurIPS 2024: a graph over memories searched by
personalised PageRank), Generative Agents (Park et al., UIST 2023: recency, importance and
access as memory scores) and hierarchical episodic memory (events segmented into episodes,
episodes abstracted into schemas).

The edges are held as one table of arrays (what search reads, through :meth:`EpisodicGraph.to_csr`);
:attr:`EpisodicGraph.graph` is a NetworkX ``Graph`` view built from it on first use: one node per
memory id with attributes ``timestamp``, ``place``, ``episode``, ``schema``, ``importance``; an edge per
associated pair with

* ``types``: a tuple of ``"temporal"`` and/or ``"semantic"``,
* ``temporal_weight``: ``exp(-gap / temporal_window_s)`` (0 when not temporal),
* ``semantic_weight``: the cosine (0 when not semantic),
* ``weight``: ``temporal_weight + semantic_weight`` — a pair linked both ways is associated
  more strongly than either alone (weights lie in (0, 2]),
* ``time_gap_s``: the time gap in seconds.

Episodes and schemas are kept as node attributes and as :attr:`EpisodicGraph.hierarchy`, a
``DiGraph`` ``("schema", s) -> ("episode", e) -> memory id`` (and ``("schema", s) -> memory``).
The structure is fixed after construction; :meth:`EpisodicGraph.updated` returns the graph after
adding or forgetting memories without searching every memory again (equal to a full build).

Example:
    >>> graph = EpisodicGraph(ids, embeddings, timestamps, places)   # (N,), (N, D), (N,), (N,)
    >>> graph.stats()
    >>> adjacency = graph.to_csr()                                    # (N, N) in graph.ids order
"""

from __future__ import annotations

import dataclasses
from typing import Any

import networkx as nx
import numpy as np
from scipy import sparse

from mmai.retrieval.edges import choice_pairs, merge_choices, semantic_choices, temporal_pairs
from mmai.retrieval.hierarchy import (
    cluster_schemas, default_num_schemas, group_means, nearest_centroid, segment_episodes,
)
from mmai.retrieval.index import VectorIndex
from mmai.retrieval.vectors import as_ids, as_unit_vectors, to_numpy

EDGE_REASONS = {"temporal": "same outing", "semantic": "similar content"}


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """How an :class:`EpisodicGraph` is built (defaults in brackets).

    Attributes:
        temporal_window_s: link memories at most this many seconds apart [3600].
        same_place_only: temporal links only between memories at the same place [False].
        semantic_edges: build semantic edges at all [True]; ``False`` gives a temporal-only graph
            (no nearest-neighbour search), the ablation that leaves bursts to the temporal edges.
        semantic_threshold: link memories with cosine >= this [0.85].
        max_semantic_degree: semantic neighbours each memory may choose [10].
        semantic_index: ``"flat"`` (exact) or ``"hnsw"`` (approximate) search for them ["flat"].
        episode_gap_s: a gap longer than this (or a change of place) starts an episode [7200].
        num_schemas: semantic clusters; ``None`` means ``round(sqrt(N/2))`` capped [None].
        max_schemas: the cap on the default ``num_schemas`` [256].
        seed: k-means seed [0].
    """

    temporal_window_s: float = 3600.0
    same_place_only: bool = False
    semantic_edges: bool = True
    semantic_threshold: float = 0.85
    max_semantic_degree: int = 10
    semantic_index: str = "flat"
    episode_gap_s: float = 7200.0
    num_schemas: int | None = None
    max_schemas: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temporal_window_s < 0 or self.episode_gap_s < 0:
            raise ValueError("GraphConfig: temporal_window_s and episode_gap_s must be >= 0")
        if not 0 < self.semantic_threshold <= 1:
            raise ValueError(f"GraphConfig: semantic_threshold must be in (0, 1], got {self.semantic_threshold}")
        if self.semantic_index not in ("flat", "hnsw"):
            raise ValueError(f"GraphConfig: semantic_index must be 'flat' or 'hnsw', got {self.semantic_index!r}")


class EpisodicGraph:
    """Memories as a graph of temporal and semantic associations, with episodes and schemas.

    Args:
        ids: ``(N,)`` unique int64 memory ids (the same ids as the vector index).
        embeddings: ``(N, D)`` embeddings (normalised here if needed).
        timestamps: ``(N,)`` unix seconds.
        places: ``(N,)`` place names, or ``None`` (no place information). ``None`` entries
            become ``""`` (unknown), which counts as one place.
        importance: ``(N,)`` importance scores in [0, 1] (Generative Agents); default 0.
        index: an existing :class:`~mmai.retrieval.index.VectorIndex` over these memories (e.g.
            the stage-1 HNSW index) to find semantic edges with, instead of building one.
        config: a :class:`GraphConfig`; keyword ``overrides`` replace its fields, e.g.
            ``EpisodicGraph(..., temporal_window_s=600)``.
        progress: tqdm bars on long steps.
        schema_centroids: ``(S, D)`` schema centroids to assign the memories to (nearest
            centroid) instead of clustering them; an incremental update (:meth:`updated`) keeps
            its graph's centroids this way.
    """

    def __init__(
        self,
        ids: Any,
        embeddings: Any,
        timestamps: Any,
        places: Any = None,
        *,
        importance: Any = None,
        index: VectorIndex | None = None,
        config: GraphConfig | None = None,
        progress: bool = True,
        schema_centroids: Any = None,
        _reuse: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.config = dataclasses.replace(config or GraphConfig(), **overrides)
        self.embeddings = as_unit_vectors(embeddings, name="EpisodicGraph embeddings")  # (N, D)
        count = len(self.embeddings)
        self.ids = as_ids(ids, count, name="EpisodicGraph ids")  # (N,)
        self.timestamps = self._column(timestamps, count, "timestamps", allow_nan=True)  # (N,) NaN = unknown
        self.places = None if places is None else self._places(places, count)  # (N,) str
        self.importance = np.zeros(count) if importance is None else self._column(importance, count, "importance")
        self.access_counts = np.zeros(count, dtype=np.int64)  # (N,)
        self._order = np.argsort(self.ids, kind="stable")  # for id -> position lookups
        self._csr: dict[str, sparse.csr_matrix] = {}
        reuse = _reuse or {}
        width = self.config.max_semantic_degree if self.config.semantic_edges else 0
        if "choices" in reuse:  # (N, d) memory ids (-1: none) and cosines, from an incremental update
            choice_ids, cosines = reuse["choices"]
            found = np.where(choice_ids >= 0, self.positions(choice_ids), -1)
        elif "semantic" in reuse:
            found = cosines = None
        else:
            found, cosines = semantic_choices(
                self.embeddings, self.config.semantic_threshold, width,
                index_kind=self.config.semantic_index, index=index, ids=self.ids, progress=progress,
            )
        if found is None:
            self._semantic = reuse["semantic"]
            self._choices = None
        else:
            self._semantic = choice_pairs(found, cosines)
            self._choices = (np.where(found >= 0, self.ids[np.maximum(found, 0)], -1), cosines)
        self._schemas_fitted_on = int(reuse.get("schemas_fitted_on", count))
        self._given_centroids = None if schema_centroids is None else as_unit_vectors(
            schema_centroids, dim=self.embeddings.shape[1], name="EpisodicGraph schema_centroids")
        self._build_levels(reuse)
        self._table = self._edge_table()
        self._graph: nx.Graph | None = None
        self._hierarchy: nx.DiGraph | None = None

    @property
    def graph(self) -> nx.Graph:
        """The NetworkX view (nodes with attributes, edges with types and weights), built on first use.

        Search does not need it (:meth:`to_csr`, :meth:`edge_types` and :meth:`stats` read the
        edge table), so a graph that is only searched never pays for it.
        """
        if self._graph is None:
            self._graph = self._build_graph()
        return self._graph

    @property
    def hierarchy(self) -> nx.DiGraph:
        """``("schema", s) -> ("episode", e) -> memory id`` (and schema -> memory), built on first use."""
        if self._hierarchy is None:
            self._hierarchy = self._build_hierarchy()
        return self._hierarchy

    @staticmethod
    def _column(values: Any, count: int, name: str, allow_nan: bool = False) -> np.ndarray:
        array = to_numpy(values).astype(np.float64)
        if array.shape != (count,):
            raise ValueError(f"EpisodicGraph {name}: expected shape ({count},), got {array.shape}")
        bad = np.isinf(array) if allow_nan else ~np.isfinite(array)
        if bad.any():
            what = "inf" if allow_nan else "NaN/inf"
            raise ValueError(f"EpisodicGraph {name}: {int(bad.sum())} value(s) are {what}")
        return array

    @staticmethod
    def _places(places: Any, count: int) -> np.ndarray:
        array = np.array(["" if place is None else str(place) for place in places])
        if array.shape != (count,):
            raise ValueError(f"EpisodicGraph places: expected {count} places, got {array.shape}")
        return array

    # ------------------------------------------------------------------ building
    def _build_levels(self, reuse: dict[str, Any]) -> None:
        self.episode_of = segment_episodes(self.timestamps, self.config.episode_gap_s, self.places)  # (N,)
        self.num_episodes = int(self.episode_of.max()) + 1
        self.episode_centroids = group_means(self.embeddings, self.episode_of, self.num_episodes)  # (E, D)
        if "schemas" in reuse:
            self.schema_of, self.schema_centroids = reuse["schemas"]
        elif self._given_centroids is not None:
            self.schema_centroids = self._given_centroids
            self.schema_of = nearest_centroid(self.embeddings, self.schema_centroids)
        else:
            num_schemas = self.config.num_schemas or default_num_schemas(len(self.ids), self.config.max_schemas)
            self.schema_of, self.schema_centroids = cluster_schemas(
                self.embeddings, num_schemas, seed=self.config.seed
            )  # (N,), (S, D)
        self.num_schemas = len(self.schema_centroids)

    def _edge_table(self) -> dict[str, np.ndarray]:
        """Temporal and semantic pairs merged into one table of unique ``i < j`` edges."""
        t_rows, t_cols, gaps = temporal_pairs(
            self.timestamps, self.config.temporal_window_s,
            self.places if self.config.same_place_only else None,
        )
        s_rows, s_cols, cosines = self._semantic
        count = len(self.ids)
        keys = np.concatenate([t_rows * count + t_cols, s_rows * count + s_cols])
        unique, inverse = np.unique(keys, return_inverse=True)
        temporal_weight = np.zeros(len(unique))
        semantic_weight = np.zeros(len(unique))
        time_gap = np.abs(self.timestamps[unique // count] - self.timestamps[unique % count])
        window = max(self.config.temporal_window_s, 1e-9)
        temporal_weight[inverse[: len(t_rows)]] = np.exp(-gaps / window)
        semantic_weight[inverse[len(t_rows) :]] = cosines
        is_temporal = np.zeros(len(unique), dtype=bool)
        is_temporal[inverse[: len(t_rows)]] = True
        is_semantic = np.zeros(len(unique), dtype=bool)
        is_semantic[inverse[len(t_rows) :]] = True
        return {
            "rows": unique // count, "cols": unique % count, "time_gap_s": time_gap,
            "is_temporal": is_temporal, "is_semantic": is_semantic,
            "temporal_weight": temporal_weight, "semantic_weight": semantic_weight,
        }

    def _build_graph(self) -> nx.Graph:
        graph = nx.Graph()
        places = [None] * len(self.ids) if self.places is None else self.places.tolist()
        graph.add_nodes_from(
            (int(memory_id), {
                "timestamp": float(self.timestamps[i]), "place": places[i],
                "episode": int(self.episode_of[i]), "schema": int(self.schema_of[i]),
                "importance": float(self.importance[i]),
            })
            for i, memory_id in enumerate(self.ids)
        )
        table = self._table
        is_temporal, is_semantic = table["is_temporal"], table["is_semantic"]
        names = (None, ("temporal",), ("semantic",), ("temporal", "semantic"))
        ids = self.ids.tolist()
        graph.add_edges_from(
            (ids[row], ids[col], {
                "types": names[int(t) + 2 * int(s)], "weight": float(tw + sw),
                "temporal_weight": float(tw), "semantic_weight": float(sw), "time_gap_s": float(gap),
            })
            for row, col, t, s, tw, sw, gap in zip(
                table["rows"].tolist(), table["cols"].tolist(), is_temporal, is_semantic,
                table["temporal_weight"].tolist(), table["semantic_weight"].tolist(), table["time_gap_s"].tolist(),
            )
        )
        return graph

    def _build_hierarchy(self) -> nx.DiGraph:
        hierarchy = nx.DiGraph()
        hierarchy.add_nodes_from((("schema", s), {"level": "schema"}) for s in range(self.num_schemas))
        starts = np.full(self.num_episodes, np.inf)
        ends = np.full(self.num_episodes, -np.inf)
        np.minimum.at(starts, self.episode_of, self.timestamps)
        np.maximum.at(ends, self.episode_of, self.timestamps)
        hierarchy.add_nodes_from(
            (("episode", e), {"level": "episode", "start": float(starts[e]), "end": float(ends[e])})
            for e in range(self.num_episodes)
        )
        pairs, counts = np.unique(np.stack([self.schema_of, self.episode_of], axis=1), axis=0, return_counts=True)
        hierarchy.add_edges_from(
            (("schema", int(s)), ("episode", int(e)), {"weight": int(c)}) for (s, e), c in zip(pairs, counts)
        )
        ids = self.ids.tolist()
        hierarchy.add_edges_from((("episode", int(e)), ids[i]) for i, e in enumerate(self.episode_of))
        hierarchy.add_edges_from((("schema", int(s)), ids[i]) for i, s in enumerate(self.schema_of))
        return hierarchy

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: Any) -> np.ndarray:
        """Positions (rows of :meth:`to_csr`) of memory ``ids`` (any shape); ``-1`` where unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids = self.ids[self._order]
        slots = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[slots] == ids, self._order[slots], -1)

    def to_csr(self, *, weight: str = "weight") -> sparse.csr_matrix:
        """Weighted adjacency ``(N, N)`` (symmetric, float64) with rows/columns in :attr:`ids` order.

        ``weight`` is the edge attribute used: ``"weight"`` (both kinds, default),
        ``"temporal_weight"`` or ``"semantic_weight"`` (one kind alone; edges of the other kind
        only are dropped). Computed from the edge table once per attribute and cached (the graph
        does not change after construction: :meth:`updated` returns a new one).
        """
        if weight not in ("weight", "temporal_weight", "semantic_weight"):
            raise ValueError(f"EpisodicGraph.to_csr: weight must be 'weight', 'temporal_weight' or "
                             f"'semantic_weight', got {weight!r}")
        if weight not in self._csr:
            table, count = self._table, len(self.ids)
            values = table["temporal_weight"] + table["semantic_weight"] if weight == "weight" else table[weight]
            rows, cols = np.concatenate([table["rows"], table["cols"]]), np.concatenate([table["cols"], table["rows"]])
            adjacency = sparse.csr_matrix((np.concatenate([values, values]), (rows, cols)), shape=(count, count))
            adjacency.eliminate_zeros()
            self._csr[weight] = adjacency
        return self._csr[weight]

    def edge_types(self, first_id: int, second_id: int) -> tuple[str, ...]:
        """The ``types`` of the edge between two memories, ``()`` when they are not linked."""
        if self._graph is not None:
            data = self._graph.get_edge_data(int(first_id), int(second_id))
            return () if data is None else tuple(data["types"])
        if "types" not in self._csr:
            table, count = self._table, len(self.ids)
            code = (table["is_temporal"].astype(np.int8) + 2 * table["is_semantic"].astype(np.int8))
            rows, cols = np.concatenate([table["rows"], table["cols"]]), np.concatenate([table["cols"], table["rows"]])
            self._csr["types"] = sparse.csr_matrix((np.concatenate([code, code]), (rows, cols)), shape=(count, count))
        first, second = self.positions([first_id, second_id])
        if first < 0 or second < 0:
            return ()
        return ((), ("temporal",), ("semantic",), ("temporal", "semantic"))[int(self._csr["types"][first, second])]

    def stats(self) -> dict[str, float]:
        """Sizes: nodes, edges, temporal_edges, semantic_edges (both count in each), mean_degree,
        episodes, schemas."""
        table = self._table
        nodes, edges = len(self.ids), len(table["rows"])
        return {
            "nodes": nodes,
            "edges": edges,
            "temporal_edges": int(table["is_temporal"].sum()),
            "semantic_edges": int(table["is_semantic"].sum()),
            "mean_degree": 2 * edges / max(nodes, 1),
            "episodes": self.num_episodes,
            "schemas": self.num_schemas,
        }

    # ------------------------------------------------------------------ memory scores
    def recency(self, now: float | None = None, half_life_s: float = 30 * 86_400.0) -> np.ndarray:
        """``(N,)`` recency in (0, 1]: ``0.5 ** ((now - timestamp) / half_life_s)``.

        ``now`` defaults to the newest timestamp (so results do not depend on the clock).
        """
        now = float(np.nanmax(self.timestamps)) if now is None else float(now)
        age = np.maximum(now - self.timestamps, 0.0)
        return np.nan_to_num(0.5 ** (age / half_life_s), nan=0.0)  # unknown time: no recency

    def access_scores(self) -> np.ndarray:
        """``(N,)`` access frequency in [0, 1]: ``log1p(count) / log1p(max count)`` (0 if never)."""
        top = self.access_counts.max()
        return np.zeros(len(self.ids)) if top == 0 else np.log1p(self.access_counts) / np.log1p(top)

    def record_access(self, ids: Any) -> None:
        """Count one retrieval of each memory in ``ids`` (unknown ids raise ValueError)."""
        positions = self.positions(np.ravel(ids))
        if (positions < 0).any():
            raise ValueError(f"EpisodicGraph.record_access: id {np.ravel(ids)[positions < 0][0]} is not in the graph")
        np.add.at(self.access_counts, positions, 1)

    # ------------------------------------------------------------------ temporal order
    def follows(self) -> nx.DiGraph:
        """Directed "follows" links: each memory -> the next memory of its episode (one outing:
        same place, gaps <= ``episode_gap_s``) in time order (ties by id), with ``gap_s``.

        Built on first use from the episodes and timestamps (memories of unknown time are
        episodes of their own, so they follow nothing) and cached.
        """
        if getattr(self, "_follows", None) is None:
            order = np.lexsort((self.ids, self.timestamps, self.episode_of))  # (N,) episode, then time
            same = self.episode_of[order][1:] == self.episode_of[order][:-1]  # (N-1,)
            earlier, later = order[:-1][same], order[1:][same]
            follows = nx.DiGraph()
            follows.add_nodes_from(self.ids.tolist())
            follows.add_edges_from(
                (int(self.ids[a]), int(self.ids[b]), {"gap_s": float(self.timestamps[b] - self.timestamps[a])})
                for a, b in zip(earlier.tolist(), later.tolist()))
            self._follows = follows
        return self._follows

    def following(self, memory_id: int, skip_s: float = 0.0) -> list[tuple[int, float]]:
        """The memories after ``memory_id`` in its outing, in time order, as ``(id, seconds after
        it)``; those at most ``skip_s`` seconds after it (its own burst, the recording made with
        it) are left out when ``skip_s > 0``. Raises KeyError for an unknown id."""
        follows = self.follows()
        node = int(memory_id)
        if node not in follows:
            raise KeyError(f"memory {node} is not in the graph")
        found, gap = [], 0.0
        while True:
            nexts = list(follows.successors(node))
            if not nexts:
                return found
            gap += follows[node][nexts[0]]["gap_s"]
            node = nexts[0]
            if skip_s <= 0 or gap > skip_s:
                found.append((node, gap))

    # ------------------------------------------------------------------ incremental update
    def updated(
        self,
        *,
        add_ids: Any = (),
        add_embeddings: Any = None,
        add_timestamps: Any = None,
        add_places: Any = None,
        add_importance: Any = None,
        remove_ids: Any = (),
        index: VectorIndex | None = None,
        progress: bool = False,
    ) -> "EpisodicGraph":
        """The graph after adding and forgetting memories, without searching every memory again.

        Equal to a full build over the new set of memories with this graph's schema centroids
        (``EpisodicGraph(..., schema_centroids=self.schema_centroids)``) when the semantic edges
        come from an exact index: each memory's semantic choices are its top
        ``max_semantic_degree`` neighbours above the threshold, so

        * a new memory searches the memories once (``index`` when given — it must hold the new
          set of memories, as the store's index does after an ingest — else an exact scan);
        * an old memory merges the new memories into its choices (one exact ``(N, A)`` product);
        * an old memory that had chosen a forgotten one searches again;
        * every other memory keeps its choices; temporal edges and episodes (cheap, exact sweeps)
          are recomputed; new memories join their nearest schema.

        Schemas are clustered again (a full build) once the number of memories has doubled or
        halved since they were clustered, so their number keeps following ``sqrt(N / 2)``.
        Importance and access counts are kept for the memories that stay.
        """
        add_ids = np.asarray(add_ids, dtype=np.int64).reshape(-1)
        add_ids = as_ids(add_ids, len(add_ids), name="EpisodicGraph.updated add_ids")
        if len(add_ids):
            new_embeddings = as_unit_vectors(add_embeddings, dim=self.embeddings.shape[1], name="add_embeddings")
        else:
            new_embeddings = np.zeros((0, self.embeddings.shape[1]), np.float32)
        count = len(add_ids)
        new_times = self._column(np.full(count, np.nan) if add_timestamps is None else add_timestamps, count,
                                 "add_timestamps", allow_nan=True)
        new_importance = np.zeros(count) if add_importance is None else self._column(add_importance, count,
                                                                                     "add_importance")
        if self.places is None and add_places is not None:
            raise ValueError("EpisodicGraph.updated: this graph was built without places; add memories without them")
        remove = np.asarray(list(remove_ids), dtype=np.int64)
        unknown = remove[self.positions(remove) < 0] if len(remove) else remove
        if len(unknown):
            raise ValueError(f"EpisodicGraph.updated: memory {int(unknown[0])} to remove is not in the graph")
        clash = add_ids[self.positions(add_ids) >= 0] if count else add_ids
        clash = clash[~np.isin(clash, remove)]
        if len(clash):
            raise ValueError(f"EpisodicGraph.updated: memory {int(clash[0])} is already in the graph")
        keep = ~np.isin(self.ids, remove)  # (N,)
        ids = np.concatenate([self.ids[keep], add_ids])
        embeddings = np.concatenate([self.embeddings[keep], new_embeddings]).astype(np.float32, copy=False)
        timestamps = np.concatenate([self.timestamps[keep], new_times])
        if self.places is None:
            places = None
        else:
            places = np.concatenate([self.places[keep], self._places([None] * count if add_places is None
                                                                     else add_places, count)])
        importance = np.concatenate([self.importance[keep], new_importance])
        fitted_on = self._schemas_fitted_on
        if not fitted_on / 2 < len(ids) < 2 * fitted_on or self._choices is None:
            full = EpisodicGraph(ids, embeddings, timestamps, places, importance=importance, index=index,
                                 config=self.config, progress=progress)
            full.access_counts[: int(keep.sum())] = self.access_counts[keep]
            return full
        reuse: dict[str, Any] = {"schemas_fitted_on": fitted_on}
        reuse["choices"] = self._updated_choices(keep, remove, ids, embeddings, len(add_ids), index, progress)
        schema_of = np.concatenate([self.schema_of[keep], nearest_centroid(new_embeddings, self.schema_centroids)])
        reuse["schemas"] = (schema_of, self.schema_centroids)
        graph = EpisodicGraph(ids, embeddings, timestamps, places, importance=importance, config=self.config,
                              progress=False, _reuse=reuse)
        graph.access_counts[: int(keep.sum())] = self.access_counts[keep]
        return graph

    def _updated_choices(self, keep, remove, ids, embeddings, added, index, progress):
        """The semantic choices ``(N', d)`` ids and cosines after the update (see :meth:`updated`)."""
        choice_ids, cosines = self._choices[0][keep], self._choices[1][keep]
        width = choice_ids.shape[1]
        old = len(choice_ids)
        if width == 0:
            return (np.full((len(ids), 0), -1, np.int64), np.zeros((len(ids), 0), np.float32))
        stale = np.isin(choice_ids, remove).any(axis=1) if len(remove) else np.zeros(old, bool)  # (old,)
        if added:
            threshold = self.config.semantic_threshold
            new_ids, new_vectors = ids[old:], embeddings[old:]
            for start in range(0, old, 8_192):
                block = slice(start, min(start + 8_192, old))
                similar = embeddings[block] @ new_vectors.T  # (b, A) exact cosines to the new memories
                touched = (similar >= threshold).any(axis=1) & ~stale[block]
                if touched.any():
                    rows = np.flatnonzero(touched) + start
                    merged = merge_choices(choice_ids[rows], cosines[rows], np.broadcast_to(new_ids, (len(rows), added)),
                                           similar[touched], threshold)
                    choice_ids[rows], cosines[rows] = merged
        searched = np.concatenate([np.flatnonzero(stale), np.arange(old, len(ids))])
        found, found_cosines = semantic_choices(
            embeddings, self.config.semantic_threshold, width, index_kind="flat", index=index,
            ids=None if index is None else ids, queries=searched, progress=progress,
        )
        all_ids = np.concatenate([choice_ids, np.full((added, width), -1, np.int64)])
        all_cosines = np.concatenate([cosines, np.full((added, width), -np.inf, np.float32)])
        all_ids[searched] = np.where(found >= 0, ids[np.maximum(found, 0)], -1)
        all_cosines[searched] = found_cosines
        return all_ids, all_cosines

    # ------------------------------------------------------------------ control
    def shuffled_control(self, seed: int = 0) -> "EpisodicGraph":
        """The same memories with timestamps and places permuted across memories (GAR's control).

        Embeddings, importance, semantic edges and schemas are unchanged; temporal edges and
        episodes are rebuilt from the shuffled times/places, so any retrieval gain that comes
        from real when/where associations disappears in the control.
        """
        permutation = np.random.default_rng(seed).permutation(len(self.ids))
        places = None if self.places is None else self.places[permutation]
        return EpisodicGraph(
            self.ids, self.embeddings, self.timestamps[permutation], places,
            importance=self.importance, config=self.config, progress=False,
            _reuse={"semantic": self._semantic, "schemas": (self.schema_of, self.schema_centroids)},
        )
