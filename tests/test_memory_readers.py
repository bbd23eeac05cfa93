"""Readers never write (issue 21, item 4): a reader that finds the saved index stale repairs it in memory
and writes it only under the store's write lock, taken only if free at once; a reader racing a writer
leaves a consistent store. Real Chroma, real FAISS, real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mmai.memory.index_sync import ids_digest
from mmai.memory.personal import PersonalMemory

sys.path.insert(0, str(Path(__file__).parent))
# the same harness as the concurrency tests: environment, CLI, lock holder, photos, checkpoint
from test_memory_concurrency import CLI, ENV, HOLDER, REPO, _photos, checkpoint  # noqa: E402,F401

#: opens ROOT (argv[1]) afresh and searches it, again and again, until the file argv[2] exists; prints how often.
OPENER = """
import sys, pathlib
from mmai.memory.personal import PersonalMemory
opened = 0
while not pathlib.Path(sys.argv[2]).exists():
    with PersonalMemory(sys.argv[1], progress=False, create=False) as memory:
        memory.search("a bird", k=5)
    opened += 1
print("opened", opened)
"""


def _saved_matches_chroma(root: Path) -> None:
    """``index.npz`` and its manifest describe exactly Chroma's memories."""
    with PersonalMemory(root, progress=False, create=False) as memory:
        ids = [i for i in memory.sync.chroma_ids()]
        manifest = json.loads((root / "index.manifest.json").read_text())
        assert manifest["count"] == len(ids) and manifest["ids_sha256"] == ids_digest(ids)
        assert memory.repaired == "in sync" and memory.check() == []


def test_a_reader_repairs_a_stale_index_in_memory_while_a_writer_holds_the_lock(tmp_path, checkpoint):
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 4, 0)])
    stale = {name: (root / name).read_bytes() for name in ("index.npz", "index.manifest.json")}
    memory.ingest([_photos(tmp_path / "b", 2, 10)])
    memory.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(_photos(tmp_path / "c", 3, 20))],
                              cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for name, data in stale.items():  # an index saved before the last ingest (as after a crash)
            (root / name).write_bytes(data)
        reader = PersonalMemory(root, progress=False, create=False)
        assert reader.repaired == "added 2 missing from Chroma" and reader.sync.unsaved
        assert len(reader.search("a photo", k=50)) == 6  # searched from the repaired in-memory index
        assert reader.related(reader.search("a photo", k=1)[0].id) is not None
        for name, data in stale.items():
            assert (root / name).read_bytes() == data, f"a reader wrote {name} without the write lock"
        assert any("index.manifest.json describes 4 memories" in p for p in reader.check())  # said, not hidden
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=300) == 0 and "added 3" in holder.stdout.read()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert len(reader.search("a photo", k=50)) == 9 and reader.sync.unsaved is None  # sees the writer's save
    assert reader.check() == []
    reader.close()
    _saved_matches_chroma(root)


def test_a_reader_saves_its_repair_once_the_lock_is_free(tmp_path, checkpoint):
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 3, 0)])
    stale = (root / "index.npz").read_bytes()
    memory.ingest([_photos(tmp_path / "b", 2, 10)])
    memory.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(tmp_path / "b")],
                              cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (root / "index.npz").write_bytes(stale)
        reader = PersonalMemory(root, progress=False, create=False)
        assert reader.sync.unsaved and (root / "index.npz").read_bytes() == stale
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=300) == 0 and "duplicates 2" in holder.stdout.read()  # wrote no memory
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    reader.search("a photo", k=5)  # the lock is free now: the repaired index is saved under it
    assert reader.sync.unsaved is None and reader.check() == []
    reader.close()
    _saved_matches_chroma(root)


def test_readers_racing_a_writer_leave_a_consistent_store(tmp_path, checkpoint):
    """A long-lived reader (this process, searching in a loop) and a process that opens the store
    afresh and searches, again and again, while a CLI ingest writes 8 batches."""
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 3, 0)])
    stop = tmp_path / "stop"
    opener = subprocess.Popen([sys.executable, "-c", OPENER, str(root), str(stop)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = subprocess.Popen([*CLI, "memory", "ingest", str(_photos(tmp_path / "b", 16, 100)), "--root", str(root),
                               "--batch-size", "2", "--quiet"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    seen: list[int] = []
    try:
        while writer.poll() is None:
            seen.append(len(memory.search("a photo", k=50)))
        out, err = writer.communicate(timeout=300)
        stop.touch()
        opened, opener_err = opener.communicate(timeout=300)
    finally:
        for process in (writer, opener):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert writer.returncode == 0 and "added 16" in out, err
    assert opener.returncode == 0 and int(opened.split()[-1]) >= 1, opener_err
    assert seen and all(3 <= n <= 19 for n in seen)
    assert len(memory.search("a photo", k=50)) == 19 and memory.check() == []
    memory.close()
    _saved_matches_chroma(root)
