"""Momentum queue and EMA twins (mmai.model.momentum, mmai.model.distributed)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmai.model import distributed
from mmai.model.momentum import MomentumQueue, copy_params, momentum_update

from ddp_helpers import run_on_two_cpu_ranks

torch.set_num_threads(1)


def keys_for(ids: torch.Tensor, embed_dim: int = 8) -> torch.Tensor:
    """Keys that encode their own id, so alignment with the id queue can be read back."""
    return ids.float()[:, None] * torch.ones(len(ids), embed_dim)  # (B, E)


def test_queue_wraps_around_and_keeps_ids():
    queue = MomentumQueue(embed_dim=8, queue_size=6, modalities=("image", "text"))
    for step in range(5):  # 5 batches of 2 into 6 slots: wraps after the third
        ids = torch.tensor([10 * step + 1, 10 * step + 2])
        queue.enqueue({"image": keys_for(ids), "text": -keys_for(ids)}, image_ids=ids, class_ids=ids + 1000)
    assert queue.ptr.item() == (5 * 2) % 6
    assert queue.image_id_queue.tolist() == [31, 32, 41, 42, 21, 22]  # oldest batch (step 2) left over
    assert torch.equal(queue.image_queue[:, 0].long(), queue.image_id_queue)
    assert torch.equal(-queue.text_queue[:, 0].long(), queue.image_id_queue)
    assert torch.equal(queue.class_id_queue, queue.image_id_queue + 1000)
    assert queue.valid_mask("image").all() and queue.valid_mask("text").all()


def test_queue_size_not_a_multiple_of_the_global_batch_is_a_clear_error():
    queue = MomentumQueue(embed_dim=4, queue_size=10, modalities=("image",))
    ids = torch.arange(4)
    with pytest.raises(ValueError, match=r"queue_size=10 is not a multiple of the global batch 4"):
        queue.enqueue({"image": torch.zeros(4, 4)}, ids, ids)


def test_fill_fraction_and_empty_slots():
    queue = MomentumQueue(embed_dim=4, queue_size=8, modalities=("image", "audio"))
    assert queue.fill_fraction() == 0.0
    assert (queue.image_id_queue == -1).all() and (queue.class_id_queue == -1).all()
    assert not queue.valid_mask("image").any()
    ids = torch.tensor([1, 2])
    keys = F.normalize(torch.randn(2, 4), dim=-1)
    queue.enqueue({"image": keys, "audio": keys}, ids, ids, valid={"audio": torch.tensor([True, False])})
    assert queue.fill_fraction() == pytest.approx(0.25)
    assert queue.valid_mask("image").tolist() == [True, True] + [False] * 6
    assert queue.valid_mask("audio").tolist() == [True, False] + [False] * 6
    assert (queue.audio_queue[1] == 0).all(), "a missing audio key must not be stored"
    for _ in range(5):
        queue.enqueue({"image": keys}, ids, ids)  # no audio at all: written as invalid
    assert queue.fill_fraction() == 1.0
    assert not queue.valid_mask("audio").any()


def test_queue_state_travels_in_the_state_dict():
    queue = MomentumQueue(embed_dim=4, queue_size=4, modalities=("image",))
    ids = torch.tensor([5, 6])
    queue.enqueue({"image": keys_for(ids, 4)}, ids, ids)
    restored = MomentumQueue(embed_dim=4, queue_size=4, modalities=("image",))
    restored.load_state_dict(queue.state_dict())
    assert restored.ptr.item() == 2 and restored.fill_fraction() == 0.5
    assert torch.equal(restored.image_queue, queue.image_queue)
    assert set(queue.state_dict()) == {"image_queue", "image_valid_queue", "image_id_queue", "class_id_queue",
                                       "ptr", "filled"}


def test_disabled_queue_stays_empty():
    queue = MomentumQueue(embed_dim=4, queue_size=0, modalities=("image",))
    queue.enqueue({"image": torch.zeros(3, 4)}, torch.arange(3), torch.arange(3))
    assert queue.fill_fraction() == 0.0 and queue.image_queue.shape == (0, 4)


def test_ema_update_is_exact_and_twins_are_frozen():
    online = nn.Linear(3, 2)
    twin = copy.deepcopy(online)
    copy_params([(online, twin)])
    assert all(not p.requires_grad for p in twin.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        online.weight.fill_(1.0)
        twin.weight.fill_(3.0)
    momentum_update([(online, twin)], momentum=0.75)  # dyadic numbers: exact in float32
    assert (twin.weight == 0.75 * 3.0 + 0.25 * 1.0).all()
    torch.manual_seed(0)
    with torch.no_grad():
        online.bias.normal_()
        twin.bias.normal_()
    expected = 0.995 * twin.bias.double() + 0.005 * online.bias.double()
    momentum_update([(online, twin)], momentum=0.995)
    torch.testing.assert_close(twin.bias.double(), expected, rtol=1e-6, atol=1e-7)
    momentum_update([(online, twin)], momentum=0.0)
    assert torch.equal(twin.bias, online.bias)


def test_momentum_update_refuses_mismatched_twins():
    with pytest.raises(ValueError, match="different parameters"):
        momentum_update([(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))])


def test_distributed_helpers_are_the_identity_without_a_process_group():
    tensor = torch.arange(6.0).reshape(3, 2).requires_grad_(True)
    assert not distributed.is_dist() and distributed.world_size() == 1 and distributed.rank() == 0
    assert torch.equal(distributed.all_gather_no_grad(tensor), tensor)
    assert not distributed.all_gather_no_grad(tensor).requires_grad


def _enqueue_and_gather(rank: int) -> dict:
    queue = MomentumQueue(embed_dim=4, queue_size=8, modalities=("image",))
    ids = torch.tensor([rank * 10 + 1, rank * 10 + 2])
    queue.enqueue({"image": keys_for(ids, 4)}, ids, ids, valid={"image": torch.tensor([True, rank == 0])})
    gathered = distributed.all_gather_no_grad(torch.full((2, 3), float(rank)))
    return {"queue": queue.state_dict(), "gathered": gathered}


@pytest.mark.slow
def test_enqueue_gathers_keys_from_every_rank(tmp_path):
    results = run_on_two_cpu_ranks(_enqueue_and_gather, tmp_path)
    for result in results:
        queue = result["queue"]
        assert queue["image_id_queue"].tolist() == [1, 2, 11, 12, -1, -1, -1, -1]
        assert queue["image_valid_queue"].tolist() == [True, True, True, False] + [False] * 4
        assert queue["ptr"].item() == 4
        assert result["gathered"][:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.equal(results[0]["queue"]["image_queue"], results[1]["queue"]["image_queue"])
