"""Recall@K: against brute force and torchmetrics, both directions, both relevances, chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from mmai.evaluation.metrics import (
    evaluate_rankings,
    evaluate_retrieval,
    ids_to_positions,
    recall_at_k,
    recall_at_k_ranked,
    topk_positions,
)


def brute_recall(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    hits = 0
    for row_scores, row_relevant in zip(scores, relevant):
        top = sorted(range(len(row_scores)), key=lambda g: -row_scores[g])[:k]
        hits += any(row_relevant[g] for g in top)
    return hits / len(scores)


def toy_dataset(images: int = 30, classes: int = 5, captions_per_image: int = 3, dim: int = 16, seed: int = 0):
    """Images with class ids, several captions per image, embeddings noisy around their image."""
    generator = torch.Generator().manual_seed(seed)
    image_ids = torch.randperm(1000, generator=generator)[:images] + 7  # ids are not positions
    image_class_ids = torch.arange(images) % classes
    image_emb = torch.randn(images, dim, generator=generator)
    text_image_ids = image_ids.repeat_interleave(captions_per_image)
    text_class_ids = image_class_ids.repeat_interleave(captions_per_image)
    text_emb = image_emb.repeat_interleave(captions_per_image, 0) + 1.2 * torch.randn(images * captions_per_image, dim, generator=generator)
    return image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids


def test_recall_at_k_equals_brute_force_and_torchmetrics_hit_rate():
    torch.manual_seed(0)
    scores = torch.rand(40, 60)
    relevant = torch.rand(40, 60) < 0.04  # some queries have no relevant item at all
    ours = recall_at_k(scores, relevant, ks=(1, 5, 10))
    indexes = torch.arange(40).repeat_interleave(60)
    for k in (1, 5, 10):
        assert ours[k] == pytest.approx(brute_recall(scores.numpy(), relevant.numpy(), k))
        metric = RetrievalHitRate(top_k=k, empty_target_action="neg")
        assert ours[k] == pytest.approx(metric(scores.flatten(), relevant.flatten(), indexes=indexes).item(), abs=1e-6)
    assert 0 < ours[1] < ours[5] < ours[10] < 1


def test_evaluate_retrieval_matches_brute_force_for_every_direction_and_relevance():
    image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids = toy_dataset()
    results = evaluate_retrieval(image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids,
                                 ks=(1, 5, 10), chunk_size=7)
    image_unit = torch.nn.functional.normalize(image_emb, dim=1).numpy()
    text_unit = torch.nn.functional.normalize(text_emb, dim=1).numpy()
    t2i = text_unit @ image_unit.T  # (Nt, Ni)
    relevance = {
        "t2i/instance": text_image_ids[:, None] == image_ids[None, :],
        "t2i/class": text_class_ids[:, None] == image_class_ids[None, :],
        "i2t/instance": image_ids[:, None] == text_image_ids[None, :],
        "i2t/class": image_class_ids[:, None] == text_class_ids[None, :],
    }
    assert len(results) == 12
    for name, mask in relevance.items():
        scores = t2i if name.startswith("t2i") else t2i.T
        for k in (1, 5, 10):
            assert results[f"{name}/R@{k}"] == pytest.approx(brute_recall(scores, mask.numpy(), k)), name
    assert results["t2i/instance/R@1"] < results["t2i/class/R@1"]  # class relevance is looser


def test_ranked_variant_agrees_with_full_evaluation_and_handles_padding():
    image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids = toy_dataset(seed=3)
    labels = (image_ids, image_class_ids, text_image_ids, text_class_ids)
    t2i = topk_positions(text_emb, image_emb, 10)
    i2t = topk_positions(image_emb, text_emb, 10)
    assert evaluate_rankings(*labels, t2i=t2i, i2t=i2t) == evaluate_retrieval(image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids)
    ranked_ids = image_ids.numpy()[t2i.numpy()]  # e.g. GAR returns image ids, not positions
    assert np.array_equal(ids_to_positions(ranked_ids, image_ids.numpy()), t2i.numpy())
    padded = t2i.clone()
    padded[:, 1:] = -1
    only_top1 = recall_at_k_ranked(padded, text_image_ids, image_ids, ks=(1, 10))
    assert only_top1[1] == only_top1[10] == evaluate_rankings(*labels, t2i=t2i, ks=(1,))["t2i/instance/R@1"]


def test_gallery_smaller_than_k_is_ranked_whole():
    image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids = toy_dataset(images=4, classes=2)
    results = evaluate_retrieval(image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids)
    assert results["t2i/instance/R@5"] == results["t2i/instance/R@10"] == 1.0  # all 4 images are in every list
    assert topk_positions(text_emb, image_emb, 10)[:, 4:].eq(-1).all()
    assert recall_at_k(torch.rand(3, 4), torch.eye(3, 4, dtype=torch.bool), ks=(1, 10))[10] == 1.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs rankings of length 10, got 5"):
        recall_at_k_ranked(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3), torch.zeros(8))
    with pytest.raises(ValueError, match="image_class_ids has 2 entries, expected 3"):
        evaluate_retrieval(torch.randn(3, 4), [1, 2, 3], [0, 1], torch.randn(6, 4), [1] * 6, [0] * 6)
    with pytest.raises(ValueError, match="differ"):
        recall_at_k(torch.rand(3, 4), torch.ones(3, 5, dtype=torch.bool))
