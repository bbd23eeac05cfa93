"""The dashboard's logic (mmai_apps/serve.py): upload checks, filters, and the search/select/upload callbacks.

Every test runs against a real :class:`PersonalMemory` built from a tiny synthetic collection
(procedural birds with the diary's times and places, notes with sidecars) and real tiny
checkpoints (tests/tiny_checkpoints.py). The browser drives the same callbacks in
tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmai.data.synth import synthesize
from mmai.memory.filters import Filters
from mmai.memory.personal import PersonalMemory
from mmai_apps.serve import (Dashboard, build_app, build_parser, check_upload, format_time, is_loopback, md_escape,
                             parse_filters, upload_meta)
from tiny_checkpoints import make_bi_encoder_ckpt, make_reranker_ckpt
from tiny_configs import TINY_CLAP

NOTES = {
    "lake_walk.txt": ("Saw a white bird with a long orange beak wading at the lake edge.", "2022-03-05T07:10:00Z"),
    "garden.md": ("Two small brown birds were singing in the garden hedge this morning.", "2021-11-20T08:00:00Z"),
}


# ---------------------------------------------------------------------- fixtures
def diary_overrides(synth_root: Path, audio: bool = False) -> dict[str, dict]:
    """``{absolute file path: {time, place, latitude, longitude}}`` from the synthetic diary."""
    relpaths = dict(line.split() for line in (synth_root / "CUB_200_2011" / "images.txt").read_text().splitlines())
    overrides = {}
    for line in (synth_root / "mmai_extras" / "episodes.jsonl").read_text().splitlines():
        entry = json.loads(line)
        fields = {key: entry[key] for key in ("place", "latitude", "longitude")} | {"time": entry["timestamp"]}
        relpath = relpaths[str(entry["image_id"])]
        overrides[str((synth_root / "CUB_200_2011" / "images" / relpath).absolute())] = fields
        if audio:
            song = synth_root / "mmai_extras" / "audio" / Path(relpath).with_suffix(".wav")
            overrides[str(song.absolute())] = fields
    return overrides


def write_notes(folder: Path) -> list[Path]:
    """The :data:`NOTES` as files, each with a sidecar giving its time and place."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (text, when) in NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
        (folder / f"{name}.json").write_text(json.dumps({"time": when, "place": "Hebbal Lake, Bengaluru"}))
        paths.append(folder / name)
    return paths


def build_collection(folder: Path, checkpoint: Path, *, images: int = 12, audio: bool = False) -> PersonalMemory:
    """A :class:`PersonalMemory` of synthetic photos (and songs) with the diary's time/place, plus notes."""
    synth = folder / "synth"
    synthesize(synth, classes=4, images=images, image_size=64, audio=audio, workers=1, progress=False)
    memory = PersonalMemory(folder / "memory", checkpoint, progress=False)
    sources = [synth / "CUB_200_2011" / "images", *write_notes(folder / "notes")]
    if audio:
        sources.append(synth / "mmai_extras" / "audio")
    report = memory.ingest(sources, overrides=diary_overrides(synth, audio))
    assert not report.rejected, report.summary()
    return memory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {"reranker": make_reranker_ckpt(folder / "reranker"),
            "audio": make_bi_encoder_ckpt(folder / "audio", audio={"pretrained": False, "config_overrides": TINY_CLAP,
                                                                   "max_length_s": 0.5, "seconds": 0.5})}


@pytest.fixture(scope="module")
def board(tmp_path_factory, checkpoints):
    """Dashboard over a re-ranker memory of 12 photos and 2 notes (searched, never written to)."""
    memory = build_collection(tmp_path_factory.mktemp("reranker_memory"), checkpoints["reranker"])
    yield Dashboard(memory)
    memory.close()


@pytest.fixture(scope="module")
def audio_board(tmp_path_factory, checkpoints):
    """Dashboard over a bi-encoder (with audio tower, no re-ranker) memory of photos, songs and notes."""
    memory = build_collection(tmp_path_factory.mktemp("audio_memory"), checkpoints["audio"], images=8, audio=True)
    yield Dashboard(memory)
    memory.close()


def jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    import io

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def index_of(hits, modality: str) -> int:
    return next(i for i, hit in enumerate(hits) if hit.metadata["modality"] == modality)


# ---------------------------------------------------------------------- upload checks
def test_check_upload_accepts_photos_notes_and_recordings_that_decode(tmp_path):
    photo = tmp_path / "bird.jpg"
    photo.write_bytes(jpeg_bytes())
    note = tmp_path / "note.md"
    note.write_text("a heron at dawn", encoding="utf-8")
    song = tmp_path / "song.wav"
    soundfile.write(song, np.sin(np.linspace(0, 400, 8000)).astype(np.float32), 16_000)
    checks = [check_upload(path, max_bytes=2**20) for path in (photo, note, song)]
    assert [check.reason for check in checks] == [None, None, None]
    assert [check.modality for check in checks] == ["image", "text", "audio"]
    assert checks[0].memory_id == hashlib.sha256(photo.read_bytes()).hexdigest()[:32]


@pytest.mark.parametrize("name, content, words", [
    ("installer.exe", b"MZ\x90\x00", "not allowed"),
    ("notes.docx", b"PK\x03\x04", "not allowed"),
    ("huge.jpg", None, "upload limit"),
    ("broken.jpg", "truncated", "corrupt"),
    ("fake.png", b"this is not a picture at all", "corrupt"),
    ("latin.txt", "café".encode("latin-1"), "UTF-8"),
    ("blank.md", b"   \n", "empty"),
    ("noise.wav", b"RIFF....WAVEjunk", "audio"),
])
def test_check_upload_rejects_wrong_type_oversize_and_undecodable_files_naming_them(tmp_path, name, content, words):
    path = tmp_path / name
    if content is None:
        path.write_bytes(jpeg_bytes(size=256))  # a valid photo, but over the tiny limit below
    elif content == "truncated":
        path.write_bytes(jpeg_bytes()[:300])
    else:
        path.write_bytes(content)
    check = check_upload(path, max_bytes=4_000)
    assert not check.ok and check.modality is None
    assert name in check.reason and words in check.reason
    assert str(tmp_path) not in check.reason  # the user's file name, not the server's temp path


def test_upload_form_time_and_place_must_be_readable():
    assert upload_meta(["a.jpg"], " ", "") is None
    assert upload_meta(["a.jpg", "b.txt"], "Powai Lake", "2023-05-14") == {
        "a.jpg": {"place": "Powai Lake", "time": "2023-05-14"}, "b.txt": {"place": "Powai Lake", "time": "2023-05-14"}}
    with pytest.raises(ValueError, match="upload form: time"):
        upload_meta(["a.jpg"], None, "last tuesday")


def test_upload_stores_only_files_that_pass_the_checks_and_reports_each(tmp_path, checkpoints):
    memory = PersonalMemory(tmp_path / "memory", checkpoints["reranker"], progress=False)
    board = Dashboard(memory, max_upload_mb=0.01)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "heron.jpg").write_bytes(jpeg_bytes(1))
    (uploads / "broken.jpg").write_bytes(jpeg_bytes(2)[:200])
    (uploads / "script.exe").write_bytes(b"MZ")
    (uploads / "panorama.png").write_bytes(b"\x89PNG" + b"\x00" * 20_000)  # over 0.01 MiB
    files = [str(uploads / name) for name in ("heron.jpg", "broken.jpg", "script.exe", "panorama.png")]

    assert "Choose one or more" in board.upload(None)
    assert "Nothing was added" in board.upload(files[:1], "Powai Lake", "sometime in spring")
    assert memory.stats()["memories"] == 0

    report = board.upload(files, "Powai Lake, Mumbai", "2021-03-04T05:06:07Z")
    lines = report.splitlines()
    assert len(lines) == 4
    assert any(line.startswith("- **added** heron.jpg (image)") for line in lines)
    for name, words in (("broken.jpg", "corrupt"), ("script.exe", "not allowed"), ("panorama.png", "upload limit")):
        assert any(line.startswith("- **rejected**") and name in line and words in line for line in lines), report
    assert memory.stats()["memories"] == 1
    hits = memory.search("a bird", filters=Filters(place="Mumbai", year=2021))
    assert len(hits) == 1 and hits[0].metadata["place"] == "Powai Lake, Mumbai"
    assert Path(hits[0].metadata["media_path"]).is_file()

    again = board.upload(files[:1])
    assert again.startswith("- **duplicate** heron.jpg") and memory.stats()["memories"] == 1
    memory.close()


def test_upload_with_the_merge_box_folds_a_re_encoded_copy_into_its_burst(tmp_path, checkpoints):
    import io

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "heron.jpg").write_bytes(jpeg_bytes(1))
    buffer = io.BytesIO()
    Image.open(uploads / "heron.jpg").save(buffer, format="JPEG", quality=70)  # other bytes, the same shot
    (uploads / "heroncopy.jpg").write_bytes(buffer.getvalue())
    files = [str(uploads / "heron.jpg"), str(uploads / "heroncopy.jpg")]
    for merge, stored in ((False, 2), (True, 1)):
        memory = PersonalMemory(tmp_path / f"memory_{merge}", checkpoints["reranker"], progress=False)
        report = Dashboard(memory).upload(files, "Powai Lake", "2021-03-04T05:06:07Z", merge_bursts=merge)
        assert memory.stats()["memories"] == stored, report
        if merge:  # one upload time for both: one burst; the copy joins the kept memory
            assert any(line.startswith(("- **discarded** heroncopy.jpg", "- **merged** heroncopy.jpg"))
                       for line in report.splitlines()), report
            sources = memory.search("a bird")[0].metadata["sources"]
            assert sorted(source["path"].split(": ")[-1] for source in sources) == ["heron.jpg", "heroncopy.jpg"]
        memory.close()


def test_forget_by_use_previews_needs_the_box_and_forgets_exactly_what_was_shown(tmp_path, checkpoints):
    memory = build_collection(tmp_path / "memory", checkpoints["reranker"])
    board = Dashboard(memory)
    total = memory.store.count()
    opened = memory.search("a bird", k=3)
    for hit in opened:
        memory.open(hit.id)  # used memories: retention keeps them
    assert "Preview first" in board.forget_by_use("retention", "3", True, [])
    assert "Nothing to preview" in board.forget_preview("retention", "many")[0]
    text, shown = board.forget_preview("retention", "3")
    assert len(shown) == total - 3 and f"these **{total - 3}** would be forgotten" in text
    assert not set(shown) & {hit.id for hit in opened}
    assert "Tick **Yes" in board.forget_by_use("retention", "3", False, shown)
    assert memory.store.count() == total  # nothing forgotten without the box
    stale = "Nothing was forgotten" in board.forget_by_use("retention", "2", True, shown)  # another plan
    assert stale and memory.store.count() == total
    report = board.forget_by_use("retention", "3", True, shown)
    assert report.startswith(f"Forgot {total - 3} memories") and memory.store.count() == 3
    assert {h.id for h in memory.search("a bird", k=10)} == {hit.id for hit in opened}
    assert memory.check() == []
    memory.close()


# ---------------------------------------------------------------------- filters
def test_parse_filters_reads_the_form_and_names_the_bad_field():
    filters = parse_filters("2023", "Mumbai", "image", "2023-01-01", "2023-06-01T12:00:00Z")
    assert filters.as_kwargs() == {"year": 2023, "place": "Mumbai", "modality": "image",
                                   "after": 1672531200.0, "before": 1685620800.0}
    assert parse_filters("", "any", "any", "", None).as_kwargs() == dict.fromkeys(
        ("year", "place", "modality", "after", "before"))
    assert parse_filters(2022.0, None, None, None, None).year == 2022  # a gr.Number gives floats
    for arguments, field in ((("twenty", None, "any", "", ""), "Year"),
                             (("", None, "video", "", ""), "Modality"),
                             (("", None, "any", "2023-13-45", ""), "After"),
                             (("", None, "any", "2023-06-01", "2023-01-01"), "must be earlier")):
        with pytest.raises(ValueError, match=field):
            parse_filters(*arguments)


def test_the_dashboard_and_the_cli_hand_the_library_one_filters_and_options_type(board, monkeypatch):
    import mmai_apps.serve
    from mmai.memory.search import SearchOptions
    from mmai_apps import memory_cli as cli

    assert not hasattr(mmai_apps.serve, "SearchFilters")  # one definition, in the library
    form = parse_filters("2021", "Lakeside", "image", "2021-01-01", "")
    assert type(form) is Filters and form == Filters(year=2021, place="Lakeside", modality="image",
                                                     after=1609459200.0)
    args = cli.build_parser().parse_args(["search", "a bird", "--year", "2021", "--place", "Lakeside",
                                          "--modality", "image", "--after", "2021-01-01"])
    flags = cli._filters_of(args)
    assert type(flags) is Filters and flags == Filters(year=[2021], place=["Lakeside"], modality=["image"],
                                                       after="2021-01-01")
    calls = []
    search = board.memory.search
    monkeypatch.setattr(board.memory, "search", lambda *given: calls.append(given) or search(*given))
    board.search("a bird", year="2021", modality="image", gar=True, k=3)
    (query, k, filters, options), = calls
    assert (query, k) == ("a bird", 3) and filters == Filters(year=2021, modality="image")
    assert type(options) is SearchOptions and options.gar and not options.rerank


def test_format_time_is_utc_and_says_when_unknown():
    assert format_time(1684049530.0) == "2023-05-14 07:32 UTC"
    assert format_time(None) == "unknown time" and format_time(float("nan")) == "unknown time"


# ---------------------------------------------------------------------- search
def test_search_fills_the_gallery_with_ranked_captions(board):
    gallery, hits, query, status = board.search("a bird with a long orange bill", k=6)
    assert query == "a bird with a long orange bill" and len(gallery) == len(hits) == 6
    for rank, ((picture, caption), hit) in enumerate(zip(gallery, hits), start=1):
        assert isinstance(picture, Image.Image) and max(picture.size) <= 256
        assert caption.startswith(f"#{rank} · {hit.score:.3f} · ")
        place, day = hit.metadata["place"].split(",")[0], format_time(hit.metadata["timestamp"])[:10]
        assert caption.endswith(f"{place} · {day}")
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert "6 memories" in status and "stage 1" in status


def test_search_filters_narrow_the_results(board):
    place = board.memory.known_places()[0]
    _, hits, _, status = board.search("a bird", place=place, modality="image", k=20)
    assert hits and all(h.metadata["place"] == place and h.metadata["modality"] == "image" for h in hits)
    assert f"place={place}" in status
    _, notes, _, _ = board.search("a bird", modality="text", k=20)
    assert sorted(Path(h.metadata["source_path"]).name for h in notes) == sorted(NOTES)
    _, old, _, _ = board.search("a bird", before="2021-12-31", after="2021-11-01", k=20)
    assert all(format_time(h.metadata["timestamp"]).startswith("2021-1") for h in old)
    assert "garden.md" in {Path(h.metadata["source_path"]).name for h in old}


def test_search_problems_are_reported_on_the_page_not_raised(board):
    gallery, hits, _, status = board.search("   ")
    assert gallery == [] and hits == [] and "Type what you are looking for" in status
    gallery, _, _, status = board.search("a bird", year="last year")
    assert gallery == [] and "Search failed" in status and "Year" in status
    gallery, _, _, status = board.search("a bird", place="Atlantis")
    assert gallery == [] and "No memory matches" in status and "place=Atlantis" in status


def test_time_and_place_words_become_filters_the_status_names(board):
    place = board.memory.known_places()[0]
    _, everything, _, _ = board.search("a bird", modality="image", k=50)
    year = everything[0].metadata["year"]
    wanted = [h for h in everything if h.metadata["place"] == place and h.metadata["year"] == year]
    query = f"a bird at {place.split(',')[0]} in {year}"
    _, hits, _, status = board.search(query, modality="image", k=50)
    assert {h.id for h in hits} == {h.id for h in wanted}
    assert "Filters from your words" in status and f"place {md_escape(place)}" in status and "Searched for *a bird*" in status
    _, unparsed, _, status = board.search(query, modality="image", k=50, parse=False)
    assert len(unparsed) == len(everything) and "Filters from your words" not in status
    _, overruled, _, status = board.search(query, year=str(year - 50), k=50)
    assert overruled == [] and "time flags win" in status  # the form's year wins over the words
    _, _, _, status = board.search("a bird on 2023-02-30")
    assert "Search failed" in status and "is not a date" in status
    _, later, _, status = board.search("what did I see after a bird", k=5)
    assert "Searched for *a bird*" in status and "Showing what came after the best match" in status
    assert ("Nothing came after it in its outing" in status) == (not later)
    assert all("after the anchor" in hit.explanation for hit in later)


# ---------------------------------------------------------------------- select
def test_selecting_an_image_shows_the_saliency_panel_and_associated_memories(board):
    assert board.has_reranker
    _, hits, query, status = board.search("a bird with a long orange bill", rerank=True, k=8)
    assert "re-rank" in status
    position = index_of(hits, "image")
    before = board.memory.access(hits[position].id).count  # the search listed it: no access yet
    overlay, note, details, related, audio, text = board.select(position, hits, query)
    assert board.memory.access(hits[position].id).count == before + 1  # selecting it opened it
    assert f"**Opened:** opened {before + 1} time" in details
    assert isinstance(overlay, Image.Image) and overlay.width > overlay.height  # original | heatmap | overlay
    assert "Saliency" in note and audio is None and text == ""
    assert "match logit" in details and hits[position].id in details
    assert "Associated memories" in related and ("same outing" in related or "similar content" in related)


def test_rerank_uses_the_checkpoints_settings_unless_serve_is_told_otherwise(board):
    from mmai.memory.search import SearchOptions

    _, hits, _, status = board.search("a bird", rerank=True, k=14)
    assert ("Re-rank: rerank\\_k 16, stage1\\_weight 1 \\(from the checkpoint's defaults\\: it records no "
            "validation\\)") in status, status  # the tiny checkpoint was never validated
    assert all(hit.match_logit is not None for hit in hits if hit.metadata["modality"] == "image")
    args = build_parser().parse_args(["--root", "memory", "--rerank-k", "3", "--stage1-weight", "0.25"])
    told = Dashboard(board.memory, options=SearchOptions(rerank_k=args.rerank_k, stage1_weight=args.stage1_weight))
    plain = board.search("a bird", k=14)[1]
    _, hits, _, status = told.search("a bird", rerank=True, k=14)
    assert "rerank\\_k 3 \\(from --rerank-k\\), stage1\\_weight 0.25 \\(from --stage1-weight\\)" in status
    window = {hit.id for hit in plain[:3] if hit.metadata["modality"] == "image"}
    assert {hit.id for hit in hits if hit.match_logit is not None} == window
    assert all(hit.score == pytest.approx(hit.match_logit + 0.25 * hit.stage1_score, abs=1e-6)
               for hit in hits if hit.match_logit is not None)


def test_gar_results_carry_the_reason_of_each_association(board):
    _, hits, query, status = board.search("a small brown bird singing", gar=True, k=6)
    assert "GAR" in status and all(hit.related for hit in hits)
    _, _, details, related, _, _ = board.select(0, hits, query)
    assert "**Why (GAR):**" in details
    reasons = {item.reason for item in hits[0].related}
    assert any(reason in related for reason in reasons)


def test_selecting_a_note_shows_its_text_and_why_there_is_no_overlay(board):
    _, hits, query, _ = board.search("white bird wading at the lake", modality="text")
    overlay, note, details, _, audio, text = board.select(0, hits, query)
    assert overlay is None and audio is None and "text memory" in note
    assert text == hits[0].document and text in {body for body, _ in NOTES.values()}
    assert board.select(None, hits, query)[2] == "Select a result to see why it matched."


def test_bi_encoder_memory_plays_songs_and_says_why_there_is_no_overlay(audio_board):
    assert not audio_board.has_reranker and "bi-encoder" in audio_board.reranker_note
    gallery, _, _, status = audio_board.search("a bird", rerank=True)
    assert gallery == [] and "Re-rank is unavailable" in status
    gallery, hits, query, _ = audio_board.search("a bird song", modality="audio")
    assert hits and all(hit.metadata["modality"] == "audio" for hit in hits)
    assert gallery[0][0].size == (256, 256)  # a waveform card stands in for the picture
    overlay, note, _, _, audio, _ = audio_board.select(0, hits, query)
    rate, samples = audio
    assert overlay is None and "audio memory" in note
    assert rate == 48_000 and samples.ndim == 1 and len(samples) > rate // 10
    _, hits, query, _ = audio_board.search("a bird", modality="image")
    overlay, note, *_ = audio_board.select(0, hits, query)
    assert overlay is None and "bi-encoder without a re-ranker" in note


# ---------------------------------------------------------------------- app and serving
def test_app_builds_offline_and_binds_to_this_machine_by_default(board):
    import gradio as gr

    app = build_app(board.memory)
    assert isinstance(app, gr.Blocks) and app.analytics_enabled is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    args = build_parser().parse_args(["--root", "memories"])
    assert (args.host, args.port, args.chroma_host) == ("127.0.0.1", 7860, None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


# ---------------------------------------------------------------------- privacy of temporary files and text
def _modes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mode & 0o777 for path in folder.rglob("*")}


def test_served_thumbnails_and_uploads_stay_private_under_the_root_and_go_on_exit(tmp_path, checkpoints):
    from gradio_client import Client, handle_file

    from mmai_apps.serve import launch, private_temp_dir
    from test_dashboard_browser import free_port

    memory = build_collection(tmp_path, checkpoints["reranker"], images=4)
    photo = tmp_path / "outside" / "heron.jpg"
    photo.parent.mkdir()
    photo.write_bytes(jpeg_bytes(7))
    with private_temp_dir(memory.root) as folder:
        assert folder.parent == memory.root / ".serve-cache" and folder.stat().st_mode & 0o777 == 0o700
        app = build_app(memory)
        port = free_port()
        launch(app, port=port, block=False, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            gallery, status = client.predict("a bird", "", "any", "any", "", "", False, False, 4, api_name="/search")
            report = client.predict([handle_file(str(photo))], "Powai Lake", "", api_name="/upload")
        finally:
            app.close()
        assert len(gallery) == 4 and "**added** heron" in report, (status, report)
        written = _modes(folder)
        assert written and all(mode == (0o700 if (folder / name).is_dir() else 0o600)
                               for name, mode in written.items()), written
        thumbnails = [Path(item["image"]["path"] if isinstance(item["image"], dict) else item["image"])
                      for item in gallery]
        assert all(folder in path.parents for path in thumbnails), thumbnails
    assert not folder.exists() and "GRADIO_TEMP_DIR" not in os.environ
    upload = memory.search("a bird", 20, Filters(place="Powai Lake"))
    assert [hit.metadata["source_path"] for hit in upload] == ["uploaded via dashboard: heron.jpg"]
    assert [s["path"] for s in upload[0].metadata["sources"]] == ["uploaded via dashboard: heron.jpg"]
    assert Path(upload[0].metadata["media_path"]).parent == memory.root / "media"
    memory.close()


def test_mmai_serve_removes_its_temporary_folder_when_stopped(tmp_path, checkpoints):
    import signal
    import subprocess
    import sys

    from test_dashboard_browser import REPO, free_port, wait_until_serving

    build_collection(tmp_path, checkpoints["reranker"], images=4).close()
    cache = tmp_path / "memory" / ".serve-cache"
    cache.mkdir(mode=0o700)
    (cache / "pid999999999-leftover").mkdir()  # a killed server's folder
    (cache / "pid999999999-leftover" / "thumbnail.png").write_bytes(b"old")
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-c", "import sys; from mmai_apps.serve import main; sys.exit(main(sys.argv[1:]))",
               "--root", str(tmp_path / "memory"), "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", server, log)
        folders = [path.name for path in cache.iterdir()]
        assert folders and all(name.startswith(f"pid{server.pid}-") for name in folders), folders
        deadline = time.time() + 60  # the URL line follows the server's start: a stop before it prints nothing
        while "is at http" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert list(cache.iterdir()) == []
    printed = log.read_text()  # one line says where it serves; no share-link hint, no "Keyboard interruption"
    assert f"is at http://127.0.0.1:{port}/" in printed and "public link" not in printed, printed
    assert "Keyboard interruption" not in printed and "Traceback" not in printed, printed


def test_user_text_is_escaped_in_the_dashboards_markdown(board):
    from types import SimpleNamespace

    beacon = "![x](http://host/p.png)"
    hit = SimpleNamespace(rank=0, score=0.5, stage1_score=0.5, match_logit=None, id="ab12", explanation=None,
                          metadata={"modality": "image", "timestamp": 0.0, "place": beacon,
                                    "time_source": "<img src=http://host/q.png>",
                                    "sources": [{"path": "/photos/[a](http://host).jpg"}]})
    details = board.details(hit)
    assert "![x](" not in details and "<img" not in details and "[a](" not in details
    assert r"\!\[x\]\(http\://host/p.png\)" in details
    related = SimpleNamespace(id="cd34", weight=0.9, reason="same outing",
                              metadata={"source_path": "/p/x|y.jpg", "modality": "image", "place": beacon})
    hit.related = [related]
    table = board.related(hit)
    assert "![x](" not in table and r"x\|y.jpg" in table
    _, _, _, status = board.search(beacon, place=beacon)
    assert "![x](" not in status


def test_the_top_down_box_runs_the_descent_and_says_how_much_it_scored(board):
    _, flat, _, _ = board.search("a bird", k=5, parse=False)
    gallery, hits, _, status = board.search("a bird", k=5, parse=False, top_down=True)
    assert "stage 1 (top-down)" in status and "top-down: scored " in status and len(gallery) == len(hits) >= 1
    scored = int(status.split("top-down: scored ")[1].split(" of ")[0].replace(",", ""))
    assert 1 <= scored <= len(board.memory.index)
    assert {hit.id for hit in hits} <= {hit.id for hit in board.search("a bird", k=scored, parse=False)[1]}
    assert "top-down" not in board.search("a bird", k=5, parse=False)[3]  # the box off: flat stage 1
    _, none, _, status = board.search("a bird", year="2021", k=5, parse=False, top_down=True)
    assert none == [] and "does not combine with filters" in status
