"""Per-query outcomes of a t2i evaluation: what each stage got right, query by query.

Every stage's ranking of the same captions is scored the same way here (class hit@1/@10 and P@10,
consistent hit@1/@10 where the shards record what each caption states, the binding probe by list
position and directly, hard-burst recovery@10), so ``mmai ablate`` can pair stages and runs query
by query (:mod:`mmai.evaluation.stats`). Called by the validation callback after the retrieval
pipeline (:func:`mmai.retrieval.pipeline.rank`) ranked the gallery.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch.nn.functional as F

from mmai.data.consistency import SpeciesTable, caption_masks, chance_consistent, consistent_hits, reader_ceiling
from mmai.evaluation.probes import (binding_probe, burst_probe, burst_recovery, direct_outcomes, pair_outcomes,
                                    per_caption)

__all__ = ["retrieval_outcomes"]


def retrieval_outcomes(data: Any, rankings: dict[str, np.ndarray], metrics: dict, species: list[dict],
                       caption_table: dict[int, list[int]] | None, stage1_weight: float = 1.0,
                       pair_logits: Callable | None = None) -> dict[str, np.ndarray]:
    """Per-query outcomes of every stage (saved for paired intervals); the probes' metrics go into ``metrics``.

    Args:
        data: the evaluation set (``lightning_glue.eval_set.EvalSet``'s fields: ``text_embeddings``,
            ``image_embeddings``, ``image_ids``, ``class_ids``, ``text_image_ids``, ``text_class_ids``,
            ``captions``, ``conditions``, ``sighting_ids``; tensors).
        rankings: stage name -> ``(Nt, R)`` t2i gallery positions, each scored the same way.
        metrics: filled with class P@10, consistent R@K, the binding and burst probes.
        species: the shard manifest's species annotations (the binding probe's swap pairs).
        caption_table: what each caption states (:func:`mmai.data.consistency.load_caption_table`),
            or None (real CUB: class relevance only).
        stage1_weight: lambda of the two-stage score in the direct binding probe.
        pair_logits: ``pair_logits(data, text_rows, image_rows) -> (P,)`` match logits, or None.
    """
    text_classes = data.text_class_ids.numpy()
    classes = data.class_ids.numpy()
    outcomes: dict[str, np.ndarray] = {"query/text_image_ids": data.text_image_ids.numpy(),
                                       "query/image_ids": data.image_ids.numpy(),
                                       "query/species": text_classes.astype(np.int64)}  # R@K's units
    for stage, ranked in rankings.items():
        hit = (classes[np.maximum(ranked, 0)] == text_classes[:, None]) & (ranked >= 0)  # (Nt, k)
        outcomes[f"{stage}/t2i/class/hit@1"] = hit[:, 0].astype(np.float64)
        outcomes[f"{stage}/t2i/class/hit@10"] = hit[:, :10].any(axis=1).astype(np.float64)
        outcomes[f"{stage}/t2i/class/p@10"] = hit[:, :10].mean(axis=1)
        metrics[f"{stage}/t2i/class/P@10"] = float(outcomes[f"{stage}/t2i/class/p@10"].mean())
    _consistency(data, rankings, metrics, outcomes, species, caption_table)
    probe = binding_probe(data.captions, data.text_image_ids.numpy(), data.image_ids.numpy(), classes,
                          {"species": species})
    if len(probe):
        text, image = F.normalize(data.text_embeddings.float(), dim=-1), F.normalize(data.image_embeddings.float(), dim=-1)

        def cosine(text_rows, image_rows):
            return (text[text_rows] * image[image_rows]).sum(-1).numpy()

        metrics["probe/binding/pairs"] = float(len(probe))
        for stage, ranked in rankings.items():  # list positions: moves only where both are in the list
            wins = pair_outcomes(ranked, probe, cosine)
            captions, per_query = per_caption(wins, probe.text_rows)
            metrics[f"probe/binding/{stage}"] = float(wins.mean())
            outcomes[f"{stage}/probe/binding"] = per_query
        metrics["probe/binding/captions"] = float(len(captions))
        outcomes["query/binding_text_rows"] = captions
        _, units = per_caption(probe.units.astype(np.float64), probe.text_rows)  # one swap pair per caption
        outcomes["query/binding_units"] = units.astype(np.int64)
        metrics["probe/binding/units"] = float(len(np.unique(probe.units)))
        # the direct probe: every (caption, own image, confuser) triple scored by each stage's own scorer
        true_cos, confuser_cos = cosine(probe.text_rows, probe.true_rows), cosine(probe.text_rows, probe.confuser_rows)
        scored = {"stage1": (true_cos, confuser_cos)}
        if pair_logits is not None:
            true_logit = np.asarray(pair_logits(data, probe.text_rows, probe.true_rows))
            confuser_logit = np.asarray(pair_logits(data, probe.text_rows, probe.confuser_rows))
            scored["rerank"] = (true_logit, confuser_logit)
            scored["two_stage"] = (true_logit + stage1_weight * true_cos,
                                   confuser_logit + stage1_weight * confuser_cos)
        for name, (true_score, confuser_score) in scored.items():
            wins = direct_outcomes(true_score, confuser_score)
            metrics[f"probe/binding_direct/{name}"] = float(wins.mean())
            outcomes[f"{name}/probe/binding_direct"] = per_caption(wins, probe.text_rows)[1]
    if len(data.conditions) == len(classes) and data.sighting_ids.numel() == len(classes):
        bursts = burst_probe(data.text_image_ids.numpy(), data.image_ids.numpy(), data.sighting_ids.numpy(),
                             data.conditions)
        if len(bursts):
            metrics["probe/burst/queries"] = float(len(bursts))
            outcomes["query/burst_text_rows"] = bursts.text_rows
            for stage, ranked in rankings.items():
                recovered = burst_recovery(ranked, bursts, k=10)
                metrics[f"probe/burst/{stage}/R@10"] = float(recovered.mean())
                outcomes[f"{stage}/probe/burst@10"] = recovered
    return outcomes

def _consistency(data: Any, rankings: dict[str, np.ndarray], metrics: dict, outcomes: dict[str, np.ndarray],
                 species: list[dict], caption_table: dict[int, list[int]] | None) -> None:
    """Consistent t2i R@1/R@10 (a hit is any image of a species the caption is true of) and the
    perfect attribute reader's class R@1/R@10, where the shards record what each caption states."""
    table = SpeciesTable.from_species(species)
    masks = caption_masks(data.text_image_ids.numpy(), caption_table)
    if table is None or not (masks >= 0).any():
        return  # real CUB: class relevance only
    classes, text_classes = data.class_ids.numpy(), data.text_class_ids.numpy()
    consistent = table.consistent(masks, text_classes, np.unique(classes))  # (Nt, C)
    metrics["consistency/identifying"] = float((consistent.sum(axis=1) == 1).mean())
    metrics["consistency/species_per_caption"] = float(consistent.sum(axis=1).mean())
    for k, value in reader_ceiling(consistent, text_classes, classes, (1, 10)).items():
        metrics[f"ceiling/t2i/class/R@{k}"] = value
    for k, value in chance_consistent(consistent, classes, (1, 10)).items():
        metrics[f"chance/t2i/consistent/R@{k}"] = value
    for stage, ranked in rankings.items():
        hit = consistent_hits(ranked, consistent, classes)
        outcomes[f"{stage}/t2i/consistent/hit@1"] = hit[:, 0].astype(np.float64)
        outcomes[f"{stage}/t2i/consistent/hit@10"] = hit[:, :10].any(axis=1).astype(np.float64)
        metrics[f"{stage}/t2i/consistent/R@1"] = float(hit[:, 0].mean())
        metrics[f"{stage}/t2i/consistent/R@10"] = float(hit[:, :10].any(axis=1).mean())
