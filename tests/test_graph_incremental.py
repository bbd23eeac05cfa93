"""EpisodicGraph.updated: adding and forgetting memories equals a full build with the same schemas."""

from __future__ import annotations

import numpy as np
import pytest

from mmai.retrieval.graph import EpisodicGraph
from mmai.retrieval.index import VectorIndex
from tests.test_graph import memories


def edge_table(graph: EpisodicGraph) -> dict[tuple[int, int], tuple]:
    """Every edge by its memory ids, with its types and weights."""
    return {
        (min(u, v), max(u, v)): (tuple(data["types"]), data["temporal_weight"], data["semantic_weight"],
                                 data["time_gap_s"])
        for u, v, data in graph.graph.edges(data=True)
    }


def assert_same_graph(incremental: EpisodicGraph, full: EpisodicGraph) -> None:
    assert sorted(incremental.ids.tolist()) == sorted(full.ids.tolist())
    got, want = edge_table(incremental), edge_table(full)
    assert got.keys() == want.keys()
    for key, (types, temporal, semantic, gap) in want.items():
        assert got[key][0] == types, key
        np.testing.assert_allclose(got[key][1:], (temporal, semantic, gap), rtol=0, atol=1e-5)
    by_id = {int(i): p for p, i in enumerate(incremental.ids)}
    order = [by_id[int(i)] for i in full.ids]
    # episodes are numbered in time order, so they equal position by position; schemas too
    assert incremental.episode_of[order].tolist() == full.episode_of.tolist()
    assert incremental.schema_of[order].tolist() == full.schema_of.tolist()
    np.testing.assert_allclose(incremental.episode_centroids, full.episode_centroids, atol=1e-5)
    assert {n: d for n, d in incremental.hierarchy.nodes(data=True)} == {n: d for n, d in full.hierarchy.nodes(data=True)}
    assert set(incremental.hierarchy.edges) == set(full.hierarchy.edges)


def split(count=400, added=16, seed=0):
    ids, embeddings, timestamps, places, labels = memories(count + added, seed=seed)
    return (ids[:count], embeddings[:count], timestamps[:count], places[:count]), \
        (ids[count:], embeddings[count:], timestamps[count:], places[count:])


@pytest.mark.parametrize("degree", [4, 10])
def test_adding_memories_equals_a_full_build_with_the_same_schemas(degree):
    old, new = split()
    graph = EpisodicGraph(*old, max_semantic_degree=degree, progress=False)
    grown = graph.updated(add_ids=new[0], add_embeddings=new[1], add_timestamps=new[2], add_places=new[3])
    every = [np.concatenate([a, b]) for a, b in zip(old, new)]
    full = EpisodicGraph(*every, max_semantic_degree=degree, schema_centroids=graph.schema_centroids,
                         progress=False)
    # the fixture must exercise the merge: old memories whose choices change, and the degree cap
    changed = sum(1 for key, value in edge_table(full).items()
                  if "semantic" in value[0] and (key[0] in set(new[0].tolist()) or key[1] in set(new[0].tolist())))
    assert changed > 10
    assert_same_graph(grown, full)


def test_forgetting_memories_equals_a_full_build_and_the_chooser_searches_again():
    ids, embeddings, timestamps, places, _ = memories(400)
    graph = EpisodicGraph(ids, embeddings, timestamps, places, max_semantic_degree=4, progress=False)
    # forget memories that others chose: their choosers must find a replacement neighbour
    chosen = graph._choices[0]
    popular = np.unique(chosen[chosen >= 0], return_counts=True)
    gone = popular[0][np.argsort(-popular[1])[:12]]
    shrunk = graph.updated(remove_ids=gone)
    keep = ~np.isin(ids, gone)
    full = EpisodicGraph(ids[keep], embeddings[keep], timestamps[keep], places[keep], max_semantic_degree=4,
                         schema_centroids=graph.schema_centroids, progress=False)
    assert_same_graph(shrunk, full)
    assert not np.isin(shrunk.ids, gone).any()


def test_add_and_forget_at_once_with_the_store_index_and_access_counts_kept():
    old, new = split(300, 16, seed=3)
    graph = EpisodicGraph(*old, progress=False)
    graph.record_access(old[0][:5])
    gone = old[0][10:20]
    keep = ~np.isin(old[0], gone)
    every = [np.concatenate([a[keep], b]) for a, b in zip(old, new)]
    index = VectorIndex.build(every[1], every[0], kind="flat")  # the store's index after the ingest
    changed = graph.updated(add_ids=new[0], add_embeddings=new[1], add_timestamps=new[2], add_places=new[3],
                            remove_ids=gone, index=index)
    full = EpisodicGraph(*every, schema_centroids=graph.schema_centroids, progress=False)
    assert_same_graph(changed, full)
    assert changed.access_counts[:5].tolist() == [1] * 5 and changed.access_counts[5:].sum() == 0


def test_doubling_the_memories_clusters_the_schemas_again():
    ids, embeddings, timestamps, places, _ = memories(200)
    graph = EpisodicGraph(ids[:90], embeddings[:90], timestamps[:90], places[:90], progress=False)
    grown = graph.updated(add_ids=ids[90:], add_embeddings=embeddings[90:], add_timestamps=timestamps[90:],
                          add_places=places[90:])
    full = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    assert grown.num_schemas == full.num_schemas == 10 != graph.num_schemas
    assert_same_graph(grown, full)


def test_bad_updates_name_the_memory():
    ids, embeddings, timestamps, places, _ = memories(50)
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    with pytest.raises(ValueError, match=f"memory {ids[0]} is already in the graph"):
        graph.updated(add_ids=ids[:1], add_embeddings=embeddings[:1], add_timestamps=timestamps[:1])
    with pytest.raises(ValueError, match="memory 123456 to remove is not in the graph"):
        graph.updated(remove_ids=[123456])


def test_search_reads_the_edge_table_as_the_networkx_view_has_it():
    """to_csr, edge_types and stats come from the edge table without building NetworkX; they
    must agree with the NetworkX view of the same graph."""
    import networkx as nx

    ids, embeddings, timestamps, places, _ = memories(300)
    graph = EpisodicGraph(ids, embeddings, timestamps, places, progress=False)
    table_csr = graph.to_csr().toarray()
    linked = np.argwhere(np.triu(table_csr) > 0)[::7][:40]  # linked pairs, and 40 pairs mostly unlinked
    pairs = [(ids[i], ids[j]) for i, j in linked] + list(zip(ids[:40], ids[100:140]))
    table_types = {(int(a), int(b)): graph.edge_types(a, b) for a, b in pairs}
    table_stats = graph.stats()
    assert graph._graph is None  # nothing above built the view
    view = graph.graph
    np.testing.assert_array_equal(table_csr, nx.to_numpy_array(view, nodelist=ids.tolist(), weight="weight"))
    assert 40 <= sum(map(bool, table_types.values())) < len(pairs)
    assert any(len(t) == 2 for t in table_types.values())
    for (a, b), types in table_types.items():
        data = view.get_edge_data(a, b)
        assert types == (() if data is None else tuple(data["types"]))
    assert table_stats["edges"] == view.number_of_edges()
    assert table_stats["temporal_edges"] == sum("temporal" in d["types"] for *_, d in view.edges(data=True))
    assert table_stats["semantic_edges"] == sum("semantic" in d["types"] for *_, d in view.edges(data=True))
    assert graph.edge_types(ids[0], 999_999) == ()


# ---------------------------------------------------------------------- in the store
def test_the_store_updates_its_graph_on_ingest_and_forget_equal_to_a_rebuild(tmp_path):
    import sys
    from pathlib import Path

    from PIL import Image

    from mmai.inference import load_stage1
    from mmai.memory.personal import PersonalMemory

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_checkpoints import make_reranker_ckpt

    stage1 = load_stage1(make_reranker_ckpt(tmp_path / "ckpt"))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(30):  # one outing of similar photos (semantic and temporal edges), then another
        pixels = np.clip(base.astype(int) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        minute = i if i < 20 else 600 + i
        (folder / f"{i:02d}.png.json").write_text(
            f'{{"time": "2023-05-01T{10 + minute // 60:02d}:{minute % 60:02d}:00Z", "place": "lake"}}')
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    memory.ingest([folder / f"{i:02d}.png" for i in range(20)])
    first = memory.graph()
    memory.ingest([folder / f"{i:02d}.png" for i in range(20, 30)])
    assert memory.sync._graph is first  # kept, to be updated, not dropped
    grown = memory.graph()
    assert grown is not first and len(grown) == 30

    def rebuilt():
        records = memory.store.all_embeddings(progress=False)
        numbers = np.array([int(i[:15], 16) for i in records.ids], dtype=np.int64)
        return EpisodicGraph(numbers, records.embeddings, [m["timestamp"] for m in records.metadatas],
                             [m.get("place") for m in records.metadatas], config=memory.sync.graph_config,
                             schema_centroids=first.schema_centroids, progress=False)

    full = rebuilt()
    assert len(edge_table(full)) > 30 and any("semantic" in v[0] for v in edge_table(full).values())
    assert_same_graph(grown, full)
    gone = [h.id for h in memory.search("a bird", k=3)]
    memory.forget(ids=gone)
    shrunk = memory.graph()
    assert len(shrunk) == 27 and not np.isin(shrunk.ids, [int(i[:15], 16) for i in gone]).any()
    assert_same_graph(shrunk, rebuilt())
    assert memory.check() == []
    memory.close()
