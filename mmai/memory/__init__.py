"""MMAI's memory layer: where embedded memories live and how they are found again.

* :class:`VectorIndex` (``index.py``) — stage-1 FAISS HNSW / flat search by cosine.
* :class:`MemoryStore` (``store.py``) — persistent ids, embeddings and metadata in ChromaDB,
  with :func:`build_where` filters ("only 2023", "only in Mumbai") over the metadata schema
  of ``filters.py``.
* :class:`EpisodicGraph` (``graph.py``) — memories linked by time and content (NetworkX),
  with episodes and schemas above them; edges found by ``edges.py``, levels by ``hierarchy.py``.
* :class:`GraphAugmentedRetriever` (``gar.py``) — HippoRAG-style personalised PageRank
  (``ppr.py``) re-ranking of stage-1 hits, with explanations.

Pure NumPy/FAISS/Chroma/NetworkX/SciPy; no Lightning, no torch.
"""

from mmai.memory.filters import METADATA_FIELDS, build_where
from mmai.memory.gar import Contribution, Explanation, GARResult, GraphAugmentedRetriever
from mmai.memory.graph import EpisodicGraph, GraphConfig
from mmai.memory.index import VectorIndex
from mmai.memory.ppr import Transition, personalized_pagerank
from mmai.memory.store import MemoryStore, StoreHits, StoreRecords
from mmai.memory.vectors import as_unit_vectors

__all__ = [
    "METADATA_FIELDS",
    "Contribution",
    "EpisodicGraph",
    "Explanation",
    "GARResult",
    "GraphAugmentedRetriever",
    "GraphConfig",
    "MemoryStore",
    "StoreHits",
    "StoreRecords",
    "Transition",
    "VectorIndex",
    "as_unit_vectors",
    "build_where",
    "personalized_pagerank",
]
