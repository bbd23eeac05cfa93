"""VectorIndex: exact and HNSW search, range search, atomic save/load, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmai.retrieval import index as index_module
from mmai.retrieval.index import VectorIndex


def clustered(count: int, dim: int = 32, clusters: int = 20, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn around fixed random cluster centres (structured like real embeddings)."""
    centres = np.random.default_rng(1234).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, count)] + spread * rng.normal(size=(count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force_topk(queries: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray, k: int):
    scores = queries @ gallery.T  # (Q, G)
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), gallery_ids[order]


@pytest.fixture
def data():
    gallery = clustered(2000)
    queries = clustered(100, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3  # ids unrelated to positions
    return gallery, queries, ids


def test_flat_search_equals_brute_force_topk(data):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, kind="flat")
    scores, found = index.search(queries, k=10)
    expected_scores, expected_ids = brute_force_topk(queries, gallery, ids, 10)
    assert found.shape == (100, 10) and scores.dtype == np.float32
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_hnsw_recall_at_10_is_at_least_95_percent_of_exact(data):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, kind="hnsw")  # defaults: M=32, efC=200, efSearch=128
    _, found = index.search(queries, k=10)
    _, exact = brute_force_topk(queries, gallery, ids, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95


def test_unnormalised_input_is_normalised_so_scores_are_cosines(data):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery * 5.0, ids, kind="flat")
    scores, found = index.search(queries[:3] * 0.1, k=1)
    _, expected = brute_force_topk(queries[:3], gallery, ids, 1)
    np.testing.assert_array_equal(found, expected)
    assert np.all(scores <= 1.0 + 1e-6)
    assert np.allclose(index.reconstruct(ids[:2]), gallery[:2], atol=1e-6)


def test_search_pads_with_minus_one_when_k_exceeds_size():
    index = VectorIndex.build(clustered(5), np.arange(5), kind="flat")
    scores, found = index.search(clustered(2, seed=3), k=8)
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(found[0, :5]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_range_search_returns_exactly_the_items_above_threshold(data, kind):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, kind=kind, ef_search=256)
    results = index.range_search(queries[:10], threshold=0.6)
    for query, (scores, found) in zip(queries[:10], results):
        expected = set(ids[gallery @ query >= 0.6])
        assert np.all(np.diff(scores) <= 0) and np.all(scores >= 0.6 - 1e-6)
        if kind == "flat":
            assert set(found) == expected
        else:
            assert len(set(found) & expected) >= 0.9 * len(expected)


def test_save_and_load_round_trip_keeps_ids_config_and_results(data, tmp_path):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, kind="hnsw", hnsw_m=16, ef_search=77)
    path = index.save(tmp_path / "sub" / "val.index.npz")
    loaded = VectorIndex.load(path)
    assert (loaded.kind, loaded.dim, loaded.hnsw_m, loaded.ef_search, len(loaded)) == ("hnsw", 32, 16, 77, 2000)
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    loaded.add(clustered(3, seed=9), [1, 2, 4])  # a loaded index accepts new vectors
    assert len(loaded) == 2003


def test_failed_save_leaves_previous_file_intact_and_no_temp_files(data, tmp_path, monkeypatch):
    gallery, queries, ids = data
    path = tmp_path / "index.npz"
    VectorIndex.build(gallery[:100], ids[:100], kind="flat").save(path)
    before = path.read_bytes()

    def disk_full(file, **arrays):  # writes part of the data, then fails like a full disk
        file.write(b"partial garbage")
        raise OSError("No space left on device")

    monkeypatch.setattr(index_module.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        VectorIndex.build(gallery, ids, kind="flat").save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["index.npz"]
    assert len(VectorIndex.load(path)) == 100


def test_load_missing_or_foreign_file_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index file"):
        VectorIndex.load(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable VectorIndex file"):
        VectorIndex.load(tmp_path / "junk.npz")


def test_search_on_empty_index_says_to_add_vectors_first():
    with pytest.raises(ValueError, match="index is empty: add vectors or build the index first"):
        VectorIndex(16, "hnsw").search(np.ones(16), k=3)


def test_wrong_dimension_names_expected_and_given(data):
    gallery, _, ids = data
    index = VectorIndex.build(gallery, ids, kind="flat")
    with pytest.raises(ValueError, match="expected dimension 32, got 31"):
        index.add(np.ones((2, 31)), [10**9, 10**9 + 1])
    with pytest.raises(ValueError, match="expected dimension 32, got 64"):
        index.search(np.ones((1, 64)), k=1)
    assert len(index) == 2000


def test_nan_vectors_are_rejected_with_row_and_count_and_index_unchanged(data):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, kind="hnsw")
    before = index.search(queries, 5)
    bad = clustered(6, seed=5)
    bad[2, 0] = np.nan
    bad[4, 3] = np.inf
    with pytest.raises(ValueError, match=r"2 of 6 row\(s\) contain NaN or inf, first at row 2"):
        index.add(bad, np.arange(10**6, 10**6 + 6))
    assert len(index) == 2000
    np.testing.assert_array_equal(index.search(queries, 5)[1], before[1])
    np.testing.assert_array_equal(index.ids, ids)


def test_duplicate_or_present_ids_are_rejected(data):
    gallery, _, ids = data
    index = VectorIndex.build(gallery[:10], ids[:10], kind="flat")
    with pytest.raises(ValueError, match="already in the index"):
        index.add(gallery[10:12], [ids[0], 999_999])
    with pytest.raises(ValueError, match="duplicate id 5"):
        index.add(gallery[10:12], [5, 5])
    with pytest.raises(ValueError, match="zero"):
        index.add(np.zeros((1, 32)), [123])
    assert len(index) == 10


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind='ivf'"):
        VectorIndex(8, "ivf")
