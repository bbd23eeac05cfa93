"""The journal and the media copies are the store of record (issue 20): a lost or damaged Chroma
database is reported by `check` and restored by `rebuild`; readers survive a concurrent forget;
disk full, garbage files, terminal escapes, near-bomb images and the smaller CLI defects."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmai_apps.memory_cli import main
from mmai.memory.personal import PersonalMemory

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_reranker_ckpt  # noqa: E402

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
PLACES = ["Mumbai", "Hebbal", "Berlin"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_reranker_ckpt(tmp_path_factory.mktemp("ckpt"))


def _photos(folder: Path, count: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.png.json").write_text(json.dumps({"time": f"2023-0{1 + i % 9}-01T10:00:00",
                                                               "place": PLACES[i % 3]}))
    return folder


def _store(tmp_path: Path, checkpoint: Path, count: int = 6, capsys=None) -> tuple[Path, list[str]]:
    root = tmp_path / "memory"
    photos = _photos(tmp_path / "photos", count)
    (photos / "note.txt").write_text("a white bird with an orange beak at the lake")
    assert main(["ingest", str(photos), "--root", str(root), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    if capsys is not None:
        capsys.readouterr()
    return root, sorted(p.name for p in (root / "media").iterdir())


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def _search_ids(capsys, root: Path, *extra) -> list[dict]:
    code, out, err = _cli(capsys, "search", "a bird", "--root", str(root), "-k", "20", "--json", "--quiet", *extra)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _damage(root: Path, how: str) -> None:
    database = root / "chroma" / "chroma.sqlite3"
    if how == "deleted":
        database.unlink()
    elif how == "truncated":
        with open(database, "r+b") as file:
            file.truncate(4096)
    else:
        database.write_bytes(np.random.default_rng(0).bytes(database.stat().st_size))


@pytest.mark.parametrize("how", ["deleted", "truncated", "random"])
def test_a_lost_or_damaged_chroma_is_reported_and_restored_from_the_journal(tmp_path, checkpoint, capsys, how):
    root, media = _store(tmp_path, checkpoint, capsys=capsys)
    before = {hit["id"]: hit["metadata"] for hit in _search_ids(capsys, root)}
    assert len(before) == 7
    _damage(root, how)

    code, out, err = _cli(capsys, "check", "--root", str(root), "--quiet")
    assert code == 1 and "Traceback" not in out + err, out + err
    assert ("missing from Chroma" in out) if how == "deleted" else ("cannot be read" in out and "rebuild" in out)
    if how != "deleted":
        for command in ("search", "stats"):
            argv = [command, "a bird"] if command == "search" else [command]
            code, out, err = _cli(capsys, *argv, "--root", str(root), "--quiet")
            assert code == 2 and "cannot be read" in err and "rebuild" in err and len(err.splitlines()) == 1, err
    # an ingest must not write over the lost memories' saved embeddings before they are restored
    if how == "deleted":
        code, out, err = _cli(capsys, "ingest", str(_photos(tmp_path / "more", 1, start=50)), "--root", str(root),
                              "--quiet")
        assert code == 2 and "rebuild" in err, err

    code, out, err = _cli(capsys, "rebuild", "--root", str(root), "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["restored_from_journal"] == 7 and report["orphans_removed"] == 0 and report["memories"] == 7
    if how != "deleted":
        kept = Path(report["damaged_chroma_kept_at"])
        assert kept.is_dir() and (kept / "chroma.sqlite3").is_file() and str(kept) in err
    assert sorted(p.name for p in (root / "media").iterdir()) == media  # no media copy deleted
    after = {hit["id"]: hit["metadata"] for hit in _search_ids(capsys, root)}
    assert after.keys() == before.keys()
    for memory_id, metadata in before.items():
        for field in ("timestamp", "place", "modality", "media_file", "sources", "source_path"):
            assert after[memory_id].get(field) == metadata.get(field), field
    assert {h["id"] for h in _search_ids(capsys, root, "--place", "Mumbai")} == \
        {i for i, m in before.items() if m.get("place") == "Mumbai"}
    code, out, err = _cli(capsys, "check", "--root", str(root), "--quiet")
    assert code == 0 and "consistent" in out, out


def test_rebuild_embeds_again_with_the_checkpoint_where_no_embedding_is_saved(tmp_path, checkpoint, capsys):
    root, media = _store(tmp_path, checkpoint, capsys=capsys)
    before = {hit["id"]: hit["score"] for hit in _search_ids(capsys, root)}
    (root / "chroma" / "chroma.sqlite3").unlink()
    (root / "index.npz").unlink()
    code, out, err = _cli(capsys, "rebuild", "--root", str(root), "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["restored_from_journal"] == 7 and report["re_embedded"] == 7
    after = {hit["id"]: hit["score"] for hit in _search_ids(capsys, root)}
    assert after.keys() == before.keys()
    assert max(abs(after[i] - before[i]) for i in before) < 1e-4  # the same model, the same vectors
    assert sorted(p.name for p in (root / "media").iterdir()) == media


def test_rebuild_never_removes_media_of_confirmed_memories_and_does_not_bring_back_forgotten_ones(
        tmp_path, checkpoint, capsys):
    root, media = _store(tmp_path, checkpoint, capsys=capsys)
    assert _cli(capsys, "forget", "--place", "Berlin", "--yes", "--root", str(root), "--quiet")[0] == 0
    left = sorted(p.name for p in (root / "media").iterdir())
    assert len(left) == len(media) - 2
    (root / "chroma" / "chroma.sqlite3").unlink()
    (root / "media" / "orphan.png").write_bytes(b"not a memory")
    code, out, err = _cli(capsys, "rebuild", "--root", str(root), "--quiet")
    report = json.loads(out)
    assert code == 0 and report["memories"] == 5 and report["orphans_removed"] == 1, out
    assert sorted(p.name for p in (root / "media").iterdir()) == left
    assert not [h for h in _search_ids(capsys, root) if h["metadata"].get("place") == "Berlin"]


def test_a_memory_forgotten_between_index_hit_and_metadata_read_is_skipped(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, capsys=capsys)
    with PersonalMemory(root, progress=False, create=False) as reader:
        hits = reader.search("a bird", 20)
        gone = [hits[0].id, hits[3].id]
        # another process's forget, as the reader meets it: gone from Chroma, still in its index
        reader.store.collection.delete(ids=gone)
        again = reader.search("a bird", 20)
        assert len(again) == len(hits) - 2 and not {h.id for h in again} & set(gone)
        assert len(reader.records.metadata_of([h.id for h in hits])) == len(hits) - 2


def test_search_loop_beside_a_forget_loop_never_fails(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, count=12, capsys=capsys)
    script = ("import sys, time; from mmai.memory.personal import PersonalMemory\n"
              "m = PersonalMemory(sys.argv[1], progress=False, create=False)\n"
              "end = time.time() + float(sys.argv[2]); n = 0\n"
              "while time.time() < end:\n"
              "    m.search('a bird', 20); m.search('a bird', 20, options=None); n += 1\n"
              "print(n)\n")
    searcher = subprocess.Popen([sys.executable, "-c", script, str(root), "12"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    with PersonalMemory(root, progress=False, create=False) as writer:
        for place in PLACES:
            writer.forget(place=place)
            time.sleep(0.5)
    out, err = searcher.communicate(timeout=120)
    assert searcher.returncode == 0, err[-2000:]
    assert int(out.strip()) > 0


def test_disk_full_during_ingest_is_one_line_with_what_was_confirmed_and_nothing_is_lost(
        tmp_path, checkpoint, capsys, monkeypatch):
    import mmai.memory.ingester as ingester

    root, _ = _store(tmp_path, checkpoint, count=2, capsys=capsys)
    photos = _photos(tmp_path / "new", 6, start=20)
    copies = []
    real_copy = ingester.atomic_copy

    def copy_until_full(source, target):
        if len(copies) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        copies.append(target)
        return real_copy(source, target)

    monkeypatch.setattr(ingester, "atomic_copy", copy_until_full)
    code, out, err = _cli(capsys, "ingest", str(photos), "--root", str(root), "--batch-size", "2", "--quiet")
    assert code == 4 and "Traceback" not in err, err
    assert "disk full" in err and str(root / "media") in err and "4 memories confirmed" in err and \
        len(err.strip().splitlines()) == 1, err
    assert "added 4," in out
    monkeypatch.setattr(ingester, "atomic_copy", real_copy)
    code, out, err = _cli(capsys, "ingest", str(photos), "--root", str(root), "--quiet")
    assert code == 0 and "added 2, duplicates 4" in out, out + err
    assert _cli(capsys, "check", "--root", str(root), "--quiet")[0] == 0
    assert len(_search_ids(capsys, root)) == 3 + 6


def test_disk_full_while_searching_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    from mmai.retrieval.index import VectorIndex

    root, _ = _store(tmp_path, checkpoint, count=2, capsys=capsys)
    (root / "index.npz").unlink()  # the open rebuilds and saves it

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(VectorIndex, "save", full)
    for command in (["search", "a bird"], ["check"]):
        code, out, err = _cli(capsys, *command, "--root", str(root), "--quiet")
        assert code == 4 and "disk full" in err and "index.npz" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_a_torn_last_journal_line_is_not_glued_to_the_next_record(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, count=2, capsys=capsys)
    journal = root / "ingest.journal.jsonl"
    with open(journal, "a") as file:
        file.write('{"time": 1, "confirmed": ["abc')  # a kill mid-append
    assert _cli(capsys, "ingest", str(_photos(tmp_path / "more", 2, start=30)), "--root", str(root), "--quiet")[0] == 0
    lines = journal.read_text().splitlines()
    assert lines[-2] == '{"time": 1, "confirmed": ["abc'
    assert json.loads(lines[-1])["confirmed"]
    code, out, _ = _cli(capsys, "check", "--root", str(root), "--quiet")
    assert code == 1 and "do not parse" in out
    assert _cli(capsys, "rebuild", "--root", str(root), "--quiet")[0] == 0
    assert list(root.glob("ingest.journal.jsonl.torn-*"))
    assert _cli(capsys, "check", "--root", str(root), "--quiet")[0] == 0


def test_terminal_escapes_in_user_text_are_escaped_in_search_output(tmp_path, checkpoint, capsys):
    root = tmp_path / "memory"
    photos = _photos(tmp_path / "photos", 1)
    (photos / "0000.png.json").write_text(json.dumps({"time": "2023-01-01T10:00:00",
                                                       "place": "Hebbal\x1b]0;pwned\x07\x1b[2J"}))
    assert main(["ingest", str(photos), "--root", str(root), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = _cli(capsys, "search", "a bird", "--root", str(root), "--quiet")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "Hebbal\\u001b]0;pwned\\u0007\\u001b[2J" in out


def test_a_garbage_generation_file_is_named_and_rebuild_repairs_it(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, count=2, capsys=capsys)
    (root / ".generation").write_bytes(b"\xab\xcd\x00garbage")
    code, out, err = _cli(capsys, "stats", "--root", str(root), "--quiet")
    assert code == 2 and str(root / ".generation") in err and "rebuild" in err and "codec" not in err, err
    assert _cli(capsys, "rebuild", "--root", str(root), "--quiet")[0] == 0
    assert _cli(capsys, "stats", "--root", str(root), "--quiet")[0] == 0


def test_a_near_bomb_png_is_refused_with_its_size_and_a_big_jpeg_is_decoded_in_draft(tmp_path):
    from mmai.memory.ingest import IngestError, read_image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (13000, 13000)).save(bomb, optimize=False)
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(IngestError, match="13000x13000"):
        read_image(bomb, bomb.read_bytes())
    big = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(big, quality=80)
    image, _, _ = read_image(big, big.read_bytes())
    assert image.size == (3000, 2000) and image.mode == "RGB"  # 1/2 scale: the smallest draft >= 1024 px a side


def test_ingest_smaller_defects(tmp_path, checkpoint, capsys):
    # a failed ingest (no --checkpoint) creates no store
    new = tmp_path / "new"
    code, _, err = _cli(capsys, "ingest", str(_photos(tmp_path / "p", 1)), "--root", str(new), "--quiet")
    assert code == 2 and "--checkpoint" in err and not new.exists()
    # a hidden subfolder gets a skipped line; an empty .txt beside an empty .jpg is rejected, not a duplicate
    folder = _photos(tmp_path / "f", 1)
    _photos(folder / "..x", 1, start=5)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "empty.txt").write_bytes(b"")
    code, out, _ = _cli(capsys, "ingest", str(folder), "--root", str(tmp_path / "m"), "--checkpoint", str(checkpoint),
                        "--quiet")
    assert code == 0 and "added 1, duplicates 0, rejected 2" in out, out
    assert "skipped:" in out and "..x" in out


def test_consolidate_says_what_it_would_merge_and_needs_yes(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, count=3, capsys=capsys)
    code, out, _ = _cli(capsys, "consolidate", "--threshold", "0.01", "--root", str(root), "--quiet")
    assert code == 0 and "would merge" in out and "--yes" in out
    assert len(_search_ids(capsys, root)) == 4
    code, out, _ = _cli(capsys, "consolidate", "--threshold", "0.01", "--yes", "--root", str(root), "--quiet")
    assert code == 0 and "merged" in out
    hits = _search_ids(capsys, root)
    for place in PLACES:  # only one place's memories merge: every place is still found
        assert {h["id"] for h in _search_ids(capsys, root, "--place", place)}
    assert len(list((root / "media").iterdir())) == 3  # merged sources' media copies are kept
    assert _cli(capsys, "check", "--root", str(root), "--quiet")[0] == 0
    assert hits


def test_sigterm_during_ingest_prints_what_was_confirmed(tmp_path, checkpoint):
    root = tmp_path / "memory"
    photos = _photos(tmp_path / "photos", 60)
    process = subprocess.Popen([sys.executable, "-m", "mmai_apps.memory_cli", "ingest", str(photos), "--root",
                                str(root), "--checkpoint", str(checkpoint), "--batch-size", "1", "--quiet"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = root / "ingest.journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.is_file() and journal.read_text().count("\n") >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    confirmed = sum(len(json.loads(line)["confirmed"]) for line in journal.read_text().splitlines())
    assert process.returncode == 143, err[-2000:]
    assert f"added {confirmed}," in out and "stopped: SIGTERM" in out and "Traceback" not in err, out + err


class _Killed(BaseException):
    """Stands in for SIGKILL at one instant: nothing after it runs, no handler sees it."""


def test_a_batch_killed_between_chroma_and_its_journal_line_is_confirmed_by_the_next_ingest(tmp_path, checkpoint,
                                                                                            monkeypatch):
    photos = _photos(tmp_path / "photos", 6)
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    journal, confirm = memory.ingester.journal, memory.ingester.journal.confirm
    calls = []

    def killed_on_second_batch(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise _Killed
        return confirm(*args, **kwargs)

    monkeypatch.setattr(journal, "confirm", killed_on_second_batch)
    with pytest.raises(_Killed):
        memory.ingest([photos], batch_size=2)
    monkeypatch.undo()
    unconfirmed = calls[1]
    memory.close()

    memory = PersonalMemory(root, checkpoint, progress=False)
    assert set(unconfirmed) <= set(memory._chroma_ids())  # in Chroma, with no journal line
    problems = memory.check()
    assert len(problems) == 1 and "2 memories in Chroma have no line in" in problems[0], problems
    report = memory.ingest([photos], batch_size=2)
    assert len(report.added) == 2 and len(report.duplicates) == 4 and not report.rejected
    assert memory.check() == []
    assert set(unconfirmed) <= memory.journal.replay().ids  # recoverable from the journal now
    memory.close()


def test_consolidate_undo_brings_every_merged_memory_back_as_it_was(tmp_path, checkpoint, capsys):
    root, _ = _store(tmp_path, checkpoint, count=6, capsys=capsys)
    memory = PersonalMemory(root, progress=False)
    before = memory.store.get(memory._chroma_ids(), include_embeddings=True)
    memory.close()
    code, out, _ = _cli(capsys, "consolidate", "--threshold", "0.01", "--yes", "--root", str(root), "--quiet")
    assert code == 0 and "merged" in out
    assert len(_search_ids(capsys, root)) < 7
    # a forget after the merge wins over the undo: one place's group stays gone
    assert _cli(capsys, "forget", "--place", "Berlin", "--yes", "--root", str(root), "--quiet")[0] == 0
    code, out, err = _cli(capsys, "consolidate", "--undo", "--root", str(root), "--quiet")
    assert code == 0 and "memories are back" in out and "stay merged" in out, out + err

    memory = PersonalMemory(root, progress=False)
    after = memory.store.get(memory._chroma_ids(), include_embeddings=True)
    kept = {i: (m, d, e) for i, m, d, e in zip(before.ids, before.metadatas, before.documents, before.embeddings)
            if m.get("place") != "Berlin"}
    assert sorted(after.ids) == sorted(kept)  # every non-forgotten memory is back, Berlin's are not
    for i, m, d, e in zip(after.ids, after.metadatas, after.documents, after.embeddings):
        assert m == kept[i][0] and d == kept[i][1]  # own metadata (keepers' sources as before) and text
        np.testing.assert_allclose(e, kept[i][2], atol=1e-6)
    assert memory.check() == []
    assert {h.id for h in memory.search("a bird", k=20)} == set(kept)
    memory.close()
    code, _, err = _cli(capsys, "consolidate", "--undo", "--root", str(root), "--quiet")
    assert code == 2 and "no consolidate to undo" in err and "Traceback" not in err
