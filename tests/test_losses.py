"""Multi-positive InfoNCE with hard negatives and momentum distillation (mmai.model.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmai.model.losses import hard_negative_log_weights, info_nce, momentum_soft_targets, positive_mask_from_ids

torch.set_num_threads(1)


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=-1)


def hand_info_nce(query, keys, positive, valid, temperature, beta):
    """The loss written out with loops over plain Python floats."""
    total = 0.0
    for i in range(len(query)):
        sim = [sum(a * b for a, b in zip(query[i], keys[j])) for j in range(len(keys))]
        positives = [j for j in range(len(keys)) if valid[j] and positive[i][j]]
        negatives = [j for j in range(len(keys)) if valid[j] and not positive[i][j]]
        mean_exp = sum(math.exp(beta * sim[j]) for j in negatives) / len(negatives)
        logits = {j: sim[j] / temperature for j in positives}
        for j in negatives:
            weight = math.exp(beta * sim[j]) / mean_exp
            logits[j] = sim[j] / temperature + math.log(weight)
        log_partition = math.log(sum(math.exp(value) for value in logits.values()))
        total += -sum((logits[j] - log_partition) / len(positives) for j in positives)
    return total / len(query)


def test_info_nce_matches_hand_computation():
    query, keys = unit(3, 4, seed=0), unit(6, 4, seed=1)
    positive = [[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1]]
    valid = [1, 1, 1, 1, 1, 0]  # the last key is an empty queue slot (and query 2's positive)
    expected = hand_info_nce(query.tolist(), keys.tolist(), positive, valid, temperature=0.1, beta=0.7)
    loss = info_nce(query, keys, torch.tensor(positive, dtype=torch.bool), temperature=0.1,
                    hard_negative_beta=0.7, valid_mask=torch.tensor(valid, dtype=torch.bool))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_beta_zero_is_plain_info_nce():
    query, keys = unit(5, 8, seed=2), unit(5, 8, seed=3)
    plain = F.cross_entropy(query @ keys.T / 0.07, torch.arange(5))
    loss = info_nce(query, keys, torch.eye(5, dtype=torch.bool), temperature=0.07, hard_negative_beta=0.0)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def one_query_case(hard_similarity: float):
    """A query with one positive (sim 0.5), one hard negative, and three easy ones (sim 0)."""
    query = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    keys = torch.zeros(5, 5)
    keys[0, 0], keys[0, 1] = 0.5, math.sqrt(0.75)  # positive
    keys[1, 0], keys[1, 2] = hard_similarity, math.sqrt(1 - hard_similarity**2)  # hard negative
    keys[2:, 2:] = torch.eye(3)  # easy negatives, orthogonal to the query
    positive = torch.zeros(1, 5, dtype=torch.bool)
    positive[0, 0] = True
    return query, keys.requires_grad_(True), positive


def test_hard_negative_weighting_up_weights_the_hardest_negative():
    losses, hard_grads, easy_grads = {}, {}, {}
    for beta in (0.0, 5.0):
        query, keys, positive = one_query_case(hard_similarity=0.6)
        loss = info_nce(query, keys, positive, temperature=0.1, hard_negative_beta=beta)
        loss.backward()
        losses[beta] = loss.item()
        similarity_grad = keys.grad @ query[0]  # d loss / d s_j (keys move along the query)
        hard_grads[beta], easy_grads[beta] = similarity_grad[1].item(), similarity_grad[2].item()
    assert losses[5.0] > losses[0.0]
    assert hard_grads[5.0] / easy_grads[5.0] > hard_grads[0.0] / easy_grads[0.0] * 10
    weights = hard_negative_log_weights(torch.tensor([[0.5, 0.6, 0.0, 0.0, 0.0]]),
                                        torch.tensor([[False, True, True, True, True]]), beta=5.0).exp()
    assert weights[0, 1:].mean().item() == pytest.approx(1.0, rel=1e-6)
    assert weights[0, 1] > weights[0, 2]


def test_loss_grows_when_the_hard_negative_gets_harder_and_faster_with_beta():
    def loss_at(hard_similarity, beta):
        query, keys, positive = one_query_case(hard_similarity)
        return info_nce(query, keys.detach(), positive, temperature=0.1, hard_negative_beta=beta).item()

    for beta in (0.0, 5.0):
        assert loss_at(0.3, beta) < loss_at(0.6, beta) < loss_at(0.9, beta)
    assert loss_at(0.9, 5.0) - loss_at(0.3, 5.0) > loss_at(0.9, 0.0) - loss_at(0.3, 0.0)


def test_captions_of_the_same_image_are_positives_not_negatives():
    caption_ids = torch.tensor([7] * 10 + [1, 2, 3, 4, 5])  # ten captions of image 7, five others
    positive = positive_mask_from_ids(torch.tensor([7]), caption_ids)
    assert positive.sum().item() == 10 and positive[0, :10].all()
    caption_to_caption = positive_mask_from_ids(caption_ids[:10], caption_ids)
    assert caption_to_caption[:, :10].all() and not caption_to_caption[:, 10:].any()

    query = torch.eye(16)[:1]  # the image, (1, 16)
    others = torch.eye(16)[1:6]  # five captions of other images, orthogonal to the query
    all_aligned = torch.cat([query.expand(10, -1), others])  # its ten captions all match it
    own_only = torch.cat([query, torch.eye(16)[6:15], others])  # only one of them matches
    only_first = torch.zeros_like(positive)
    only_first[0, 0] = True

    def loss(keys, mask):
        return info_nce(query, keys, mask, temperature=0.1, hard_negative_beta=2.0).item()

    # Ids as positives: matching all ten captions is the best outcome ...
    assert loss(all_aligned, positive) < loss(own_only, positive)
    # ... whereas with one positive per query the other nine would be penalised as hard negatives.
    assert loss(all_aligned, only_first) > loss(own_only, only_first)


def test_class_positives_add_same_species_keys_and_never_empty_slots():
    query_image, query_class = torch.tensor([1, 2]), torch.tensor([10, 20])
    key_image, key_class = torch.tensor([1, 3, 4, -1]), torch.tensor([10, 10, 20, -1])
    by_image = positive_mask_from_ids(query_image, key_image, query_class, key_class)
    by_class = positive_mask_from_ids(query_image, key_image, query_class, key_class, class_positives=True)
    assert by_image.tolist() == [[True, False, False, False], [False, False, False, False]]
    assert by_class.tolist() == [[True, True, False, False], [False, False, True, False]]
    never = positive_mask_from_ids(torch.tensor([-1]), torch.tensor([-1]))
    assert not never.any()


def test_invalid_keys_do_not_change_the_loss():
    query, keys = unit(4, 8, seed=6), unit(4, 8, seed=7)
    positive = torch.eye(4, dtype=torch.bool)
    reference = info_nce(query, keys, positive, temperature=0.05, hard_negative_beta=1.0)
    padded_keys = torch.cat([keys, unit(3, 8, seed=8)])
    padded_positive = torch.cat([positive, torch.ones(4, 3, dtype=torch.bool)], dim=1)  # even "positive"
    valid = torch.tensor([True] * 4 + [False] * 3)
    padded = info_nce(query, padded_keys, padded_positive, temperature=0.05, hard_negative_beta=1.0, valid_mask=valid)
    assert padded.item() == pytest.approx(reference.item(), rel=1e-6)


def test_distillation_mixes_momentum_soft_targets():
    query, keys = unit(3, 8, seed=9), unit(5, 8, seed=10)
    positive = torch.zeros(3, 5, dtype=torch.bool)
    positive[0, 0] = positive[1, 1] = positive[2, 2] = positive[2, 3] = True
    valid = torch.tensor([True, True, True, True, False])
    soft = momentum_soft_targets(unit(3, 8, seed=11), keys, temperature=0.1, valid_mask=valid)
    assert torch.allclose(soft.sum(dim=1), torch.ones(3)) and (soft[:, 4] == 0).all()
    hard_loss = info_nce(query, keys, positive, 0.1, valid_mask=valid)
    log_prob = F.log_softmax((query @ keys.T / 0.1)[:, :4], dim=1)  # over the four valid keys
    soft_only = -(soft[:, :4] * log_prob).sum(dim=1).mean()
    mixed = info_nce(query, keys, positive, 0.1, valid_mask=valid, soft_targets=soft, alpha=0.4)
    assert mixed.item() == pytest.approx(0.4 * soft_only.item() + 0.6 * hard_loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="soft_targets"):
        info_nce(query, keys, positive, 0.1, alpha=0.4)


def test_query_without_a_positive_is_a_clear_error():
    query, keys = unit(2, 4, seed=12), unit(3, 4, seed=13)
    positive = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"queries \[1\] have no valid positive"):
        info_nce(query, keys, positive, temperature=0.1)
