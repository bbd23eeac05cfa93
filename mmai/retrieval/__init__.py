"""MMAI's retrieval library: how a query finds memories, for evaluation and personal memory alike.

* :class:`VectorIndex` (``index.py``) — stage 1: FAISS HNSW / flat search by cosine
  (``vectors.py`` checks and normalises what goes in).
* ``two_stage.py`` — stage 2: the fusion re-ranker's match logit added to stage 1's cosine over
  the top ``rerank_k`` (ALBEF's ``k_test``), on any ranked lists and any re-scoring callable.
* :class:`EpisodicGraph` (``graph.py``) — memories linked by time and content (edges found by
  ``edges.py``), with episodes and schemas above them (``hierarchy.py``).
* :class:`GraphAugmentedRetriever` (``gar.py``) — HippoRAG-style personalised PageRank
  (``ppr.py``: power iteration or local push) from the top hits, with reasons.
* ``topdown.py`` — stage 1 by descending the graph's schemas and episodes instead of scoring
  every memory.
* ``pipeline.py`` — :func:`~mmai.retrieval.pipeline.rank`: stage-1 lists → optional re-ranker →
  optional GAR → rankings, scores and reasons; the one function the validation callback and the
  personal memory's search both call.

Never imports :mod:`mmai.memory` (an import-linter contract): the library knows galleries,
vectors, graphs and scorers, not a person's archive. No Lightning.
"""

from mmai.retrieval.gar import Contribution, Explanation, GARResult, GraphAugmentedRetriever
from mmai.retrieval.graph import EpisodicGraph, GraphConfig
from mmai.retrieval.index import VectorIndex
from mmai.retrieval.ppr import Transition, personalized_pagerank
from mmai.retrieval.vectors import as_unit_vectors

__all__ = ["Contribution", "EpisodicGraph", "Explanation", "GARResult", "GraphAugmentedRetriever", "GraphConfig",
           "Transition", "VectorIndex", "as_unit_vectors", "personalized_pagerank"]
