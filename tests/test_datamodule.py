"""CUBWebDataModule on 1 and 2 simulated ranks, and its handling of corrupt samples."""

import hashlib
import io
import json
import tarfile

import pytest
import torch

from cub_fixture import write_tiny_cub
from datamodules import CUBWebDataModule
from mmai.data.shards import ShardError, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    write_tiny_cub(root / "raw", images_per_class=5)  # train 10 images, val 5 (odd), test 5
    write_shards(root / "raw", root / "shards", samples_per_shard=5, progress=False)
    return root / "shards"


def _datamodule(shards, **kwargs):
    defaults = dict(batch_size=2, num_workers=0, image_size=32, shuffle_buffer=10)
    return CUBWebDataModule(str(shards), **{**defaults, **kwargs})


def _epoch(loader):
    return list(loader)


def test_train_batches_hold_one_caption_per_image_with_ids(shards):
    batches = _epoch(_datamodule(shards).train_dataloader())
    assert len(batches) == 10 // 2
    batch = batches[0]
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.uint8
    normalised = _datamodule(shards).on_after_batch_transfer(dict(batch), 0)["image"]
    assert normalised.dtype == torch.float32 and -3 < normalised.mean() < 3
    assert batch["input_ids"].shape[0] == 2 and torch.equal(batch["caption_owner"], torch.arange(2))
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert set(batch["class_id"].tolist()) <= {1, 2}
    assert not batch["is_pad"].any()


def test_eval_batches_hold_all_ten_captions(shards):
    batches = _epoch(_datamodule(shards).val_dataloader())
    ids = [i for b in batches for i in b["image_id"].tolist()]
    assert sorted(ids) == [11, 12, 13, 14, 15]
    for batch in batches:
        assert len(batch["captions"]) == 10 * len(batch["image_id"])
        assert torch.equal(batch["caption_owner"].bincount(), torch.full((len(batch["image_id"]),), 10))


def _two_ranks(shards, monkeypatch, **kwargs):
    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = _datamodule(shards, **kwargs)
        per_rank[rank] = (_epoch(data.train_dataloader()), _epoch(data.val_dataloader()))
    return per_rank


def test_two_ranks_get_equal_batch_counts_and_disjoint_samples(shards, monkeypatch):
    per_rank = _two_ranks(shards, monkeypatch)
    train0, train1 = per_rank[0][0], per_rank[1][0]
    assert len(train0) == len(train1) > 0
    ids = lambda batches: [i for b in batches for i in b["image_id"].tolist()]  # noqa: E731
    assert set(ids(train0)).isdisjoint(ids(train1))  # two equal shards: one per rank
    assert len(set(ids(train0))) == len(ids(train0)) == 4  # 10 // (2 x 2) = 2 batches of 2, no repeats
    val0, val1 = per_rank[0][1], per_rank[1][1]
    assert len(val0) == len(val1)  # 5 samples: rank 1 gets a padding row
    real = lambda batches: [i for b in batches for i, p in zip(b["image_id"].tolist(), b["is_pad"].tolist()) if not p]  # noqa: E731
    assert sorted(real(val0) + real(val1)) == [11, 12, 13, 14, 15]
    assert set(real(val0)).isdisjoint(real(val1))


def test_uneven_shards_still_give_every_rank_and_worker_the_same_batch_count(tmp_path, monkeypatch):
    write_tiny_cub(tmp_path / "raw", images_per_class=5)
    write_shards(tmp_path / "raw", tmp_path / "shards", samples_per_shard=2, progress=False)  # 5 train shards
    per_rank = _two_ranks(tmp_path / "shards", monkeypatch, num_workers=2, batch_size=1)
    (train0, val0), (train1, val1) = per_rank[0], per_rank[1]
    # 10 images // (batch 1 x 2 ranks) = 5 batches per rank, ceil(5 / 2 workers) = 3 per worker
    assert len(train0) == len(train1) == 6
    assert len(val0) == len(val1) == 3


def test_too_few_shards_for_ranks_and_workers_is_a_clear_error(shards):
    with pytest.raises(ValueError, match="resampled"):
        _datamodule(shards, num_workers=3).train_dataloader()
    assert len(_epoch(_datamodule(shards, num_workers=0, resampled=True).train_dataloader())) == 5


def test_corrupt_sample_is_skipped_counted_and_eval_stays_aligned(shards, tmp_path, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in shards.iterdir():
        if path.name.startswith("val-"):
            with tarfile.open(path) as src, tarfile.open(broken / path.name, "w") as dst:
                for member in src.getmembers():
                    data = src.extractfile(member).read()
                    if member.name == "000012.jpg":
                        data = b"\xff\xd8garbage"
                    member.size = len(data)
                    dst.addfile(member, io.BytesIO(data))
        else:
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ShardError, match=r"shard .*val-0000\d\.tar .*rewrite the shards"):
        _datamodule(broken).val_dataloader()  # the manifest's sizes and sha256s no longer match: refused
    manifest = json.loads((broken / "manifest.json").read_text())
    for shard in manifest["splits"]["val"]["shards"]:  # as if the bad bytes had been written with the shard
        data = (broken / shard["file"]).read_bytes()
        shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    data = _datamodule(broken)
    batches = _epoch(data.val_dataloader())
    assert data.corrupt_samples == 1
    assert "corrupt sample" in caplog.text
    kept = [i for b in batches for i, p in zip(b["image_id"].tolist(), b["is_pad"].tolist()) if not p]
    assert sorted(kept) == [11, 13, 14, 15]
    assert sum(len(b["image_id"]) for b in batches) == 5  # replaced by a padding row, not dropped


@pytest.mark.parametrize("images_per_class, samples_per_shard, batch_size, num_workers, ranks", [
    (6, 5, 2, 2, 1),   # 6 val rows over 2 workers of 3: each worker ends on a partial batch
    (6, 2, 4, 2, 1),   # one partial batch per worker, batch larger than a worker's rows
    (7, 3, 2, 2, 2),   # 7 rows over 2 ranks (one padded) and 2 workers each
    (7, 2, 3, 3, 2),   # 3 workers, one of them with a single row
    (5, 5, 64, 0, 1),  # the whole split in one batch, no workers
])
def test_every_eval_sample_is_scored_exactly_once(tmp_path, monkeypatch, images_per_class, samples_per_shard,
                                                  batch_size, num_workers, ranks):
    """Lightning takes exactly len(loader) batches: those must hold every manifest sample once."""
    write_tiny_cub(tmp_path / "raw", images_per_class=images_per_class)
    manifest = write_shards(tmp_path / "raw", tmp_path / "shards", samples_per_shard=samples_per_shard,
                            progress=False)
    scored, lengths = [], set()
    for rank in range(ranks):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(ranks))
        loader = _datamodule(tmp_path / "shards", batch_size=batch_size, num_workers=num_workers).val_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader)  # no batch beyond len(), none missing
        lengths.add(len(loader))
        scored += [i for b in batches for i, pad in zip(b["image_id"].tolist(), b["is_pad"].tolist()) if not pad]
    assert len(lengths) == 1  # every rank runs the same number of steps
    assert sorted(scored) == sorted(set(scored)) and len(scored) == manifest["splits"]["val"]["images"]
