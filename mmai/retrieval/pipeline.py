"""The one query chain: stage-1 lists → optional re-ranker → optional GAR → rankings, scores, reasons.

Both callers go through :func:`rank`:

* evaluation (``callbacks/retrieval.py`` → :meth:`RetrievalEvalCallback.evaluate`, and
  :func:`mmai.retrieval.two_stage.evaluate_two_stage` per query batch), over a whole gallery of
  cached embeddings and patch tokens, many queries at once;
* the personal memory's search (:class:`mmai.memory.search.Searcher`), one query over a person's
  archive, with the re-ranker's logits of the image candidates and the memory's episodic graph.

Stage 1 differs by where the gallery lives (FAISS, an exact scan, a filtered table, the top-down
descent), so it comes in as a :class:`Ranking`; :func:`search_index` and :func:`exact_stage1` make
one from a :class:`~mmai.retrieval.index.VectorIndex` or a matrix of gallery embeddings.

Stage 2 (:class:`Rerank`) re-orders the first ``rerank_k`` by
:func:`~mmai.retrieval.two_stage.rerank_topk` (match logit + ``stage1_weight`` x stage-1 cosine;
the rest keeps stage-1 order, scores shifted below). GAR (a
:class:`~mmai.retrieval.gar.GraphAugmentedRetriever`) then ranks every memory of its graph from
the list's hits and returns ``gar_length`` of them, with reasons when asked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from mmai.retrieval.gar import GARResult, GraphAugmentedRetriever
from mmai.retrieval.index import VectorIndex
from mmai.retrieval.two_stage import RerankFn, rerank_topk, stage1_topk

__all__ = ["PipelineResult", "Ranking", "Rerank", "exact_stage1", "rank", "search_index"]


@dataclasses.dataclass
class Ranking:
    """Ranked lists, best first.

    Attributes:
        positions: ``(Q, R)`` gallery positions or memory ids (``-1`` pads a short list).
        scores: ``(Q, R)`` their scores, non-increasing along a row.
    """

    positions: Any
    scores: Any

    def numpy(self) -> "Ranking":
        """The same lists as NumPy arrays (int64 positions, float scores)."""
        return Ranking(_numpy(self.positions).astype(np.int64, copy=False), _numpy(self.scores))

    def torch(self) -> "Ranking":
        """The same lists as torch tensors."""
        return Ranking(torch.as_tensor(self.positions), torch.as_tensor(self.scores))


@dataclasses.dataclass(frozen=True)
class Rerank:
    """Stage 2: how the first ``rerank_k`` candidates are re-scored.

    Attributes:
        fn: ``fn(query_indices (Q,), candidates (Q, rerank_k)) -> match logits (Q, rerank_k)``
            (:func:`~mmai.retrieval.two_stage.fusion_rerank_fn` over cached tensors, or the
            logits a search already computed).
        rerank_k: candidates re-scored per query (default 16).
        stage1_weight: lambda of ``match_logit + stage1_weight * stage-1 cosine`` (default 1.0).
        mode: ``"combined"`` (default), ``"match"`` or ``"stage1"``
            (:data:`~mmai.retrieval.two_stage.RERANK_MODES`).
    """

    fn: RerankFn
    rerank_k: int = 16
    stage1_weight: float = 1.0
    mode: str = "combined"


@dataclasses.dataclass
class PipelineResult:
    """What each stage of :func:`rank` returned.

    Attributes:
        stage1: the stage-1 lists given.
        two_stage: after the re-ranker (``None`` without one); torch tensors.
        gar: GAR's result (``None`` without a graph): ids, fused scores, reasons.
    """

    stage1: Ranking
    two_stage: Ranking | None = None
    gar: GARResult | None = None

    @property
    def final(self) -> Ranking:
        """The last stage's lists (GAR's ids and fused scores, else the two-stage or stage-1 lists)."""
        if self.gar is not None:
            return Ranking(self.gar.ids, self.gar.scores)
        return self.two_stage if self.two_stage is not None else self.stage1


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def search_index(index: VectorIndex, queries: Any, length: int) -> Ranking:
    """Stage 1 from a vector index (FAISS HNSW or flat): the top ``length`` of each query."""
    scores, positions = index.search(_numpy(queries), int(length))  # (Q, R) each
    return Ranking(positions, scores)


def exact_stage1(queries: torch.Tensor, gallery_unit: torch.Tensor, length: int) -> Ranking:
    """Stage 1 by an exact cosine scan of unit-norm gallery embeddings ``(G, E)``."""
    positions, scores = stage1_topk(queries, gallery_unit, int(length))
    return Ranking(positions, scores)


def rank(stage1: Ranking, *, rerank: Rerank | None = None, gar: GraphAugmentedRetriever | None = None,
         gar_length: int | None = None, explain: bool = False,
         query_indices: torch.Tensor | None = None) -> PipelineResult:
    """Stage 1's lists → optional re-ranker → optional GAR.

    Args:
        stage1: the stage-1 lists (``(Q, R)``).
        rerank: stage 2 (default ``None``: off).
        gar: the graph's retriever (default ``None``: off); it is seeded by the list it follows
            (the two-stage list when there is a re-ranker).
        gar_length: results GAR returns per query (default: the list's length).
        explain: GAR explains every returned memory (default False; a caller that shows only a part
            of the list calls :meth:`~mmai.retrieval.gar.GraphAugmentedRetriever.explain` for it).
        query_indices: ``(Q,)`` the queries' rows, passed to ``rerank.fn`` (default ``arange(Q)``).
    """
    result = PipelineResult(stage1)
    ranked = stage1
    if rerank is not None:
        lists = stage1.torch()
        positions, scores = rerank_topk(lists.positions, lists.scores, k=rerank.rerank_k, rerank_fn=rerank.fn,
                                        mode=rerank.mode, stage1_weight=rerank.stage1_weight,
                                        query_indices=query_indices, return_scores=True)
        ranked = result.two_stage = Ranking(positions, scores)
    if gar is not None:
        lists = ranked.numpy()
        result.gar = gar.rerank(lists.positions, lists.scores, gar_length, explain=explain)
    return result
