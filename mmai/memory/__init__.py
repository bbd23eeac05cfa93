"""MMAI's memory layer: where embedded memories live and how they are found again.

* :class:`VectorIndex` (``index.py``) — stage-1 FAISS HNSW / flat search by cosine.
* :class:`MemoryStore` (``store.py``) — persistent ids, embeddings and metadata in ChromaDB,
  with :func:`build_where` filters ("only 2023", "only in Mumbai") over the metadata schema
  of ``filters.py``.
* :class:`EpisodicGraph` (``graph.py``) — memories linked by time and content (NetworkX),
  with episodes and schemas above them; edges found by ``edges.py``, levels by ``hierarchy.py``.
* :class:`GraphAugmentedRetriever` (``gar.py``) — HippoRAG-style personalised PageRank
  (``ppr.py``) re-ranking of stage-1 hits, with explanations.
* :class:`~mmai.memory.personal.PersonalMemory` (``personal.py``) — a person's memories over all
  of these: a facade over ``index_sync.py``, ``journal.py``, ``records.py``, ``ingester.py``,
  ``search.py``, ``maintenance.py`` and ``models.py``, searched with :class:`Filters` and
  :class:`SearchOptions` (the re-ranker and its checkpoints, loaded on demand, need torch).

Pure NumPy/FAISS/Chroma/NetworkX/SciPy at import; no Lightning, and torch only for the models.
"""

from mmai.memory.filters import METADATA_FIELDS, Filters, build_where
from mmai.memory.gar import Contribution, Explanation, GARResult, GraphAugmentedRetriever
from mmai.memory.graph import EpisodicGraph, GraphConfig
from mmai.memory.index import VectorIndex
from mmai.memory.ppr import Transition, personalized_pagerank
from mmai.memory.search import SearchOptions
from mmai.memory.store import MemoryStore, StoreHits, StoreRecords
from mmai.memory.vectors import as_unit_vectors
from mmai.memory.write_policy import WritePolicy

__all__ = [
    "METADATA_FIELDS",
    "Contribution",
    "EpisodicGraph",
    "Explanation",
    "Filters",
    "GARResult",
    "GraphAugmentedRetriever",
    "GraphConfig",
    "MemoryStore",
    "SearchOptions",
    "StoreHits",
    "StoreRecords",
    "Transition",
    "VectorIndex",
    "WritePolicy",
    "as_unit_vectors",
    "build_where",
    "personalized_pagerank",
]
