"""A personal memory: a person's photos, notes and recordings, searchable in words with filters.

One object over three stores, kept consistent, with the operations of the memory-system
literature: an episodic graph searched HippoRAG-style (Gutiérrez et al., 2024), recency and
importance as in Generative Agents (Park et al., 2023), consolidation and forgetting.
:class:`PersonalMemory` opens, locks and closes the store and hands each operation to the part
that owns its concept:

* **ChromaDB** (:class:`~mmai.memory.store.MemoryStore`) — the source of truth: ids, embeddings,
  metadata and documents; read back by :mod:`mmai.memory.records`.
* **index sync** (:mod:`mmai.memory.index_sync`) — the FAISS index and the episodic graph,
  derived from Chroma and repaired from it on open.
* **journal** (:mod:`mmai.memory.journal`) — the writers' lock, the ingest journal and the
  generation token through which readers see other processes' writes.
* **ingest** (:mod:`mmai.memory.ingester`, files read by :mod:`mmai.memory.ingest`) — crash-safe
  batches, confirmed in the journal.
* **search** (:mod:`mmai.memory.search`) — stage 1, re-rank by the library's two-stage score, GAR,
  saliency panels; filters are :class:`~mmai.memory.filters.Filters`, the rest
  :class:`~mmai.memory.search.SearchOptions`.
* **maintenance** (:mod:`mmai.memory.maintenance`) — forget, consolidate, rebuild, check, stats.
* **models** (:mod:`mmai.memory.models`) — the checkpoint remembered in ``config.json``.
* **access** (:mod:`mmai.memory.forgetting`) — ``ROOT/access.jsonl``: the memories the user
  opened (:meth:`PersonalMemory.open`), whence ``access_count`` and ``last_accessed``, and the
  budgeted forgetting policies that read them (:meth:`PersonalMemory.forget_plan`).

Other processes. An embedded Chroma client does not see another process's writes (its queries
then fail with ``InternalError: Error finding id``). Each public read (and each writer, once it
holds the lock) compares the store's generation with the one it last saw and, when it changed,
reopens Chroma and reloads the FAISS index (:meth:`PersonalMemory.refresh`); a read that still
meets that error reopens and retries once. A long-running dashboard thus sees every write.
Readers never write without the write lock: an index found stale is repaired in memory and saved
only when the lock is free at once (else by the next writer); Chroma's count is asked only when its
database file changed since the count last matched.

Scale path. ``PersonalMemory(root, ckpt, chroma_host="db.example", chroma_port=8000)`` keeps the
memories in a Chroma server shared by several machines; each machine's ``root`` then holds only
its FAISS index, config and media copies. ``use_gpu_index=True`` puts an exact flat index on GPU 0
with faiss-gpu (on faiss-cpu it silently stays on the CPU).

Example:
    >>> memory = PersonalMemory("runs/memory", "runs/reranker/checkpoints/last.ckpt")
    >>> report = memory.ingest([Path("~/Pictures/2023")], meta=Path("places.csv"))
    >>> hits = memory.search("white bird with an orange beak", 10, Filters(year=2023, place="Mumbai"),
    ...                      SearchOptions(rerank=True))
    >>> memory.related(hits[0].id)
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmai.memory.filters import Filters
from mmai.memory.forgetting import AccessLog, AccessStats, Usage, keep, scores
from mmai.retrieval.graph import EpisodicGraph, GraphConfig
from mmai.memory.index_sync import HNSW_FROM, IndexSync, int_id
from mmai.memory.ingester import IngestReport, Ingester
from mmai.memory.journal import DamagedGenerationError, Journal, StoreBusyError
from mmai.memory.maintenance import Maintenance
from mmai.memory.models import MemoryModels
from mmai.memory.records import Records, Related, SearchHit, decode_metadata
from mmai.memory.search import RerankSettings, SearchOptions, Searcher
from mmai.memory.recovery import move_aside
from mmai.memory.store import MemoryStore, StoreDamagedError
from mmai.memory.words import ParsedQuery, understand
from mmai.memory.write_policy import WritePolicy

__all__ = ["HNSW_FROM", "DamagedGenerationError", "Filters", "IngestReport", "NoStoreError", "PersonalMemory", "Related", "RerankSettings",
           "SearchHit", "SearchOptions", "StoreBusyError", "StoreDamagedError", "decode_metadata", "has_store", "int_id"]


class NoStoreError(FileNotFoundError):
    """A root opened for reading holds no memory store (e.g. a mistyped ``--root``)."""


def has_store(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a memory store (its config or its embedded Chroma database)."""
    root = Path(root).expanduser()
    return (root / "config.json").is_file() or (root / "chroma" / "chroma.sqlite3").is_file()


def _sees_other_writers(method):
    """A public reader: first see other processes' writes (:meth:`PersonalMemory.refresh`), and
    retry once after a forced reopen when Chroma still reports a stale client."""

    @functools.wraps(method)
    def reader(self, *args: Any, **kwargs: Any):
        def read():
            self._fresh()
            return method(self, *args, **kwargs)

        with self._mutex:
            return self._retrying(read)

    return reader


class PersonalMemory:
    """Photos, notes and recordings in one embedding space, over Chroma + FAISS + episodic graph.

    Args:
        root: folder of the memory (``config.json``, ``chroma/``, ``media/``, ``index.npz``,
            ``index.manifest.json``, ``ingest.journal.jsonl``, ``.lock``, ``.generation``).
        checkpoint: a bi-encoder or re-ranker ``.ckpt``; remembered in ``root/config.json`` on
            first use, so later opens may omit it. A different model than the one the memories
            were embedded with is refused (its vectors would not be comparable).
        chroma_host: a Chroma server's host (default ``None``: embedded Chroma in ``root/chroma``).
        chroma_port: the server's port (default 8000).
        use_gpu_index: keep an exact flat FAISS index on GPU 0 (faiss-gpu; default ``False``).
        index_kind: ``"auto"`` (default: flat below :data:`HNSW_FROM` memories, else HNSW),
            ``"flat"`` or ``"hnsw"``.
        encoder: a stage-1 model (``embed_images``/``embed_texts``/``embed_audio``, ``has_audio``,
            ``embed_dim``) used instead of loading ``checkpoint`` (e.g. a preloaded
            :class:`~mmai.inference.Stage1Model`).
        stage2: a re-ranker used instead of loading ``checkpoint`` (e.g. a preloaded
            :class:`~mmai.inference.Stage2Model`).
        graph_config: how the episodic graph is built (default :class:`GraphConfig`).
        collection: Chroma collection name (default ``"memories"``).
        progress: tqdm bars (default ``True``).
        create: make a new store when ``root`` holds none (default ``True``); with ``False`` a
            root without a store raises :class:`NoStoreError` (a mistyped root must not become an
            empty store). Ignored with ``chroma_host`` (the memories are on the server).
        lock_timeout: seconds a writer waits for another process's write lock before raising
            :class:`StoreBusyError` (default ``None``: wait as long as it takes; ``0``: refuse at once).
        repair: open for :meth:`rebuild` (``mmai memory rebuild``): a damaged Chroma database is
            moved aside (kept, see :attr:`moved_aside`) and a fresh one opened for the memories to
            be restored into; a damaged ``.generation`` is written anew. Without it both are errors
            (:class:`~mmai.memory.store.StoreDamagedError`, :class:`DamagedGenerationError`)
            saying to run ``mmai memory rebuild``.
    """

    def __init__(self, root: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                 chroma_host: str | None = None, chroma_port: int = 8000, use_gpu_index: bool = False,
                 index_kind: str = "auto", encoder: Any = None, stage2: Any = None,
                 graph_config: GraphConfig | None = None, collection: str = "memories", progress: bool = True,
                 create: bool = True, lock_timeout: float | None = None, repair: bool = False) -> None:
        if index_kind not in ("auto", "flat", "hnsw"):
            raise ValueError(f"PersonalMemory: index_kind must be 'auto', 'flat' or 'hnsw', got {index_kind!r}")
        self.root = Path(root).expanduser()
        if not create and chroma_host is None and not has_store(self.root):
            raise NoStoreError(f"{self.root} holds no memory store (no config.json or chroma/ database): check the "
                               "--root folder, or create a store there with `mmai memory ingest FILES --root "
                               f"{self.root} --checkpoint CKPT`")
        self.models = MemoryModels(self.root, encoder, stage2)
        if checkpoint is not None and not self.models.loaded_encoder and chroma_host is None \
                and not has_store(self.root):
            self.models.check_checkpoint(Path(checkpoint).expanduser().absolute())  # before a new store is made
        self.root.mkdir(parents=True, exist_ok=True)
        self.media_dir = self.root / "media"
        self.media_dir.mkdir(exist_ok=True)
        self.progress = progress
        self._mutex = threading.RLock()
        self.moved_aside: Path | None = None
        try:
            self.store = MemoryStore(self.root / "chroma", collection, host=chroma_host, port=chroma_port)
        except StoreDamagedError as error:
            if not repair:
                raise
            from chromadb.api.shared_system_client import SharedSystemClient

            SharedSystemClient.clear_system_cache()  # forget the damaged database's cached system
            self.moved_aside = move_aside(error.folder)
            self.store = MemoryStore(self.root / "chroma", collection, host=chroma_host, port=chroma_port)
        self.journal = Journal(self.root, lock_timeout, self._mutex, on_lock=lambda: self._retrying(self._fresh),
                               repair=repair)
        self.checkpoint = self.models.resolve(checkpoint, self.store.count())
        self.sync = IndexSync(self.root, self.store, use_gpu=use_gpu_index, index_kind=index_kind,
                              graph_config=graph_config or GraphConfig(), progress=progress,
                              on_change=lambda: self.records.forget_cache())
        self.journal.on_changed = self.sync.forget_table  # a record may have changed: the table re-reads
        self.records = Records(self.store, self.sync, self.media_dir)
        self.searcher = Searcher(self.store, self.sync, self.records, self.models,
                                 last_opened=lambda: {i: a.last for i, a in self.access_log.read().items()})
        self.maintenance = Maintenance(self.store, self.sync, self.records, self.journal, self.media_dir,
                                       self._write_lock, progress)
        self.access_log = AccessLog(self.root)
        self.ingester = Ingester(self.store, self.sync, self.journal, self.models, self.media_dir, self._write_lock,
                                 absorb=self.maintenance.absorb)
        self._counted_at: tuple | None = None  # Chroma's files when their count last matched the index
        with self._mutex:
            self.repaired = self._sync_derived(self.sync.sync)

    def __repr__(self) -> str:
        return f"PersonalMemory({str(self.root)!r}, memories={self.store.count()}, chroma={self.store.location!r})"

    def __enter__(self) -> "PersonalMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release Chroma (the FAISS file is saved after every write already)."""
        self.store.close()

    # ------------------------------------------------------------------ models and derived state
    @property
    def encoder(self):
        """The stage-1 model (loaded on first use from the checkpoint)."""
        return self.models.encoder

    @property
    def stage2(self):
        """The re-ranker (loaded on first use; needs a re-ranker checkpoint)."""
        return self.models.stage2

    @property
    def index(self):
        """The FAISS :class:`~mmai.retrieval.index.VectorIndex` (``None`` while the memory is empty)."""
        return self.sync.index

    def _chroma_ids(self) -> list[str]:
        return self.sync.chroma_ids()

    # ------------------------------------------------------------------ other processes and the lock
    def refresh(self, force: bool = False) -> bool:
        """See what other processes wrote: when the store's generation changed on disk (or with
        ``force``), reopen Chroma, reload the FAISS index and drop the graph.

        A long-running reader (the dashboard) calls this before every request through the
        public methods; returns whether anything was reloaded.
        """
        with self._mutex:
            generation = self.journal.read_generation()
            if not force and generation == self.journal.generation:
                return False
            self.store.reopen()
            self.journal.generation = generation
            self._counted_at = None
            self.repaired = self._sync_derived(self.sync.reload)
            return True

    def _retrying(self, call, *args: Any, **kwargs: Any):
        """``call(*args, **kwargs)``; once more after a forced refresh if Chroma reports a stale client."""
        from chromadb.errors import InternalError

        try:
            return call(*args, **kwargs)
        except InternalError:
            self.refresh(force=True)
            return call(*args, **kwargs)

    def _fresh(self) -> None:
        """Reopen after another process's writes; repair the index if Chroma's count differs.

        Readers never write without the write lock: an index repaired here lives in memory and is
        saved only if the lock is free at once (:meth:`_sync_derived`), else by the next writer.
        Chroma's count is read only when its files changed since it last matched (a stat, not a query)."""
        if self.refresh():
            return
        if self.sync.unsaved is not None:  # a writer saves what a read repaired in memory; a reader tries again
            self._persist_if_free()
        signature = self._chroma_signature()
        if signature is not None and signature == self._counted_at:
            return
        if len(self.sync) != self.store.count() or self.sync.incomplete:
            self._sync_derived(self.sync.sync)
        if not self.sync.incomplete:
            self._counted_at = signature

    def _chroma_signature(self) -> tuple | None:
        """``(mtime, size, inode)`` of the embedded Chroma database and its write-ahead log
        (``None`` for a Chroma server, whose count is always asked)."""
        if not self.store.is_local:
            return None
        folder = self.root / "chroma"
        signature = []
        for name in ("chroma.sqlite3", "chroma.sqlite3-wal"):
            try:
                stat = os.stat(folder / name)
            except FileNotFoundError:
                signature.append(None)
                continue
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(signature)

    def _sync_derived(self, call) -> str:
        """``call(persist=...)`` (:meth:`IndexSync.sync <mmai.memory.index_sync.IndexSync.sync>` or
        ``reload``): a writer (holding the lock) saves what it repairs; a reader repairs in memory and
        saves only if it can take the write lock at once and nobody wrote meanwhile."""
        done = call(persist=self.journal.holds_lock)
        if self.sync.unsaved is not None:
            self._persist_if_free()
        return done

    def _persist_if_free(self) -> None:
        """Save the index a read repaired in memory, if the write lock is free now (never waits) and
        no other process wrote since this one last looked (else the next read reloads instead)."""
        with self.journal.lock_if_free() as locked:
            if locked and self.journal.read_generation() == self.journal.generation:
                self.sync.persist_pending()

    def _write_lock(self):
        """The store's exclusive write lock (re-entrant within this object: nested writes share it)."""
        return self.journal.write_lock()

    # ------------------------------------------------------------------ ingest
    def ingest(self, paths: Sequence[str | os.PathLike], meta: str | os.PathLike | None = None,
               progress: bool | None = None, *, require_time: bool = False, batch_size: int = 16,
               overrides: dict[str, dict[str, Any]] | None = None, follow_links: bool = False,
               policy: WritePolicy | None = None) -> IngestReport:
        """Add files (or folders of files) as memories, in confirmed batches; returns an
        :class:`IngestReport` (arguments: :meth:`Ingester.ingest <mmai.memory.ingester.Ingester.ingest>`;
        ``policy``: write-time ADD / MERGE / DISCARD, :mod:`mmai.memory.write_policy`)."""
        return self.ingester.ingest(paths, meta, self.progress if progress is None else progress,
                                    require_time=require_time, batch_size=batch_size, overrides=overrides,
                                    follow_links=follow_links, policy=policy)

    # ------------------------------------------------------------------ search and reading
    @_sees_other_writers
    def search(self, query: str, k: int = 10, filters: Filters | None = None,
               options: SearchOptions | None = None) -> list[SearchHit]:
        """Memories matching a sentence, best first (:mod:`mmai.memory.search`).

        Args:
            query: the sentence, e.g. ``"white bird with an orange beak"``.
            k: results (default 10).
            filters: which memories may be returned (default: all); see :class:`Filters`.
            options: stages and their settings (default: stage 1 alone); see :class:`SearchOptions`.

        Returns:
            Up to ``k`` :class:`SearchHit` (fewer when the filters leave fewer; none when the
            memory is empty or a place matches nothing).
        """
        return self.searcher.search(query, k, filters, options)

    @_sees_other_writers
    def understand(self, query: str, filters: Filters | None = None, now: Any = None, *,
                   parse: bool = True) -> ParsedQuery:
        """The time and place words of ``query`` read as filters (:mod:`mmai.memory.words`),
        merged with ``filters`` (the flags win), with the text to embed::

            parsed = memory.understand("a red bird at Powai Lake in spring 2023")
            hits = memory.search(parsed.text, 10, parsed.applied, SearchOptions(following=parsed.following))

        Args:
            query: the sentence.
            filters: the flags' filters (each given field wins over the words' for its kind:
                time = year/after/before, place).
            now: reference time of relative words ("last December"); default the clock.
            parse: ``False`` reads no words (the query as typed, ``filters`` alone).

        Raises:
            ValueError: a date that does not exist or contradicting time words (one line).
        """
        return understand(query, self.records.known_places() if parse else (), filters, now, parse=parse)

    @_sees_other_writers
    def rerank_settings(self, options: SearchOptions | None = None) -> RerankSettings:
        """The ``rerank_k`` and ``stage1_weight`` a re-ranked search with ``options`` uses, and where
        each comes from (given, the checkpoint's validation record, or its defaults)."""
        return self.searcher.rerank_settings(options)

    @_sees_other_writers
    def known_places(self) -> list[str]:
        """Distinct place names of the stored memories (cached until the next write)."""
        return self.records.known_places()

    def where(self, filters: Filters | None) -> dict[str, Any] | None:
        """The Chroma ``where`` clause of ``filters``; raises ValueError on a bad value and
        :class:`~mmai.memory.records.NoMatch` when a place matches no stored place."""
        return self.records.where(filters)

    def graph(self) -> EpisodicGraph:
        """The episodic graph over every memory (built from Chroma + FAISS on first use)."""
        with self._mutex:
            self._fresh()
            return self.sync.graph()

    @_sees_other_writers
    def related(self, memory_id: str, k: int = 10) -> list[Related]:
        """The memories most strongly linked to ``memory_id`` in the episodic graph.

        Raises:
            KeyError: ``memory_id`` is not stored (an id prefix of 8+ hex digits is accepted).
        """
        return self.searcher.related(memory_id, k)

    def resolve_id(self, memory_id: str) -> str:
        """A full id from an id or a unique prefix of at least 8 hex digits (KeyError if none or ambiguous)."""
        return self.sync.resolve_id(memory_id)

    @_sees_other_writers
    def media_path(self, memory_id: str) -> Path | None:
        """The file to display or play for an image/audio memory (stored copy, else the original);
        ``None`` for notes and for memories whose file is nowhere to be found."""
        memory_id = self.sync.resolve_id(memory_id)
        found = self.records.metadata_of([memory_id])
        if memory_id not in found:  # forgotten by another process meanwhile
            raise KeyError(f"memory {memory_id} is not stored (forgotten meanwhile?)")
        return found[memory_id]["media_path"]

    @_sees_other_writers
    def get(self, memory_id: str) -> SearchHit:
        """One memory as a :class:`SearchHit` (scores 0), e.g. for a dashboard's detail view."""
        return self.records.get(memory_id)

    @_sees_other_writers
    def matching_ids(self, ids: Iterable[str] | None = None, filters: Filters | None = None,
                     **fields: Any) -> list[str]:
        """Stored ids among ``ids`` (full ids or 8+ digit prefixes) that match ``filters`` (or the
        :class:`Filters` fields given by name). Raises KeyError naming an unknown or ambiguous id."""
        return self.records.matching_ids(ids, _filters(filters, fields, "matching_ids"))

    # ------------------------------------------------------------------ access
    def open(self, memory_id: str, via: str = "open", when: float | None = None) -> SearchHit:
        """The memory the user opened (a full id or an 8+ digit prefix), its access recorded in
        ``ROOT/access.jsonl``: ``access_count`` + 1, ``last_accessed`` = ``when`` (default now).
        A search that only lists results records nothing. Raises KeyError for an unknown id."""
        hit = self.get(memory_id)
        self.access_log.record([hit.id], when, via)
        return hit

    @_sees_other_writers
    def access(self, memory_id: str) -> AccessStats:
        """``access_count`` and ``last_accessed`` of one memory (count 0, last None: never opened)."""
        return self.access_log.read().get(self.resolve_id(memory_id), AccessStats())

    @_sees_other_writers
    def usage(self) -> tuple[list[str], Usage]:
        """Every stored memory's id and :class:`~mmai.memory.forgetting.Usage` (creation time: its
        ``timestamp``, 0 when unknown; counts and last access from the access log)."""
        ids, created = [], []
        for page_ids, metadatas in self.records.metadata_pages():
            ids += page_ids
            created += [float(m.get("timestamp", 0.0) or 0.0) for m in metadatas]
        return ids, self.access_log.usage(ids, created)

    def importance(self, ids: Sequence[str] | None = None, usage: Usage | None = None) -> np.ndarray:
        """``(N,)`` importance of ``ids`` (default every memory, in :meth:`usage` order), derived
        from use (:func:`mmai.memory.forgetting.derived_importance`: how often it was opened and how
        unusual its embedding is among its neighbours); a user-given ``importance`` wins."""
        from mmai.memory.forgetting import derived_importance

        if ids is None or usage is None:
            ids, usage = self.usage()
        records = self.store.all_embeddings(progress=False)
        row = {memory_id: n for n, memory_id in enumerate(records.ids)}
        order = [row[memory_id] for memory_id in ids]
        given = np.array([float(records.metadatas[n].get("importance", np.nan) if records.metadatas[n].get(
            "importance") is not None else np.nan) for n in order])
        vectors = np.asarray(records.embeddings, np.float64)[order]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return derived_importance(usage.counts, vectors, given=given)

    def forget_plan(self, policy: str, budget: int, now: float | None = None, *, seed: int = 0,
                    **options: Any) -> tuple[list[str], list[str], dict[str, float]]:
        """Which memories a budgeted forget keeps: ``(kept ids, forgotten ids, score of each id)``,
        the ``budget`` best scored by ``policy`` (:func:`mmai.memory.forgetting.scores`; ``options``
        go to it) kept. Nothing is removed: :meth:`forget` the second list to do it."""
        import time as _time

        ids, usage = self.usage()
        if policy == "generative_agents" and "importance" not in options and ids:
            options["importance"] = self.importance(ids, usage)
        keep_scores = scores(policy, usage, _time.time() if now is None else float(now), seed=seed, **options)
        kept = set(keep(keep_scores, min(int(budget), len(ids)), usage.created).tolist())
        score_of = dict(zip(ids, keep_scores.tolist()))
        return ([i for n, i in enumerate(ids) if n in kept], [i for n, i in enumerate(ids) if n not in kept],
                score_of)

    def forget_budget(self, policy: str, budget: int, now: float | None = None, *,
                      expected: Iterable[str] | None = None, **options: Any) -> list[str]:
        """Forget every memory but the ``budget`` that ``policy`` keeps (:meth:`forget_plan`), under
        the write lock, journaled as ``forget --policy POLICY``; returns the forgotten ids.

        ``expected``: the ids a preview showed the user; if the plan under the lock differs (the
        store or its use changed since), nothing is forgotten and ValueError says so."""
        with self._write_lock():
            _, forgotten, _ = self.forget_plan(policy, budget, now, **options)
            if expected is not None and set(expected) != set(forgotten):
                raise ValueError(f"forget --policy {policy}: the memories to forget changed since they were shown "
                                 f"({len(set(expected))} then, {len(forgotten)} now); nothing was forgotten: "
                                 "preview again")
            self.maintenance.remove(forgotten, why=f"forget --policy {policy}")
        if forgotten and self.access_log.path.exists():
            self.access_log.prune(set(self._chroma_ids()))
        return forgotten

    # ------------------------------------------------------------------ maintenance
    def forget(self, ids: Iterable[str] | None = None, filters: Filters | None = None, **fields: Any) -> int:
        """Remove memories by id, by filter (``filters``, or its fields by name: ``year``, ``place``,
        ``modality``, ``after``, ``before``), or both (both must match), from Chroma, FAISS, the
        graph and ``media/``; returns how many.

        Raises:
            ValueError: neither ids nor a filter is given, or an unknown filter name.
            KeyError: a given id is not stored (or its prefix is ambiguous); nothing is removed.
        """
        removed = self.maintenance.forget(ids, _filters(filters, fields, "forget"))
        if removed and self.access_log.path.exists():  # a forgotten memory leaves no access behind
            self.access_log.prune(set(self._chroma_ids()))
        return removed

    def consolidate(self, threshold: float = 0.97, *, same_modality: bool = True) -> int:
        """Merge near-duplicates (cosine >= ``threshold``) into their earliest memory, keeping every
        source; ``same_modality`` only merges memories of one modality. Returns how many were removed."""
        return self.maintenance.consolidate(threshold, same_modality)

    def undo_consolidate(self) -> dict[str, Any]:
        """Undo the latest :meth:`consolidate` (each one saves its groups' records and embeddings
        under ``ROOT/consolidate-undo/`` first): the merged memories come back as they were, and
        their keepers get their own metadata back; a group whose keeper was forgotten since, or a
        member forgotten since, stays gone. Returns ``{"restored", "groups", "skipped_groups",
        "file"}``; raises ``FileNotFoundError`` when there is nothing to undo."""
        return self.maintenance.undo_consolidate()

    def rebuild(self) -> dict[str, Any]:
        """Restore into Chroma every confirmed memory of the journal it lacks (saved embedding, or
        embedded again from its media copy with the store's checkpoint), rebuild the FAISS index
        and the graph from Chroma, remove orphan media copies (never one a confirmed record names,
        none while Chroma is empty) and copy missing ones again from unchanged originals; returns
        ``{"memories", "restored_from_journal", "re_embedded", "orphans_removed", "media_restored",
        ...}``."""
        can_embed = self.models.loaded_encoder or self.checkpoint is not None
        return self.maintenance.rebuild(self._embed_one if can_embed else None, self.moved_aside)

    def _embed_one(self, modality: str, content: Any):
        """One memory's embedding with the store's checkpoint (as at ingest)."""
        method = {"image": "embed_images", "text": "embed_texts", "audio": "embed_audio"}[modality]
        vectors = getattr(self.models.encoder, method)([content])
        return np.asarray(vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else vectors, np.float32)[0]

    @_sees_other_writers
    def check(self, *, tolerance: float = 1e-4) -> list[str]:
        """Verify that Chroma, FAISS and the graph agree (same ids, vectors within ``tolerance``),
        the saved index matches, metadata are complete and media copies exist; ``[]`` = consistent."""
        return self.maintenance.check(tolerance)

    @_sees_other_writers
    def stats(self) -> dict[str, Any]:
        """Counts by modality, year and place, sizes of the index and graph, and where things are."""
        accesses = self.access_log.read()
        return {"root": str(self.root), "chroma": self.store.location, "checkpoint": self.checkpoint,
                **self.maintenance.stats(), "repaired_on_open": self.repaired,
                "opened": {"memories": len(accesses), "opens": sum(a.count for a in accesses.values())}}


def _filters(filters: Filters | None, fields: dict[str, Any], where: str) -> Filters | None:
    """``filters``, or a :class:`Filters` of the fields given by name (not both)."""
    if fields and filters is not None:
        raise ValueError(f"{where}: pass filters=Filters(...) or filter fields by name, not both")
    return Filters.of(where, **fields) if fields else filters

