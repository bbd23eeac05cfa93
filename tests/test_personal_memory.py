"""PersonalMemory: ingest -> search -> forget over Chroma + FAISS + graph, with real tiny checkpoints.

The collection is the synthetic CUB's diary (photos with time and place) plus hand-made files;
the models are tests/tiny_checkpoints.py's (random weights, real loaders and towers), so search
results are checked against brute force over the stored embeddings, not against meaning.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from mmai.memory.ingest import IngestError, MetaTable, read_memory_file, synthetic_collection
from mmai.memory.personal import Filters, PersonalMemory, SearchOptions, int_id

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_bi_encoder_ckpt, make_reranker_ckpt  # noqa: E402
from tiny_configs import TINY_CLAP  # noqa: E402

torch.set_num_threads(2)
CHROMA = Path(sys.executable).parent / "chroma"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny re-ranker checkpoint (with its bi-encoder) and a tiny bi-encoder with an audio tower."""
    folder = tmp_path_factory.mktemp("ckpt")
    reranker = make_reranker_ckpt(folder / "rr")
    audio = make_bi_encoder_ckpt(folder / "audio", audio={"pretrained": False, "max_length_s": 0.5,
                                                          "config_overrides": TINY_CLAP, "seconds": 0.5})
    return {"reranker": reranker, "bi_encoder": folder / "rr" / "bi_encoder.ckpt", "audio": audio}


@pytest.fixture(scope="module")
def stage1(checkpoints):
    from mmai.inference import load_stage1

    return load_stage1(checkpoints["reranker"])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmai.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "cub"
    synthesize(root, classes=4, images=24, image_size=64, audio=True, workers=1, progress=False)
    return root


def _diary(synth: Path) -> dict[str, dict]:
    paths, overrides = synthetic_collection(synth, audio=False)
    return {str(path): overrides[str(path)] for path in paths}


def _year(iso: str) -> int:
    return int(iso[:4])


def _unix(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _image(path: Path, seed: int, size: int = 40, **save) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def _brute_force(memory: PersonalMemory, query_vector: np.ndarray, where=None) -> list[str]:
    """All ids matching ``where`` ordered by cosine to the query, from Chroma's stored embeddings."""
    found = memory.store.collection.get(where=where, include=["embeddings"])
    scores = np.asarray(found["embeddings"], np.float32) @ query_vector  # (n,)
    return [found["ids"][i] for i in np.argsort(-scores, kind="stable")]


# ---------------------------------------------------------------------- file reading (no model)
def test_exif_time_and_gps_become_metadata_with_their_source(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.DateTimeOriginal: "2023:05:14 07:32:10",
                                           ExifTags.Base.OffsetTimeOriginal: "+05:30"})
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({1: "N", 2: (IFDRational(19), IFDRational(7), IFDRational(3828, 100)),
                                              3: "W", 4: (IFDRational(72), IFDRational(54), IFDRational(18))})
    photo = _image(tmp_path / "photo.jpg", 0, exif=exif)
    read = read_memory_file(photo)
    assert read.metadata["timestamp"] == dt.datetime(2023, 5, 14, 2, 2, 10, tzinfo=dt.timezone.utc).timestamp()
    assert read.metadata["time_source"] == "EXIF DateTimeOriginal"
    assert read.metadata["latitude"] == pytest.approx(19.1273, abs=1e-4)
    assert read.metadata["longitude"] == pytest.approx(-72.905, abs=1e-4)
    assert read.metadata["source_path"] == str(photo.absolute()) and read.content.mode == "RGB"


def test_sidecar_beats_meta_table_beats_exif_and_mtime_is_the_last_resort(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2020:01:01 00:00:00"
    first = _image(tmp_path / "a.jpg", 1, exif=exif)
    second = _image(tmp_path / "b.jpg", 2, exif=exif)
    third = _image(tmp_path / "c.png", 3)
    (tmp_path / "a.jpg.json").write_text(json.dumps({"time": "2022-02-02", "place": "Hebbal Lake, Bengaluru"}))
    meta = tmp_path / "meta.csv"
    meta.write_text("file,time,place,lat,lon\n"
                    "a.jpg,2021-01-01,Elsewhere,1.5,2.5\n"
                    "b.jpg,2021-06-01T10:00:00Z,Tiergarten,,\n")
    table = MetaTable(meta)
    a, b, c = (read_memory_file(p, meta=table) for p in (first, second, third))
    assert (a.metadata["time_source"], a.metadata["place"]) == ("sidecar", "Hebbal Lake, Bengaluru")
    assert a.metadata["timestamp"] == _unix("2022-02-02T00:00:00Z")
    assert (a.metadata["latitude"], a.metadata["longitude"]) == (1.5, 2.5)  # the sidecar has none: meta's
    assert (b.metadata["time_source"], b.metadata["place"]) == ("meta", "Tiergarten")
    assert b.metadata["timestamp"] == _unix("2021-06-01T10:00:00Z")
    assert c.metadata["time_source"] == "file mtime" and c.metadata["timestamp"] == third.stat().st_mtime
    with pytest.raises(IngestError, match=r"c\.png: no timestamp"):
        read_memory_file(third, meta=table, require_time=True)


def test_note_and_audio_are_read_as_text_and_48khz_mono(tmp_path):
    note = tmp_path / "walk.md"
    note.write_text("\ufeffSaw a heron at the lake.\n", encoding="utf-8")
    assert read_memory_file(note).content == "Saw a heron at the lake."
    song = tmp_path / "song.wav"
    seconds = np.arange(16_000) / 16_000
    stereo = np.stack([np.sin(2 * np.pi * 440 * seconds), np.zeros_like(seconds)], axis=1).astype(np.float32)
    soundfile.write(song, stereo, 16_000)
    wave = read_memory_file(song).content
    assert wave.dtype == np.float32 and wave.shape == (48_000,)
    assert np.abs(wave).max() == pytest.approx(0.5, abs=0.02)  # channels averaged


@pytest.mark.parametrize("record, field", [
    ({"time": "last tuesday"}, "'time'"), ({"plcae": "Mumbai"}, "'plcae'"),
    ({"latitude": 200, "longitude": 0}, "'latitude'"), ({"latitude": 10}, "'longitude'"), ({"place": 7}, "'place'"),
])
def test_bad_sidecar_names_the_file_and_the_field(tmp_path, record, field):
    photo = _image(tmp_path / "p.jpg", 0)
    (tmp_path / "p.jpg.json").write_text(json.dumps(record))
    with pytest.raises(IngestError, match="p.jpg.json") as error:
        read_memory_file(photo)
    assert field in str(error.value)


# ---------------------------------------------------------------------- round trip with the model
def test_ingest_search_forget_round_trip_with_filters(tmp_path, checkpoints, synth):
    diary = _diary(synth)
    paths, overrides = synthetic_collection(synth, audio=False)
    note = tmp_path / "notes" / "heron.txt"
    note.parent.mkdir()
    note.write_text("a grey heron standing in the shallow water")
    sidecar = {"time": "2022-07-01T08:00:00Z", "place": "Tiergarten, Berlin"}
    (tmp_path / "notes" / "heron.txt.json").write_text(json.dumps(sidecar))
    memory = PersonalMemory(tmp_path / "memory", checkpoints["reranker"], progress=False)
    report = memory.ingest(paths + [note.parent], overrides=overrides)
    assert len(report.added) == 25 and not report.rejected and not report.duplicates
    assert memory.store.count() == len(memory.index) == 25 and memory.check() == []
    stored = memory.store.get(report.added[:24], include_embeddings=False)
    for path, metadata in zip(paths, stored.metadatas):
        assert metadata["place"] == diary[str(path)]["place"] and metadata["time_source"] == "synthetic diary"
        assert metadata["year"] == _year(diary[str(path)]["time"])
        assert (memory.root / "media" / metadata["media_file"]).read_bytes() == path.read_bytes()

    query = "a small bird with a long curved red bill"
    vector = memory.encoder.embed_texts([query])[0].numpy()
    hits = memory.search(query, k=5)
    assert [h.id for h in hits] == _brute_force(memory, vector)[:5]
    assert [h.rank for h in hits] == list(range(5)) and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    stored_vector = memory.index.reconstruct([int_id(hits[0].id)])[0]
    assert hits[0].stage1_score == pytest.approx(float(vector @ stored_vector), abs=1e-5)

    year = _year(next(iter(diary.values()))["time"])
    in_year = memory.search(query, 50, Filters(year=year))
    assert [h.id for h in in_year] == _brute_force(memory, vector, {"year": year})
    assert {h.metadata["year"] for h in in_year} == {year} and len(in_year) == sum(
        _year(e["time"]) == year for e in diary.values()) + (year == 2022)

    city_place = next(iter(diary.values()))["place"]
    city = city_place.split(", ")[1]
    at_city = memory.search(query, 50, Filters(place=city))
    assert len(at_city) == sum(city in e["place"] for e in diary.values()) + (city == "Berlin")
    assert all(city in h.metadata["place"] for h in at_city)
    assert memory.search(query, filters=Filters(place="Atlantis")) == []

    times = sorted(_unix(e["time"]) for e in diary.values())
    after, before = times[5], times[15]
    window = memory.search(query, 50, Filters(modality="image", before=before,
                                                 after=dt.datetime.fromtimestamp(after, dt.timezone.utc)))
    assert len(window) == 10 and all(after <= h.metadata["timestamp"] < before for h in window)
    notes = memory.search(query, 50, Filters(modality="text"))
    assert [h.id for h in notes] == [report.added[-1]] and notes[0].document.startswith("a grey heron")
    assert notes[0].metadata["media_path"] is None and notes[0].metadata["sources"][0]["path"] == str(note)

    removed = memory.forget(place=city_place)
    assert removed == sum(e["place"] == city_place for e in diary.values())
    assert memory.search(query, 50, Filters(place=city_place)) == []
    assert memory.store.count() == len(memory.index) == 25 - removed and memory.check() == []
    assert len(list((memory.root / "media").iterdir())) == 24 - removed
    assert memory.forget([report.added[-1][:10]]) == 1 and memory.search(query, filters=Filters(modality="text")) == []
    memory.close()
    reopened = PersonalMemory(tmp_path / "memory", progress=False)  # checkpoint remembered in config.json
    assert reopened.repaired == "in sync" and reopened.check() == []
    assert [h.id for h in reopened.search(query, k=3)] == _brute_force(reopened, vector)[:3]


def test_reingest_adds_nothing_and_reports_duplicates(tmp_path, stage1):
    folder = tmp_path / "photos"
    for i in range(5):
        _image(folder / f"{i}.png", i)
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    first = memory.ingest([folder])
    again = memory.ingest([folder])
    assert len(first.added) == 5 and again.added == [] and not again.rejected
    assert sorted(again.duplicates) == sorted(zip(sorted(folder.iterdir()), first.added))
    assert "added 0, duplicates 5, rejected 0" in again.summary()
    copy = tmp_path / "elsewhere" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(folder / "0.png", copy)
    third = memory.ingest([copy])
    assert third.duplicates == [(copy, first.added[0])] and memory.store.count() == 5
    sources = memory.get(first.added[0]).metadata["sources"]
    assert [s["path"] for s in sources] == [str(folder / "0.png"), str(copy)]
    twins = [shutil.copy(folder / "1.png", tmp_path / name) for name in ("twin_a.png", "twin_b.png")]
    fourth = memory.ingest([tmp_path / "twin_a.png", tmp_path / "twin_b.png", _image(tmp_path / "new.png", 50)])
    assert len(fourth.added) == 1 and [path.name for path, _ in fourth.duplicates] == ["twin_a.png", "twin_b.png"]
    assert [s["path"] for s in memory.get(first.added[1]).metadata["sources"]] == [str(folder / "1.png"), *map(str, twins)]
    _image(tmp_path / "fresh" / "x.png", 60)
    shutil.copy(tmp_path / "fresh" / "x.png", tmp_path / "fresh" / "y.png")  # same bytes twice in one batch
    fifth = memory.ingest([tmp_path / "fresh"])
    assert len(fifth.added) == 1 and fifth.duplicates == [(tmp_path / "fresh" / "y.png", fifth.added[0])]
    assert [s["path"] for s in memory.get(fifth.added[0]).metadata["sources"]] == [
        str(tmp_path / "fresh" / "x.png"), str(tmp_path / "fresh" / "y.png")]
    assert memory.store.count() == 7 and memory.check() == []


def test_each_bad_file_gets_a_clear_reason_and_the_rest_is_stored(tmp_path, stage1):
    folder = tmp_path / "inbox"
    good = _image(folder / "good.jpg", 0)
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, "JPEG")
    (folder / "corrupt.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / "report.docx").write_bytes(b"PK\x03\x04 not a memory")
    _image(folder / "undated.png", 2)
    _image(folder / "sidecar.png", 3)
    (folder / "sidecar.png.json").write_text(json.dumps({"time": "2023-01-01", "plcae": "Mumbai"}))
    (folder / "dated.png.json").write_text(json.dumps({"time": "2023-04-05T06:07:08Z"}))
    _image(folder / "dated.png", 4)
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"good.jpg": {"time": "2023-04-05T06:00:00Z", "place": "Tiergarten, Berlin"}}))
    report = memory.ingest([folder], meta, require_time=True)
    reasons = {path.name: reason for path, reason in report.rejected}
    assert set(reasons) == {"corrupt.jpg", "report.docx", "undated.png", "sidecar.png"}
    assert "corrupt.jpg: corrupt or unreadable image" in reasons["corrupt.jpg"]
    assert "report.docx: unsupported file type '.docx'" in reasons["report.docx"]
    assert "undated.png: no timestamp" in reasons["undated.png"]
    assert "sidecar.png.json" in reasons["sidecar.png"] and "'plcae' is not known" in reasons["sidecar.png"]
    assert len(report.added) == 2 and memory.store.count() == 2 and memory.check() == []
    assert {memory.get(i).metadata["source_path"] for i in report.added} == {str(good), str(folder / "dated.png")}
    missing = memory.ingest([tmp_path / "missing.jpg"]).rejected[0][1]
    assert missing.endswith("missing.jpg does not exist (give files or folders of memories)")


def test_audio_memories_need_an_audio_tower(tmp_path, checkpoints):
    song = tmp_path / "song.flac"
    seconds = np.arange(22_050) / 22_050
    soundfile.write(song, (0.3 * np.sin(2 * np.pi * 2000 * seconds)).astype(np.float32), 22_050)
    _image(tmp_path / "bird.png", 0)
    without = PersonalMemory(tmp_path / "no_audio", checkpoints["bi_encoder"], progress=False)
    report = without.ingest([song, tmp_path / "bird.png"])
    assert len(report.added) == 1 and "checkpoint has no audio tower: train with model.bi_encoder.audio" in report.rejected[0][1]
    with_audio = PersonalMemory(tmp_path / "audio", checkpoints["audio"], progress=False)
    report = with_audio.ingest([song, tmp_path / "bird.png"])
    assert len(report.added) == 2
    hits = with_audio.search("a bird singing", filters=Filters(modality="audio"))
    assert [h.id for h in hits] == [report.added[0]] and hits[0].metadata["media_path"].suffix == ".flac"
    assert with_audio.media_path(report.added[0]).read_bytes() == song.read_bytes()


def test_rerank_gar_and_saliency_panels(tmp_path, checkpoints, synth):
    paths, overrides = synthetic_collection(synth, audio=False)
    memory = PersonalMemory(tmp_path / "memory", checkpoints["reranker"], progress=False)
    memory.ingest(paths, overrides=overrides)
    query = "a bird with a short conical yellow bill"
    plain = memory.search(query, k=24)
    reranked = memory.search(query, 6, options=SearchOptions(rerank=True, rerank_k=6, explain_dir=tmp_path / "panels"))
    assert {h.id for h in reranked} == {h.id for h in plain[:6]}  # the window is re-ordered, not refilled
    logits = memory.stage2.rerank(query, [Image.open(h.metadata["media_path"]) for h in reranked])
    for hit, logit in zip(reranked, logits):
        assert hit.match_logit == pytest.approx(float(logit), abs=1e-4)
        assert hit.score == pytest.approx(hit.match_logit + memory.stage2.stage1_weight * hit.stage1_score, abs=1e-4)
    assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:]))
    assert all(Image.open(h.panel_path).size[0] > 100 for h in reranked)

    place = plain[0].metadata["place"]
    with_gar = memory.search(query, 5, Filters(place=place), SearchOptions(gar=True))
    assert with_gar and all(h.metadata["place"] == place for h in with_gar)
    assert all(h.explanation for h in with_gar)
    reasons = {r.reason for h in with_gar for r in h.related}
    assert reasons and all("same outing" in r or "similar content" in r for r in reasons)
    related = memory.related(with_gar[0].id[:10])
    assert related and all(r.id != with_gar[0].id for r in related)
    outing = [r for r in related if "same outing" in r.reason]
    assert all(abs(r.metadata["timestamp"] - with_gar[0].metadata["timestamp"]) <= 3600 for r in outing)


class _MeanReranker:
    """A stand-in re-ranker: an image's match logit is its mean pixel value over 16."""

    rerank_k, stage1_weight, settings_source = 6, 0.4, "a test"

    def rerank(self, query: str, images) -> np.ndarray:
        return np.array([np.asarray(image, np.float32).mean() / 16 for image in images], np.float32)


def test_memory_rerank_is_the_librarys_two_stage_scoring(tmp_path, stage1, monkeypatch):
    from mmai.retrieval import pipeline, two_stage

    for i in range(7):
        _image(tmp_path / "p" / f"{i}.png", 10 + i)
    for i, text in enumerate(("a bird on a branch", "two birds at the lake")):
        (tmp_path / "p" / f"note{i}.txt").write_text(text)
    fake = _MeanReranker()
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, stage2=fake, progress=False)
    memory.ingest([tmp_path / "p"])
    calls = []
    library = two_stage.rerank_topk  # what the query chain (mmai.retrieval.pipeline.rank) scores with
    monkeypatch.setattr(pipeline, "rerank_topk", lambda *a, **kw: calls.append(kw) or library(*a, **kw))
    plain = memory.search("a bird", 9)
    reranked = memory.search("a bird", 9, options=SearchOptions(rerank=True))
    assert len(calls) == 1 and calls[0]["stage1_weight"] == 0.4  # the re-ranker's own lambda

    window = plain[:6]  # the re-ranker's own rerank_k
    slots = [slot for slot, hit in enumerate(window) if hit.metadata["modality"] == "image"]
    assert 0 < len(slots) < 6  # notes in the window keep their places
    logits = torch.as_tensor(fake.rerank("a bird", [Image.open(window[s].metadata["media_path"]).convert("RGB")
                                                    for s in slots]))
    stage1_scores = torch.tensor([[window[s].stage1_score for s in slots]], dtype=torch.float64)
    order, scores = library(torch.arange(len(slots))[None], stage1_scores, k=len(slots),
                            rerank_fn=lambda queries, candidates: logits[candidates], stage1_weight=0.4,
                            return_scores=True)
    expected = [hit.id for hit in plain]
    for slot, position in zip(slots, order[0].tolist()):
        expected[slot] = window[slots[position]].id
    assert [hit.id for hit in reranked] == expected and expected != [hit.id for hit in plain]
    assert [reranked[slot].score for slot in slots] == scores[0].tolist()
    assert [reranked[slot].match_logit for slot in slots] == [float(logits[p]) for p in order[0].tolist()]
    assert all(reranked[i].score == plain[i].score for i in range(9) if i not in slots)


def test_recency_weight_prefers_recent_memories(tmp_path, stage1, synth):
    paths, overrides = synthetic_collection(synth, audio=False)
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    memory.ingest(paths, overrides=overrides)
    newest = max(_unix(o["time"]) for o in overrides.values())
    hits = memory.search("a bird", 24, options=SearchOptions(recency_weight=0.5, recency_half_life_days=365,
                                                        now=newest))
    for hit in hits:
        age_days = (newest - hit.metadata["timestamp"]) / 86_400
        assert hit.score == pytest.approx(hit.stage1_score + 0.5 * 0.5 ** (age_days / 365), abs=1e-6)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    strong = memory.search("a bird", 1, options=SearchOptions(recency_weight=100.0, recency_half_life_days=30,
                                                         now=newest))
    assert newest - strong[0].metadata["timestamp"] < 3 * 3600  # a photo of the latest outing


def test_consolidate_merges_near_duplicates_keeping_all_sources(tmp_path, stage1):
    original = _image(tmp_path / "a" / "burst1.png", 7, size=64)
    pixels = np.asarray(Image.open(original)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel differs: other bytes, near-identical embedding
    Image.fromarray(pixels).save(tmp_path / "a" / "burst2.png")
    (tmp_path / "a" / "burst1.png.json").write_text(json.dumps({"time": "2023-01-01T10:00:00Z"}))
    (tmp_path / "a" / "burst2.png.json").write_text(json.dumps({"time": "2023-01-01T10:00:01Z", "importance": 0.8}))
    _image(tmp_path / "a" / "other.png", 99, size=64)
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    ids = memory.ingest([tmp_path / "a"]).added
    assert len(ids) == 3
    assert memory.consolidate(threshold=0.999) == 1
    assert memory.store.count() == len(memory.index) == 2 and memory.check() == []
    keeper = memory.get(ids[0]).metadata
    assert [s["path"] for s in keeper["sources"]] == [str(tmp_path / "a" / name) for name in ("burst1.png", "burst2.png")]
    assert keeper["importance"] == 0.8 and memory.consolidate(threshold=0.999) == 0


def test_index_is_repaired_from_chroma_when_missing_stale_or_damaged(tmp_path, stage1):
    for i in range(6):
        _image(tmp_path / "p" / f"{i}.png", i)
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    memory.ingest(sorted((tmp_path / "p").iterdir())[:4])
    stale = (tmp_path / "memory" / "index.npz").read_bytes()
    memory.ingest([tmp_path / "p"])
    memory.close()
    (tmp_path / "memory" / "index.npz").write_bytes(stale)  # an index from before the last ingest
    reopened = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    assert reopened.repaired == "added 2 missing from Chroma" and reopened.check() == []
    (tmp_path / "memory" / "index.npz").write_bytes(b"garbage")
    damaged = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False).repaired
    assert damaged.startswith(f"rebuilt from Chroma ({tmp_path / 'memory' / 'index.npz'} damaged: ")
    (tmp_path / "memory" / "index.npz").unlink()
    again = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    assert again.repaired == "rebuilt from Chroma (index.npz missing)" and len(again.index) == 6 and again.check() == []
    orphan = tmp_path / "memory" / "media" / "deadbeef.png"
    orphan.write_bytes(b"left by a kill")
    assert again.rebuild().items() >= {"memories": 6, "orphans_removed": 1, "media_restored": 0}.items()
    assert not orphan.exists()


def test_a_different_model_is_refused_for_an_existing_memory(tmp_path, checkpoints):
    _image(tmp_path / "p.png", 0)
    PersonalMemory(tmp_path / "memory", checkpoints["bi_encoder"], progress=False).ingest([tmp_path / "p.png"])
    with pytest.raises(ValueError, match="different model"):
        PersonalMemory(tmp_path / "memory", checkpoints["audio"], progress=False)


# ---------------------------------------------------------------------- server mode
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "chroma.log", "wb")
    server = subprocess.Popen([str(CHROMA), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()}") from None
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.skipif(not CHROMA.exists(), reason="the chroma CLI is not installed beside this Python")
def test_server_mode_round_trip_against_chroma_run(tmp_path, stage1, chroma_server):
    for i in range(6):
        _image(tmp_path / "p" / f"{i}.png", i)
        sidecar = {"time": f"202{i % 2 + 2}-03-01", "place": "Powai Lake, Mumbai"}
        (tmp_path / "p" / f"{i}.png.json").write_text(json.dumps(sidecar))
    memory = PersonalMemory(tmp_path / "machine_a", encoder=stage1, chroma_host="127.0.0.1", chroma_port=chroma_server,
                            progress=False)
    assert memory.store.location == f"http://127.0.0.1:{chroma_server}"
    added = memory.ingest([tmp_path / "p"]).added
    assert len(added) == 6 and not (tmp_path / "machine_a" / "chroma").exists()
    hits = memory.search("a bird", 10, Filters(year=2023, place="Mumbai"))
    assert len(hits) == 3 and {h.metadata["year"] for h in hits} == {2023}
    other = PersonalMemory(tmp_path / "machine_b", encoder=stage1, chroma_host="127.0.0.1", chroma_port=chroma_server,
                           progress=False)  # another machine: its FAISS index is built from the server
    assert other.repaired == "rebuilt from Chroma (index.npz missing)"
    assert [h.id for h in other.search("a bird", filters=Filters(year=2023))] == [h.id for h in hits]
    assert other.forget(year=2022) == 3 and other.check() == []
    assert memory.search("a bird", k=10) and len(memory.search("a bird", k=10)) == 3  # machine a sees the change
    assert memory.check() == []
