"""MMAI's personal-memory product: a person's photos, notes and songs, with a time and a place.

What is about a person's archive lives here; how memories are ranked is the retrieval library's
(:mod:`mmai.retrieval`), which this package calls and which never imports it.

* :class:`~mmai.memory.personal.PersonalMemory` (``personal.py``) — the facade: ingest, search,
  related, open, forget, consolidate, check and repair, over
* :class:`MemoryStore` (``store.py``) — ids, embeddings and metadata in ChromaDB (the store of
  record), with :func:`build_where` filters over the metadata schema of ``filters.py`` and the
  in-memory copy of that metadata (``table.py``) that search filters by;
* ``index_sync.py`` (the vector index and episodic graph kept in step with the store),
  ``journal.py`` (crash-safe multi-step writes), ``records.py`` (hits and their metadata),
  ``ingester.py``/``ingest.py`` (files and their metadata in; the one metadata validator),
  ``write_policy.py`` (ADD/MERGE/DISCARD at write time), ``maintenance.py`` (consolidate,
  forget, check), ``forgetting.py`` (access-aware forgetting), ``words.py`` (filters read from the
  query's words), ``search.py`` (:class:`SearchOptions`; the search stages over
  :func:`mmai.retrieval.pipeline.rank`) and ``models.py`` (the checkpoints, loaded on demand).

Pure NumPy/FAISS/Chroma/NetworkX/SciPy at import; no Lightning, and torch only for the models.
"""

from mmai.memory.filters import METADATA_FIELDS, Filters, build_where
from mmai.memory.search import SearchOptions
from mmai.memory.store import MemoryStore, StoreHits, StoreRecords
from mmai.memory.write_policy import WritePolicy

__all__ = ["METADATA_FIELDS", "Filters", "MemoryStore", "SearchOptions", "StoreHits", "StoreRecords", "WritePolicy",
           "build_where"]
