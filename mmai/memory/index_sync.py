"""The derived stores of a personal memory kept in step with Chroma: the FAISS index and the graph.

Chroma is the source of truth. The FAISS index (:class:`~mmai.retrieval.index.VectorIndex`) is saved
as ``index.npz`` with ``index.manifest.json`` (count and digest of the ids); on open it is
compared with Chroma: memories missing from it are added from Chroma, an index holding memories
Chroma does not (or a missing/damaged file) is rebuilt from Chroma. It is exact ``flat`` below
:data:`HNSW_FROM` memories, HNSW above (``index_kind="auto"``). The episodic graph
(:class:`~mmai.retrieval.graph.EpisodicGraph`) is built from Chroma (times, places, importance) and
FAISS (semantic edges) on first use and kept in memory; memories added or forgotten in this
process update it in place (:meth:`EpisodicGraph.updated`), another process's writes rebuild it.

Only a holder of the store's write lock writes ``index.npz``: a reader that finds it stale repairs
the index in memory (:attr:`IndexSync.unsaved` says so) and :meth:`IndexSync.persist_pending` saves
it later, under the lock. :meth:`IndexSync.table` is the in-memory metadata table of filtered search.

FAISS and the graph need int64 ids: a memory's is the integer value of its first 15 hex digits
(:func:`int_id`); :attr:`IndexSync.str_ids` maps them back.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mmai.memory.files import atomic_write
from mmai.retrieval.graph import EpisodicGraph, GraphConfig
from mmai.retrieval.index import VectorIndex
from mmai.memory.store import MemoryStore
from mmai.memory.table import MemoryTable

__all__ = ["HNSW_FROM", "PAGE", "IndexSync", "ids_digest", "int_id"]

HNSW_FROM = 20_000  # index_kind="auto": exact flat index below this many memories, HNSW from here
PAGE = 5_000  # Chroma records read per page


def int_id(memory_id: str) -> int:
    """The int64 id of a memory in FAISS and the graph: its first 15 hex digits as an integer."""
    return int(memory_id[:15], 16)


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted ids (the manifest's ``ids_sha256``)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


class IndexSync:
    """The FAISS index and episodic graph of one store, derived from its Chroma collection.

    Args:
        root: the memory folder (``index.npz`` and ``index.manifest.json`` live there).
        store: the Chroma store (source of truth).
        use_gpu: an exact flat index on GPU 0 (faiss-gpu).
        index_kind: ``"auto"``, ``"flat"`` or ``"hnsw"``.
        graph_config: how the episodic graph is built.
        progress: tqdm bars.
        on_change: called whenever the set of memories changed (the owner drops caches that
            depend on it).
    """

    def __init__(self, root: Path, store: MemoryStore, *, use_gpu: bool, index_kind: str, graph_config: GraphConfig,
                 progress: bool, on_change: Callable[[], None] = lambda: None) -> None:
        self.root, self.store, self.use_gpu, self.index_kind = Path(root), store, use_gpu, index_kind
        self.graph_config, self.progress, self._on_change = graph_config, progress, on_change
        self.index: VectorIndex | None = None
        self.str_ids: dict[int, str] = {}
        self.problem: str | None = None  # why the saved index could not be used, after load()
        #: why the in-memory index differs from ``index.npz`` (a reader repaired it without the
        #: write lock), ``None`` when the file is up to date; see :meth:`persist_pending`.
        self.unsaved: str | None = None
        self._previous_of: tuple | None = None  # (mtime, size, inode) of an index.npz to keep as previous
        #: after a reader's :meth:`sync`: memories in Chroma it could not read yet (another process
        #: is writing them), else ``None``; the next read tries again
        self.incomplete: str | None = None
        self._graph: EpisodicGraph | None = None
        self._touched: set[int] = set()  # int ids whose graph attributes changed since the graph was made
        self._graph_stale = False  # memories were added, removed or touched since the graph was made
        self._table: MemoryTable | None = None

    @property
    def index_path(self) -> Path:
        return self.root / "index.npz"

    @property
    def previous_path(self) -> Path:
        """A saved index replaced by one over fewer memories (its embeddings may restore them)."""
        return self.root / "index.previous.npz"

    @property
    def manifest_path(self) -> Path:
        return self.root / "index.manifest.json"

    @property
    def built_graph(self) -> EpisodicGraph | None:
        """The graph if it is built (``None`` otherwise; :meth:`graph` builds it)."""
        return self._graph

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    # ------------------------------------------------------------------ ids
    def chroma_ids(self) -> list[str]:
        """Every id in Chroma (paged; ids only)."""
        ids: list[str] = []
        total = self.store.count()
        for offset in range(0, total, PAGE):
            ids += self.store.collection.get(limit=PAGE, offset=offset, include=[])["ids"]
        return ids

    def set_ids(self, ids: Iterable[str]) -> None:
        self.str_ids = {}
        for memory_id in ids:
            number = int_id(memory_id)
            if self.str_ids.setdefault(number, memory_id) != memory_id:
                raise ValueError(f"ids {memory_id} and {self.str_ids[number]} share their first 15 hex digits")

    def resolve_id(self, memory_id: str) -> str:
        """A full id from an id or a unique prefix of at least 8 hex digits.

        Raises:
            KeyError: no memory, or the prefix is ambiguous.
        """
        memory_id = str(memory_id).strip().lower()
        if len(memory_id) >= 15 and self.str_ids.get(int(memory_id[:15], 16), "").startswith(memory_id):
            return self.str_ids[int(memory_id[:15], 16)]
        matches = [i for i in self.str_ids.values() if len(memory_id) >= 8 and i.startswith(memory_id)]
        if len(matches) != 1:
            what = "is ambiguous" if matches else "is not a stored memory"
            raise KeyError(f"id {memory_id!r} {what} in {self.root} (give 8 or more hex digits of an id from search)")
        return matches[0]

    # ------------------------------------------------------------------ the FAISS index
    def kind_for(self, count: int) -> str:
        if self.use_gpu:
            return "flat"
        if self.index_kind != "auto":
            return self.index_kind
        return "flat" if count < HNSW_FROM else "hnsw"

    def load(self) -> VectorIndex | None:
        """The saved index, or ``None`` when it is missing or damaged (:attr:`problem` says which)."""
        self.problem = None
        try:
            return VectorIndex.load(self.index_path, use_gpu=self.use_gpu)
        except FileNotFoundError:
            self.problem = f"{self.index_path.name} missing"
        except (ValueError, RuntimeError) as error:
            self.problem = f"{self.index_path} damaged: {error}"
        return None  # rebuilt from Chroma, the source of truth

    def sync(self, persist: bool = True) -> str:
        """Make the FAISS index hold exactly Chroma's memories; returns what was done.

        Args:
            persist: save what changed (``index.npz``, and an index over memories Chroma lacks
                kept as ``index.previous.npz``). Only a caller holding the store's write lock may;
                a reader passes ``False``: the repaired index lives in memory and :attr:`unsaved`
                says why, until :meth:`persist_pending` (under the lock) writes it.
        """
        self.incomplete = None
        ids = self.chroma_ids()
        self.set_ids(ids)
        wanted = np.array([int_id(i) for i in ids], dtype=np.int64)
        index = self.index if self.index is not None else self.load()
        if not len(wanted):
            self.index = None
            return "empty"
        if index is None or index.dim != self.store.dim or not np.isin(index.ids, wanted).all():
            keep_previous = index is not None and self.index_path.is_file()
            # an index over memories Chroma lacks is kept for `mmai memory rebuild` to restore them from
            self.rebuild(persist=persist, keep_previous=keep_previous)
            why = "it did not match Chroma" if index is not None else self.problem
            return "rebuilt from Chroma" + (f" ({why})" if why else "")
        missing = wanted[~np.isin(wanted, index.ids)]
        self.index = index
        if len(missing):
            from chromadb.errors import InternalError

            wanted_ids = [self.str_ids[int(m)] for m in missing]
            try:
                records = self.store.get(wanted_ids)
            except InternalError:
                if persist:
                    raise  # the owner reopens Chroma and retries
                self.store.reopen()  # this client may be stale (a write that did not announce itself)
                try:
                    records = self.store.get(wanted_ids)
                except InternalError:
                    # another process is writing them now: its Chroma client has not flushed their
                    # vectors yet, so none can read them; the reader goes on without them until it can
                    self.incomplete = f"{len(missing)} memories being written by another process, not readable yet"
                    return f"in sync but for {self.incomplete}"
            index.add(records.embeddings, missing, progress=self.progress)
            self._changed(persist, keep_previous=False)
            self.invalidate()
            return f"added {len(missing)} missing from Chroma"
        return "in sync"

    def _file_state(self) -> tuple | None:
        try:
            stat = self.index_path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _changed(self, persist: bool, keep_previous: bool) -> None:
        """The in-memory index differs from ``index.npz``: save now (``persist``) or remember it."""
        if keep_previous and self._previous_of is None:
            self._previous_of = self._file_state()  # the file that holds memories Chroma lacks
        if persist:
            self.persist_pending(force=True)
        else:
            self.unsaved = "rebuilt in memory" if keep_previous or self._previous_of else "repaired in memory"

    def persist_pending(self, force: bool = False) -> bool:
        """Write the index repaired by a reader (call under the write lock); returns whether it wrote.

        A saved index over memories Chroma lacks is first copied to ``index.previous.npz`` if the
        file is still the one the repair replaced (another writer may have saved a newer one since:
        that one is not "previous" and is simply overwritten by the repaired index)."""
        if self.unsaved is None and not force:
            return False
        if self._previous_of is not None and self._file_state() == self._previous_of:
            atomic_write(self.previous_path, lambda file: file.write(self.index_path.read_bytes()))
        self.save()
        return True

    def reload(self, persist: bool = True) -> str:
        """Forget the in-memory index and graph, then :meth:`sync` from the saved file (another
        process wrote); ``persist`` as in :meth:`sync`."""
        self.index = None
        self.unsaved, self._previous_of = None, None  # the file on disk is what counts now
        self.invalidate()
        return self.sync(persist)

    def rebuild(self, persist: bool = True, keep_previous: bool = False) -> None:
        """A fresh index from every embedding in Chroma (saved unless ``persist=False``, see :meth:`sync`)."""
        records = self.store.all_embeddings(progress=self.progress)
        self.set_ids(records.ids)
        numbers = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        self.index = VectorIndex.build(records.embeddings, numbers, kind=self.kind_for(len(numbers)),
                                       use_gpu=self.use_gpu, progress=self.progress)
        self._changed(persist, keep_previous)
        self.invalidate()

    def rebuild_from(self, keep: np.ndarray) -> None:
        """A fresh index over ``keep`` (int ids) with the current index's vectors."""
        if not len(keep):
            self.index = None
            self.index_path.unlink(missing_ok=True)
            self.manifest_path.unlink(missing_ok=True)
            return
        vectors = self.index.reconstruct(keep)  # (n, D)
        self.index = VectorIndex.build(vectors, keep, kind=self.kind_for(len(keep)), use_gpu=self.use_gpu,
                                       progress=self.progress)
        self.save()

    def save(self) -> None:
        """Write ``index.npz`` and its manifest (count, ids digest, kind, dim)."""
        if self.index is None:
            return
        self.index.save(self.index_path)
        ids = [self.str_ids[int(i)] for i in self.index.ids]
        manifest = {"count": len(ids), "ids_sha256": ids_digest(ids), "kind": self.index.kind,
                    "dim": self.index.dim, "saved_at": time.time()}
        data = (json.dumps(manifest, indent=1) + "\n").encode()
        atomic_write(self.manifest_path, lambda file: file.write(data))
        self.unsaved, self._previous_of = None, None

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Add new memories' unit vectors ``(n, E)`` to the in-memory index (saved by :meth:`finish`)."""
        numbers = np.array([int_id(i) for i in ids], dtype=np.int64)
        for number, memory_id in zip(numbers.tolist(), ids):
            self.str_ids[number] = memory_id
        if self.index is None:
            self.index = VectorIndex(vectors.shape[1], self.kind_for(len(ids)), use_gpu=self.use_gpu)
        self.index.add(vectors, numbers, progress=False)
        self._memories_changed()

    def finish(self) -> None:
        """After adding: switch kind if the size calls for it (e.g. flat -> HNSW), and save."""
        if self.index is not None and self.index.kind != self.kind_for(len(self.index)):
            self.rebuild_from(self.index.ids)
        self.save()

    def remove(self, ids: list[str]) -> None:
        """Drop memories from the index (rebuilt over the rest and saved) and the id map."""
        gone = np.array([int_id(i) for i in ids], dtype=np.int64)
        self.rebuild_from(self.index.ids[~np.isin(self.index.ids, gone)])
        for number in gone.tolist():
            self.str_ids.pop(number, None)
        self._memories_changed()

    # ------------------------------------------------------------------ the graph
    def invalidate(self) -> None:
        """Forget state that depends on the set of memories (the graph and table here, the owner's caches)."""
        self._graph = None
        self._table = None
        self._touched.clear()
        self._graph_stale = False
        self._on_change()

    def _memories_changed(self) -> None:
        """Memories were added or removed here: the table is read again, and the graph is brought
        up to date incrementally (:meth:`EpisodicGraph.updated`) on its next use, not rebuilt."""
        self._table = None
        self._graph_stale = True
        self._on_change()

    def touch(self, ids: Iterable[str]) -> None:
        """Stored memories whose graph attributes (time, place, importance) changed: the next
        :meth:`graph` re-reads them."""
        self._touched.update(int_id(i) for i in ids)
        self._graph_stale = True
    def forget_table(self) -> None:
        """Drop the metadata table (a record changed in Chroma; the graph keeps its own copy)."""
        self._table = None

    def table(self) -> MemoryTable:
        """Every indexed memory's metadata columns and vector (:class:`~mmai.memory.table.MemoryTable`):
        metadata read from Chroma (no embeddings), vectors from the FAISS index (the ones stage 1
        scores), on first use; kept until a change."""
        if self._table is None:
            if self.index is None:
                raise ValueError(f"{self.root} holds no memories: ingest some before searching them")
            ids, metadatas = [], []
            for offset in range(0, self.store.count(), PAGE):
                page = self.store.collection.get(limit=PAGE, offset=offset, include=["metadatas"])
                ids += page["ids"]
                metadatas += [metadata or {} for metadata in page["metadatas"]]
            numbers = np.array([int_id(i) for i in ids], dtype=np.int64)
            indexed = np.isin(numbers, self.index.ids)  # a memory another process is still writing is left out
            keep = np.flatnonzero(indexed)
            self._table = MemoryTable([ids[i] for i in keep], numbers[keep], self.index.reconstruct(numbers[keep]),
                                      [metadatas[i] for i in keep])
        return self._table

    def graph(self) -> EpisodicGraph:
        """The episodic graph over every memory: built from Chroma + FAISS on first use, then
        updated in place for memories added, forgotten or touched since (equal to a rebuild with
        the same schemas; tests/test_graph_incremental.py)."""
        if self._graph is None:
            if self.index is None:
                raise ValueError(f"{self.root} holds no memories: ingest some before using the graph")
            records = self.store.all_embeddings(progress=self.progress)
            numbers = np.array([int_id(i) for i in records.ids], dtype=np.int64)
            timestamps = [m.get("timestamp", np.nan) for m in records.metadatas]
            places = [m.get("place") for m in records.metadatas]
            importance = [m.get("importance", 0.0) for m in records.metadatas]
            self._graph = EpisodicGraph(numbers, records.embeddings, timestamps, places, importance=importance,
                                        index=self.index, config=self.graph_config, progress=self.progress)
            self._touched.clear()
            self._graph_stale = False
            return self._graph
        if not self._graph_stale:  # the search path: nothing changed, nothing to compare
            return self._graph
        current = np.zeros(0, np.int64) if self.index is None else self.index.ids
        if not len(current):
            raise ValueError(f"{self.root} holds no memories: ingest some before using the graph")
        touched = np.array(sorted(self._touched), dtype=np.int64)
        held = self._graph.ids
        remove = np.union1d(held[~np.isin(held, current)], touched[np.isin(touched, held)])
        add = np.union1d(current[~np.isin(current, held)], touched[np.isin(touched, current)])
        if len(add) or len(remove):
            records = self.store.get([self.str_ids[int(n)] for n in add], include_embeddings=True) if len(add) \
                else None
            self._graph = self._graph.updated(
                add_ids=add if records is None else np.array([int_id(i) for i in records.ids], np.int64),
                add_embeddings=None if records is None else records.embeddings,
                add_timestamps=None if records is None else [m.get("timestamp", np.nan) for m in records.metadatas],
                add_places=None if records is None else [m.get("place") for m in records.metadatas],
                add_importance=None if records is None else [m.get("importance", 0.0) for m in records.metadatas],
                remove_ids=remove, index=self.index, progress=self.progress)
        self._touched.clear()
        self._graph_stale = False
        return self._graph
