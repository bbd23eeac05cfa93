"""MemoryStore over ChromaDB: filters, persistence, batching, no default embedding model, bad input."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmai.memory.store import METADATA_FIELDS, MemoryStore, build_where

YEAR_START = {2021: 1609459200.0, 2022: 1640995200.0, 2023: 1672531200.0}  # Jan 1st, UTC
PLACES = ["Mumbai", "Pune", "Delhi"]
MODALITIES = ["image", "text", "audio"]


def unit(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def diary(count: int = 60) -> list[dict]:
    """Memories spread over three years, three places and three modalities."""
    rows = []
    for i in range(count):
        year = 2021 + i % 3
        rows.append({
            "timestamp": YEAR_START[year] + 86_400.0 * (i // 3),
            "place": PLACES[(i // 3) % 3],
            "modality": MODALITIES[(i // 9) % 3],
            "latitude": 19.0 + i / 100, "longitude": 72.8,
            "source_path": f"photos/{i:04d}.jpg",
            "image_id": np.int64(i), "class_id": i % 5,  # NumPy ints are accepted
        })
    return rows


@pytest.fixture
def store(tmp_path):
    with MemoryStore(tmp_path / "chroma") as memory_store:
        yield memory_store


@pytest.fixture
def filled(store):
    store.add([str(i) for i in range(60)], unit(60), diary(), documents=[f"memory {i}" for i in range(60)])
    return store


def matching(where_fn) -> set[str]:
    return {str(i) for i, row in enumerate(diary()) if where_fn(row)}


def query_all(store: MemoryStore, where) -> set[str]:
    hits = store.query(unit(1, seed=99), k=100, where=where)
    return set(hits.ids[0])


def test_add_then_get_returns_records_in_requested_order_with_year_derived(filled):
    records = filled.get(["7", "2", "40"])
    assert records.ids == ["7", "2", "40"]
    np.testing.assert_allclose(records.embeddings, unit(60)[[7, 2, 40]], atol=1e-6)
    assert records.metadatas[0]["year"] == 2022 and records.metadatas[0]["place"] == "Delhi"
    assert records.metadatas[1]["image_id"] == 2 and isinstance(records.metadatas[1]["image_id"], int)
    assert records.documents == ["memory 7", "memory 2", "memory 40"]
    with pytest.raises(KeyError, match="'999'"):
        filled.get(["1", "999"])


@pytest.mark.parametrize(
    "filters, predicate",
    [
        ({"year": 2023}, lambda r: r["timestamp"] >= YEAR_START[2023]),
        ({"place": "Mumbai", "year": 2022}, lambda r: r["place"] == "Mumbai" and YEAR_START[2022] <= r["timestamp"] < YEAR_START[2023]),
        ({"modality": ["audio", "text"]}, lambda r: r["modality"] in ("audio", "text")),
        ({"after": YEAR_START[2022] + 5 * 86_400, "before": dt.datetime(2023, 1, 10, tzinfo=dt.timezone.utc)},
         lambda r: YEAR_START[2022] + 5 * 86_400 <= r["timestamp"] < YEAR_START[2023] + 9 * 86_400),
        ({"class_id": 3, "place": "Delhi"}, lambda r: r["class_id"] == 3 and r["place"] == "Delhi"),
    ],
)
def test_filters_return_exactly_the_matching_memories(filled, filters, predicate):
    expected = matching(predicate)
    assert 0 < len(expected) < 60
    assert query_all(filled, build_where(**filters)) == expected


def test_store_and_filters_survive_closing_and_reopening(tmp_path):
    path = tmp_path / "chroma"
    with MemoryStore(path) as first:
        first.add(range(60), unit(60), diary())
    with MemoryStore(path) as reopened:
        assert reopened.count() == 60 and reopened.dim == 8
        expected = matching(lambda r: r["place"] == "Pune" and r["modality"] == "image")
        assert query_all(reopened, build_where(place="Pune", modality="image")) == expected
        np.testing.assert_allclose(reopened.get(["5"]).embeddings[0], unit(60)[5], atol=1e-6)


def test_query_scores_are_cosines_of_the_nearest_memories(filled):
    query = unit(60)[10] + 0.01 * unit(1, seed=3)[0]
    hits = filled.query(query, k=3)
    cosines = unit(60) @ (query / np.linalg.norm(query))
    assert hits.ids[0] == [str(i) for i in np.argsort(-cosines)[:3]]
    np.testing.assert_allclose(hits.scores[0], np.sort(cosines)[::-1][:3], atol=1e-4)
    assert hits.documents[0][0] == "memory 10"


def test_adds_larger_than_max_batch_size_are_split_and_upsert_is_idempotent(store):
    count = store.max_batch_size + 37
    ids = [f"m{i}" for i in range(count)]
    vectors = unit(count, dim=4)
    with pytest.raises(Exception, match="max batch size"):  # what an unbatched write would do
        store.collection.upsert(ids=ids, embeddings=vectors)
    assert store.add(ids, vectors, [{"year": 2020 + i % 2} for i in range(count)], progress=False) == count
    assert store.count() == count
    store.add(ids[-3:], vectors[-3:], [{"year": 1999}] * 3)  # upsert: update, not duplicate
    assert store.count() == count
    assert [m["year"] for m in store.get(ids[-4:]).metadatas] == [2020 + (count - 4) % 2, 1999, 1999, 1999]
    everything = store.all_embeddings(batch_size=1000, progress=False)
    assert sorted(everything.ids) == sorted(ids) and everything.embeddings.shape == (count, 4)
    order = [int(i[1:]) for i in everything.ids]
    np.testing.assert_allclose(everything.embeddings, vectors[order], atol=1e-6)


def test_nan_in_a_later_batch_writes_nothing(store):
    store.add(["keep"], unit(1, dim=4), [{"place": "Pune"}])
    count = store.max_batch_size + 5
    vectors = unit(count, dim=4, seed=1)
    vectors[-1, 2] = np.nan
    with pytest.raises(ValueError, match=rf"1 of {count} row\(s\) contain NaN or inf, first at row {count - 1}"):
        store.add([f"x{i}" for i in range(count)], vectors, progress=False)
    assert store.count() == 1 and store.get(["keep"]).metadatas == [{"place": "Pune"}]


def test_wrong_dimension_and_bad_metadata_leave_store_unchanged(filled):
    before = filled.all_embeddings(progress=False)
    with pytest.raises(ValueError, match="expected dimension 8, got 5"):
        filled.add(["a", "b"], unit(2, dim=5))
    with pytest.raises(ValueError, match="unknown metadata field 'colour'.*known fields: timestamp, year"):
        filled.add(["0", "b"], unit(2), [{"place": "Pune"}, {"colour": "red"}])
    with pytest.raises(ValueError, match="modality must be one of"):
        filled.add(["0"], unit(1), [{"modality": "video"}])
    with pytest.raises(ValueError, match="field 'year' expects int"):
        filled.add(["0"], unit(1), [{"year": "2023"}])
    with pytest.raises(ValueError, match="duplicate id '0'"):
        filled.add(["0", "0"], unit(2))
    after = filled.all_embeddings(progress=False)
    assert after.ids == before.ids and after.metadatas == before.metadatas
    np.testing.assert_array_equal(after.embeddings, before.embeddings)


def test_unknown_filter_field_names_it_and_lists_known_fields(filled):
    with pytest.raises(ValueError, match="unknown metadata field 'colour'.*known fields: " + ", ".join(METADATA_FIELDS)):
        build_where(year=2023, colour="red")
    with pytest.raises(ValueError, match="unknown filter field 'colour'"):
        filled.query(unit(1), k=3, where={"$and": [{"year": 2023}, {"colour": "red"}]})
    with pytest.raises(ValueError, match="must be earlier"):
        build_where(after=10.0, before=5.0)


def test_build_where_produces_chroma_clauses():
    assert build_where() is None
    assert build_where(year=2023) == {"year": {"$eq": 2023}}
    assert build_where(place=("Pune", "Delhi"), after=100) == {
        "$and": [{"place": {"$in": ["Pune", "Delhi"]}}, {"timestamp": {"$gte": 100.0}}]
    }


def test_query_on_empty_store_is_a_clear_error(store):
    with pytest.raises(ValueError, match="is empty: add memories before querying"):
        store.query(unit(1), k=3)


def test_delete_by_filter_removes_only_matching_and_refuses_delete_all(filled):
    removed = filled.delete(where=build_where(place="Delhi"))
    assert removed == len(matching(lambda r: r["place"] == "Delhi"))
    assert query_all(filled, None) == matching(lambda r: r["place"] != "Delhi")
    assert filled.delete(ids=["0", "1"]) == 2
    with pytest.raises(ValueError, match="refusing to delete everything"):
        filled.delete()
    assert filled.count() == 60 - removed - 2


def test_chroma_never_instantiates_or_downloads_its_default_embedding_model(tmp_path, monkeypatch):
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2 as onnx

    model_dir = tmp_path / "home" / ".cache" / "chroma" / "onnx_models"
    monkeypatch.setattr(onnx.ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", model_dir / "all-MiniLM-L6-v2")
    created = []
    original_init = onnx.ONNXMiniLM_L6_V2.__init__

    def counting_init(self, *args, **kwargs):
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(onnx.ONNXMiniLM_L6_V2, "__init__", counting_init)
    with MemoryStore(tmp_path / "chroma") as store:
        store.add(range(60), unit(60), diary(), documents=[f"caption {i}" for i in range(60)])
        store.query(unit(2), k=5, where=build_where(year=2022))
        store.get(["3"])
        assert store.collection._embedding_function is None
        assert store.collection.configuration.get("embedding_function") is None
        assert store.client.get_settings().anonymized_telemetry is False
    with MemoryStore(tmp_path / "chroma") as reopened:
        reopened.query(unit(1), k=2)
    assert created == [] and not model_dir.exists()
    assert os.environ["ANONYMIZED_TELEMETRY"] == "False"


@pytest.fixture
def chroma_server(tmp_path):
    """A real Chroma server (``chroma run``) on a free local port, stopped after the test."""
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("the chroma CLI is not installed next to this Python")
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [executable, "run", "--path", str(tmp_path / "server"), "--host", "localhost", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("localhost", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("chroma server did not start")
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_http_client_against_a_real_chroma_server(chroma_server):
    with MemoryStore(host="localhost", port=chroma_server) as remote:
        remote.add(range(60), unit(60), diary())
        assert remote.location == f"http://localhost:{chroma_server}" and remote.count() == 60
        assert query_all(remote, build_where(year=2021, modality="text")) == matching(
            lambda r: r["timestamp"] < YEAR_START[2022] and r["modality"] == "text"
        )


def test_get_reads_more_ids_than_one_sqlite_query_allows(tmp_path):
    """40,000 ids in one call used to fail with 'too many SQL variables'; they are read in pages."""
    from mmai.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "db")
    count = 40_000
    vectors = np.random.default_rng(0).normal(size=(count, 4)).astype(np.float32)
    ids = [f"m{i}" for i in range(count)]
    store.add(ids, vectors, [{"modality": "image"}] * count, progress=False)
    records = store.get(ids[::-1], include_embeddings=True)
    assert records.ids == ids[::-1]
    assert np.allclose(records.embeddings[0], vectors[-1] / np.linalg.norm(vectors[-1]), atol=1e-5)
    store.close()
