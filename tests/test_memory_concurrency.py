"""Several processes on one memory root: a dashboard's open store while a CLI ingest writes, and two
writers at once. Real Chroma, real FAISS, real subprocesses (issue #12, items 2 and 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmai.memory.personal import PersonalMemory

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_reranker_ckpt  # noqa: E402

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
CLI = [sys.executable, "-c", "import sys; from mmai_apps.cli import main; sys.exit(main(sys.argv[1:]))"]
#: holds the write lock of ROOT (argv[1]) until a line arrives on stdin, then ingests argv[2] under it.
HOLDER = """
import sys
from mmai.memory.personal import PersonalMemory
memory = PersonalMemory(sys.argv[1], progress=False)
with memory._write_lock():
    print("locked", flush=True)
    sys.stdin.readline()
    report = memory.ingest([sys.argv[2]])
    print(report.summary(), flush=True)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_reranker_ckpt(tmp_path_factory.mktemp("ckpt"))


def _photos(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(seed + i).integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{seed + i:04d}.png")
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _confirmed(root: Path) -> set[str]:
    lines = (root / "ingest.journal.jsonl").read_text(encoding="utf-8").splitlines()
    return {memory_id for line in lines for memory_id in json.loads(line)["confirmed"]}


def _all_searchable(root: Path) -> None:
    """`mmai memory check` is clean and a search over everything finds every confirmed memory."""
    check = _cli("memory", "check", "--root", str(root), "--quiet")
    assert check.returncode == 0 and "consistent" in check.stdout, check.stdout + check.stderr
    with PersonalMemory(root, progress=False, create=False) as memory:
        found = {hit.id for hit in memory.search("a photo", k=memory.store.count())}
        assert _confirmed(root) <= found and memory.check() == []


def test_an_open_dashboard_sees_a_cli_ingest_from_another_process(tmp_path, checkpoint):
    from mmai_apps.serve import Dashboard

    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    first = memory.ingest([_photos(tmp_path / "a", 4, 0)])
    board = Dashboard(memory)
    gallery, hits, _, status = board.search("a photo", k=50)
    assert {hit.id for hit in hits} == set(first.added)

    other = _cli("memory", "ingest", str(_photos(tmp_path / "b", 5, 100)), "--root", str(root), "--quiet")
    assert other.returncode == 0 and "added 5" in other.stdout, other.stderr

    gallery, hits, _, status = board.search("a photo", k=50)  # was: InternalError: Error finding id
    assert "failed" not in status and len(gallery) == 9
    assert {hit.id for hit in hits} == _confirmed(root)
    report = board.upload([str(_photos(tmp_path / "c", 1, 200) / "0200.png")])
    assert report.startswith("- **added** 0200.png"), report
    memory.close()
    _all_searchable(root)


def test_a_writer_opened_before_another_process_wrote_still_ingests(tmp_path, checkpoint):
    """The waiting writer's case without the wait: its Chroma client predates the other's writes."""
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 2, 0)])
    other = _cli("memory", "ingest", str(_photos(tmp_path / "b", 3, 100)), "--root", str(root), "--quiet")
    assert other.returncode == 0, other.stderr
    report = memory.ingest([_photos(tmp_path / "c", 2, 200)])  # was: InternalError: Error finding id
    assert len(report.added) == 2 and memory.store.count() == 7
    memory.close()
    _all_searchable(root)


def test_two_cli_ingests_at_once_the_second_waits_then_adds_everything(tmp_path, checkpoint):
    root = tmp_path / "memory"
    created = _cli("memory", "ingest", str(_photos(tmp_path / "a", 3, 0)), "--root", str(root),
                   "--checkpoint", str(checkpoint), "--quiet")
    assert created.returncode == 0, created.stderr
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(_photos(tmp_path / "c", 6, 300))],
                              cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    second = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.Popen([*CLI, "memory", "ingest", str(_photos(tmp_path / "b", 5, 100)), "--root",
                                   str(root), "--quiet"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        waiting, stderr = threading.Event(), []

        def read_stderr() -> None:
            for line in second.stderr:
                stderr.append(line)
                if "waiting for it to finish" in line:
                    waiting.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        waiting.wait(timeout=120)  # a guard against a hang, not a timing check: asserted below
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=120) == 0 and "added 6" in holder.stdout.read()
        stdout = second.stdout.read()
        assert second.wait(timeout=300) == 0, "".join(stderr)
        reader.join(timeout=60)
    finally:
        for process in (holder, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert "added 5, duplicates 0, rejected 0" in stdout, "".join(stderr)
    assert any(f"{root} is being written by pid {holder.pid}" in line for line in stderr), stderr
    assert len(_confirmed(root)) == 14
    _all_searchable(root)


def test_a_writer_with_lock_timeout_0_refuses_with_a_clear_message(tmp_path, checkpoint):
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 2, 0)])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(_photos(tmp_path / "c", 1, 300))],
                              cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = _cli("memory", "ingest", str(_photos(tmp_path / "b", 2, 100)), "--root", str(root), "--quiet",
                    "--lock-timeout", "0")
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=300) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert busy.returncode == 3 and "Traceback" not in busy.stderr
    assert f"{root} is being written by pid {holder.pid}" in busy.stderr and "try again" in busy.stderr
    assert len(memory.search("a photo", k=10)) == 3  # the holder's memory; the refused ingest added none
    memory.close()


RAW_WRITER = """
import sys
import numpy as np
from mmai.memory.store import MemoryStore
store = MemoryStore(sys.argv[1])
vectors = np.random.default_rng(0).standard_normal((3, store.dim)).astype(np.float32)
store.add(["%x" % (0xabc0 + i) + "0" * 28 for i in range(3)], vectors,
          [{"timestamp": 1.7e9, "modality": "text"}] * 3, ["a note"] * 3, progress=False)
"""


def test_a_write_that_did_not_announce_itself_is_seen_after_chromas_error(tmp_path, checkpoint):
    """A writer that does not replace ROOT/.generation (Chroma written directly, or an older mmai):
    the stale client's error is caught once, Chroma reopened, and the search retried."""
    root = tmp_path / "memory"
    memory = PersonalMemory(root, checkpoint, progress=False)
    memory.ingest([_photos(tmp_path / "a", 3, 0)])
    assert len(memory.search("a photo", k=10)) == 3
    raw = subprocess.run([sys.executable, "-c", RAW_WRITER, str(root / "chroma")], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert raw.returncode == 0, raw.stderr
    hits = memory.search("a photo", k=10)
    assert len(hits) == 6 and {hit.id for hit in hits} >= {"%x" % (0xabc0 + i) + "0" * 28 for i in range(3)}
    problems = memory.check()  # written past the journal: not recoverable until recorded
    assert len(problems) == 1 and "3 memories in Chroma have no line in ingest.journal.jsonl" in problems[0]
    assert memory.rebuild()["journal_records_added"] == 3
    assert memory.check() == []
    memory.close()
