"""Fast search (issue 21, item 5): the in-memory table's filter masks equal Chroma's ``where``, the exact
filtered scan equals the reference path and brute force, local push PageRank equals the global power
iteration, and cached patch tokens give the re-ranker's own logits. Real Chroma, real tiny models."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmai.memory.filters import build_where
from mmai.retrieval.gar import GraphAugmentedRetriever
from mmai.retrieval.graph import EpisodicGraph
from mmai.memory.ingest import synthetic_collection
from mmai.memory.personal import Filters, PersonalMemory, SearchOptions
from mmai.retrieval.ppr import Transition, power_iteration, push_pagerank
from mmai.memory.store import MemoryStore
from mmai.memory.table import MemoryTable

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_reranker_ckpt  # noqa: E402

torch.set_num_threads(2)
DAY = 86_400.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_reranker_ckpt(tmp_path_factory.mktemp("ckpt") / "rr")


@pytest.fixture(scope="module")
def memory(tmp_path_factory, checkpoint):
    from mmai.data.synth import synthesize

    folder = tmp_path_factory.mktemp("fast")
    synth = folder / "cub"
    synthesize(synth, classes=4, images=40, image_size=64, audio=False, workers=1, progress=False)
    paths, overrides = synthetic_collection(synth, audio=False)
    notes = folder / "notes"
    notes.mkdir()
    for i, text in enumerate(("a heron in the shallow water", "two sparrows on the fence", "a red bird at dawn")):
        (notes / f"{i}.txt").write_text(text)
    memory = PersonalMemory(folder / "memory", checkpoint, progress=False)
    memory.ingest(paths + [notes], overrides=overrides)
    yield memory
    memory.close()


# ---------------------------------------------------------------------- the table's masks
def test_table_masks_equal_chromas_where(tmp_path):
    rng = np.random.default_rng(0)
    count = 300
    store = MemoryStore(tmp_path / "chroma")
    places = ["Powai Lake, Mumbai", "Tiergarten, Berlin", "Sanjay Gandhi Park, Mumbai"]
    metadatas = []
    for i in range(count):
        metadata = {"modality": ["image", "text", "audio"][i % 3]}
        if i % 7:  # some memories have no time (so no year), some no place
            metadata["timestamp"] = float(rng.uniform(1.6e9, 1.72e9))
        if i % 5:
            metadata["place"] = places[int(rng.integers(3))]
        metadatas.append(metadata)
    ids = [f"{i:032x}" for i in range(count)]
    store.add(ids, rng.normal(size=(count, 8)), metadatas, progress=False)
    records = store.all_embeddings(progress=False)
    table = MemoryTable(records.ids, np.arange(count), records.embeddings, records.metadatas)
    stamps = sorted(m["timestamp"] for m in metadatas if "timestamp" in m)
    clauses = [
        build_where(year=2022), build_where(year=[2021, 2023]), build_where(place=places[0]),
        build_where(place=places[:2], modality="image"), build_where(modality=["text", "audio"]),
        build_where(after=stamps[40]), build_where(before=stamps[100]),
        build_where(year=2022, place=places[2], after=stamps[10], before=stamps[-10]),
        {"$or": [{"year": {"$eq": 2021}}, {"place": {"$eq": places[1]}}]},
        {"timestamp": {"$gt": stamps[5]}}, {"timestamp": {"$lte": stamps[5]}}, {"modality": "audio"},
    ]
    for where in clauses:
        expected = set(store.collection.get(where=where, include=[])["ids"])
        mask = table.mask(where)
        assert mask is not None and {records.ids[i] for i in np.flatnonzero(mask)} == expected, where
    assert table.mask(None).all()
    assert table.mask({"place": {"$ne": places[0]}}) is None  # not mirrored: the caller asks Chroma
    assert table.mask({"year": {"$eq": 2022.0}}) is None  # a float against stored ints: Chroma's typed columns
    store.close()


def test_table_search_is_exact_under_a_mask():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = MemoryTable([str(i) for i in range(500)], np.arange(500) * 7, vectors, [{} for _ in range(500)])
    query = vectors[3] + 0.1 * rng.normal(size=16).astype(np.float32)
    for mask in (rng.random(500) < 0.1, rng.random(500) < 0.9, np.zeros(500, bool)):
        rows, scores = table.search(query, 10, mask)
        expected = np.flatnonzero(mask)[np.argsort(-(vectors[mask] @ query))][:10]
        assert rows.tolist() == expected.tolist()
        np.testing.assert_allclose(scores, vectors[expected] @ query, rtol=1e-5)
    assert table.positions(np.array([7, 14, 5, 3493])).tolist() == [1, 2, -1, 499]


# ---------------------------------------------------------------------- fast = reference on a small store
def test_filtered_stage1_equals_reference_and_brute_force(memory):
    query = "a small bird with a long curved red bill"
    vector = memory.encoder.embed_texts([query])[0].numpy()
    records = memory.store.all_embeddings(progress=False)
    stamps = sorted(m["timestamp"] for m in records.metadatas)
    place = records.metadatas[0]["place"]
    years = sorted({m["year"] for m in records.metadatas})
    cases = [Filters(year=years[0]), Filters(place=place.split(", ")[1]), Filters(modality="text"),
             Filters(year=years, modality="image", after=dt.datetime.fromtimestamp(stamps[5], dt.timezone.utc),
                     before=stamps[30])]
    for filters in cases:
        where = memory.where(filters)
        fast = memory.search(query, 50, filters)
        reference = memory.search(query, 50, filters, SearchOptions(reference=True))
        assert fast and [h.id for h in fast] == [h.id for h in reference], filters
        for a, b in zip(fast, reference):
            assert a.score == pytest.approx(b.score, abs=1e-5) and a.metadata == b.metadata and a.document == b.document
        keep = np.flatnonzero(memory.sync.table().mask(where))
        found = memory.store.collection.get(where=where, include=["embeddings"])  # brute force, from Chroma
        scores = np.asarray(found["embeddings"], np.float32) @ vector
        assert [h.id for h in fast] == [found["ids"][i] for i in np.argsort(-scores, kind="stable")][:50]
        assert len(keep) == len(found["ids"])
    weighted = SearchOptions(recency_weight=0.5, now=stamps[-1])
    assert [h.id for h in memory.search(query, 5, cases[0], weighted)] == \
        [h.id for h in memory.search(query, 5, cases[0], SearchOptions(recency_weight=0.5, now=stamps[-1],
                                                                       reference=True))]


def test_local_pagerank_equals_global_on_an_episodic_graph():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(400, 16))
    timestamps = np.sort(rng.uniform(0, 20 * DAY, 400))
    graph = EpisodicGraph(np.arange(400) * 3, embeddings, timestamps, progress=False)
    transition = Transition.from_adjacency(graph.to_csr())
    seeds = np.zeros(400)
    seeds[[4, 90, 91, 300]] = [0.4, 0.3, 0.2, 0.1]
    exact = power_iteration(transition, seeds[:, None], 0.5, 1e-14, 500)[:, 0]
    np.testing.assert_allclose(push_pagerank(transition, seeds, 0.5, 1e-13), exact, atol=1e-11)
    hits = rng.permutation(400)[:20] * 3
    for mode in ("burst", "legacy"):
        local = GraphAugmentedRetriever.from_mode(graph, mode, ppr="local").rerank(hits[None], np.linspace(1, 0, 20)[None],
                                                                                  30, explain=True)
        glob = GraphAugmentedRetriever.from_mode(graph, mode).rerank(hits[None], np.linspace(1, 0, 20)[None], 30,
                                                                    explain=True)
        assert local.ids.tolist() == glob.ids.tolist()
        np.testing.assert_allclose(local.scores, glob.scores, atol=1e-6)
        assert [e.summary for e in local.explanations[0]] == [e.summary for e in glob.explanations[0]]
    with pytest.raises(ValueError, match="ppr must be one of"):
        GraphAugmentedRetriever(graph, ppr="fast")


def test_gar_search_fast_equals_reference(memory):
    query = "a bird with a short conical yellow bill"
    place = memory.known_places()[0]
    for filters in (None, Filters(place=place.split(", ")[1])):
        for ppr in ("global", "local"):
            fast = memory.search(query, 6, filters, SearchOptions(gar=True, ppr=ppr))
            reference = memory.search(query, 6, filters, SearchOptions(gar=True, reference=True))
            assert fast and [h.id for h in fast] == [h.id for h in reference], (filters, ppr)
            for a, b in zip(fast, reference):
                assert a.explanation == b.explanation and a.score == pytest.approx(b.score, abs=1e-6)
                assert [(r.id, r.reason) for r in a.related] == [(r.id, r.reason) for r in b.related]
                assert [r.metadata for r in a.related] == [r.metadata for r in b.related]
    with pytest.raises(ValueError, match="ppr must be one of"):
        SearchOptions(ppr="fast")


def test_rerank_with_cached_patch_tokens_gives_the_rerankers_logits(memory, tmp_path):
    query = "a bird with a short conical yellow bill"
    options = SearchOptions(rerank=True, rerank_k=8)
    memory.searcher.patch_cache.clear()
    misses = memory.searcher.patch_cache.misses
    first = memory.search(query, 8, options=options)
    assert memory.searcher.patch_cache.misses - misses == sum(h.metadata["modality"] == "image" for h in first)
    hits = memory.searcher.patch_cache.hits
    again = memory.search(query, 8, options=options)
    reference = memory.search(query, 8, options=SearchOptions(rerank=True, rerank_k=8, reference=True))
    assert memory.searcher.patch_cache.hits > hits
    for a, b, c in zip(first, again, reference):
        assert a.id == b.id == c.id
        assert a.score == pytest.approx(c.score, abs=1e-4) and b.score == pytest.approx(c.score, abs=1e-4)
    logits = memory.stage2.rerank(query, [Image.open(h.metadata["media_path"]).convert("RGB") for h in again
                                         if h.match_logit is not None])
    np.testing.assert_allclose([h.match_logit for h in again if h.match_logit is not None], logits, atol=1e-4)
    cache = memory.searcher.patch_cache
    cache.max_bytes = next(iter(cache._entries.values())).numel() * 4 * 2  # room for two images
    cache._put(("x",), next(iter(cache._entries.values())))
    assert len(cache._entries) <= 2 and cache.bytes <= cache.max_bytes
