"""Rebuild the retrieval layer on the validation gallery each epoch and log what it retrieves.

At every validation epoch end the gathered gallery (``BiEncoderModule.eval_set()``, every rank
takes part in the gather) is indexed with FAISS, linked into the episodic graph (time, place,
meaning), and the caption queries go through stage 1 → GAR; GAR is also run on a control graph
whose times and places are shuffled, so a gain can be traced to real associations. Rank 0
computes, broadcasts the numbers, and every rank logs the same values (no rank waits on a
collective the others skip; logged as global values, not all-reduced again:
:func:`~lightning_glue.eval_set.log_global_values`).

Logged (``val/`` prefix):

* ``gar/t2i/{instance,class}/R@k`` and ``gar_control/t2i/...`` — GAR re-ranks the stage-1 top
  ``candidates`` and returns a list of the same length (nothing appended). GAR runs over the
  memory graph of gallery images, so it is reported for text→image only.
* ``stage1/latency_ms``: FAISS search per caption query (batched, amortised; text encoding not
  included); ``gar/latency_ms``: the GAR re-rank alone per query.
* With a re-ranker (a module with a ``two_stage(data, k, mode, stage1_weight, length)`` method,
  :class:`~lightning_modules.RerankerModule`): ``two_stage/{t2i,i2t}/{instance,class}/R@k``
  (final score = match logit + ``stage1_weight`` x stage-1 cosine over the top ``rerank_k``),
  ``two_stage_match/...`` (match logit alone), ``two_stage/latency_ms`` (stage 1 + stage 2 per
  query, cached patch tokens, no encoding), ``two_stage/rerank_latency_ms`` (stage 2 alone) and
  ``two_stage/k``. GAR (and its control) then re-rank the two-stage list instead of stage 1's,
  so the rows stack as in the reference table: stage 1 → + re-rank → + GAR. The module is told
  the ``rerank_k`` and ``stage1_weight`` used (``record_validation``), so its checkpoints record
  them and ``mmai memory search --rerank`` re-ranks with the validated values.
* ``graph/{nodes,temporal_edges,semantic_edges,mean_degree,episodes,schemas}``.
* With ``top_down=True``: ``top_down/t2i/{instance,class}/R@k``, stage 1 by the entropy-driven
  top-down descent over the graph's schemas and episodes (:mod:`mmai.retrieval.topdown`) instead of
  every image, ranked ``max(ks)`` deep; ``top_down/fraction_scored`` (mean share of the gallery it scored),
  ``top_down/descended`` (share of queries that went down to episodes), ``top_down/latency_ms``
  (per caption, no encoding) and ``top_down/entropy_auroc/stage1_miss@{1,10}``: the AUROC of the
  schemas' entropy as a predictor of an exact stage-1 class miss. Its per-query outcomes go to
  ``per_query.npz`` as ``top_down/...`` beside ``stage1/...``, so ``mmai ablate`` pairs them.
* ``probe/binding/{stage1,two_stage,gar,gar_control}`` (with ``probe/binding/pairs``, ``probe/binding/captions``):
  where the gallery holds swap pairs (the synthetic CUB's binding confusers, from the shard
  manifest's ``species``), the fraction of (caption naming a swapped colour, confuser image)
  pairs whose true image ranks above the confuser (:mod:`mmai.evaluation.probes`). ~50% is a bag of words.
* ``probe/burst/{stage1,two_stage,gar,gar_control}/R@10`` (with ``probe/burst/queries``): for
  captions of clear photos in bursts that also hold hard photos (low light, blur, distance,
  occlusion), the fraction of those hard photos in the top 10: what GAR's neighbours recover.

Every validation also writes the per-query outcomes behind these numbers (t2i class hits at 1 and
10 per caption and stage, the probes' per-query values, the query ids) to
``{default_root_dir}/per_query.npz``, so ``mmai ablate`` can pair rows query by query
(:mod:`mmai.evaluation.stats`). The stage-1 outcomes there come from the exact cosine ranking.

Exact full-gallery stage-1 Recall@K (``val/stage1/...``) is logged by the module itself.

A val gallery smaller than ``max(ks)`` is refused at setup (before any training), with what to
change. Should the evaluation still fail at an epoch's end, the weights are saved first
(``{default_root_dir}/checkpoints/eval-failed-epoch=E-step=S.ckpt``) and the error names that file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch.nn.functional as F

from lightning_glue.eval_set import EvalSet, log_global_values, save_failed_epoch_weights
from mmai.data.consistency import load_caption_table
from mmai.evaluation.metrics import evaluate_rankings
from mmai.evaluation.outcomes import retrieval_outcomes
from mmai.retrieval.gar import GAR_MODES, GraphAugmentedRetriever
from mmai.retrieval.graph import EpisodicGraph
from mmai.retrieval.index import VectorIndex
from mmai.retrieval.pipeline import Ranking, exact_stage1, rank, search_index

PER_QUERY_FILE = "per_query.npz"


class RetrievalEvalCallback(L.Callback):
    """FAISS + episodic graph + GAR on the validation gallery, every validation epoch.

    Args:
        candidates: stage-1 list length K that GAR re-ranks and returns (default 100).
        ks: the k of Recall@k, each ``<= candidates`` (default 1, 5, 10).
        index_kind: ``hnsw`` (default) or ``flat`` (exact).
        gar_alpha: weight of the retrieval score against graph activation (default 0.5).
        gar_damping: personalised PageRank damping (default 0.5).
        gar_mode: GAR's settings, a :data:`~mmai.retrieval.gar.GAR_MODES` name (default ``"burst"``:
            reciprocal-rank scores, the top 5 hits seed, temporal walk, the top 3 hits' burst-mates
            placed right after them; ``"legacy"``: GAR before issue 19).
        gar_seeds: hits that seed the walk (default ``None``: the mode's; 0: every hit).
        semantic_edges: build the graph with semantic edges (default ``None``: the mode's, off for
            ``"burst"``, on for ``"legacy"``).
        temporal_window_s: temporal edge window (default 3600 s).
        semantic_threshold: cosine of a semantic edge (default 0.85).
        max_semantic_degree: semantic neighbours per memory (default 10).
        control_seed: seed of the shuffled-metadata control (default 0).
        rerank_k: candidates the re-ranker re-scores per query, when the module has one (default 16).
        stage1_weight: lambda of the two-stage score ``match_logit + lambda * cosine`` (default 1.0).
        per_query: write ``per_query.npz`` into the trainer's ``default_root_dir`` (default True).
        top_down: also evaluate top-down stage 1 (default False).
        top_down_mass, top_down_entropy_stop, top_down_temperature: its settings (default ``None``:
            :class:`~mmai.retrieval.topdown.TopDownSettings`'s).
    """

    def __init__(self, candidates: int = 100, ks: tuple[int, ...] = (1, 5, 10), index_kind: str = "hnsw",
                 gar_alpha: float = 0.5, gar_damping: float = 0.5, temporal_window_s: float = 3600.0,
                 semantic_threshold: float = 0.85, max_semantic_degree: int = 10, control_seed: int = 0,
                 rerank_k: int = 16, stage1_weight: float = 1.0, per_query: bool = True, gar_mode: str = "burst",
                 gar_seeds: int | None = None, semantic_edges: bool | None = None, top_down: bool = False,
                 top_down_mass: float | None = None, top_down_entropy_stop: float | None = None,
                 top_down_temperature: float | None = None):
        super().__init__()
        from mmai.retrieval.topdown import TopDownSettings

        given = {"mass": top_down_mass, "entropy_stop": top_down_entropy_stop, "temperature": top_down_temperature}
        self.top_down = TopDownSettings(**{key: value for key, value in given.items() if value is not None}) \
            if top_down else None
        if max(ks) > candidates:
            raise ValueError(f"RetrievalEvalCallback: ks={ks} asks beyond candidates={candidates}")
        self.candidates, self.ks, self.index_kind = candidates, tuple(ks), index_kind
        self.gar_alpha, self.gar_damping, self.control_seed = gar_alpha, gar_damping, control_seed
        if gar_mode not in GAR_MODES:
            raise ValueError(f"RetrievalEvalCallback: gar_mode must be one of {sorted(GAR_MODES)}, got {gar_mode!r}")
        self.gar_mode, self.gar_seeds = gar_mode, gar_seeds
        if semantic_edges is None:
            semantic_edges = GAR_MODES[gar_mode].get("semantic_edges", True)
        self.graph_options = {"temporal_window_s": temporal_window_s, "semantic_threshold": semantic_threshold,
                              "max_semantic_degree": max_semantic_degree, "semantic_edges": bool(semantic_edges)}
        if rerank_k < 1:
            raise ValueError(f"RetrievalEvalCallback: rerank_k must be >= 1, got {rerank_k}")
        self.rerank_k, self.stage1_weight = int(rerank_k), float(stage1_weight)
        self.per_query = per_query
        self.species: list[dict] = []  # the shard manifest's species annotations (binding probe)
        self.caption_table: dict[int, list[int]] | None = None  # what each caption states (mmai.data.consistency)
        self.outcomes: dict[str, np.ndarray] = {}  # the last evaluation's per-query outcomes

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse a val gallery too small for ``ks`` before training starts (a manifest gives its size)."""
        if stage not in ("fit", "validate") or trainer.limit_val_batches == 0:
            return  # no validation will run
        images = _val_gallery_size(trainer)
        if images is not None:
            self.check_gallery(images)
        try:
            self.species = list(trainer.datamodule.manifest.get("species") or [])
        except (AttributeError, OSError, ValueError):
            self.species = []
        try:
            self.caption_table = load_caption_table(trainer.datamodule.shard_dir)
        except AttributeError:  # a datamodule without shards: class relevance only
            self.caption_table = None

    def check_gallery(self, images: int) -> None:
        """Raise a ValueError saying what to change when ``images`` cannot rank ``max(ks)`` deep."""
        if images < max(self.ks):
            raise ValueError(
                f"RetrievalEvalCallback: the val gallery has {images} image(s), fewer than the largest Recall@k "
                f"(ks={self.ks}); use smaller ks (e.g. retrieval ks: [1, {max(1, min(5, images))}] in the config, "
                "the callback's init_args.ks) or a bigger val split (write the shards from more images)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        data = pl_module.eval_set()  # a collective: every rank calls it
        two_stage = getattr(pl_module, "two_stage", None)
        pair_logits = getattr(pl_module, "pair_logits", None)
        metrics = None
        if trainer.is_global_zero:
            try:
                self.check_gallery(len(data.image_embeddings))
                metrics = self.evaluate(data, two_stage, pair_logits)
                if self.per_query and self.outcomes:
                    _save_outcomes(Path(trainer.default_root_dir) / PER_QUERY_FILE, self.outcomes)
            except Exception as error:  # noqa: BLE001 - reported below, after the weights are safe
                metrics = {"__error__": f"{type(error).__name__}: {error}"}
        metrics = trainer.strategy.broadcast(metrics, src=0)
        if "__error__" in metrics:
            path = save_failed_epoch_weights(trainer)
            raise RuntimeError(f"retrieval evaluation failed at the end of epoch {trainer.current_epoch} "
                               f"({metrics['__error__']}); this epoch's weights are saved in {path}")
        log_global_values(pl_module, {f"val/{key}": value for key, value in metrics.items()})  # rank 0's
        record = getattr(pl_module, "record_validation", None)
        if record is not None and "two_stage/k" in metrics:  # every rank: the broadcast numbers
            record(int(metrics["two_stage/k"]), self.stage1_weight, epoch=trainer.current_epoch,
                   step=trainer.global_step)

    def evaluate(self, data: EvalSet, two_stage: Callable | None = None,
                 pair_logits: Callable | None = None) -> dict[str, float]:
        """Stage 1 → (stage 2 if ``two_stage`` is given) → GAR and its control, on one gathered set.

        Args:
            data: the gathered evaluation set.
            two_stage: the module's ``two_stage(data, k=, mode=, stage1_weight=, length=)`` returning
                a :class:`~mmai.retrieval.two_stage.TwoStageResult`, or None (no re-ranker).
            pair_logits: the module's ``pair_logits(data, text_rows, image_rows) -> (P,)`` match
                logits of given (caption, image) rows, for the direct binding probe (None: no re-ranker).
        """
        images = data.image_embeddings.numpy()
        positions = np.arange(len(images))
        k = min(self.candidates, len(images))
        index = VectorIndex.build(images, positions, kind=self.index_kind, progress=False)
        start = time.perf_counter()
        stage1 = search_index(index, data.text_embeddings, k)  # (Nt, k) each
        hits, scores = stage1.positions, stage1.scores
        metrics = {"stage1/latency_ms": 1000 * (time.perf_counter() - start) / len(hits)}
        exact = exact_stage1(data.text_embeddings, F.normalize(data.image_embeddings.float(), dim=-1), k).positions
        rankings = {"stage1": exact.numpy()}
        if two_stage is not None:
            hits, scores = self._two_stage(data, two_stage, k, metrics)
            rankings["two_stage"] = hits
        labels = (data.image_ids, data.class_ids, data.text_image_ids, data.text_class_ids)
        graph = EpisodicGraph(positions, images, data.timestamps.numpy(), data.places, index=index,
                              progress=False, **self.graph_options)
        metrics.update({f"graph/{name}": float(value) for name, value in graph.stats().items() if name != "edges"})
        if self.top_down is not None:
            rankings["top_down"] = self._top_down(data, graph, exact.numpy(), k, labels, metrics)
        for stage, stage_graph in (("gar", graph), ("gar_control", graph.shuffled_control(self.control_seed))):
            retriever = GraphAugmentedRetriever.from_mode(
                stage_graph, self.gar_mode, gar_weight=self.gar_alpha, damping=self.gar_damping,
                num_seeds=self.gar_seeds, semantic_edges=self.graph_options["semantic_edges"])
            start = time.perf_counter()
            ranked = rank(Ranking(hits, scores), gar=retriever, gar_length=k).gar.ids  # (Nt, k) positions
            rankings[stage] = np.asarray(ranked)
            if stage == "gar":
                metrics["gar/latency_ms"] = 1000 * (time.perf_counter() - start) / len(hits)
            recall = evaluate_rankings(*labels, t2i=ranked, ks=self.ks)
            metrics.update({f"{stage}/{key}": value for key, value in recall.items()})
        self.outcomes = retrieval_outcomes(data, rankings, metrics, self.species, self.caption_table,
                                           self.stage1_weight, pair_logits)
        return metrics

    def _top_down(self, data: EvalSet, graph: EpisodicGraph, exact: np.ndarray, k: int, labels: tuple,
                  metrics: dict) -> np.ndarray:
        """The top-down row: its recall, share scored, latency and the entropy's AUROC for a stage-1 miss."""
        from mmai.retrieval.topdown import TopDownIndex, auroc, top_down_rankings

        depth = min(max(self.ks), k)  # its recall needs max(ks) deep; a longer list would make it score more
        found = top_down_rankings(TopDownIndex.from_graph(graph), data.text_embeddings.numpy(), depth, self.top_down)
        ranked = found["ranked"]  # (Nt, k) gallery positions
        metrics.update({f"top_down/{key}": value
                        for key, value in evaluate_rankings(*labels, t2i=ranked, ks=self.ks).items()})
        metrics["top_down/fraction_scored"] = float(found["fraction_scored"].mean())
        metrics["top_down/descended"] = float(found["descended"].mean())
        metrics["top_down/latency_ms"] = float(found["latency_ms"])
        classes, text_classes = data.class_ids.numpy(), data.text_class_ids.numpy()
        hit = classes[exact] == text_classes[:, None]  # (Nt, k) exact stage 1
        for at in (1, 10):
            metrics[f"top_down/entropy_auroc/stage1_miss@{at}"] = auroc(found["entropy"], ~hit[:, :at].any(axis=1))
        return ranked

    def _two_stage(self, data: EvalSet, two_stage: Callable, k: int, metrics: dict) -> tuple[np.ndarray, np.ndarray]:
        """Log two-stage (combined and match-only) Recall@K; return the combined t2i list for GAR."""
        rerank_k = min(self.rerank_k, k)
        if rerank_k < self.rerank_k and not getattr(self, "_warned_rerank_k", False):
            from lightning.pytorch.utilities import rank_zero_warn

            self._warned_rerank_k = True
            rank_zero_warn(f"retrieval.rerank_k {self.rerank_k} is more than the {k} candidates stage 1 returns "
                           f"(retrieval.candidates {self.candidates}, gallery {len(data.image_ids)} images): the "
                           f"re-ranker re-scores {rerank_k}; set --retrieval.rerank_k {rerank_k} or less to silence this")
        result = two_stage(data, k=rerank_k, mode="combined", stage1_weight=self.stage1_weight, length=k,
                           also_modes=("match",))
        metrics.update({f"two_stage/{key}": value for key, value in result.metrics.items()})
        metrics["two_stage/latency_ms"] = result.latency_ms["stage1"] + result.latency_ms["stage2"]
        metrics["two_stage/rerank_latency_ms"] = result.latency_ms["stage2"]
        metrics["two_stage/k"] = float(rerank_k)
        metrics.update({f"two_stage_match/{key}": value for key, value in result.mode_metrics["match"].items()})
        hits = result.rankings["t2i"][:, :k].numpy()  # (Nt, k)
        scores = result.scores["t2i"][:, :k].numpy()  # (Nt, k)
        return hits, scores


def _save_outcomes(path: Path, outcomes: dict[str, np.ndarray]) -> None:
    """Write the per-query outcomes atomically (a reader never sees half a file)."""
    import io

    from mmai.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **outcomes)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_outcomes(path: Path) -> dict[str, np.ndarray]:
    """The per-query outcomes a validation saved (``per_query.npz``), in canonical query order.

    The gathered evaluation set's row order depends on the batch size and the worker count, so two
    runs list the same captions in different orders. Here every per-caption array is put in the
    order of a stable sort by image id (captions of one image keep the shards' order), and the
    probes' query rows are renumbered into that order and sorted, so runs pair query by query.
    """
    with np.load(path) as data:
        outcomes = {key: data[key] for key in data.files}
    text_ids = outcomes.get("query/text_image_ids")
    if text_ids is None:
        return outcomes
    order = np.argsort(text_ids, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    probes = {"query/binding_text_rows": ("/probe/binding", "/probe/binding_direct", "query/binding_units"),
              "query/burst_text_rows": ("/probe/burst@10",)}
    for rows_key, suffixes in probes.items():
        if rows_key in outcomes:
            renumbered = position[outcomes[rows_key]]
            sort = np.argsort(renumbered, kind="stable")
            outcomes[rows_key] = renumbered[sort]
            for key in [k for k in outcomes if k.endswith(suffixes)]:
                outcomes[key] = outcomes[key][sort]
    for key, value in list(outcomes.items()):
        if key in ("query/text_image_ids", "query/species") or (
                key.endswith(("hit@1", "hit@10", "p@10")) and value.shape == text_ids.shape):
            outcomes[key] = value[order]
    return outcomes


def _val_gallery_size(trainer: L.Trainer) -> int | None:
    """Images in the val split, from the datamodule's shard manifest (``None`` when unknown)."""
    datamodule = getattr(trainer, "datamodule", None)
    try:
        return int(datamodule.manifest["splits"]["val"]["images"])
    except (AttributeError, KeyError, TypeError, ValueError, OSError):
        return None
