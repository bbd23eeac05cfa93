"""Entropy-driven top-down retrieval (mmai.retrieval.topdown): exact at mass 1, the count of memories
scored on a hand-made hierarchy, the descent rule, the settings' refusals, AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from mmai.retrieval.graph import EpisodicGraph
from mmai.retrieval.topdown import TopDownIndex, TopDownSettings, auroc


def _clustered(count: int = 600, dim: int = 16, clusters: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, count)] + 0.5 * rng.normal(size=(count, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    timestamps = np.cumsum(rng.uniform(60, 9000, count))  # gaps around the 7,200 s episode gap
    places = rng.choice(["lake", "park", "hill"], count)
    return np.arange(100, 100 + count, dtype=np.int64), vectors.astype(np.float32), timestamps, places


@pytest.mark.parametrize("entropy_stop", [0.0, 0.5, 2.0])  # always descend / by entropy / never
def test_mass_one_is_flat_exact_search(entropy_stop):
    ids, vectors, timestamps, places = _clustered()
    index = TopDownIndex.build(ids, vectors, timestamps, places, num_schemas=9)
    queries = np.random.default_rng(1).normal(size=(20, vectors.shape[1]))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query in queries:
        result = index.search(query, k=25, settings=TopDownSettings(mass=1.0, entropy_stop=entropy_stop))
        cosines = vectors @ query.astype(np.float32)
        flat = np.argsort(-cosines, kind="stable")[:25]
        assert result.memories_scored == len(ids) and not result.descended
        np.testing.assert_array_equal(result.ids, ids[flat])
        np.testing.assert_allclose(result.scores, cosines[flat], rtol=1e-6)


def test_the_index_of_an_episodic_graph_uses_its_schemas_and_episodes():
    ids, vectors, timestamps, places = _clustered(200)
    graph = EpisodicGraph(ids, vectors, timestamps, places, num_schemas=5, progress=False)
    index = TopDownIndex.from_graph(graph)
    assert len(index.schemas) == len(np.unique(graph.schema_of))
    pairs = {(int(s), int(e)) for s, e in zip(graph.schema_of, graph.episode_of)}
    assert len(index.branch_start) == len(pairs)  # one branch per (schema, episode) pair
    result = index.search(vectors[0], k=5, settings=TopDownSettings(mass=0.5, entropy_stop=2.0))
    in_kept = np.isin(graph.schema_of, graph.schema_of[graph.positions(result.ids)])
    assert result.memories_scored == int(in_kept.sum())  # the kept schemas' memories, all of them


def _hand_made():
    """Three schemas along x, y, z; schema 0 holds two episodes: 4 memories near x (episode 0) and
    3 memories between x and y (episode 1); schema 1 (y) 5 memories, schema 2 (z) 6 memories."""
    x, y, z = np.eye(3, dtype=np.float32)
    near_x = [x + 0.05 * y, x + 0.05 * z, x - 0.05 * y, x - 0.05 * z]
    between = [x + 0.9 * y, x + 0.8 * y + 0.1 * z, x + 0.85 * y - 0.1 * z]
    vectors = np.array(near_x + between + [y + 0.01 * i * x for i in range(5)] + [z + 0.01 * i * y for i in range(6)])
    schema_of = np.array([0] * 7 + [1] * 5 + [2] * 6)
    episode_of = np.array([0] * 4 + [1] * 3 + [2] * 5 + [3] * 6)
    ids = np.arange(len(vectors), dtype=np.int64) * 10
    return TopDownIndex(ids, vectors, schema_of, np.eye(3, dtype=np.float32), episode_of), ids


def test_memories_scored_on_a_hand_made_hierarchy():
    index, ids = _hand_made()
    query = np.array([1.0, 0.0, 0.0])
    sure = TopDownSettings(mass=0.9, entropy_stop=0.5, temperature=0.05)  # p(schema 0) ~ 1: entropy ~ 0
    result = index.search(query, k=3, settings=sure)
    assert (result.schemas_kept, result.schemas, result.descended) == (1, 3, False)
    assert result.memories_scored == 7  # every memory of schema 0, both episodes
    assert result.entropy < 0.01 and result.mass > 0.9
    assert set(result.ids.tolist()) <= set(ids[:4].tolist())  # the near-x memories win
    descend = TopDownSettings(mass=0.9, entropy_stop=0.0, temperature=0.05)  # always descend
    result = index.search(query, k=4, settings=descend)
    assert result.descended and (result.branches_kept, result.branches_scored) == (1, 2)
    assert result.memories_scored == 4 and sorted(result.ids.tolist()) == ids[:4].tolist()
    wide = TopDownSettings(mass=0.999, entropy_stop=2.0, temperature=10.0)  # flat softmax: keeps all 3 schemas
    result = index.search(query, k=10, settings=wide)
    assert result.schemas_kept == 3 and result.memories_scored == 18 and result.entropy > 0.99


def test_descend_only_when_the_entropy_reaches_the_stop():
    index, _ = _hand_made()
    query = np.array([1.0, 1.0, 0.0])  # x and y alike: an unsure choice
    settings = TopDownSettings(mass=0.9, entropy_stop=0.3, temperature=0.2)
    result = index.search(query, k=5, settings=settings)
    assert result.entropy >= 0.3 and result.descended and result.schemas_kept == 2
    assert result.branches_scored == 3  # schema 0's two episodes and schema 1's one
    assert index.schema_entropy(query, 0.2) == pytest.approx(result.entropy)
    assert not index.search(query, k=5, settings=TopDownSettings(mass=0.9, entropy_stop=0.8, temperature=0.2)).descended


@pytest.mark.parametrize("field, value", [("mass", 0.0), ("mass", 1.5), ("entropy_stop", -0.1),
                                          ("temperature", 0.0)])
def test_bad_settings_are_refused_in_one_line(field, value):
    with pytest.raises(ValueError, match=f"top-down search: {field} must be"):
        TopDownSettings(**{field: value})


def test_auroc_counts_ties_half_and_needs_both_classes():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_a_search_keeps_branches_until_they_hold_k_memories():
    index, _ = _hand_made()
    query = np.array([1.0, 0.0, 0.0])
    for stop, scored in ((2.0, 12), (0.0, 7)):  # schemas 0 (7) + 1 (5); branches of schema 0: 4 + 3
        result = index.search(query, k=7 if stop == 0.0 else 10, settings=TopDownSettings(
            mass=0.5, entropy_stop=stop, temperature=0.05))
        assert result.memories_scored == scored and len(result.ids) == min(scored, 10)
