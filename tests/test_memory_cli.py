"""`mmai memory ...` (mmai_apps.memory_cli.main): the commands end to end, and a real SIGKILL mid-ingest."""

from __future__ import annotations

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
from mmai.memory.personal import PersonalMemory, int_id

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_reranker_ckpt  # noqa: E402

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_reranker_ckpt(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmai.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "cub"
    synthesize(root, classes=4, images=16, image_size=64, audio=True, workers=1, progress=False)
    return root


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_ingest_search_related_forget_stats_from_the_command_line(tmp_path, checkpoint, synth, capsys):
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", "--from-synthetic", str(synth), "--checkpoint", str(checkpoint), *root]) == 0
    out, err = capsys.readouterr()
    assert "added 16, duplicates 0, rejected 0" in out and "songs skipped: checkpoint has no audio tower" in err
    assert main(["ingest", "--from-synthetic", str(synth), *root]) == 0  # checkpoint remembered
    assert "added 0, duplicates 16, rejected 0" in capsys.readouterr().out

    diary = [json.loads(line) for line in (synth / "mmai_extras" / "episodes.jsonl").read_text().splitlines()]
    year = int(diary[0]["timestamp"][:4])
    assert main(["search", "a bird with a red bill", "-k", "50", "--year", str(year), "--json", *root]) == 0
    hits = _json_lines(capsys.readouterr().out)
    assert len(hits) == sum(int(e["timestamp"][:4]) == year for e in diary)
    assert {h["metadata"]["year"] for h in hits} == {year}
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert all(h["metadata"]["time_source"] == "synthetic diary" for h in hits)

    city = diary[0]["place"].split(", ")[1]
    panels = tmp_path / "panels"
    assert main(["search", "a bird", "-k", "3", "--place", city, "--modality", "image", "--rerank", "--gar",
                 "--explain", str(panels), *root]) == 0
    text = capsys.readouterr().out
    assert " 1. " in text and "logit" in text and "why: direct hit" in text and "saliency:" in text
    assert city in text and len(list(panels.glob("*.png"))) >= 1
    assert main(["search", "a bird", "--place", "Atlantis", *root]) == 0
    assert "no memories match (stored places:" in capsys.readouterr().out

    first = hits[0]["id"]
    assert main(["related", first[:10], *root]) == 0
    lines = capsys.readouterr().out.splitlines()
    with PersonalMemory(tmp_path / "memory", progress=False) as memory:
        expected = memory.related(first)
    assert [line.split()[1] for line in lines] == [r.id[:12] for r in expected]
    assert all("same outing" in line or "similar content" in line for line in lines)
    assert main(["forget", "--year", str(year), *root]) == 0
    assert f"would forget {len(hits)} memories" in capsys.readouterr().out
    assert main(["forget", "--year", str(year), "--yes", *root]) == 0
    assert f"forgot {len(hits)} memories; {16 - len(hits)} remain" in capsys.readouterr().out
    assert main(["stats", *root]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["memories"] == 16 - len(hits) and str(year) not in stats["by_year"]
    assert main(["check", *root]) == 0 and "consistent" in capsys.readouterr().out
    assert main(["consolidate", "--threshold", "0.9999", "--yes", *root]) == 0
    assert "merged 0" in capsys.readouterr().out
    assert main(["rebuild", *root]) == 0
    assert json.loads(capsys.readouterr().out).items() >= {"memories": 16 - len(hits), "orphans_removed": 0,
                                                           "media_restored": 0, "restored_from_journal": 0}.items()


def test_errors_exit_2_with_a_message_that_says_what_to_fix(tmp_path, checkpoint, capsys):
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    _photos(tmp_path / "p", 1)
    assert main(["ingest", str(tmp_path / "p"), *root]) == 2
    assert "no checkpoint yet: pass checkpoint=... (--checkpoint PATH)" in capsys.readouterr().err
    meta = tmp_path / "meta.csv"
    meta.write_text("file,time,place\n0000.png,not a time,Mumbai\n")
    assert main(["ingest", str(tmp_path / "p"), "--meta", str(meta), "--checkpoint", str(checkpoint), *root]) == 2
    err = capsys.readouterr().err
    assert "meta.csv line 2 (0000.png): field 'time'" in err and "cannot read 'not a time'" in err
    assert main(["ingest", *root]) == 2 and "give files or folders" in capsys.readouterr().err
    assert main(["forget", *root]) == 2 and "give ids or a filter" in capsys.readouterr().err
    assert main(["related", "0123456789", *root]) == 2 and "is not a stored memory" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["search", "a bird"], ["related", "0123456789"], ["stats"], ["check"],
                                     ["forget", "--year", "2023", "--yes"], ["rebuild"], ["consolidate"]])
def test_reading_a_root_without_a_store_is_an_error_naming_it(tmp_path, command, capsys):
    typo = tmp_path / "mem_typo"
    assert main([*command, "--root", str(typo), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{typo} holds no memory store" in err and "mmai memory ingest" in err and "Traceback" not in err
    assert not typo.exists()  # nothing was created at the mistyped root


def test_serve_refuses_a_root_without_a_store(tmp_path, capsys):
    from mmai_apps.serve import main as serve_main

    assert serve_main(["--root", str(tmp_path / "mem_typo")]) == 2
    assert f"{tmp_path / 'mem_typo'} holds no memory store" in capsys.readouterr().err
    assert not (tmp_path / "mem_typo").exists()


def test_an_emptied_store_is_still_a_store(tmp_path, checkpoint, capsys):
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(_photos(tmp_path / "p", 1)), "--checkpoint", str(checkpoint), *root]) == 0
    assert main(["forget", "--modality", "image", "--yes", *root]) == 0
    capsys.readouterr()
    assert main(["search", "a bird", *root]) == 0 and "no memories match" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_faiss_file_is_reported_and_rebuilt_from_chroma(tmp_path, checkpoint, damage, capsys):
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(_photos(tmp_path / "p", 3)), "--checkpoint", str(checkpoint), *root]) == 0
    index = tmp_path / "memory" / "index.npz"
    data = index.read_bytes()
    capsys.readouterr()
    for command in (["check"], ["search", "a photo", "--json"], ["rebuild"]):
        index.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00x" * 50, "empty": b""}[damage])
        assert main([*command, *root]) == 0, command
        out, err = capsys.readouterr()
        assert "FAISS index rebuilt from Chroma" in err and "index.npz damaged" in err, (command, err)
        if command == ["check"]:
            assert "consistent" in out
        if command[0] == "search":
            assert len(_json_lines(out)) == 3
    with PersonalMemory(tmp_path / "memory", progress=False) as memory:
        assert memory.repaired == "in sync" and memory.check() == []


def test_ingest_skips_links_that_leave_the_given_folders_and_says_so(tmp_path, checkpoint, capsys):
    folder = _photos(tmp_path / "photos", 2)
    secret = tmp_path / "elsewhere" / "passwd.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    outside = _photos(tmp_path / "outside", 1)  # 0000.png again: same bytes, so use another picture
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(outside / "0000.png")
    (folder / "passwd.txt").symlink_to(secret)
    (folder / "album").symlink_to(outside, target_is_directory=True)
    (folder / "again.png").symlink_to(folder / "0001.png")  # inside the folder: followed (a duplicate)
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(folder), "--checkpoint", str(checkpoint), *root]) == 0
    out = capsys.readouterr().out
    assert "added 2, duplicates 1, rejected 0" in out
    assert f"skipped: {folder / 'passwd.txt'}: a link to {secret}, outside the given folders" in out
    assert f"skipped: {folder / 'album'}: a link to {outside}" in out and "--follow-links" in out
    with PersonalMemory(tmp_path / "memory", progress=False) as memory:
        stored = memory.store.collection.get(include=["documents", "metadatas"])
        assert not any("root:x" in (document or "") for document in stored["documents"])
        assert all(str(tmp_path / "elsewhere") not in json.dumps(m) for m in stored["metadatas"])
    assert main(["ingest", str(folder), "--follow-links", *root]) == 0
    assert "added 2, duplicates 3, rejected 0" in capsys.readouterr().out  # the note and the album photo


def test_check_reports_a_missing_media_copy_and_rebuild_copies_it_again(tmp_path, checkpoint, capsys):
    photos = _photos(tmp_path / "p", 2)
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(photos), "--checkpoint", str(checkpoint), *root]) == 0
    copies = sorted((tmp_path / "memory" / "media").iterdir())
    kept = copies[0].read_bytes()
    copies[0].unlink()
    capsys.readouterr()
    assert main(["check", *root]) == 1
    out = capsys.readouterr().out
    assert f"media copy {copies[0]} is missing; run `mmai memory rebuild`" in out and "consistent" not in out
    assert main(["rebuild", *root]) == 0 and json.loads(capsys.readouterr().out)["media_restored"] == 1
    assert copies[0].read_bytes() == kept
    assert main(["check", *root]) == 0 and "consistent" in capsys.readouterr().out
    copies[0].unlink()
    for original in photos.iterdir():  # the originals no longer have the memories' bytes
        original.write_bytes(b"changed")
    assert main(["check", *root]) == 1
    assert "is missing and its source" in capsys.readouterr().out
    assert main(["rebuild", *root]) == 0 and json.loads(capsys.readouterr().out)["media_restored"] == 0


def test_forgetting_an_unknown_id_is_an_error_naming_it(tmp_path, checkpoint, capsys):
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(_photos(tmp_path / "p", 2)), "--checkpoint", str(checkpoint), *root]) == 0
    with PersonalMemory(tmp_path / "memory", progress=False) as memory:
        known = memory._chroma_ids()[0]
    for extra in ([], ["--yes"]):
        capsys.readouterr()
        assert main(["forget", known[:12], "deadbeef00", *extra, *root]) == 2
        err = capsys.readouterr().err
        assert "id 'deadbeef00' is not a stored memory" in err and "Traceback" not in err
    assert main(["stats", *root]) == 0 and json.loads(capsys.readouterr().out)["memories"] == 2  # nothing went
    assert main(["forget", known[:12], "--yes", *root]) == 0 and "forgot 1 memories" in capsys.readouterr().out


def test_a_garbage_checkpoint_is_not_a_checkpoint_and_a_new_store_does_not_record_it(tmp_path, checkpoint, capsys):
    garbage = tmp_path / "model.ckpt"
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    photos = _photos(tmp_path / "p", 1)
    for junk in (b"these are not weights\n" * 10, b"junk", b""):  # UnpicklingError, struct.error, EOFError
        garbage.write_bytes(junk)
        assert main(["ingest", str(photos), "--checkpoint", str(garbage), *root]) == 2
        err = capsys.readouterr().err
        assert f"--checkpoint '{garbage}' is not a checkpoint" in err and "weights_only" not in err, err
        assert not (tmp_path / "memory").exists()  # checked before a new store is made
    assert main(["ingest", str(photos), *root]) == 2 and "no checkpoint yet" in capsys.readouterr().err
    assert main(["ingest", str(photos), "--checkpoint", str(checkpoint), *root]) == 0
    config = tmp_path / "memory" / "config.json"
    recorded = config.read_text()
    assert main(["search", "a photo", "--checkpoint", str(garbage), *root]) == 2  # an existing store
    assert "is not a checkpoint" in capsys.readouterr().err and config.read_text() == recorded


def _confirmed(journal: Path) -> list[str]:
    ids = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            ids += json.loads(line)["confirmed"]
        except json.JSONDecodeError:
            continue  # a line cut by the kill was never confirmed
    return ids


def test_sigkill_mid_ingest_keeps_every_confirmed_memory_searchable(tmp_path, checkpoint):
    photos = _photos(tmp_path / "photos", 240)
    root = tmp_path / "memory"
    command = [sys.executable, "-m", "mmai_apps.memory_cli", "ingest", str(photos), "--root", str(root),
               "--checkpoint", str(checkpoint), "--batch-size", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = root / "ingest.journal.jsonl"
    deadline = time.time() + 120
    try:
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 20):
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline, "ingest confirmed nothing within 120 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    confirmed = _confirmed(journal)
    assert 40 <= len(confirmed) < 240, "the kill must land mid-ingest"

    memory = PersonalMemory(root, progress=False)
    # the kill may land inside a batch: after its media copies (check names a copy of no memory) or
    # after its Chroma write and before its journal line (check names memories with no line); check
    # names nothing else, and the resumed ingest below confirms that batch and adopts its copies
    problems = memory.check()
    assert all("belong to no memory" in problem or "have no line in" in problem for problem in problems), problems
    assert set(confirmed) <= set(memory._chroma_ids())
    found = {hit.id for hit in memory.search("a photo", k=memory.store.count())}
    assert set(confirmed) <= found
    for memory_id in confirmed:  # each one is its own nearest neighbour in the repaired index
        vector = memory.index.reconstruct([int_id(memory_id)])
        assert memory.index.search(vector, 1)[1][0, 0] == int_id(memory_id)
        assert memory.media_path(memory_id) is not None

    report = memory.ingest([photos])  # resuming adds exactly the rest
    assert len(report.added) + len(report.duplicates) == 240 and not report.rejected
    assert memory.store.count() == 240 and memory.check() == []


# ---------------------------------------------------------------------- re-rank settings from the checkpoint
def _validated_reranker(folder: Path, rerank_k: int, stage1_weight: float) -> Path:
    """A tiny re-ranker checkpoint saved after a validation epoch whose retrieval callback ran with
    ``rerank_k`` and ``stage1_weight`` (the callback's real epoch-end path; the two-stage ranking
    itself is stage 1's, no fusion forward)."""
    from types import SimpleNamespace

    from callbacks import RetrievalEvalCallback
    from lightning_glue.eval_set import EvalSet
    from mmai.retrieval.two_stage import TwoStageResult, stage1_topk
    from tiny_checkpoints import make_reranker_module, save_module_checkpoint

    module = make_reranker_module(folder)
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(30, 16, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(30, 16, generator=generator), dim=1)
    ids = torch.arange(1, 31)
    data = EvalSet(images, ids, ids % 3, torch.arange(30.0) * 600, torch.zeros(30), torch.zeros(30), ["lake"] * 30,
                   texts, ids, ids % 3, ["c"] * 30)
    used = {}

    def two_stage(data, k, mode, stage1_weight, length, also_modes):
        used.update(k=k, stage1_weight=stage1_weight)
        positions, scores = stage1_topk(data.text_embeddings, data.image_embeddings, length)
        return TwoStageResult({}, {}, {"t2i": positions}, {"t2i": positions}, {"stage1": 0.1, "stage2": 0.1}, k,
                              mode, stage1_weight, scores={"t2i": scores}, mode_metrics={"match": {}})

    module.eval_set, module.two_stage, module.log_dict = (lambda: data), two_stage, (lambda metrics, **options: None)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=2, global_step=40,
                              default_root_dir=str(folder),  # the callback writes per_query.npz there
                              strategy=SimpleNamespace(broadcast=lambda value, src: value))
    callback = RetrievalEvalCallback(candidates=20, ks=(1, 5), index_kind="flat", rerank_k=rerank_k,
                                     stage1_weight=stage1_weight)
    callback.on_validation_epoch_end(trainer, module)
    assert used == {"k": rerank_k, "stage1_weight": stage1_weight}
    return save_module_checkpoint(module, Path(folder) / "validated.ckpt")


def test_search_rerank_uses_the_validated_k_and_lambda_unless_a_flag_overrides(tmp_path, capsys):
    from mmai.checkpoint import VALIDATED_WITH, rerank_settings

    checkpoint = _validated_reranker(tmp_path / "ckpt", rerank_k=7, stage1_weight=0.3)
    record = torch.load(checkpoint, weights_only=True)[VALIDATED_WITH]
    assert record == {"rerank_k": 7, "stage1_weight": 0.3, "epoch": 2, "step": 40}
    older = torch.load(make_reranker_ckpt(tmp_path / "older"), weights_only=True)  # saved before any validation
    assert VALIDATED_WITH not in older
    assert rerank_settings(older) == (16, 1.0, "the checkpoint's defaults: it records no validation")

    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(_photos(tmp_path / "p", 10)), "--checkpoint", str(checkpoint), *root]) == 0
    for flags, k, weight, said in (
            ([], 7, 0.3, "rerank_k 7, stage1_weight 0.3 (from the checkpoint's validation at epoch 2, step 40)"),
            (["--rerank-k", "3"], 3, 0.3, "rerank_k 3 (from --rerank-k), stage1_weight 0.3 (from the checkpoint's "
                                          "validation at epoch 2, step 40)"),
            (["--rerank-k", "4", "--stage1-weight", "2.5"], 4, 2.5,
             "rerank_k 4 (from --rerank-k), stage1_weight 2.5 (from --stage1-weight)")):
        capsys.readouterr()
        assert main(["search", "a photo", "-k", "10", "--rerank", "--json", *flags, *root]) == 0
        out, err = capsys.readouterr()
        assert f"re-rank: {said}" in err, err
        hits = _json_lines(out)
        assert len(hits) == 10 and all(hit["match_logit"] is not None for hit in hits[:k])
        assert all(hit["match_logit"] is None for hit in hits[k:])  # only the first k were re-scored
        for hit in hits[:k]:
            assert hit["score"] == pytest.approx(hit["match_logit"] + weight * hit["stage1_score"], abs=1e-6)
    assert main(["search", "a photo", "-k", "2", "--rerank", *root]) == 0
    assert capsys.readouterr().out.startswith("re-rank: rerank_k 7, stage1_weight 0.3 (from the checkpoint's")


def test_search_top_down_scores_part_of_the_memory_and_is_exact_at_mass_one(tmp_path, checkpoint, capsys):
    from mmai.memory.search import SearchOptions

    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(_photos(tmp_path / "photos", 40)), "--checkpoint", str(checkpoint), *root]) == 0
    capsys.readouterr()
    assert main(["search", "a bird", "-k", "5", "--json", *root]) == 0
    flat = [h["id"] for h in _json_lines(capsys.readouterr().out)]
    assert main(["search", "a bird", "-k", "5", "--json", "--top-down", "--top-down-mass", "1", *root]) == 0
    out, err = capsys.readouterr()
    assert [h["id"] for h in _json_lines(out)] == flat  # every branch kept: exact
    assert "top-down: scored 40 of 40 memories (100.0%)" in err
    assert main(["search", "a bird", "-k", "5", "--top-down", "--top-down-mass", "0.5",
                 "--top-down-entropy-stop", "2", *root]) == 0
    text = capsys.readouterr().out
    scored = int(text.split("top-down: scored ")[1].split(" of ")[0])
    assert 1 <= scored < 40 and "stopped at the schemas" in text and " 1. " in text
    assert main(["search", "a bird", "--top-down", "--top-down-mass", "0", *root]) == 2
    assert "top-down search: mass must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(["search", "a bird", "--top-down", "--year", "2020", *root]) == 2
    assert "top-down search does not combine with filters" in capsys.readouterr().err

    with PersonalMemory(tmp_path / "memory", progress=False) as memory:  # the library path
        graph = memory.graph()
        hits = memory.search("a bird", 40, options=SearchOptions(top_down=True, top_down_mass=0.5,
                                                                 top_down_entropy_stop=2.0))
        result = memory.searcher.last_top_down
        kept = np.isin(graph.schema_of, graph.schema_of[graph.positions([int_id(h.id) for h in hits])])
        assert len(hits) == result.memories_scored == int(kept.sum())  # the kept schemas' memories, ranked
        assert [h.stage1_score for h in hits] == sorted((h.stage1_score for h in hits), reverse=True)
        memory.search("a bird", 5)
        assert memory.searcher.last_top_down is None  # a flat search leaves no top-down result


def test_a_reader_that_closes_the_pipe_is_not_reported_as_a_store_error(tmp_path, checkpoint, capsys):
    # `mmai memory search ... | head -1`: the reader goes away before the hits are printed
    root = tmp_path / "memory"
    assert main(["ingest", str(_photos(tmp_path / "photos", 12)), "--root", str(root), "--checkpoint",
                 str(checkpoint), "--quiet"]) == 0
    capsys.readouterr()
    command = [sys.executable, "-m", "mmai_apps.memory_cli", "search", "a bird", "--root", str(root), "-k", "12"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # no reader left: every write of the hits fails with EPIPE
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()[-2000:]  # as a shell reports a command stopped by SIGPIPE
    assert b"error" not in err and b"Broken pipe" not in err and b"Exception ignored" not in err, err.decode()
    assert main(["check", "--root", str(root)]) == 0  # and nothing happened to the store
