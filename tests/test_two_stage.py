"""Two-stage ranking (mmai.retrieval.two_stage): stage 1 when off, re-ordering only inside the top-K."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmai.reranker.fusion import FusionReranker
from mmai.evaluation.metrics import evaluate_rankings, evaluate_retrieval
from mmai.retrieval.two_stage import evaluate_two_stage, rerank_topk, two_stage_rank

torch.set_num_threads(1)


def random_scores(queries: int = 20, gallery: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(queries, gallery, generator=torch.Generator().manual_seed(seed))


def random_logits(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(queries.sum()) + 1)
    return 3 * torch.randn(candidates.shape, generator=generator)


def test_two_stage_equals_stage1_exactly_when_the_reranker_is_off():
    scores = random_scores()
    stage1 = scores.topk(30, dim=1).indices
    assert torch.equal(two_stage_rank(scores, k=16, rerank_fn=None, length=30), stage1)
    assert torch.equal(two_stage_rank(scores, k=16, rerank_fn=random_logits, mode="stage1", length=30), stage1)
    zero_logits = lambda queries, candidates: torch.zeros(candidates.shape)  # noqa: E731  lambda-only score
    assert torch.equal(two_stage_rank(scores, k=16, rerank_fn=zero_logits, stage1_weight=0.7, length=30), stage1)


def test_reranking_reorders_only_within_the_top_k():
    scores = random_scores()
    stage1 = scores.topk(30, dim=1).indices
    ranked = two_stage_rank(scores, k=8, rerank_fn=random_logits, mode="match", length=30)
    assert torch.equal(ranked[:, 8:], stage1[:, 8:])  # items beyond K keep stage-1 order
    assert torch.equal(ranked[:, :8].sort(dim=1).values, stage1[:, :8].sort(dim=1).values)
    assert not torch.equal(ranked[:, :8], stage1[:, :8])
    logits = random_logits(torch.arange(20), stage1[:, :8])
    position = {int(g): i for i, g in enumerate(stage1[0, :8])}
    final = [logits[0, position[int(g)]] for g in ranked[0, :8]]
    assert final == sorted(final, reverse=True)


def test_combined_score_is_match_logit_plus_weighted_stage1_similarity():
    candidates = torch.tensor([[4, 2, 9, 7, 1]])
    stage1 = torch.tensor([[0.9, 0.8, 0.5, 0.4, 0.3]])
    logits = torch.tensor([[0.0, 0.2, 0.1, 0.35, 5.0]])  # the 5th candidate is outside k=4
    rerank = lambda queries, top: logits[:, : top.shape[1]]  # noqa: E731
    # weight 1: 0.9, 1.0, 0.6, 0.75  -> 2, 4, 7, 9
    assert rerank_topk(candidates, stage1, k=4, rerank_fn=rerank, stage1_weight=1.0).tolist() == [[2, 4, 7, 9, 1]]
    # weight 0.1: 0.09, 0.28, 0.15, 0.39 -> 7, 2, 9, 4
    assert rerank_topk(candidates, stage1, k=4, rerank_fn=rerank, stage1_weight=0.1).tolist() == [[7, 2, 9, 4, 1]]
    assert rerank_topk(candidates, stage1, k=4, rerank_fn=rerank, mode="match").tolist() == [[7, 2, 9, 4, 1]]


def test_an_oracle_reranker_lifts_recall_at_1_to_stage1_recall_at_k():
    generator = torch.Generator().manual_seed(0)
    image_ids, image_class = torch.arange(40), torch.arange(40) % 8
    text_image_ids = image_ids.repeat_interleave(2)
    scores = torch.randn(80, 40, generator=generator)  # (Nt, Ni) captions x images

    def oracle(queries, top):  # +10 for the caption's own image
        return (image_ids[top.clamp(min=0)] == text_image_ids[queries][:, None]).float() * 10

    ranked = two_stage_rank(scores, k=5, rerank_fn=oracle, length=10)
    stage1 = scores.topk(10, dim=1).indices
    labels = (image_ids, image_class, text_image_ids, image_class.repeat_interleave(2))
    two_stage = evaluate_rankings(*labels, t2i=ranked)
    before = evaluate_rankings(*labels, t2i=stage1)
    assert two_stage["t2i/instance/R@1"] == pytest.approx(before["t2i/instance/R@5"])
    assert two_stage["t2i/instance/R@10"] == pytest.approx(before["t2i/instance/R@10"])


def test_small_gallery_is_padded_with_minus_one_that_stays_last():
    scores = random_scores(queries=3, gallery=4)
    ranked = two_stage_rank(scores, k=16, rerank_fn=random_logits, length=10)
    assert ranked.shape == (3, 10)
    assert (ranked[:, 4:] == -1).all() and (ranked[:, :4] >= 0).all()


def cached_split(images: int = 12, captions_per_image: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image_emb = torch.randn(images, 8, generator=generator)
    noise = torch.randn(images * captions_per_image, 8, generator=generator)
    text_emb = image_emb.repeat_interleave(captions_per_image, 0) + noise
    patches = torch.randn(images, 16, 12, generator=generator)
    tokens = torch.randn(images * captions_per_image, 5, 10, generator=generator)
    mask = torch.ones(images * captions_per_image, 5, dtype=torch.long)
    mask[::2, -2:] = 0
    image_ids, image_class = torch.arange(images) + 100, torch.arange(images) % 4
    return dict(image_patches=patches, text_tokens=tokens, attention_mask=mask, image_embeddings=image_emb,
                text_embeddings=text_emb, image_ids=image_ids, image_class_ids=image_class,
                text_image_ids=image_ids.repeat_interleave(captions_per_image),
                text_class_ids=image_class.repeat_interleave(captions_per_image))


def manual_two_stage(model, split, direction: str, k: int, length: int, weight: float) -> torch.Tensor:
    """Query by query, pair by pair: the ALBEF k_test loop written out."""
    queries, gallery = ((split["text_embeddings"], split["image_embeddings"]) if direction == "t2i"
                        else (split["image_embeddings"], split["text_embeddings"]))
    similarity = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    rows = []
    for query in range(len(queries)):
        top_scores, top = similarity[query].topk(length)
        final = []
        for rank in range(k):
            caption, image = (query, int(top[rank])) if direction == "t2i" else (int(top[rank]), query)
            logit = model(split["text_tokens"][caption:caption + 1], split["attention_mask"][caption:caption + 1],
                          split["image_patches"][image:image + 1]).logits.item()
            final.append(logit + weight * top_scores[rank].item())
        order = sorted(range(k), key=lambda i: -final[i])
        rows.append(torch.cat([top[order], top[k:]]))
    return torch.stack(rows)


def test_evaluate_two_stage_matches_the_query_by_query_loop_in_both_directions():
    torch.manual_seed(0)
    model = FusionReranker(10, 12, hidden_dim=16, num_layers=2, num_heads=2).train()
    split = cached_split()
    result = evaluate_two_stage(model, **split, k=4, stage1_weight=0.5, ks=(1, 5, 10), pairs_per_batch=12,
                                progress=False)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        for direction in ("t2i", "i2t"):
            expected = manual_two_stage(model, split, direction, k=4, length=10, weight=0.5)
            assert torch.equal(result.rankings[direction], expected), direction
    labels = [split[name] for name in ("image_ids", "image_class_ids", "text_image_ids", "text_class_ids")]
    assert result.metrics == evaluate_rankings(*labels, t2i=result.rankings["t2i"], i2t=result.rankings["i2t"])
    assert set(result.latency_ms) == {"t2i/stage1", "t2i/stage2", "i2t/stage1", "i2t/stage2", "stage1", "stage2"}
    assert all(value > 0 for value in result.latency_ms.values())


def test_evaluate_two_stage_without_reranker_reproduces_stage1_recall():
    split = cached_split(images=30, seed=1)
    result = evaluate_two_stage(None, **split, k=8, progress=False)
    stage1 = evaluate_retrieval(split["image_embeddings"], split["image_ids"], split["image_class_ids"],
                                split["text_embeddings"], split["text_image_ids"], split["text_class_ids"])
    assert result.metrics == result.stage1_metrics == pytest.approx(stage1)
    for direction in ("t2i", "i2t"):
        assert torch.equal(result.rankings[direction], result.stage1_rankings[direction])


def test_unknown_mode_and_bad_logit_shape_raise():
    scores = random_scores(queries=2, gallery=6)
    with pytest.raises(ValueError, match="mode"):
        two_stage_rank(scores, k=3, rerank_fn=random_logits, mode="sum")
    with pytest.raises(ValueError, match="shape"):
        two_stage_rank(scores, k=3, rerank_fn=lambda queries, top: torch.zeros(2, 2))


def test_returned_scores_follow_the_new_order_and_keep_the_tail_below_the_reranked_items():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 40, generator=generator)
    stage1, positions = scores.topk(20, dim=1)

    def random_logits(queries, candidates):
        return torch.randn(candidates.shape, generator=generator) * 3

    ranked, final = rerank_topk(positions, stage1, k=8, rerank_fn=random_logits, return_scores=True)
    assert torch.equal(ranked[:, 8:], positions[:, 8:])
    assert bool((final[:, :-1] >= final[:, 1:]).all())  # consistent with the order: non-increasing
    assert torch.allclose(final[:, 9:] - final[:, 8:-1], stage1[:, 9:] - stage1[:, 8:-1], atol=1e-5)  # tail gaps kept


def test_also_modes_reuse_one_fusion_pass_and_match_separate_runs():
    from mmai.reranker.fusion import FusionReranker

    torch.manual_seed(0)
    reranker = FusionReranker(text_width=8, vision_width=6, hidden_dim=16, num_layers=1, num_heads=2)
    calls = []
    reranker.register_forward_hook(lambda module, inputs, output: calls.append(1))
    images, texts = torch.randn(12, 4), torch.randn(30, 4)
    args = (reranker, torch.randn(12, 5, 6), torch.randn(30, 7, 8), torch.ones(30, 7, dtype=torch.long), images, texts,
            torch.arange(12), torch.arange(12) % 3, torch.arange(30) % 12, (torch.arange(30) % 12) % 3)
    both = evaluate_two_stage(*args, k=6, also_modes=("match",), directions=("t2i",), progress=False)
    passes = len(calls)
    match = evaluate_two_stage(*args, k=6, mode="match", directions=("t2i",), progress=False)
    assert len(calls) == 2 * passes  # the match mode alone costs as many passes as both together
    assert both.mode_metrics["match"] == match.metrics
