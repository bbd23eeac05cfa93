"""Write-time decisions: ADD / MERGE / DISCARD by burst, in the rule and through a real ingest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmai.memory.write_policy import ADD, DISCARD, MERGE, WritePolicy, decide
from mmai_apps.memory_cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_reranker_ckpt  # noqa: E402


def _unit(rows):
    rows = np.asarray(rows, np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _near(base: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from unit ``base``."""
    other = np.random.default_rng(1000 + seed).normal(size=base.shape)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def test_the_rule_on_a_hand_made_day():
    a = _unit(np.random.default_rng(0).normal(size=(1, 16)))[0]
    rows = {  # id: (vector, time, place)
        "frame1": (a, 100.0, "lake"),
        "frame2": (_near(a, 0.95, 1), 105.0, "lake"),     # burst-mate: merge into frame1
        "copy": (_near(a, 0.999, 2), 101.0, "lake"),      # adds nothing: discard onto frame1
        "far": (_near(a, 0.95, 3), 400.0, "lake"),        # 300 s later: another burst, added
        "there": (_near(a, 0.95, 4), 102.0, "forest"),    # another place: added
        "unknown": (_near(a, 0.999, 5), np.nan, "lake"),  # unknown time: no burst, added
        "other": (_near(a, 0.5, 6), 103.0, "lake"),       # a different bird in the burst: added
    }
    names = list(rows)
    new = {"ids": names, "vectors": np.stack([rows[n][0] for n in names]),
           "timestamps": [rows[n][1] for n in names], "places": [rows[n][2] for n in names],
           "modalities": ["image"] * len(names)}
    got = {name: (d.action, d.target) for name, d in zip(names, decide(WritePolicy(), new))}
    assert got == {"frame1": (ADD, None), "frame2": (MERGE, "frame1"), "copy": (DISCARD, "frame1"),
                   "far": (ADD, None), "there": (ADD, None), "unknown": (ADD, None), "other": (ADD, None)}


def test_merges_go_into_kept_memories_and_stored_ones_count():
    a = _unit(np.random.default_rng(1).normal(size=(1, 16)))[0]
    b = _near(a, 0.93, 1)  # merges into a
    c = _near(b, 0.97, 2)  # close to b (merged, not kept), and its cosine to a decides
    cos_ac = float(a @ c)
    stored = {"ids": ["old"], "vectors": a[None], "timestamps": [50.0], "places": ["lake"], "modalities": ["image"]}
    new = {"ids": ["b", "c", "song"], "vectors": np.stack([b, c, a]), "timestamps": [60.0, 70.0, 55.0],
           "places": ["lake"] * 3, "modalities": ["image", "image", "audio"]}
    decisions = decide(WritePolicy(merge_threshold=0.9), new, stored)
    assert [(d.action, d.target) for d in decisions[:1]] == [(MERGE, "old")]
    assert decisions[1].target in (None, "old") and decisions[1].action == (MERGE if cos_ac >= 0.9 else ADD)
    assert decisions[2].action == ADD  # another modality is never merged into a photo


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match="discard_threshold 0.8 must be >= merge_threshold 0.9"):
        WritePolicy(discard_threshold=0.8)
    with pytest.raises(ValueError, match=r"thresholds must be in \(0, 1\]"):
        WritePolicy(merge_threshold=1.5)
    with pytest.raises(ValueError, match="burst_s must be >= 0"):
        WritePolicy(burst_s=-1)


# ---------------------------------------------------------------------- through a real ingest
@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    from mmai.inference import load_stage1

    return load_stage1(make_reranker_ckpt(tmp_path_factory.mktemp("ckpt")))


def _burst(folder: Path) -> dict[str, Path]:
    """A burst at the lake (a frame, a one-pixel copy, a noisier frame) and another bird."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    copy = base.copy()
    copy[0, 0] = 255 - copy[0, 0]
    noisy = np.clip(base.astype(int) + rng.integers(-60, 60, base.shape), 0, 255).astype(np.uint8)
    files = {"frame": base, "copy": copy, "noisy": noisy,
             "other": np.random.default_rng(99).integers(0, 255, (64, 64, 3), dtype=np.uint8)}
    paths = {}
    for n, (name, pixels) in enumerate(files.items()):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
        paths[name].with_name(f"{name}.png.json").write_text(
            json.dumps({"time": f"2023-05-01T10:00:0{n}Z", "place": "Powai Lake"}))
    return paths


def test_ingest_merges_and_discards_a_burst_and_undo_brings_the_merged_frame_back(tmp_path, stage1):
    from mmai.memory.personal import PersonalMemory

    paths = _burst(tmp_path / "photos")
    vectors = stage1.embed_images([Image.open(paths[n]).convert("RGB") for n in ("frame", "copy", "noisy", "other")])
    vectors = vectors.detach().numpy() if hasattr(vectors, "detach") else np.asarray(vectors)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos_copy, cos_noisy, cos_other = (float(vectors[0] @ vectors[i]) for i in (1, 2, 3))
    assert cos_copy > cos_noisy > cos_other, "fixture: the copy is closer than the noisy frame, the other bird least"
    policy = WritePolicy(merge_threshold=(cos_noisy + cos_other) / 2, discard_threshold=(cos_copy + cos_noisy) / 2)

    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    report = memory.ingest([tmp_path / "photos"], policy=policy)
    frame = memory.sync.resolve_id(report.added[0][:12])
    assert len(report.added) == 2 and not report.rejected
    assert [(p.name, t) for p, t in report.merged] == [("noisy.png", frame)]
    assert [(p.name, t) for p, t in report.discarded] == [("copy.png", frame)]
    assert "merged 1, discarded 1" in report.summary()
    assert memory.store.count() == len(memory.index) == 2 and memory.check() == []
    sources = memory.get(frame).metadata["sources"]
    assert sorted(Path(s["path"]).name for s in sources) == ["copy.png", "frame.png", "noisy.png"]
    noisy_source = next(s for s in sources if s["path"].endswith("noisy.png"))
    assert (memory.media_dir / noisy_source["media_file"]).is_file()  # its media copy is kept
    assert all(p.is_file() for p in paths.values())  # nothing of the user's is touched

    again = memory.ingest([tmp_path / "photos"], policy=policy)  # idempotent: nothing new, no new sources
    assert not again.added and not again.merged and len(again.duplicates) == 3
    assert len(memory.get(frame).metadata["sources"]) == 3

    undo = memory.undo_consolidate()  # the write-time merge is undone like a consolidate
    assert undo["restored"] == 1 and memory.store.count() == 3 and memory.check() == []
    back = memory.store.get([i for i in memory._chroma_ids() if i not in report.added], include_embeddings=True)
    np.testing.assert_allclose(back.embeddings[0], vectors[2], atol=1e-5)  # its own embedding
    assert Path(back.metadatas[0]["source_path"]).name == "noisy.png"
    assert len(memory.get(frame).metadata["sources"]) == 2  # the keeper as before the merge: frame + copy
    memory.close()


def test_keep_all_is_the_default_and_thresholds_need_the_merge_policy(tmp_path, stage1, capsys):
    from mmai.memory.personal import PersonalMemory

    _burst(tmp_path / "photos")
    memory = PersonalMemory(tmp_path / "memory", encoder=stage1, progress=False)
    assert len(memory.ingest([tmp_path / "photos"]).added) == 4
    memory.close()
    root = ["--root", str(tmp_path / "memory"), "--quiet"]
    assert main(["ingest", str(tmp_path / "photos"), "--merge-threshold", "0.5", *root]) == 2
    err = capsys.readouterr().err
    assert "--merge-threshold apply to --policy merge only" in err and "Traceback" not in err
    assert main(["ingest", str(tmp_path / "photos"), "--policy", "merge", "--discard-threshold", "0.5", *root]) == 2
    err = capsys.readouterr().err
    assert "discard_threshold 0.5 must be >= merge_threshold 0.9" in err and "Traceback" not in err
