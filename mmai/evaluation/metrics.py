"""Retrieval metrics: Recall@K for text->image and image->text, instance- and class-level.

Recall@K here is the cross-modal retrieval convention (Karpathy & Fei-Fei 2015; CLIP, ALBEF):
the fraction of queries with at least one relevant item among the top ``K`` results (also
called hit rate; torchmetrics' ``RetrievalHitRate``). Values are fractions in [0, 1].

Relevance, reported separately and never mixed (see ARCHITECTURE.md, evaluation protocol):

============  ====================  ====================  ==========================================
direction     query                 gallery               relevant
============  ====================  ====================  ==========================================
t2i instance  caption               images                the caption's own image
t2i class     caption               images                any image of the caption's class
i2t instance  image                 captions              any of the image's own captions
i2t class     image                 captions              any caption of the image's class
============  ====================  ====================  ==========================================

Everything reduces to labels: a ranked gallery item is relevant when its label equals the
query's label (:func:`direction_labels`). Full-gallery evaluation (:func:`evaluate_retrieval`)
runs chunked matmul + top-k in torch, so 117,880 captions x 11,788 images never materialise
as one matrix. Ties in scores are broken arbitrarily (by ``torch.topk``).
"""

from __future__ import annotations

import math

from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = ("t2i", "i2t")
RELEVANCES = ("instance", "class")


def _as_tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    return tensor if dtype is None else tensor.to(dtype)


def hit_rate(relevant_ranked: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K from a ranked relevance matrix.

    Args:
        relevant_ranked: ``(Q, K)`` bool, ``[q, r]`` true when query ``q``'s ``r``-th result is
            relevant (best result first).
        ks: cut-offs, each ``<= K``.

    Returns:
        ``{k: fraction of queries with a relevant item in their top k}``.
    """
    relevant_ranked = _as_tensor(relevant_ranked, torch.bool)
    if relevant_ranked.ndim != 2:
        raise ValueError(f"hit_rate: expected a (Q, K) matrix, got shape {tuple(relevant_ranked.shape)}")
    if max(ks) > relevant_ranked.shape[1]:
        raise ValueError(f"hit_rate: ks={tuple(ks)} needs rankings of length {max(ks)}, got {relevant_ranked.shape[1]}")
    first_hit = relevant_ranked.cumsum(dim=1) > 0  # (Q, K): a relevant item at or before rank r
    return {int(k): first_hit[:, k - 1].float().mean().item() for k in ks}


def recall_at_k(scores: Any, relevant: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K from a full score matrix and a relevance mask.

    Args:
        scores: ``(Q, G)`` similarity of every query to every gallery item (higher is better).
        relevant: ``(Q, G)`` bool relevance mask.
        ks: cut-offs (default 1, 5, 10).

    Returns:
        ``{k: recall}`` as fractions.
    """
    scores, relevant = _as_tensor(scores, torch.float32), _as_tensor(relevant, torch.bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"recall_at_k: scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} differ")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (Q, min(k_max, G))
    ranked_relevance = relevant.gather(1, top)
    missing = max(ks) - ranked_relevance.shape[1]  # gallery smaller than k: the whole gallery is ranked
    return hit_rate(F.pad(ranked_relevance, (0, missing), value=False) if missing > 0 else ranked_relevance, ks)


def recall_at_k_ranked(
    ranked: Any, query_labels: Any, gallery_labels: Any, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Recall@K from rankings given as gallery positions (stage-2 or GAR output).

    Args:
        ranked: ``(Q, K)`` int gallery positions, best first; ``-1`` pads (never relevant).
        query_labels: ``(Q,)`` int label of each query.
        gallery_labels: ``(G,)`` int label of each gallery item; item ``g`` is relevant to
            query ``q`` when ``gallery_labels[g] == query_labels[q]``.
        ks: cut-offs, each ``<= K``.
    """
    ranked = _as_tensor(ranked, torch.long)  # (Q, K)
    gallery_labels = _as_tensor(gallery_labels, torch.long).to(ranked.device)  # (G,)
    query_labels = _as_tensor(query_labels, torch.long).to(ranked.device)  # (Q,)
    if ranked.ndim != 2 or ranked.shape[0] != len(query_labels):
        raise ValueError(
            f"recall_at_k_ranked: ranked {tuple(ranked.shape)} must be (Q, K) with Q={len(query_labels)}"
        )
    if ranked.numel() and ranked.max() >= len(gallery_labels):
        raise ValueError(
            f"recall_at_k_ranked: position {int(ranked.max())} outside a gallery of {len(gallery_labels)}"
        )
    labels = gallery_labels[ranked.clamp(min=0)]  # (Q, K)
    return hit_rate((labels == query_labels[:, None]) & (ranked >= 0), ks)


def direction_labels(
    direction: str, relevance: str, image_ids: Any, image_class_ids: Any, text_image_ids: Any, text_class_ids: Any
) -> tuple[Any, Any]:
    """``(query_labels, gallery_labels)`` for a direction (``"t2i"``/``"i2t"``) and relevance
    (``"instance"``/``"class"``); see the module table."""
    if direction not in DIRECTIONS or relevance not in RELEVANCES:
        raise ValueError(
            f"direction must be in {DIRECTIONS} and relevance in {RELEVANCES}, got {direction!r}, {relevance!r}"
        )
    image_labels = image_ids if relevance == "instance" else image_class_ids
    text_labels = text_image_ids if relevance == "instance" else text_class_ids
    return (text_labels, image_labels) if direction == "t2i" else (image_labels, text_labels)


def ids_to_positions(ranked_ids: Any, gallery_ids: Any) -> np.ndarray:
    """Map ranked memory ids ``(Q, K)`` to positions in ``gallery_ids`` ``(G,)``; ``-1`` where absent."""
    ranked_ids, gallery_ids = np.asarray(ranked_ids, dtype=np.int64), np.asarray(gallery_ids, dtype=np.int64)
    order = np.argsort(gallery_ids, kind="stable")
    slots = np.clip(np.searchsorted(gallery_ids[order], ranked_ids), 0, len(order) - 1)
    return np.where(gallery_ids[order][slots] == ranked_ids, order[slots], -1)


@torch.no_grad()
def topk_positions(queries: Any, gallery: Any, k: int, chunk_size: int = 1024) -> torch.Tensor:
    """Top-``k`` gallery positions ``(Q, k)`` by cosine, computed ``chunk_size`` queries at a time.

    A gallery smaller than ``k`` is ranked whole and padded with ``-1`` (never relevant), so
    Recall@K stays defined on tiny validation sets.
    """
    queries = F.normalize(_as_tensor(queries, torch.float32), dim=-1)  # (Q, E)
    gallery = F.normalize(_as_tensor(gallery, torch.float32).to(queries.device), dim=-1)  # (G, E)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"topk_positions: queries have dimension {queries.shape[1]}, gallery {gallery.shape[1]}")
    available = min(int(k), gallery.shape[0])
    chunks = [(chunk @ gallery.T).topk(available, dim=1).indices for chunk in queries.split(chunk_size)]  # (c, k)
    ranked = torch.cat(chunks) if chunks else torch.empty((0, available), dtype=torch.long, device=queries.device)
    return F.pad(ranked, (0, int(k) - available), value=-1) if available < k else ranked


def _check_lengths(image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids) -> None:
    for name, values, expected in (
        ("image_ids", image_ids, len(image_emb)), ("image_class_ids", image_class_ids, len(image_emb)),
        ("text_image_ids", text_image_ids, len(text_emb)), ("text_class_ids", text_class_ids, len(text_emb)),
    ):
        if len(values) != expected:
            raise ValueError(f"evaluate_retrieval: {name} has {len(values)} entries, expected {expected}")


def evaluate_retrieval(
    image_emb: Any,
    image_ids: Any,
    image_class_ids: Any,
    text_emb: Any,
    text_image_ids: Any,
    text_class_ids: Any,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    directions: Iterable[str] = DIRECTIONS,
) -> dict[str, float]:
    """Full-gallery Recall@K of a bi-encoder, both directions and both relevances.

    Args:
        image_emb: ``(Ni, E)`` image embeddings (normalised here).
        image_ids: ``(Ni,)`` image ids.
        image_class_ids: ``(Ni,)`` class (species) ids.
        text_emb: ``(Nt, E)`` caption embeddings.
        text_image_ids: ``(Nt,)`` id of each caption's image.
        text_class_ids: ``(Nt,)`` class id of each caption.
        ks: cut-offs (default 1, 5, 10).
        chunk_size: queries per matmul chunk (default 1024: for i2t against 117,880 captions a
            chunk's score matrix is 1024 x 117,880 float32 = 483 MB).
        directions: which of ``"t2i"``, ``"i2t"`` to compute (default both).

    Returns:
        ``{"t2i/instance/R@1": ..., "t2i/class/R@1": ..., "i2t/instance/R@1": ..., ...}``
        (fractions). Prefix with ``f"{split}/{stage}/"`` when logging.
    """
    _check_lengths(image_emb, image_ids, image_class_ids, text_emb, text_image_ids, text_class_ids)
    labels = (image_ids, image_class_ids, text_image_ids, text_class_ids)
    results: dict[str, float] = {}
    for direction in directions:
        queries, gallery = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
        ranked = topk_positions(queries, gallery, max(ks), chunk_size)  # (Q, k_max)
        for relevance in RELEVANCES:
            query_labels, gallery_labels = direction_labels(direction, relevance, *labels)
            for k, value in recall_at_k_ranked(ranked.cpu(), query_labels, gallery_labels, ks).items():
                results[f"{direction}/{relevance}/R@{k}"] = value
    return results


def evaluate_rankings(
    image_ids: Any,
    image_class_ids: Any,
    text_image_ids: Any,
    text_class_ids: Any,
    t2i: Any = None,
    i2t: Any = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K of given rankings (stage 2, GAR), with the same keys as :func:`evaluate_retrieval`.

    Args:
        image_ids, image_class_ids: ``(Ni,)`` gallery of images (positions index these).
        text_image_ids, text_class_ids: ``(Nt,)`` captions.
        t2i: ``(Nt, K)`` image positions ranked for each caption, or ``None`` to skip
            (use :func:`ids_to_positions` to turn ranked image ids into positions).
        i2t: ``(Ni, K)`` caption positions ranked for each image, or ``None``.
        ks: cut-offs, each ``<= K``.
    """
    labels = (image_ids, image_class_ids, text_image_ids, text_class_ids)
    results: dict[str, float] = {}
    for direction, ranked in (("t2i", t2i), ("i2t", i2t)):
        if ranked is None:
            continue
        for relevance in RELEVANCES:
            query_labels, gallery_labels = direction_labels(direction, relevance, *labels)
            for k, value in recall_at_k_ranked(ranked, query_labels, gallery_labels, ks).items():
                results[f"{direction}/{relevance}/R@{k}"] = value
    return results


#: Collapse thresholds of :func:`embedding_diversity`'s warning: fewer distinct top-1 images than
#: this fraction of the gallery, or a mean pairwise cosine above this, in either modality.
COLLAPSE_DISTINCT_TOP1 = 0.1
COLLAPSE_MEAN_COSINE = 0.9


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine over all pairs ``i != j`` of rows (1.0: every row points the same way)."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    n = unit.shape[0]
    if n < 2:
        return float("nan")
    total = unit.sum(dim=0)
    return float(((total @ total) - n) / (n * (n - 1)))


def embedding_diversity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
    """Signs of a collapsed bi-encoder: how many gallery images are some caption's top-1, and how
    alike the embeddings of each modality are.

    Returns:
        ``distinct_top1`` (distinct top-1 images over all caption queries / gallery size),
        ``text_mean_cosine``, ``image_mean_cosine`` and ``collapsed`` (1.0 when any crosses
        :data:`COLLAPSE_DISTINCT_TOP1` / :data:`COLLAPSE_MEAN_COSINE`, else 0.0).
    """
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    top1 = torch.cat([(chunk @ image.T).argmax(dim=1) for chunk in text.split(1024)])
    result = {"distinct_top1": torch.unique(top1).numel() / max(1, image.shape[0]),
              "text_mean_cosine": mean_pairwise_cosine(text), "image_mean_cosine": mean_pairwise_cosine(image)}
    result["collapsed"] = float(result["distinct_top1"] < COLLAPSE_DISTINCT_TOP1
                                or result["text_mean_cosine"] > COLLAPSE_MEAN_COSINE
                                or result["image_mean_cosine"] > COLLAPSE_MEAN_COSINE)
    return result


def random_recall(relevant: int, gallery: int, k: int) -> float:
    """Recall@k of a random ranking: P(at least one of ``relevant`` items among ``k`` of ``gallery``)."""
    if gallery - relevant < k:
        return 1.0
    return 1.0 - math.prod((gallery - relevant - j) / (gallery - j) for j in range(k))


def chance_levels(manifest: dict, split: str = "val", ks=(1, 5, 10)) -> dict[str, float]:
    """``{"t2i/instance/R@10": ...}``: Recall@k of a random ranking on this split's gallery."""
    info = manifest["splits"][split]
    images, captions, classes = info["images"], info["captions"], len(info["classes"])
    per_image, per_class = captions // images, images / classes  # synthetic classes are near-equal
    relevant = {("t2i", "instance"): 1, ("t2i", "class"): round(per_class),
                ("i2t", "instance"): per_image, ("i2t", "class"): round(per_class * per_image)}
    return {f"{direction}/{relevance}/R@{k}": random_recall(count, images if direction == "t2i" else captions, k)
            for (direction, relevance), count in relevant.items() for k in ks}
