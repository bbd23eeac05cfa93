"""Hard-negative sampling (mmai.reranker.negatives): never the positive's image, softmax-distributed, seeded."""

from __future__ import annotations

import pytest
import torch

from mmai.reranker.negatives import (
    NEGATIVE_CAPTION,
    NEGATIVE_IMAGE,
    POSITIVE,
    build_match_batch,
    sample_hard_negatives,
)

torch.set_num_threads(1)


def batch_with_duplicates(seed: int):
    """6 image rows (image id 11 twice, id 13 twice), 2 captions per row, random similarities."""
    generator = torch.Generator().manual_seed(seed)
    image_ids = torch.tensor([11, 12, 11, 13, 14, 13])
    class_ids = torch.tensor([1, 1, 1, 2, 2, 2])
    caption_owner = torch.arange(6).repeat_interleave(2)  # (12,)
    similarity = torch.randn(12, 6, generator=generator) * 0.3  # (Bt, B)
    similarity[torch.arange(12), caption_owner] += 0.5  # the positive (and its duplicate row) look hardest
    similarity[torch.arange(12), torch.tensor([2, 2, 1, 1, 0, 0, 5, 5, 5, 5, 3, 3])] += 0.6
    return similarity, caption_owner, image_ids, class_ids


def test_negatives_never_have_the_positive_image_even_with_duplicate_rows():
    for seed in range(200):
        similarity, owner, image_ids, class_ids = batch_with_duplicates(seed)
        batch = build_match_batch(similarity, owner, image_ids, class_ids, num_negatives=2,
                                  temperature=0.05, generator=torch.Generator().manual_seed(seed))
        caption_image_ids = image_ids[owner]
        negatives = batch.kind != POSITIVE
        assert (caption_image_ids[batch.text_index[negatives]] != image_ids[batch.image_index[negatives]]).all()
        positives = batch.kind == POSITIVE
        assert (caption_image_ids[batch.text_index[positives]] == image_ids[batch.image_index[positives]]).all()


def test_sampling_is_deterministic_given_a_generator():
    similarity, owner, image_ids, _ = batch_with_duplicates(0)
    draw = lambda seed: sample_hard_negatives(similarity, image_ids[owner], image_ids, num_negatives=2,  # noqa: E731
                                              temperature=1.0, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(draw(5), draw(5))
    assert any(not torch.equal(draw(5), draw(seed)) for seed in range(6, 10))


def test_negatives_follow_the_softmax_of_similarity_over_other_images():
    similarity = torch.tensor([[0.9, 0.5, 0.8, 0.1, -0.3]]).repeat(40_000, 1)  # one query, drawn 40,000 times
    query_ids, candidate_ids = torch.full((40_000,), 7), torch.tensor([7, 3, 4, 5, 7])  # rows 0 and 4 are itself
    drawn = sample_hard_negatives(similarity, query_ids, candidate_ids, temperature=0.2,
                                  generator=torch.Generator().manual_seed(0))[:, 0]
    frequency = torch.bincount(drawn, minlength=5).float() / len(drawn)
    expected = torch.zeros(5)
    expected[1:4] = torch.softmax(torch.tensor([0.5, 0.8, 0.1]) / 0.2, dim=0)
    assert frequency[0] == 0 and frequency[4] == 0
    torch.testing.assert_close(frequency, expected, atol=0.01, rtol=0.0)


def test_same_class_weight_zero_never_draws_the_same_species():
    for seed in range(50):
        similarity, owner, image_ids, class_ids = batch_with_duplicates(seed)
        drawn = sample_hard_negatives(similarity, image_ids[owner], image_ids, num_negatives=3, temperature=0.1,
                                      query_class_ids=class_ids[owner], candidate_class_ids=class_ids,
                                      same_class_weight=0.0, generator=torch.Generator().manual_seed(seed))
        assert (class_ids[drawn] != class_ids[owner][:, None]).all()


def test_several_negatives_are_distinct_and_missing_ones_are_minus_one():
    similarity = torch.randn(3, 3)
    image_ids = torch.tensor([1, 2, 1])  # a caption of image 1 has one eligible candidate (row 1)
    drawn = sample_hard_negatives(similarity, image_ids, image_ids, num_negatives=4,
                                  generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 4)
    assert drawn[0].tolist() == [1, -1, -1, -1] and drawn[2].tolist() == [1, -1, -1, -1]
    assert sorted(drawn[1, :2].tolist()) == [0, 2] and drawn[1, 2:].tolist() == [-1, -1]


def test_match_batch_has_positives_then_negatives_in_both_directions():
    similarity, owner, image_ids, class_ids = batch_with_duplicates(3)
    batch = build_match_batch(similarity, owner, image_ids, class_ids, generator=torch.Generator().manual_seed(0))
    assert len(batch) == 12 + 12 + 6  # Bt positives, a negative image per caption, a negative caption per image
    assert batch.kind.tolist() == [POSITIVE] * 12 + [NEGATIVE_IMAGE] * 12 + [NEGATIVE_CAPTION] * 6
    assert batch.labels.tolist() == [1.0] * 12 + [0.0] * 18
    torch.testing.assert_close(batch.image_index[:12], owner)
    torch.testing.assert_close(batch.image_index[24:], torch.arange(6))
    text_tokens, mask, patches = torch.randn(12, 5, 8), torch.ones(12, 5), torch.randn(6, 9, 4)
    pair_text, pair_mask, pair_patches = batch.gather(text_tokens, mask, patches)
    assert pair_text.shape == (30, 5, 8) and pair_mask.shape == (30, 5) and pair_patches.shape == (30, 9, 4)
    torch.testing.assert_close(pair_patches[12], patches[batch.image_index[12]])


def test_a_batch_of_one_image_has_no_negatives_and_mismatched_ids_raise():
    batch = build_match_batch(torch.randn(2, 1), torch.zeros(2, dtype=torch.long), torch.tensor([5]))
    assert batch.kind.tolist() == [POSITIVE, POSITIVE]
    with pytest.raises(ValueError, match="candidate_image_ids"):
        sample_hard_negatives(torch.randn(2, 3), torch.tensor([1, 2]), torch.tensor([1, 2]))
