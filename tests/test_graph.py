"""EpisodicGraph: edges equal a brute-force construction; episodes, schemas, control (top-down: test_topdown.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mmai.retrieval.graph import EpisodicGraph
from mmai.retrieval.index import VectorIndex

HOUR = 3600.0


def memories(count: int = 200, clusters: int = 8, dim: int = 24, seed: int = 0):
    """Clustered unit embeddings, diary-like timestamps (bursts of photos) and places."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, count)
    points = centres[labels] + 0.25 * rng.normal(size=(count, dim))
    embeddings = points / np.linalg.norm(points, axis=1, keepdims=True)
    outing_starts = np.cumsum(rng.exponential(5 * HOUR, size=count // 8 + 1))
    timestamps = outing_starts[rng.integers(0, len(outing_starts), count)] + rng.uniform(0, 1.5 * HOUR, count)
    places = rng.choice(["lake", "forest", "garden"], size=count)
    ids = rng.permutation(10_000)[:count].astype(np.int64)  # ids unrelated to positions
    return ids, embeddings.astype(np.float32), timestamps, places, labels


def brute_temporal(timestamps, places, window, same_place):
    return {
        (i, j) for i, j in itertools.combinations(range(len(timestamps)), 2)
        if abs(timestamps[i] - timestamps[j]) <= window and (not same_place or places[i] == places[j])
    }


def brute_semantic(embeddings, threshold, max_degree):
    cosines = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    chosen = set()
    for i in range(len(embeddings)):
        others = [j for j in np.argsort(-cosines[i]) if j != i][:max_degree]
        chosen |= {(min(i, j), max(i, j)) for j in others if cosines[i, j] >= threshold}
    return chosen, cosines


def edges_by_type(graph: EpisodicGraph, kind: str) -> set[tuple[int, int]]:
    position = {int(memory_id): i for i, memory_id in enumerate(graph.ids)}
    return {
        tuple(sorted((position[u], position[v])))
        for u, v, data in graph.graph.edges(data=True) if kind in data["types"]
    }


@pytest.mark.parametrize("same_place_only", [False, True])
def test_temporal_edges_equal_brute_force_all_pairs(same_place_only):
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, same_place_only=same_place_only, progress=False)
    expected = brute_temporal(timestamps, places, HOUR, same_place_only)
    assert len(expected) > 100
    assert edges_by_type(graph, "temporal") == expected


def test_semantic_edges_equal_brute_force_with_degree_cap():
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, max_semantic_degree=4, progress=False)
    expected, cosines = brute_semantic(embeddings, 0.85, 4)
    uncapped = (cosines >= 0.85).sum(axis=1) - 1
    assert uncapped.max() > 4, "fixture must exercise the cap"
    assert edges_by_type(graph, "semantic") == expected


def test_an_existing_index_over_the_memories_gives_the_same_semantic_edges():
    ids, embeddings, timestamps, places, _ = memories()
    stage1 = VectorIndex.build(embeddings[::-1], ids[::-1], kind="flat")  # other order, same memories
    stage1.add(np.eye(24)[:2], [20_000, 20_001])  # and memories outside the graph
    reused = EpisodicGraph(ids, embeddings, timestamps, places, index=stage1, progress=False)
    built = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    assert edges_by_type(reused, "semantic") == edges_by_type(built, "semantic")


def test_edge_weights_and_types_follow_the_documented_rule():
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    position = {int(memory_id): i for i, memory_id in enumerate(graph.ids)}
    seen_both = 0
    for u, v, data in graph.graph.edges(data=True):
        i, j = position[u], position[v]
        gap = abs(timestamps[i] - timestamps[j])
        temporal = math.exp(-gap / HOUR) if "temporal" in data["types"] else 0.0
        semantic = float(embeddings[i] @ embeddings[j]) if "semantic" in data["types"] else 0.0
        assert data["weight"] == pytest.approx(temporal + semantic, abs=1e-5)
        assert data["time_gap_s"] == pytest.approx(gap)
        seen_both += len(data["types"]) == 2
    assert seen_both > 0


def test_csr_is_symmetric_and_aligned_with_node_order():
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    adjacency = graph.to_csr()
    assert adjacency.shape == (200, 200) and abs(adjacency - adjacency.T).max() == 0
    for u, v, data in list(graph.graph.edges(data=True))[:50]:
        i, j = graph.positions([u, v])
        assert adjacency[i, j] == pytest.approx(data["weight"])
    assert adjacency.nnz == 2 * graph.graph.number_of_edges()


def test_episodes_split_on_long_gaps_and_place_changes():
    timestamps = np.array([0, 600, 1200, 10 * HOUR, 10 * HOUR + 60, 10 * HOUR + 120, 30 * HOUR], dtype=float)
    places = ["lake", "lake", "lake", "lake", "lake", "forest", "forest"]
    embeddings = np.eye(7, 8, dtype=np.float32) + 0.01
    graph = EpisodicGraph(np.arange(7) + 100, embeddings, timestamps, places, progress=False)
    assert graph.episode_of.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert graph.graph.nodes[105]["episode"] == 2
    assert graph.hierarchy.has_edge(("episode", 1), 104)
    assert graph.hierarchy.nodes[("episode", 1)]["start"] == 10 * HOUR
    no_places = EpisodicGraph(np.arange(7), embeddings, timestamps, progress=False)
    assert no_places.episode_of.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_schemas_recover_planted_clusters_and_top_down_search_reaches_them():
    ids, embeddings, timestamps, places, labels = memories(count=400, clusters=8)
    # k-means over-clusters (16 schemas for 8 planted clusters) so each schema should be pure
    graph = EpisodicGraph(ids, embeddings, timestamps, places, num_schemas=16, progress=False)
    assert graph.num_schemas == 16
    purity = sum(np.bincount(labels[graph.schema_of == s]).max() for s in np.unique(graph.schema_of)) / 400
    assert purity > 0.9
    assert all(graph.hierarchy.has_edge(("schema", int(graph.schema_of[i])), int(ids[i])) for i in range(400))
    target = labels[0]
    query = embeddings[labels == target].mean(axis=0)
    from mmai.retrieval.topdown import TopDownIndex, TopDownSettings

    found = TopDownIndex.from_graph(graph).search(query, 20, TopDownSettings(mass=0.5, entropy_stop=1.0))
    assert found.memories_scored < 400 and np.mean(labels[graph.positions(found.ids)] == target) > 0.9


def test_default_number_of_schemas_is_sqrt_half_n():
    ids, embeddings, timestamps, places, _ = memories(count=200)
    assert EpisodicGraph(ids, embeddings, timestamps, places, progress=False).num_schemas == 10


def test_stats_count_nodes_edges_and_levels():
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    stats = graph.stats()
    assert stats["nodes"] == 200 and stats["schemas"] == graph.num_schemas
    assert stats["temporal_edges"] == len(brute_temporal(timestamps, places, HOUR, False))
    assert stats["temporal_edges"] + stats["semantic_edges"] >= stats["edges"]
    assert stats["mean_degree"] == pytest.approx(2 * stats["edges"] / 200)
    assert stats["episodes"] == graph.episode_of.max() + 1


def test_shuffled_control_permutes_time_and_place_but_keeps_content_edges():
    ids, embeddings, timestamps, places, _ = memories()
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    control = graph.shuffled_control(seed=1)
    np.testing.assert_array_equal(control.ids, graph.ids)
    assert sorted(control.timestamps) == sorted(timestamps) and not np.array_equal(control.timestamps, timestamps)
    assert edges_by_type(control, "semantic") == edges_by_type(graph, "semantic")
    assert edges_by_type(control, "temporal") == brute_temporal(control.timestamps, control.places, HOUR, False)
    assert edges_by_type(control, "temporal") != edges_by_type(graph, "temporal")


def test_recency_and_access_scores():
    ids, embeddings, timestamps, places, _ = memories(count=20)
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    recency = graph.recency(now=timestamps.max() + 86_400, half_life_s=86_400)
    assert recency[np.argmax(timestamps)] == pytest.approx(0.5)
    graph.record_access([ids[3], ids[3], ids[5]])
    assert graph.access_scores()[graph.positions([ids[3], ids[5], ids[0]])].tolist() == pytest.approx([1.0, math.log(2) / math.log(3), 0.0])
    with pytest.raises(ValueError, match="not in the graph"):
        graph.record_access([-5])


def test_bad_input_is_rejected_with_clear_messages():
    ids, embeddings, timestamps, places, _ = memories(count=20)
    bad = embeddings.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="first at row 7"):
        EpisodicGraph(ids, bad, timestamps, places, progress=False)
    with pytest.raises(ValueError, match=r"timestamps: expected shape \(20,\)"):
        EpisodicGraph(ids, embeddings, timestamps[:5], places, progress=False)
    with pytest.raises(ValueError, match="duplicate id"):
        EpisodicGraph(np.zeros(20, dtype=np.int64), embeddings, timestamps, places, progress=False)
    with pytest.raises(ValueError, match="semantic_threshold"):
        EpisodicGraph(ids, embeddings, timestamps, places, semantic_threshold=1.5, progress=False)


def test_unknown_times_get_no_temporal_edges_and_episodes_of_their_own():
    from mmai.retrieval.graph import EpisodicGraph

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 8))
    times = np.array([0.0, 60.0, np.nan, 120.0, np.nan, np.nan])  # real CUB: no diary at all
    graph = EpisodicGraph(np.arange(6), embeddings, times, semantic_threshold=0.99, progress=False)
    temporal = {tuple(sorted(e)) for e, d in ((e, graph.graph.edges[e]) for e in graph.graph.edges)
                if "temporal" in d["types"]}
    assert temporal == {(0, 1), (0, 3), (1, 3)}
    unknown_episodes = {int(graph.episode_of[i]) for i in (2, 4, 5)}
    assert len(unknown_episodes) == 3 and not unknown_episodes & {int(graph.episode_of[i]) for i in (0, 1, 3)}
    assert np.isfinite(graph.recency()).all()
    with pytest.raises(ValueError, match="inf"):
        EpisodicGraph(np.arange(2), embeddings[:2], np.array([0.0, np.inf]), progress=False)
