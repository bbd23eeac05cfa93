"""Two-stage retrieval: the bi-encoder's top-K, re-scored by the fusion re-ranker.

ALBEF's ``k_test`` evaluation (Li et al., NeurIPS 2021): stage 1 ranks the whole gallery by
cosine similarity; the first ``k`` candidates of each query are re-scored in one batch by the
match head; their final score is ``match_logit + stage1_weight * stage1_similarity`` (ALBEF adds
the two with weight 1); they are re-ordered by it, and every item beyond the top-``k`` keeps its
stage-1 order below them (ALBEF leaves them at -100). The list length never changes.

The core, :func:`rerank_topk`, works on any ranked candidate lists and any re-scoring callable,
so it can be checked by hand. :func:`evaluate_two_stage` runs the whole evaluation from cached
tensors (patch tokens, caption token states, stage-1 embeddings) in both directions:

* **t2i** — query = caption, candidates = images: (caption tokens, candidate patches).
* **i2t** — query = image, candidates = captions: still (candidate caption tokens, image
  patches) pairs, since the re-ranker always reads text attending to an image.

Modes (:data:`RERANK_MODES`): ``"combined"`` (logit + weight x similarity), ``"match"`` (the
match logit alone) and ``"stage1"`` (re-ranker off: the ranking is stage 1's, exactly).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmai.evaluation.metrics import DIRECTIONS, evaluate_rankings

RERANK_MODES = ("combined", "match", "stage1")

#: ``rerank_fn(query_indices (q,), candidate_indices (q, K)) -> match logits (q, K)``.
RerankFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def final_scores(match_logits: torch.Tensor, stage1_scores: torch.Tensor, mode: str = "combined",
                 stage1_weight: float = 1.0) -> torch.Tensor:
    """The score the top-K is re-ordered by.

    Args:
        match_logits: ``(..., K)`` re-ranker logits.
        stage1_scores: ``(..., K)`` stage-1 similarities of the same candidates.
        mode: ``"combined"`` (default): ``match_logits + stage1_weight * stage1_scores``;
            ``"match"``: the logits alone; ``"stage1"``: the stage-1 scores alone.
        stage1_weight: lambda of the combined score (default 1.0, as ALBEF).
    """
    if mode == "combined":
        return match_logits + stage1_weight * stage1_scores
    if mode == "match":
        return match_logits
    if mode == "stage1":
        return stage1_scores
    raise ValueError(f"two_stage: mode must be one of {RERANK_MODES}, got {mode!r}.")


def rerank_topk(
    candidates: torch.Tensor,
    stage1_scores: torch.Tensor,
    k: int = 16,
    rerank_fn: RerankFn | None = None,
    mode: str = "combined",
    stage1_weight: float = 1.0,
    query_indices: torch.Tensor | None = None,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Re-order the first ``k`` entries of stage-1 rankings; the rest stays as it is.

    Args:
        candidates: ``(Q, R)`` gallery positions ranked by stage 1, best first, ``R >= 1``;
            ``-1`` pads (gallery smaller than ``R``) and stays at the end.
        stage1_scores: ``(Q, R)`` their stage-1 similarities (non-increasing along a row).
        k: how many top candidates are re-scored (default 16); ``min(k, R)`` are.
        rerank_fn: ``rerank_fn(query_indices (Q,), candidates (Q, k)) -> logits (Q, k)``;
            pad candidates (-1) may be passed and their logits are ignored. None turns the
            re-ranker off.
        mode: see :func:`final_scores` (default ``"combined"``); ``"stage1"`` skips ``rerank_fn``.
        stage1_weight: lambda (default 1.0).
        query_indices: ``(Q,)`` passed to ``rerank_fn`` (default ``arange(Q)``).
        return_scores: also return ``(Q, R)`` scores consistent with the new order (default
            False): the top-``k`` carry their final scores, the rest their stage-1 scores shifted
            to sit just below the lowest top-``k`` score (gaps kept), e.g. to seed GAR.

    Returns:
        ``(Q, R)`` gallery positions (and the scores, with ``return_scores``). Ties in the final score keep stage-1 order (stable sort),
        so with the re-ranker off, or any re-ranker whose final score preserves stage-1 order,
        the output equals ``candidates`` exactly.
    """
    if candidates.shape != stage1_scores.shape or candidates.ndim != 2:
        raise ValueError(f"rerank_topk: candidates {tuple(candidates.shape)} and stage1_scores "
                         f"{tuple(stage1_scores.shape)} must be the same (Q, R) shape.")
    if mode not in RERANK_MODES:
        raise ValueError(f"rerank_topk: mode must be one of {RERANK_MODES}, got {mode!r}.")
    if rerank_fn is None or mode == "stage1" or k <= 0:
        return (candidates.clone(), stage1_scores.clone()) if return_scores else candidates.clone()
    depth = min(int(k), candidates.shape[1])
    top, top_scores = candidates[:, :depth], stage1_scores[:, :depth]  # (Q, k)
    if query_indices is None:
        query_indices = torch.arange(len(candidates), device=candidates.device)
    logits = torch.as_tensor(rerank_fn(query_indices, top)).to(top_scores.device, top_scores.dtype)  # (Q, k)
    if logits.shape != top.shape:
        raise ValueError(f"rerank_topk: rerank_fn returned shape {tuple(logits.shape)}, expected {tuple(top.shape)}.")
    scores = final_scores(logits, top_scores, mode, stage1_weight).masked_fill(top < 0, -torch.inf)  # (Q, k)
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)  # (Q, k) each
    ranked = torch.cat([top.gather(1, order), candidates[:, depth:]], dim=1)  # (Q, R)
    if not return_scores:
        return ranked
    tail = stage1_scores[:, depth:]  # (Q, R - k)
    finite_top = sorted_scores.masked_fill(~torch.isfinite(sorted_scores), torch.inf)
    floor = finite_top.min(dim=1, keepdim=True).values  # (Q, 1) lowest finite re-ranked score
    floor = torch.where(torch.isfinite(floor), floor, top_scores[:, -1:])
    shifted = tail - top_scores[:, -1:] + floor - 1e-3  # (Q, R - k): below every re-ranked item
    return ranked, torch.cat([sorted_scores, shifted], dim=1)


def two_stage_rank(
    stage1_scores: torch.Tensor | None = None,
    k: int = 16,
    rerank_fn: RerankFn | None = None,
    mode: str = "combined",
    stage1_weight: float = 1.0,
    length: int | None = None,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Stage-1 top-K from a full score matrix (or given), re-scored and re-ordered.

    Args:
        stage1_scores: ``(Q, G)`` stage-1 similarity of every query to every gallery item; or
            None when ``topk`` is given.
        k: candidates re-scored per query (default 16).
        rerank_fn: ``rerank_fn(query_indices (q,), candidates (q, k)) -> logits (q, k)``, or
            None (stage 1 only).
        mode, stage1_weight: see :func:`final_scores`.
        length: ranking length returned (default ``k``); items beyond ``k`` are in stage-1 order.
        topk: ``(positions (Q, R), scores (Q, R))`` stage-1 rankings, instead of ``stage1_scores``.

    Returns:
        ``(Q, length)`` gallery positions (``(Q, R)`` with ``topk``), best first, ``-1`` pads.
    """
    if (stage1_scores is None) == (topk is None):
        raise ValueError("two_stage_rank: pass exactly one of stage1_scores (Q, G) and topk=(positions, scores).")
    if topk is not None:
        positions, scores = topk
    else:
        length = max(int(length or k), 1)
        available = min(length, stage1_scores.shape[1])
        scores, positions = stage1_scores.topk(available, dim=1)  # (Q, available)
        if available < length:
            positions = F.pad(positions, (0, length - available), value=-1)
            scores = F.pad(scores, (0, length - available), value=-torch.inf)
    return rerank_topk(positions, scores, k, rerank_fn, mode, stage1_weight)


# ---------------------------------------------------------------------- the full evaluation
@dataclasses.dataclass
class TwoStageResult:
    """What :func:`evaluate_two_stage` measured.

    Attributes:
        metrics: ``{"t2i/instance/R@1": ..., ...}`` two-stage Recall@K (fractions), keys as
            :func:`mmai.evaluation.metrics.evaluate_rankings`; log as ``f"{split}/two_stage/{key}"``.
        stage1_metrics: the same keys for the stage-1 rankings the re-ranker started from.
        rankings: direction -> ``(Q, R)`` two-stage gallery positions.
        stage1_rankings: direction -> ``(Q, R)`` stage-1 gallery positions.
        latency_ms: ``"{direction}/stage1"`` and ``"{direction}/stage2"`` -> ms per query (wall
            clock, amortised over query batches; stage 1 = cosine top-R over the cached gallery
            embeddings, stage 2 = gathering the top-k's cached tokens + fusion + re-ordering;
            neither includes encoding), plus ``"stage1"``/``"stage2"`` averaged over directions.
        k: candidates re-scored per query; mode, stage1_weight: how they were scored.
    """

    metrics: dict[str, float]
    stage1_metrics: dict[str, float]
    rankings: dict[str, torch.Tensor]
    stage1_rankings: dict[str, torch.Tensor]
    latency_ms: dict[str, float]
    k: int
    mode: str
    stage1_weight: float
    #: direction -> ``(Q, R)`` scores in the order of ``rankings`` (see :func:`rerank_topk`).
    scores: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    #: ``also_modes`` -> their Recall@K (same keys as ``metrics``).
    mode_metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fusion_rerank_fn(reranker: torch.nn.Module, direction: str, image_patches: torch.Tensor,
                     text_tokens: torch.Tensor, attention_mask: torch.Tensor) -> RerankFn:
    """A :data:`RerankFn` over cached tensors for one direction.

    Args:
        reranker: a :class:`~mmai.reranker.fusion.FusionReranker` (run as it is: put it in eval mode).
        direction: ``"t2i"`` (queries index captions, candidates index images) or ``"i2t"``
            (queries index images, candidates index captions).
        image_patches: ``(Ni, N, Dv)`` cached patch tokens (any device; moved per batch).
        text_tokens: ``(Nt, L, Dt)`` cached caption token states; attention_mask ``(Nt, L)``.

    Returns:
        ``fn(query_indices (q,), candidates (q, K)) -> logits (q, K)`` on the re-ranker's device;
        pad candidates (-1) score as if they were item 0 (callers ignore them).
    """
    device = next(reranker.parameters()).device
    dtype = next(reranker.parameters()).dtype  # caches may be kept in float16 to halve their memory

    def t2i(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        queries, candidates = queries.to(text_tokens.device), candidates.clamp(min=0).to(image_patches.device)
        text = text_tokens[queries].to(device, dtype)[:, None]  # (q, 1, L, Dt)
        mask = attention_mask[queries].to(device)[:, None]  # (q, 1, L)
        return reranker(text, mask, image_patches[candidates].to(device, dtype)).logits  # (q, K)

    def i2t(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        queries, candidates = queries.to(image_patches.device), candidates.clamp(min=0).to(text_tokens.device)
        patches = image_patches[queries].to(device, dtype)[:, None]  # (q, 1, N, Dv)
        text = text_tokens[candidates].to(device, dtype)  # (q, K, L, Dt)
        return reranker(text, attention_mask[candidates].to(device), patches).logits  # (q, K)

    if direction not in DIRECTIONS:
        raise ValueError(f"fusion_rerank_fn: direction must be one of {DIRECTIONS}, got {direction!r}.")
    return t2i if direction == "t2i" else i2t


def stage1_topk(queries: torch.Tensor, gallery_unit: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 ranking: cosine top-``length`` of each query (as :func:`mmai.evaluation.metrics.topk_positions`).

    Args:
        queries: ``(q, E)`` query embeddings (normalised here).
        gallery_unit: ``(G, E)`` unit-norm gallery embeddings.
        length: ranking length R; a gallery smaller than R is padded with position -1, score -inf.

    Returns:
        ``positions (q, R)`` long and ``scores (q, R)`` cosines, best first.
    """
    similarity = F.normalize(queries.float(), dim=-1) @ gallery_unit.T  # (q, G)
    available = min(length, gallery_unit.shape[0])
    scores, positions = similarity.topk(available, dim=1)  # (q, available)
    if available < length:
        positions = F.pad(positions, (0, length - available), value=-1)
        scores = F.pad(scores, (0, length - available), value=-torch.inf)
    return positions, scores


def _rank_direction(direction: str, queries: torch.Tensor, gallery: torch.Tensor, rerank_fn: RerankFn,
                    length: int, k: int, modes: Sequence[str], stage1_weight: float, query_batch_size: int,
                    device: torch.device, progress: bool) -> tuple[torch.Tensor, dict, dict, float, float]:
    """Stage-1 rankings, and per mode the two-stage rankings and scores, of one direction.

    The re-ranker runs once per query batch (timed, with the first mode's re-ordering); further
    modes re-order the same logits. Each batch goes through :func:`mmai.retrieval.pipeline.rank`,
    the query chain the personal memory's search uses too."""
    from mmai.retrieval.pipeline import Ranking, Rerank, rank  # the pipeline builds on this module

    queries = queries.to(device)
    gallery_unit = F.normalize(gallery.to(device).float(), dim=-1)  # (G, E), index-time work: not timed
    stage1_parts: list[torch.Tensor] = []
    final_parts: dict[str, list] = {mode: [] for mode in modes}
    score_parts: dict[str, list] = {mode: [] for mode in modes}
    stage1_s = stage2_s = 0.0
    starts = range(0, len(queries), query_batch_size)
    for start in tqdm(starts, desc=f"two-stage {direction}", disable=not progress, leave=False):
        query_indices = torch.arange(start, min(start + query_batch_size, len(queries)), device=device)  # (q,)
        _synchronize(device)
        begin = time.perf_counter()
        positions, scores = stage1_topk(queries[query_indices], gallery_unit, length)  # (q, R)
        _synchronize(device)
        middle = time.perf_counter()
        cache: dict[str, torch.Tensor] = {}

        def once(query_rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            if "logits" not in cache:
                cache["logits"] = torch.as_tensor(rerank_fn(query_rows, candidates))
            return cache["logits"]

        for number, mode in enumerate(modes):
            stage2 = Rerank(once if rerank_fn is not None else None, k, stage1_weight, mode)
            two_stage = rank(Ranking(positions, scores), rerank=stage2, query_indices=query_indices).two_stage
            ranked, final = two_stage.positions, two_stage.scores  # (q, R) each
            if number == 0:
                _synchronize(device)
                stage2_s += time.perf_counter() - middle
            final_parts[mode].append(ranked.cpu())
            score_parts[mode].append(final.cpu())
        stage1_s += middle - begin
        stage1_parts.append(positions.cpu())
    count = max(len(queries), 1)
    return (torch.cat(stage1_parts), {mode: torch.cat(parts) for mode, parts in final_parts.items()},
            {mode: torch.cat(parts) for mode, parts in score_parts.items()}, 1e3 * stage1_s / count,
            1e3 * stage2_s / count)


@torch.no_grad()
def evaluate_two_stage(
    reranker: torch.nn.Module | None,
    image_patches: torch.Tensor,
    text_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    image_ids: Any,
    image_class_ids: Any,
    text_image_ids: Any,
    text_class_ids: Any,
    k: int = 16,
    mode: str = "combined",
    stage1_weight: float = 1.0,
    ks: Sequence[int] = (1, 5, 10),
    directions: Sequence[str] = DIRECTIONS,
    pairs_per_batch: int = 1024,
    progress: bool = True,
    length: int | None = None,
    also_modes: Sequence[str] = (),
) -> TwoStageResult:
    """Stage-1 and two-stage Recall@K, both relevances, with per-query latency of each stage.

    All inputs are cached outputs of the stage-1 model over one evaluation split; positions in
    the rankings index them. The re-ranker runs in eval mode on its own device (its training
    flag is restored afterwards); cached tensors may stay on the CPU.

    Args:
        reranker: a :class:`~mmai.reranker.fusion.FusionReranker`, or None (stage 1 only: the two-stage
            rankings then equal the stage-1 ones).
        image_patches: ``(Ni, N, Dv)`` patch tokens of the gallery images.
        text_tokens: ``(Nt, L, Dt)`` caption token states; attention_mask ``(Nt, L)``.
        image_embeddings: ``(Ni, E)``; text_embeddings ``(Nt, E)`` stage-1 embeddings.
        image_ids, image_class_ids: ``(Ni,)``; text_image_ids, text_class_ids ``(Nt,)``.
        k: candidates re-scored per query (default 16; ALBEF uses 128 on COCO/Flickr).
        mode, stage1_weight: see :func:`final_scores` (defaults ``"combined"``, 1.0).
        ks: Recall cut-offs (default 1, 5, 10); rankings are ``max(k, max(ks))`` long.
        directions: any of ``"t2i"``, ``"i2t"`` (default both).
        pairs_per_batch: (query, candidate) pairs per fusion forward (default 1024); queries per
            batch = ``max(1, pairs_per_batch // k)``; with 1 query per batch the latency is the
            single-query latency.
        progress: tqdm bar per direction (default True).
        length: rankings are at least this long (default None: ``max(k, max(ks))``), e.g. the
            candidate list GAR re-ranks afterwards.
        also_modes: more modes scored from the same match logits (no second fusion pass), their
            Recall@K in :attr:`TwoStageResult.mode_metrics` (e.g. ``("match",)``).

    Returns:
        :class:`TwoStageResult`.
    """
    device = next(reranker.parameters()).device if reranker is not None else image_embeddings.device
    length = max(int(k), max(ks), int(length or 0))
    query_batch_size = max(1, pairs_per_batch // max(int(k), 1))
    was_training = reranker.training if reranker is not None else False
    if reranker is not None:
        reranker.eval()
    labels = (image_ids, image_class_ids, text_image_ids, text_class_ids)
    rankings, stage1_rankings, final_scores_by_direction, latency = {}, {}, {}, {}
    modes = (mode, *[extra for extra in also_modes if extra != mode])
    extra_rankings: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for direction in directions:
            rerank_fn = (fusion_rerank_fn(reranker, direction, image_patches, text_tokens, attention_mask)
                         if reranker is not None else None)
            queries, gallery = ((text_embeddings, image_embeddings) if direction == "t2i"
                                else (image_embeddings, text_embeddings))
            stage1, finals, scores, stage1_ms, stage2_ms = _rank_direction(
                direction, queries, gallery, rerank_fn, length, k, modes, stage1_weight, query_batch_size,
                device, progress)
            stage1_rankings[direction], rankings[direction] = stage1, finals[mode]
            final_scores_by_direction[direction] = scores[mode]
            for extra in modes[1:]:
                extra_rankings.setdefault(extra, {})[direction] = finals[extra]
            latency[f"{direction}/stage1"], latency[f"{direction}/stage2"] = stage1_ms, stage2_ms
    finally:
        if reranker is not None:
            reranker.train(was_training)
    for stage in ("stage1", "stage2"):
        values = [latency[f"{direction}/{stage}"] for direction in directions]
        latency[stage] = sum(values) / max(len(values), 1)
    stage1_metrics = evaluate_rankings(*labels, t2i=stage1_rankings.get("t2i"), i2t=stage1_rankings.get("i2t"), ks=ks)
    return TwoStageResult(
        metrics=evaluate_rankings(*labels, t2i=rankings.get("t2i"), i2t=rankings.get("i2t"), ks=ks),
        stage1_metrics=stage1_metrics,
        rankings=rankings, stage1_rankings=stage1_rankings, latency_ms=latency, k=int(k), mode=mode,
        stage1_weight=stage1_weight, scores=final_scores_by_direction,
        mode_metrics={extra: evaluate_rankings(*labels, t2i=ranks.get("t2i"), i2t=ranks.get("i2t"), ks=ks)
                      for extra, ranks in extra_rankings.items()})
