"""GAR: batched personalised PageRank equals NetworkX; re-ranking and explanations on a hand-made graph."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from scipy import sparse

from mmai.retrieval.gar import GraphAugmentedRetriever, personalized_pagerank
from mmai.retrieval.graph import EpisodicGraph

DAY = 86_400.0


def random_weighted_digraph(seed: int = 0) -> nx.DiGraph:
    """Random directed graph with weights, isolated nodes and sink (dangling) nodes."""
    rng = np.random.default_rng(seed)
    graph = nx.gnm_random_graph(80, 240, seed=seed, directed=True)
    for u, v in graph.edges:
        graph[u][v]["weight"] = float(rng.uniform(0.1, 2.0))
    graph.remove_edges_from([(u, v) for u, v in list(graph.edges) if u in (3, 7, 11)])  # sinks
    graph.add_nodes_from(range(80, 86))  # isolated nodes
    return graph


def networkx_ppr(graph, nodes, seed_row, damping):
    ranks = nx.pagerank(graph, alpha=damping, personalization=dict(zip(nodes, seed_row)), tol=1e-12, max_iter=500)
    return np.array([ranks[n] for n in nodes])


@pytest.mark.parametrize("damping", [0.5, 0.85])
def test_batched_ppr_equals_networkx_with_dangling_nodes(damping):
    graph = random_weighted_digraph()
    nodes = list(graph)
    assert any(graph.out_degree(n) == 0 for n in nodes)
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight="weight")
    rng = np.random.default_rng(1)
    seeds = rng.random((5, len(nodes))) * (rng.random((5, len(nodes))) < 0.05)
    seeds[:, 3] += 0.2  # a dangling node as seed too
    ours = personalized_pagerank(adjacency, seeds, damping=damping)
    assert ours.shape == (5, 86)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-9)
    for row in range(5):
        np.testing.assert_allclose(ours[row], networkx_ppr(graph, nodes, seeds[row], damping), atol=1e-6)
    np.testing.assert_allclose(personalized_pagerank(adjacency, sparse.csr_matrix(seeds), damping=damping), ours)
    np.testing.assert_allclose(personalized_pagerank(adjacency, seeds[2], damping=damping), ours[2])


def test_ppr_on_episodic_graph_csr_equals_networkx_on_its_graph():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(120, 16))
    embeddings[60:] = embeddings[:60] + 0.2 * rng.normal(size=(60, 16))  # some near-duplicates
    timestamps = np.sort(rng.uniform(0, 5 * DAY, 120))
    graph = EpisodicGraph(np.arange(120) * 3, embeddings, timestamps, progress=False)
    seeds = np.zeros((2, 120))
    seeds[0, [0, 5, 9]] = [1.0, 0.5, 0.2]
    seeds[1, 100] = 1.0
    ours = personalized_pagerank(graph.to_csr(), seeds)
    for row in range(2):
        np.testing.assert_allclose(ours[row], networkx_ppr(graph.graph, graph.ids.tolist(), seeds[row], 0.5), atol=1e-6)


def test_ppr_rejects_empty_seed_rows_and_wrong_sizes():
    adjacency = sparse.identity(4, format="csr")
    with pytest.raises(ValueError, match="seed row 1 is all zeros"):
        personalized_pagerank(adjacency, np.array([[1, 0, 0, 0], [0, 0, 0, 0.0]]))
    with pytest.raises(ValueError, match="the graph has 4 nodes"):
        personalized_pagerank(adjacency, np.ones((1, 5)))


@pytest.fixture
def outing_graph() -> EpisodicGraph:
    """Six memories: 10 and 11 are one outing (10 minutes apart); 12 and 13 look alike; 14, 15 alone."""
    embeddings = np.eye(6, 8)
    embeddings[3] = 0.95 * embeddings[2] + 0.3 * np.eye(8)[6]  # 13 ~ 12 (cosine ~0.95)
    timestamps = np.array([0.0, 600.0, 3 * DAY, 6 * DAY, 9 * DAY, 12 * DAY])
    graph = EpisodicGraph(np.arange(10, 16), embeddings, timestamps, num_schemas=2, progress=False)
    assert graph.edge_types(10, 11) == ("temporal",) and graph.edge_types(12, 13) == ("semantic",)
    assert graph.graph.degree(14) == 0
    return graph


HITS, SCORES = np.array([[10, 12, 14]]), np.array([[0.9, 0.5, 0.45]])


def test_gar_brings_in_the_same_outing_neighbour_and_keeps_list_length(outing_graph):
    result = GraphAugmentedRetriever(outing_graph, gar_weight=0.5).rerank(HITS, SCORES)
    assert result.ids.shape == (1, 3) and result.scores.shape == (1, 3)
    assert result.ids[0].tolist() == [10, 11, 12]  # 11 (same outing as the top hit) replaces 14
    assert np.all(np.diff(result.scores[0]) <= 0)
    assert result.retrieval[0, 1] == 0.0 and result.activation[0, 0] == 1.0


def test_gar_weight_one_reproduces_stage_one_order(outing_graph):
    result = GraphAugmentedRetriever(outing_graph, gar_weight=1.0).rerank(HITS, SCORES)
    assert result.ids.tolist() == HITS.tolist()


def test_explanations_name_the_seed_and_the_kind_of_association(outing_graph):
    result = GraphAugmentedRetriever(outing_graph, gar_weight=0.5).rerank(HITS, SCORES, k=4, explain=True)
    assert result.ids[0].tolist() == [10, 11, 12, 13]
    top, outing, similar, lookalike = result.explanations[0]
    assert top.hit_rank == 0 and top.summary.startswith("direct hit (rank 1)")
    assert outing.hit_rank is None and outing.contributions[0].seed_id == 10
    assert outing.contributions[0].reason == "same outing" and outing.summary == "same outing (hit 10)"
    assert similar.hit_rank == 1
    assert lookalike.contributions[0].edge_types == ("semantic",) and lookalike.summary == "similar content (hit 12)"


def test_num_seeds_limits_which_hits_spread_activation(outing_graph):
    result = GraphAugmentedRetriever(outing_graph, gar_weight=0.5, num_seeds=1).rerank(HITS, SCORES, k=6)
    activation = dict(zip(result.ids[0].tolist(), result.activation[0]))
    assert activation[13] == pytest.approx(0.0, abs=1e-9) and activation[11] > 0.1


def test_importance_weight_lifts_an_important_unconnected_memory(outing_graph):
    outing_graph.importance[outing_graph.positions([15])] = 1.0
    plain = GraphAugmentedRetriever(outing_graph).rerank(HITS, SCORES)
    weighted = GraphAugmentedRetriever(outing_graph, importance_weight=2.0).rerank(HITS, SCORES)
    assert 15 not in plain.ids[0] and weighted.ids[0, 0] == 15


def test_batches_give_the_same_result_as_one_batch():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(150, 12))
    graph = EpisodicGraph(np.arange(150), embeddings, np.sort(rng.uniform(0, 3 * DAY, 150)), semantic_threshold=0.5, progress=False)
    hits = np.stack([rng.choice(150, 10, replace=False) for _ in range(7)])
    scores = -np.sort(-rng.random((7, 10)), axis=1)
    hits[3, -2:] = -1  # padding from a short FAISS result
    one = GraphAugmentedRetriever(graph, batch_size=64).rerank(hits, scores)
    many = GraphAugmentedRetriever(graph, batch_size=2).rerank(hits, scores)
    np.testing.assert_array_equal(one.ids, many.ids)
    np.testing.assert_allclose(one.scores, many.scores)
    assert all(len(set(row)) == 10 for row in one.ids)


def test_bad_hits_are_clear_errors(outing_graph):
    retriever = GraphAugmentedRetriever(outing_graph)
    with pytest.raises(ValueError, match="hit id 99 is not in the episodic graph"):
        retriever.rerank([[10, 99]], [[0.9, 0.8]])
    with pytest.raises(ValueError, match="query 0 has no valid hit"):
        retriever.rerank([[-1, -1]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="differ in shape"):
        retriever.rerank([[10, 11]], [[0.9]])


# ---------------------------------------------------------------------- issue 19: one scale, few seeds, bursts
from mmai.retrieval.gar import GAR_MODES, normalise_scores  # noqa: E402


def test_rank_normalisation_is_reciprocal_rank_fusion_over_valid_hits():
    scores = np.array([[5.0, 4.9, 0.3, 0.2], [0.9, 0.0, 0.8, 0.7]])
    valid = np.array([[True, True, True, True], [True, False, True, True]])
    weights = normalise_scores(scores, valid, "rank", rrf_k=60)
    np.testing.assert_allclose(weights[0], [1.0, 61 / 62, 61 / 63, 61 / 64])
    np.testing.assert_allclose(weights[1], [1.0, 0.0, 61 / 62, 61 / 63])  # padding takes no rank


@pytest.fixture
def scale_graph() -> EpisodicGraph:
    """Hits 20-23 days apart; 24, not a hit, was taken 5 minutes after the top hit 20."""
    timestamps = np.array([0.0, 2 * DAY, 4 * DAY, 6 * DAY, 300.0])
    return EpisodicGraph(np.arange(20, 25), np.eye(5, 8), timestamps, num_schemas=2, progress=False)


# a two-stage list: the top 2 carry match logit + cosine, the tail cosine alone
MIXED_IDS, MIXED_SCORES, COSINES = np.array([[20, 21, 22, 23]]), np.array([[5.0, 4.9, 0.35, 0.30]]), \
    np.array([[0.40, 0.38, 0.35, 0.30]])


def test_min_max_over_mixed_scales_drops_a_strong_tail_hit_that_one_scale_keeps(scale_graph):
    old = GraphAugmentedRetriever(scale_graph).rerank(MIXED_IDS, MIXED_SCORES, k=3)
    assert 24 in old.ids[0] and 22 not in old.ids[0]  # hit 22's retrieval term is 0.01: activation alone wins
    for one_scale in (GraphAugmentedRetriever(scale_graph).rerank(MIXED_IDS, MIXED_SCORES, k=3, seed_scores=COSINES),
                      GraphAugmentedRetriever(scale_graph, seed_normalisation="rank").rerank(MIXED_IDS, MIXED_SCORES,
                                                                                              k=3)):
        assert one_scale.ids[0].tolist() == [20, 21, 22]
    with pytest.raises(ValueError, match="seed_scores"):
        GraphAugmentedRetriever(scale_graph).rerank(MIXED_IDS, MIXED_SCORES, seed_scores=COSINES[:, :2])


@pytest.fixture
def burst_graph() -> EpisodicGraph:
    """A sighting: clear photo 1 and hard photos 2, 3 (30 s, 60 s later); 5 is the same outing
    10 minutes later (a temporal edge, not the burst); 4 is another day; 10-16 are other hits."""
    ids = np.array([1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16])
    timestamps = np.array([0.0, 30.0, 60.0, 3 * DAY, 600.0, *(DAY * np.arange(5, 12))])
    return EpisodicGraph(ids, np.eye(12, 16), timestamps, num_schemas=2, progress=False)


BURST_HITS, BURST_SCORES = np.array([[1, 10, 11, 12, 13, 14, 15, 16]]), np.linspace(0.9, 0.5, 8)[None]


def test_burst_rule_places_the_top_hits_unscored_burst_mates_right_after_it(burst_graph):
    assert burst_graph.edge_types(1, 5) == ("temporal",) and burst_graph.graph.degree(4) == 0
    plain = GraphAugmentedRetriever.from_mode(burst_graph, burst_hits=0).rerank(BURST_HITS, BURST_SCORES, k=4)
    assert not {2, 3} & set(plain.ids[0].tolist())  # without the rule the hard photos stay out
    result = GraphAugmentedRetriever.from_mode(burst_graph).rerank(BURST_HITS, BURST_SCORES, k=4, explain=True)
    assert result.ids[0].tolist() == [1, 2, 3, 10]  # 2 and 3 had no stage-1 score
    assert 4 not in result.ids[0] and 5 not in result.ids[0]  # not linked / linked but not the burst
    assert result.burst_of[0].tolist() == [-1, 1, 1, -1]
    assert result.retrieval[0, 1] == 0.0 and np.all(np.diff(result.scores[0]) <= 0)
    top, mate, _, _ = result.explanations[0]
    assert top.burst_of is None and mate.burst_of == 1 and mate.hit_rank is None
    assert mate.contributions[0].reason == "same outing" and mate.summary.startswith("same outing (hit 1)")


def test_burst_rule_caps_the_mates_and_needs_a_top_hit_as_anchor(burst_graph):
    capped = GraphAugmentedRetriever.from_mode(burst_graph, max_burst_mates=1).rerank(BURST_HITS, BURST_SCORES, k=4)
    assert capped.ids[0].tolist() == [1, 2, 10, 11]
    late = np.array([[10, 11, 12, 13, 1, 14, 15, 16]])  # the sighting's clear photo is the 5th hit
    result = GraphAugmentedRetriever.from_mode(burst_graph).rerank(late, BURST_SCORES, k=4)
    assert not {2, 3} & set(result.ids[0].tolist())
    wide = GraphAugmentedRetriever.from_mode(burst_graph, burst_window_s=600).rerank(BURST_HITS, BURST_SCORES, k=5)
    assert wide.ids[0].tolist()[:4] == [1, 2, 3, 5]


def test_modes_and_their_overrides(burst_graph):
    assert GAR_MODES["burst"] == {"num_seeds": 5, "seed_normalisation": "rank", "semantic_edges": False,
                                  "burst_hits": 3}
    burst = GraphAugmentedRetriever.from_mode(burst_graph, num_seeds=None, gar_weight=0.7)
    assert (burst.num_seeds, burst.seed_normalisation, burst.semantic_edges, burst.burst_hits, burst.gar_weight) == \
        (5, "rank", False, 3, 0.7)
    assert GraphAugmentedRetriever.from_mode(burst_graph, num_seeds=0).num_seeds is None  # 0: all hits
    legacy = GraphAugmentedRetriever.from_mode(burst_graph, "legacy")
    assert (legacy.num_seeds, legacy.seed_normalisation, legacy.semantic_edges, legacy.burst_hits) == \
        (None, "minmax", True, 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        GraphAugmentedRetriever.from_mode(burst_graph, "hipporag")


def test_semantic_off_graph_has_no_semantic_edges_and_its_control_neither():
    embeddings = np.eye(6, 8)
    embeddings[3] = 0.95 * embeddings[2] + 0.3 * np.eye(8)[6]  # 13 ~ 12, as in outing_graph
    timestamps = np.array([0.0, 600.0, 3 * DAY, 6 * DAY, 9 * DAY, 12 * DAY])
    graph = EpisodicGraph(np.arange(10, 16), embeddings, timestamps, num_schemas=2, semantic_edges=False,
                          progress=False)
    assert graph.stats()["semantic_edges"] == 0 and graph.stats()["temporal_edges"] == 1
    assert graph.edge_types(12, 13) == () and graph.edge_types(10, 11) == ("temporal",)
    assert graph.shuffled_control(0).stats()["semantic_edges"] == 0


def test_walk_without_semantic_edges_ignores_them_on_a_graph_that_has_them(outing_graph):
    walk = GraphAugmentedRetriever(outing_graph, semantic_edges=False)
    result = walk.rerank(HITS, SCORES, k=6, explain=True)
    activation = dict(zip(result.ids[0].tolist(), result.activation[0]))
    assert activation[13] == pytest.approx(0.0, abs=1e-12) and activation[11] > 0.1
    lookalike = result.explanations[0][result.ids[0].tolist().index(13)]
    assert lookalike.summary == "no graph path to a hit"


def test_personal_memory_search_options_build_the_same_burst_retriever(burst_graph):
    from types import SimpleNamespace

    from mmai.memory.search import Searcher, SearchOptions

    searcher = Searcher(store=None, sync=SimpleNamespace(graph=lambda: burst_graph), records=None, models=None)
    burst = searcher._retriever(SearchOptions(gar=True))
    assert (burst.num_seeds, burst.seed_normalisation, burst.semantic_edges, burst.burst_hits) == (5, "rank", False, 3)
    assert searcher._retriever(SearchOptions(gar=True)) is burst  # cached while the options stay
    legacy = searcher._retriever(SearchOptions(gar=True, gar_mode="legacy", gar_seeds=2, semantic_edges=True))
    assert legacy is not burst and (legacy.num_seeds, legacy.burst_hits, legacy.semantic_edges) == (2, 0, True)
    with pytest.raises(ValueError, match="gar_mode must be one of"):
        SearchOptions(gar_mode="nope")


def test_pipeline_seeds_gar_from_the_re_ranked_list_and_scores_stage_two_as_the_library(burst_graph):
    """mmai.retrieval.pipeline.rank, the chain evaluation and the memory share: stage 2 is
    rerank_topk's, and GAR follows the list stage 2 left (not stage 1's)."""
    import torch

    from mmai.retrieval.pipeline import Ranking, Rerank, rank
    from mmai.retrieval.two_stage import rerank_topk

    def reverse(queries, candidates):  # a re-ranker preferring the weakest stage-1 hits
        return torch.arange(candidates.shape[1], dtype=torch.float64)[None].expand(len(queries), -1) * 10.0

    retriever = GraphAugmentedRetriever.from_mode(burst_graph)
    stage1 = Ranking(torch.as_tensor(BURST_HITS), torch.as_tensor(BURST_SCORES))
    result = rank(stage1, rerank=Rerank(reverse, rerank_k=8, stage1_weight=0.5), gar=retriever, gar_length=4)
    expected = rerank_topk(stage1.positions, stage1.scores, k=8, rerank_fn=reverse, stage1_weight=0.5,
                           return_scores=True)
    assert torch.equal(result.two_stage.positions, expected[0]) and torch.equal(result.two_stage.scores, expected[1])
    assert result.two_stage.positions[0].tolist() == [16, 15, 14, 13, 12, 11, 10, 1]
    alone = retriever.rerank(expected[0].numpy(), expected[1].numpy(), 4)
    assert result.gar.ids.tolist() == alone.ids.tolist() and result.final.positions is result.gar.ids
    from_stage1 = rank(stage1, gar=retriever, gar_length=4).gar.ids[0].tolist()
    assert from_stage1 == [1, 2, 3, 10] and result.gar.ids[0].tolist()[:3] == [16, 15, 14]  # 1's burst stays out
