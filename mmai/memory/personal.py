"""A personal memory: a person's photos, notes and recordings, searchable in words with filters.

One object over three stores, kept consistent, with the operations of the memory-system
literature: an episodic graph searched HippoRAG-style (Gutiérrez et al., 2024), recency and
importance as in Generative Agents (Park et al., 2023), consolidation (near-duplicates merged,
their sources kept) and forgetting (removal from every store):

* **ChromaDB** (:class:`~mmai.memory.store.MemoryStore`) — the source of truth: ids,
  embeddings, metadata (time, year, place, coordinates, modality, source path, where the time
  came from, ``sources``) and documents (a note's text, a caption).
* **FAISS** (:class:`~mmai.memory.index.VectorIndex`) — derived, saved as ``index.npz`` with
  ``index.manifest.json`` (count and digest of the ids). On open it is compared with Chroma:
  memories missing from it are added from Chroma, an index holding memories Chroma does not
  (or a missing/damaged file) is rebuilt from Chroma. Exact ``flat`` below
  :data:`HNSW_FROM` memories, HNSW above (``index_kind="auto"``).
* **Episodic graph** (:class:`~mmai.memory.graph.EpisodicGraph`) — derived, built from Chroma
  (times, places, importance) and FAISS (semantic edges) the first time GAR or ``related`` needs
  it, kept in memory and rebuilt after any change. Cheap enough not to persist.

Ids are content hashes (first 32 hex digits of SHA-256 of the file bytes), so ingest is
idempotent: the same file ingested twice, from anywhere, is a duplicate. FAISS and the graph
need int64 ids: a memory's is the integer value of its first 15 hex digits (:func:`int_id`).

Crash safety. Ingest works in batches (default 16 files): read and validate, embed, copy the
media file into ``root/media/<id><suffix>`` (atomically), write the batch to Chroma, and only
then append a line naming the batch's ids to ``root/ingest.journal.jsonl`` (flushed and
fsynced) — a memory is *confirmed* (reported as added) once it is in that journal. A process
killed at any moment leaves Chroma with every confirmed memory; the FAISS file on disk may then
be stale, and the next open repairs it from Chroma. A media copy written just before a kill may
be an orphan (no memory); ``rebuild()`` removes orphans. Writers (ingest, forget, consolidate,
rebuild) take an exclusive ``fcntl`` lock on ``root/.lock`` so two processes never write at once;
a writer that finds it held prints who holds it and waits (``lock_timeout`` seconds at most, then
:class:`StoreBusyError`).

Other processes. An embedded Chroma client keeps its vector segment in memory and does not see
another process's writes (its queries then fail with ``InternalError: Error finding id``). Every
write to Chroma therefore replaces ``root/.generation`` with a new token; each public read (and
each writer, once it holds the lock) compares it with the token it last saw and, when it changed,
reopens Chroma and reloads the FAISS index (:meth:`PersonalMemory.refresh`). A read that still
meets that error reopens and retries once. A long-running dashboard thus sees every write.

Media. Images and audio are *copied* into ``root/media`` so that moving or deleting the
original does not break display or re-ranking; ``source_path`` keeps where it came from.
Notes live in Chroma as the document. :meth:`PersonalMemory.media_path` gives the file to show.

Scale path. ``PersonalMemory(root, ckpt, chroma_host="db.example", chroma_port=8000)`` keeps
the memories in a Chroma server (``chroma run --path /data/chroma --host 0.0.0.0 --port 8000``),
shared by several machines; each machine's ``root`` then holds only its derived FAISS index,
config and media copies (memories ingested elsewhere are found, and their ``source_path`` is
shown when the media copy is not local). ``use_gpu_index=True`` puts an exact flat index on
GPU 0 with faiss-gpu (``pip install faiss-gpu-cu12`` on a CUDA box); on faiss-cpu it silently
stays on the CPU. Search with filters goes to Chroma's filtered HNSW (pre-filtering, so a
filter never returns fewer results than exist).

Example:
    >>> memory = PersonalMemory("runs/memory", "runs/reranker/checkpoints/last.ckpt")
    >>> report = memory.ingest([Path("~/Pictures/2023")], meta=Path("places.csv"))
    >>> hits = memory.search("white bird with an orange beak", year=2023, place="Mumbai", rerank=True)
    >>> memory.related(hits[0].id)
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import sys
import threading
import uuid
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from mmai.memory.files import atomic_copy, atomic_write
from mmai.memory.filters import METADATA_FIELDS, build_where, clean_metadata
from mmai.memory.gar import GraphAugmentedRetriever
from mmai.memory.graph import EDGE_REASONS, EpisodicGraph, GraphConfig
from mmai.memory.index import VectorIndex
from mmai.memory.ingest import (IngestError, MemoryFile, MetaTable, content_id, expand_paths, modality_of,
                                parse_time, read_memory_file, validate_fields)
from mmai.memory.store import MemoryStore
from mmai.memory.vectors import as_unit_vectors

__all__ = ["IngestReport", "NoStoreError", "PersonalMemory", "Related", "SearchHit", "StoreBusyError", "int_id"]

FORMAT = "mmai.PersonalMemory"
HNSW_FROM = 20_000  # index_kind="auto": exact flat index below this many memories, HNSW from here
#: metadata kept beside METADATA_FIELDS (Chroma values are scalars: ``sources`` is a JSON string).
EXTRA_FIELDS: dict[str, type] = {"time_source": str, "sources": str, "media_file": str, "importance": float,
                                 "ingested_at": float}
_PAGE = 5_000


def int_id(memory_id: str) -> int:
    """The int64 id of a memory in FAISS and the graph: its first 15 hex digits as an integer."""
    return int(memory_id[:15], 16)


# ---------------------------------------------------------------------- results
@dataclasses.dataclass
class Related:
    """A memory associated with another one.

    Attributes:
        id: the associated memory's id.
        weight: association strength (graph edge weight, or GAR contribution strength).
        reason: ``"same outing"``, ``"similar content"``, both joined by ``" and "``, or a two-hop
            path joined by ``" -> "``.
        metadata: its metadata (decoded as in :class:`SearchHit`).
    """

    id: str
    weight: float
    reason: str
    metadata: dict[str, Any]


@dataclasses.dataclass
class SearchHit:
    """One search result.

    Attributes:
        id: memory id (content hash).
        rank: 0-based position in the result list.
        score: the score the list is ordered by (stage 1 + recency/importance terms; the combined
            ``match_logit + rerank_weight * stage1`` for re-ranked images; GAR's fused score with ``gar``).
        stage1_score: cosine of query and memory embeddings.
        match_logit: the re-ranker's logit (re-ranked images only).
        metadata: ``modality``, ``timestamp``, ``year``, ``place``, ``latitude``/``longitude`` when
            known, ``source_path``, ``time_source``, ``sources`` (list of dicts ``id``, ``path``,
            ``timestamp``, ``place``), ``media_path`` (the file to display, or ``None``).
        document: the note's text or a caption.
        panel_path: the saliency panel written under ``explain_dir``.
        related: with ``gar``: the memories that raised it and its strongest graph neighbours.
        explanation: with ``gar``: one line, e.g. ``"direct hit (rank 2); same outing (hit 3fa9c2e1)"``.
    """

    id: str
    rank: int
    score: float
    stage1_score: float
    match_logit: float | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    document: str | None = None
    panel_path: Path | None = None
    related: list[Related] = dataclasses.field(default_factory=list)
    explanation: str | None = None


@dataclasses.dataclass
class IngestReport:
    """What :meth:`PersonalMemory.ingest` did.

    Attributes:
        added: ids of the memories written (confirmed), in order.
        duplicates: ``(path, id)`` of files already stored (same bytes).
        rejected: ``(path, reason)`` of files not stored.
        skipped: ``(link, reason)`` of symbolic links not followed (they leave the given folders).
        seconds: wall time.
    """

    added: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    rejected: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """``"added 12, duplicates 3, rejected 1 in 4.2 s"`` and one line per rejection."""
        lines = [f"added {len(self.added)}, duplicates {len(self.duplicates)}, rejected {len(self.rejected)} "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  rejected: {reason}" for _, reason in self.rejected]  # reasons name their file
        lines += [f"  skipped: {reason}" for _, reason in self.skipped]
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _ids_digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def _checkpoint_fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint's size and first 8 MiB: the same model file wherever it is moved."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as file:
        digest.update(file.read(8 * 2**20))
    return digest.hexdigest()[:16]


def _clean_record(metadata: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate schema fields (filters.py) and the extra personal fields; returns Chroma metadata."""
    base = clean_metadata({k: v for k, v in metadata.items() if k in METADATA_FIELDS}, where)
    for key, value in metadata.items():
        if key in METADATA_FIELDS or value is None:
            continue
        kind = EXTRA_FIELDS.get(key)
        if kind is None:
            raise ValueError(f"{where}: unknown metadata field {key!r}")
        base[key] = kind(value)
    return base


def decode_metadata(metadata: dict[str, Any], memory_id: str | None = None) -> dict[str, Any]:
    """Chroma metadata -> the metadata of a :class:`SearchHit` (``sources`` as a list)."""
    out = dict(metadata)
    try:
        out["sources"] = json.loads(out.get("sources") or "[]")
    except json.JSONDecodeError:
        out["sources"] = []
    if not out["sources"] and "source_path" in out:
        out["sources"] = [{"id": memory_id, "path": out["source_path"], "timestamp": out.get("timestamp"),
                           "place": out.get("place")}]
    return out


def _recency(timestamps: np.ndarray, now: float, half_life_s: float) -> np.ndarray:
    return np.nan_to_num(0.5 ** (np.maximum(now - timestamps, 0.0) / half_life_s), nan=0.0)


class _NoMatch(Exception):
    """A filter that no stored memory can match (e.g. an unknown place)."""


class NoStoreError(FileNotFoundError):
    """A root opened for reading holds no memory store (e.g. a mistyped ``--root``)."""


class StoreBusyError(TimeoutError):
    """Another process held the store's write lock for longer than ``lock_timeout``."""


def _chroma_internal_error() -> type[Exception]:
    from chromadb.errors import InternalError

    return InternalError


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


def has_store(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a memory store (its config or its embedded Chroma database)."""
    root = Path(root).expanduser()
    return (root / "config.json").is_file() or (root / "chroma" / "chroma.sqlite3").is_file()


# ---------------------------------------------------------------------- the memory
class PersonalMemory:
    """Photos, notes and recordings in one embedding space, over Chroma + FAISS + episodic graph.

    Args:
        root: folder of the memory (default layout: ``config.json``, ``chroma/``, ``media/``,
            ``index.npz``, ``index.manifest.json``, ``ingest.journal.jsonl``, ``.lock``).
        checkpoint: a bi-encoder or re-ranker ``.ckpt``; remembered in ``root/config.json`` on
            first use, so later opens may omit it. A different model than the one the memories
            were embedded with is refused (its vectors would not be comparable).
        chroma_host: a Chroma server's host (default ``None``: embedded Chroma in ``root/chroma``).
        chroma_port: the server's port (default 8000).
        use_gpu_index: keep an exact flat FAISS index on GPU 0 (faiss-gpu; default ``False``).
        index_kind: ``"auto"`` (default: flat below :data:`HNSW_FROM` memories, else HNSW),
            ``"flat"`` or ``"hnsw"``.
        encoder: an object with ``embed_images``/``embed_texts``/``embed_audio``, ``has_audio`` and
            ``embed_dim`` used instead of loading ``checkpoint`` (e.g. a preloaded
            :class:`~mmai.checkpoint.Stage1Model`).
        graph_config: how the episodic graph is built (default :class:`GraphConfig`).
        collection: Chroma collection name (default ``"memories"``).
        progress: tqdm bars (default ``True``).
        create: make a new store when ``root`` holds none (default ``True``); with ``False`` a
            root without a store raises :class:`NoStoreError` (readers: a mistyped root must not
            become an empty store). Ignored with ``chroma_host`` (the memories are on the server).
        lock_timeout: seconds a writer waits for another process's write lock before raising
            :class:`StoreBusyError` (default ``None``: wait as long as it takes; ``0``: refuse at once).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        *,
        chroma_host: str | None = None,
        chroma_port: int = 8000,
        use_gpu_index: bool = False,
        index_kind: str = "auto",
        encoder: Any = None,
        graph_config: GraphConfig | None = None,
        collection: str = "memories",
        progress: bool = True,
        create: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        if index_kind not in ("auto", "flat", "hnsw"):
            raise ValueError(f"PersonalMemory: index_kind must be 'auto', 'flat' or 'hnsw', got {index_kind!r}")
        self.root = Path(root).expanduser()
        if not create and chroma_host is None and not has_store(self.root):
            raise NoStoreError(f"{self.root} holds no memory store (no config.json or chroma/ database): check the "
                               "--root folder, or create a store there with `mmai memory ingest FILES --root "
                               f"{self.root} --checkpoint CKPT`")
        self.lock_timeout, self._lock_depth = lock_timeout, 0
        self._checked: set[str] = set()  # checkpoints read once and found valid
        if checkpoint is not None and encoder is None and chroma_host is None and not has_store(self.root):
            self._check_checkpoint(Path(checkpoint).expanduser().absolute())  # before a new store is made
        self.root.mkdir(parents=True, exist_ok=True)
        self.media_dir = self.root / "media"
        self.media_dir.mkdir(exist_ok=True)
        self.use_gpu_index, self.index_kind, self.progress = use_gpu_index, index_kind, progress
        self.graph_config = graph_config or GraphConfig()
        self._mutex = threading.RLock()
        self._config = self._read_config()
        self.store = MemoryStore(self.root / "chroma", collection, host=chroma_host, port=chroma_port)
        self._generation = self._read_generation()
        self.checkpoint = self._resolve_checkpoint(checkpoint, encoder)
        self._encoder, self._stage2 = encoder, None
        self._graph: EpisodicGraph | None = None
        self._gar: GraphAugmentedRetriever | None = None
        self._places: set[str] | None = None
        self.index: VectorIndex | None = None
        self._str_ids: dict[int, str] = {}
        self.repaired = self._sync_index()

    def __repr__(self) -> str:
        return f"PersonalMemory({str(self.root)!r}, memories={self.store.count()}, chroma={self.store.location!r})"

    def __enter__(self) -> "PersonalMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release Chroma (the FAISS file is saved after every write already)."""
        self.store.close()

    # ------------------------------------------------------------------ config and models
    @property
    def _config_path(self) -> Path:
        return self.root / "config.json"

    def _read_config(self) -> dict[str, Any]:
        if not self._config_path.is_file():
            return {"format": FORMAT, "version": 1}
        try:
            config = json.loads(self._config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self._config_path} is not valid JSON ({error}); fix it or delete it "
                             "(it only records the checkpoint)") from None
        if config.get("format") != FORMAT:
            raise ValueError(f"{self._config_path}: not a PersonalMemory config (format {config.get('format')!r})")
        return config

    def _write_config(self) -> None:
        _atomic_write(self._config_path, (json.dumps(self._config, indent=1) + "\n").encode())

    def _resolve_checkpoint(self, checkpoint: str | os.PathLike | None, encoder: Any) -> str | None:
        if encoder is not None:
            return str(getattr(encoder, "checkpoint", None) or "injected encoder")
        recorded = self._config.get("checkpoint")
        if checkpoint is None:
            return recorded
        path = Path(checkpoint).expanduser().absolute()
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} does not exist: pass a .ckpt written by `mmai fit` "
                                    "or `mmai rerank fit`")
        fingerprint = _checkpoint_fingerprint(path)
        if (recorded, self._config.get("fingerprint")) != (str(path), fingerprint):
            self._check_checkpoint(path)  # a file that is no checkpoint is never recorded
        if recorded and self._config.get("fingerprint") != fingerprint and self.store.count() > 0:
            raise ValueError(
                f"{self.root}: its {self.store.count()} memories were embedded with {recorded} "
                f"(fingerprint {self._config.get('fingerprint')}); {path} is a different model whose vectors "
                "are not comparable. Use a new --root and ingest the files again there"
            )
        self._config.update(checkpoint=str(path), fingerprint=fingerprint)
        self._write_config()
        return str(path)

    def _check_checkpoint(self, path: Path) -> None:
        """Raise FileNotFoundError/ValueError (from :func:`~mmai.checkpoint.read_checkpoint`) unless
        ``path`` is a readable checkpoint (read once per object)."""
        if str(path) in self._checked:
            return
        from mmai.checkpoint import read_checkpoint

        read_checkpoint(path, "--checkpoint")
        self._checked.add(str(path))

    @property
    def encoder(self):
        """The stage-1 model (loaded on first use from the checkpoint)."""
        if self._encoder is None:
            if self.checkpoint is None:
                raise ValueError(f"{self.root} has no checkpoint yet: pass checkpoint=... (--checkpoint PATH), "
                                 "a bi-encoder or re-ranker .ckpt from `mmai fit` / `mmai rerank fit`")
            from mmai.checkpoint import load_stage1

            self._encoder = load_stage1(self.checkpoint)
        return self._encoder

    @property
    def stage2(self):
        """The re-ranker (loaded on first use; needs a re-ranker checkpoint)."""
        if self._stage2 is None:
            if self.checkpoint is None or not Path(self.checkpoint).is_file():
                raise ValueError(f"re-ranking and saliency need a re-ranker checkpoint; {self.root} has "
                                 f"{self.checkpoint!r}")
            from mmai.checkpoint import load_stage2

            self._stage2 = load_stage2(self.checkpoint)
            if self._encoder is None:
                self._encoder = self._stage2.stage1  # the same bi-encoder: keep one copy
        return self._stage2

    # ------------------------------------------------------------------ derived index
    @property
    def _index_path(self) -> Path:
        return self.root / "index.npz"

    @property
    def _manifest_path(self) -> Path:
        return self.root / "index.manifest.json"

    def _chroma_ids(self) -> list[str]:
        """Every id in Chroma (paged; ids only)."""
        ids: list[str] = []
        total = self.store.count()
        for offset in range(0, total, _PAGE):
            ids += self.store.collection.get(limit=_PAGE, offset=offset, include=[])["ids"]
        return ids

    def _set_ids(self, ids: Iterable[str]) -> None:
        self._str_ids = {}
        for memory_id in ids:
            number = int_id(memory_id)
            if self._str_ids.setdefault(number, memory_id) != memory_id:
                raise ValueError(f"ids {memory_id} and {self._str_ids[number]} share their first 15 hex digits")

    def _kind_for(self, count: int) -> str:
        if self.use_gpu_index:
            return "flat"
        if self.index_kind != "auto":
            return self.index_kind
        return "flat" if count < HNSW_FROM else "hnsw"

    def _load_index(self) -> VectorIndex | None:
        """The saved index, or ``None`` when it is missing or damaged (:attr:`_index_problem` says which)."""
        self._index_problem = None
        try:
            return VectorIndex.load(self._index_path, use_gpu=self.use_gpu_index)
        except FileNotFoundError:
            self._index_problem = f"{self._index_path.name} missing"
        except (ValueError, RuntimeError) as error:
            self._index_problem = f"{self._index_path} damaged: {error}"
        return None  # rebuilt from Chroma, the source of truth

    def _sync_index(self) -> str:
        """Make the FAISS index hold exactly Chroma's memories; returns what was done."""
        with self._mutex:
            ids = self._chroma_ids()
            self._set_ids(ids)
            wanted = np.array([int_id(i) for i in ids], dtype=np.int64)
            index = self.index if self.index is not None else self._load_index()
            if not len(wanted):
                self.index = None
                return "empty"
            if index is None or index.dim != self.store.dim or not np.isin(index.ids, wanted).all():
                self._rebuild_index()
                why = "it did not match Chroma" if index is not None else self._index_problem
                return "rebuilt from Chroma" + (f" ({why})" if why else "")
            missing = wanted[~np.isin(wanted, index.ids)]
            self.index = index
            if len(missing):
                records = self.store.get([self._str_ids[int(m)] for m in missing])
                index.add(records.embeddings, missing, progress=self.progress)
                self._save_index()
                self._invalidate()
                return f"added {len(missing)} missing from Chroma"
            return "in sync"

    def _rebuild_index(self) -> None:
        records = self.store.all_embeddings(progress=self.progress)
        self._set_ids(records.ids)
        numbers = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        self.index = VectorIndex.build(records.embeddings, numbers, kind=self._kind_for(len(numbers)),
                                       use_gpu=self.use_gpu_index, progress=self.progress)
        self._save_index()
        self._invalidate()

    def _rebuild_index_from(self, keep: np.ndarray) -> None:
        """A fresh index over ``keep`` (int ids) with the current index's vectors."""
        if not len(keep):
            self.index = None
            self._index_path.unlink(missing_ok=True)
            self._manifest_path.unlink(missing_ok=True)
            return
        vectors = self.index.reconstruct(keep)  # (n, D)
        self.index = VectorIndex.build(vectors, keep, kind=self._kind_for(len(keep)), use_gpu=self.use_gpu_index,
                                       progress=self.progress)
        self._save_index()

    def _save_index(self) -> None:
        if self.index is None:
            return
        self.index.save(self._index_path)
        ids = [self._str_ids[int(i)] for i in self.index.ids]
        manifest = {"count": len(ids), "ids_sha256": _ids_digest(ids), "kind": self.index.kind,
                    "dim": self.index.dim, "saved_at": time.time()}
        _atomic_write(self._manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

    def _invalidate(self) -> None:
        """Forget derived state that depends on the set of memories (graph, GAR, places)."""
        self._graph, self._gar, self._places = None, None, None

    # ------------------------------------------------------------------ other processes
    @property
    def _generation_path(self) -> Path:
        return self.root / ".generation"

    def _read_generation(self) -> str:
        try:
            return self._generation_path.read_text(encoding="utf-8")
        except OSError:
            return ""

    def _changed(self) -> None:
        """Record that this process wrote Chroma (readers elsewhere see a new generation and reopen)."""
        self._generation = f"{uuid.uuid4().hex} {os.getpid()}\n"
        _atomic_write(self._generation_path, self._generation.encode())

    def refresh(self, force: bool = False) -> bool:
        """See what other processes wrote: when the store's generation changed on disk (or with
        ``force``), reopen Chroma, reload the FAISS index and drop the graph.

        A long-running reader (the dashboard) calls this before every request through the
        public methods; returns whether anything was reloaded.
        """
        with self._mutex:
            generation = self._read_generation()
            if not force and generation == self._generation:
                return False
            self.store.reopen()
            self._generation = generation
            self.index = None  # reloaded from the file the writer saved, then synced with Chroma
            self._invalidate()
            self.repaired = self._sync_index()
            return True

    def _retrying(self, call, *args: Any, **kwargs: Any):
        """``call(*args, **kwargs)``; once more after a forced refresh if Chroma reports a stale client."""
        try:
            return call(*args, **kwargs)
        except _chroma_internal_error():
            self.refresh(force=True)
            return call(*args, **kwargs)

    def _fresh(self) -> None:
        """Reopen after another process's writes; repair the index if Chroma's count differs."""
        if self.refresh():
            return
        if (0 if self.index is None else len(self.index)) != self.store.count():
            self._sync_index()

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The store's exclusive write lock (re-entrant within this object: nested writes share it)."""
        with self._mutex:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with open(self.root / ".lock", "a+") as handle:
                self._acquire(handle)
                self._lock_depth = 1
                try:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:120]})\n")
                    handle.flush()
                    self._retrying(self._fresh)
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _acquire(self, handle) -> None:
        """Take the exclusive lock; while another process holds it, say so once and wait (up to
        :attr:`lock_timeout` seconds)."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        limit = self.lock_timeout
        if limit is not None and limit <= 0:
            raise StoreBusyError(f"{self.root} is being written by {holder}; try again when it is done "
                                 "(or pass --lock-timeout SECONDS to wait)")
        wait = "" if limit is None else f" (up to {limit:g} s)"
        print(f"mmai memory: {self.root} is being written by {holder}; waiting for it to finish{wait}",
              file=sys.stderr, flush=True)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StoreBusyError(f"{self.root} is still being written by {holder} after {limit:g} s; "
                                         "try again later or raise --lock-timeout") from None
                time.sleep(0.05)

    # ------------------------------------------------------------------ ingest
    def ingest(
        self,
        paths: Sequence[str | os.PathLike],
        meta: str | os.PathLike | None = None,
        progress: bool | None = None,
        *,
        require_time: bool = False,
        batch_size: int = 16,
        overrides: dict[str, dict[str, Any]] | None = None,
        follow_links: bool = False,
    ) -> IngestReport:
        """Add files (or folders of files) as memories.

        Args:
            paths: image, note and audio files, or folders (walked recursively).
            meta: a JSON/CSV table of per-file ``time``/``place``/``latitude``/``longitude``
                (see :class:`~mmai.memory.ingest.MetaTable`).
            progress: tqdm bar (default: the object's ``progress``).
            require_time: reject files whose time would come only from the file's mtime.
            batch_size: files per confirmed batch (default 16).
            overrides: ``{absolute path: {field: value}}`` metadata that wins over every other
                source (used for the synthetic diary); fields as in sidecars, plus ``source``: the
                ``time_source`` label to record (default ``"override"``), and ``source_path``: what
                to record as the file's origin instead of its path (e.g. a dashboard upload's name,
                not the temporary copy it was read from).
            follow_links: follow symbolic links inside the folders even when their target is
                outside the given paths (default ``False``: such links are skipped and listed
                in the report's ``skipped``).

        Returns:
            An :class:`IngestReport`. A file that cannot be read is rejected with its reason;
            the other files are unaffected.

        Raises:
            FileNotFoundError, IngestError: ``meta`` is missing or invalid (nothing is written).
            ValueError: no checkpoint (nothing is written).
        """
        started = time.perf_counter()
        report = IngestReport()
        table = None if meta is None else MetaTable(meta)
        files = self._expand(paths, report, follow_links)
        if files:
            self.encoder  # noqa: B018 - load the model first: no model is a usage error, not a file's
        show = self.progress if progress is None else progress
        with self._write_lock():
            bar = tqdm(total=len(files), desc="ingest", unit="file", disable=not show)
            seen: dict[str, Path] = {}
            for start in range(0, len(files), max(1, batch_size)):
                batch = files[start:start + batch_size]
                self._ingest_batch(batch, table, require_time, overrides or {}, report, seen)
                bar.update(len(batch))
                bar.set_postfix(added=len(report.added), dup=len(report.duplicates), rejected=len(report.rejected))
            bar.close()
            if report.added:
                self._finish_ingest()
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _expand(paths: Sequence[str | os.PathLike], report: IngestReport,
                follow_links: bool = False) -> list[tuple[Path, str]]:
        files: list[tuple[Path, str]] = []
        for given in paths:
            try:
                found = expand_paths([given], follow_links=follow_links, skipped=report.skipped, roots=paths)
                files += [(path, str(given)) for path in found]
            except FileNotFoundError as error:
                report.rejected.append((Path(given), str(error)))
        return list({path: (path, given) for path, given in files}.values())

    def _ingest_batch(self, batch, table, require_time, overrides, report, seen) -> None:
        duplicates = self._duplicates(batch, report, seen)
        known = {path for path, _ in duplicates}
        files: list[MemoryFile] = []
        for path, given in batch:
            if path in known:
                continue
            try:
                files.append(self._read(path, given, table, require_time, overrides.get(str(path))))
            except IngestError as error:
                report.rejected.append((path, str(error)))
            except OSError as error:
                report.rejected.append((path, f"{path}: cannot read ({error})"))
        files, vectors = self._embed(files, report)
        if files:
            self._write(files, vectors)
            for memory_file in files:
                seen[memory_file.id] = memory_file.path
            report.added += [memory_file.id for memory_file in files]
        self._add_sources([(memory_id, overrides.get(str(path), {}).get("source_path", path))
                           for path, memory_id in duplicates])

    def _duplicates(self, batch, report: IngestReport, seen: dict[str, Path]) -> list[tuple[Path, str]]:
        """``(path, id)`` of files in ``batch`` already stored, or with the same bytes as a file
        earlier in this run or batch."""
        ids = {}
        for path, _ in batch:
            try:
                modality_of(path)
                ids[path] = content_id(path.read_bytes())
            except (IngestError, OSError):
                continue  # reported when read properly
        stored = set(self.store.collection.get(ids=sorted(set(ids.values())), include=[])["ids"]) if ids else set()
        first_in_batch: dict[str, Path] = {}
        duplicates: list[tuple[Path, str]] = []
        for path, memory_id in ids.items():
            if memory_id in stored or memory_id in seen or first_in_batch.setdefault(memory_id, path) != path:
                duplicates.append((path, memory_id))
        report.duplicates += duplicates
        return duplicates

    def _add_sources(self, new_paths: list[tuple[str, Path]]) -> None:
        """Record other paths of stored files in their ``sources`` (exact duplicates keep every path)."""
        wanted = list(dict.fromkeys(memory_id for memory_id, _ in new_paths))
        found = set(self.store.collection.get(ids=wanted, include=[])["ids"]) if wanted else set()
        if not found:
            return
        records = self.store.get(sorted(found), include_embeddings=False)
        ids, metadatas = [], []
        for memory_id, metadata in zip(records.ids, records.metadatas):
            sources = decode_metadata(metadata, memory_id)["sources"]
            known = {source.get("path") for source in sources}
            for path in dict.fromkeys(str(p) for i, p in new_paths if i == memory_id):
                if path not in known:
                    sources.append({"id": memory_id, "path": path, "timestamp": metadata.get("timestamp"),
                                    "place": metadata.get("place")})
            if len(known) != len({source.get("path") for source in sources}):
                ids.append(memory_id)
                metadatas.append({**metadata, "sources": json.dumps(sources)})
        if ids:
            self.store.collection.update(ids=ids, metadatas=metadatas)
            self._changed()

    def _read(self, path: Path, given: str, table, require_time: bool, override) -> MemoryFile:
        memory_file = read_memory_file(path, meta=table, given=given, require_time=require_time and not override)
        if override:
            override = dict(override)
            label = str(override.pop("source", "override"))
            origin = override.pop("source_path", None)
            fields = validate_fields(override, f"override for {path}")
            metadata = memory_file.metadata
            if "time" in fields:
                metadata["timestamp"], metadata["time_source"] = fields.pop("time"), label
            metadata.update({k: v for k, v in fields.items() if k != "caption"})
            memory_file.document = fields.get("caption", memory_file.document)
            if origin is not None:
                metadata["source_path"] = str(origin)
        if memory_file.modality == "audio" and not self._has_audio():
            raise IngestError(f"{path}: checkpoint has no audio tower: train with model.audio to ingest audio "
                              "memories (the bi-encoder's audio tower embeds them in the same space)")
        return memory_file

    def _has_audio(self) -> bool:
        return bool(getattr(self.encoder, "has_audio", False))

    def _embed(self, files: list[MemoryFile], report: IngestReport) -> tuple[list[MemoryFile], np.ndarray]:
        """Embed a batch by modality (files keep their order); a file whose embedding fails alone is rejected."""
        methods = {"image": "embed_images", "text": "embed_texts", "audio": "embed_audio"}
        embedded: dict[int, np.ndarray] = {}
        for modality, method in methods.items():
            group = [f for f in files if f.modality == modality]
            if not group:
                continue
            try:
                vectors = self._embed_group(method, group)
            except Exception:  # noqa: BLE001 - isolate the file at fault, below
                vectors = []
                for memory_file in group:
                    try:
                        vectors.append(self._embed_group(method, [memory_file])[0])
                    except Exception as error:  # noqa: BLE001 - reported as the file's rejection reason
                        report.rejected.append((memory_file.path, f"{memory_file.path}: cannot embed ({error})"))
                        vectors.append(None)
            embedded.update({id(f): v for f, v in zip(group, vectors) if v is not None})
        kept = [f for f in files if id(f) in embedded]
        rows = [embedded[id(f)] for f in kept]
        return kept, np.stack(rows).astype(np.float32) if rows else np.empty((0, 0), np.float32)

    def _embed_group(self, method: str, group: list[MemoryFile]) -> np.ndarray:
        vectors = getattr(self.encoder, method)([f.content for f in group])
        vectors = np.asarray(vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else vectors, np.float32)
        if vectors.shape[0] != len(group) or not np.isfinite(vectors).all():
            raise ValueError(f"{method} returned {vectors.shape} for {len(group)} files, or NaN/inf")
        return vectors  # (n, E)

    def _write(self, files: list[MemoryFile], vectors: np.ndarray) -> None:
        """Media copies, then Chroma, then the journal (confirmation), then the in-memory index."""
        metadatas = []
        for memory_file in files:
            metadata = dict(memory_file.metadata, ingested_at=time.time())
            if memory_file.modality != "text":
                target = self.media_dir / f"{memory_file.id}{memory_file.suffix}"
                if not target.exists():
                    atomic_copy(memory_file.path, target)
                metadata["media_file"] = target.name
            metadata["sources"] = json.dumps([{"id": memory_file.id, "path": metadata["source_path"],
                                               "timestamp": metadata["timestamp"], "place": metadata.get("place")}])
            metadatas.append(_clean_record(metadata, f"memory {memory_file.path}"))
        ids = [memory_file.id for memory_file in files]
        vectors = as_unit_vectors(vectors, dim=self.store.dim, name=f"embeddings of {files[0].path} ...")  # (n, E)
        self.store.collection.upsert(ids=ids, embeddings=vectors, metadatas=metadatas,
                                     documents=[f.document for f in files])
        self._journal(ids, [str(f.path) for f in files])
        self._changed()
        numbers = np.array([int_id(i) for i in ids], dtype=np.int64)
        for number, memory_id in zip(numbers.tolist(), ids):
            self._str_ids[number] = memory_id
        if self.index is None:
            self.index = VectorIndex(vectors.shape[1], self._kind_for(len(ids)), use_gpu=self.use_gpu_index)
        self.index.add(vectors, numbers, progress=False)
        self._invalidate()

    def _journal(self, ids: list[str], paths: list[str]) -> None:
        line = json.dumps({"time": time.time(), "pid": os.getpid(), "confirmed": ids, "paths": paths}) + "\n"
        with open(self.root / "ingest.journal.jsonl", "a", encoding="utf-8") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())

    def _finish_ingest(self) -> None:
        if self.index is not None and self.index.kind != self._kind_for(len(self.index)):
            self._rebuild_index_from(self.index.ids)  # e.g. flat -> HNSW once the memory grew
        self._save_index()
        if self._encoder is not None and "embed_dim" not in self._config:
            self._config["embed_dim"] = int(self.index.dim)
            self._write_config()

    # ------------------------------------------------------------------ filters
    @_sees_other_writers
    def known_places(self) -> list[str]:
        """Distinct place names of the stored memories (cached until the next write)."""
        with self._mutex:
            if self._places is None:
                places = set()
                total = self.store.count()
                for offset in range(0, total, _PAGE):
                    page = self.store.collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
                    places.update(m["place"] for m in page["metadatas"] if m and m.get("place"))
                self._places = places
            return sorted(self._places)

    def _place_values(self, place: str | Sequence[str]) -> list[str]:
        """Stored places matching ``place``: exact (any case) names, else names containing it."""
        wanted = [place] if isinstance(place, str) else list(place)
        known = self.known_places()
        found: list[str] = []
        for name in wanted:
            exact = [p for p in known if p.casefold() == name.casefold()]
            found += exact or [p for p in known if name.casefold() in p.casefold()]
        if not found:
            raise _NoMatch(f"no memory at a place matching {place!r}")
        return sorted(set(found))

    def where(self, year=None, place=None, modality=None, after=None, before=None) -> dict[str, Any] | None:
        """The Chroma ``where`` clause of search/forget filters.

        ``place`` matches stored place names case-insensitively, whole (``"powai lake, mumbai"``)
        or as a part (``"Mumbai"`` matches every place in Mumbai). ``after``/``before`` take unix
        seconds, ``datetime`` or ISO strings (``"2023-03-01"``); times without a zone are UTC.

        Raises:
            ValueError: a bad value (see :func:`~mmai.memory.filters.build_where`).
        """
        places = None if place is None else self._place_values(place)
        after = None if after is None else parse_time(after, "after")
        before = None if before is None else parse_time(before, "before")
        return build_where(year=year, place=places, modality=modality, after=after, before=before)

    # ------------------------------------------------------------------ search
    @_sees_other_writers
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        year: int | Sequence[int] | None = None,
        place: str | Sequence[str] | None = None,
        modality: str | Sequence[str] | None = None,
        after: Any = None,
        before: Any = None,
        rerank: bool = False,
        gar: bool = False,
        explain_dir: str | os.PathLike | None = None,
        rerank_k: int | None = None,
        rerank_weight: float | None = None,
        recency_weight: float = 0.0,
        recency_half_life_days: float = 30.0,
        importance_weight: float = 0.0,
        gar_alpha: float = 0.5,
        related_k: int = 5,
        now: float | None = None,
    ) -> list[SearchHit]:
        """Memories matching a sentence, best first.

        Args:
            query: the sentence, e.g. ``"white bird with an orange beak"``.
            k: results (default 10).
            year, place, modality, after, before: filters (see :meth:`where`).
            rerank: re-score the image candidates among the top ``rerank_k`` with the fusion
                re-ranker: ``match_logit + rerank_weight * stage1``; images are re-ordered among
                the image slots of that window, everything else keeps its place.
            gar: re-rank by Graph-Augmented Retrieval over the episodic graph, with explanations
                and ``related`` memories (results still obey the filters).
            explain_dir: write a saliency panel per image hit here (needs a re-ranker checkpoint).
            rerank_k: candidates re-scored (default: the checkpoint's ``rerank_k``, 16).
            rerank_weight: lambda (default: the checkpoint's ``stage1_weight``, 1.0).
            recency_weight: add ``recency_weight * 0.5 ** (age / half-life)`` (default 0: off);
                the candidate pool grows until the top ``k`` are exact over all memories.
            recency_half_life_days: half-life of recency (default 30).
            importance_weight: add ``importance_weight * importance`` (default 0: off).
            gar_alpha: GAR's weight of the retrieval score against graph activation (default 0.5).
            related_k: related memories per hit with ``gar`` (default 5).
            now: reference time for recency (default: the clock).

        Returns:
            Up to ``k`` :class:`SearchHit` (fewer when the filters leave fewer; none when the
            memory is empty or a place matches nothing).
        """
        if int(k) < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        with self._mutex:
            if self.index is None:
                return []
            try:
                where = self.where(year, place, modality, after, before)
            except _NoMatch:
                return []
            query_vector = self._embed_query(query)  # (E,)
            pool = max(int(k), int(rerank_k or self._rerank_defaults()[0]) if rerank else 0, 4 * k if gar else 0)
            weights = (recency_weight, recency_half_life_days, importance_weight, now)
            candidates = self._weighted_candidates(query_vector, pool, where, int(k), *weights)
            if rerank:
                self._rerank(query, candidates, rerank_k, rerank_weight)
            if gar:
                candidates = self._gar_rerank(candidates, query_vector, k, where, gar_alpha, related_k)
            hits = candidates[: int(k)]
            for rank, hit in enumerate(hits):
                hit.rank = rank
            if explain_dir is not None:
                self._explain(query, hits, Path(explain_dir))
            return hits

    def _rerank_defaults(self) -> tuple[int, float]:
        return int(self.stage2.rerank_k), float(self.stage2.stage1_weight)

    def _embed_query(self, query: str) -> np.ndarray:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"search: query must be a non-empty sentence, got {query!r}")
        vector = self.encoder.embed_texts([query])
        return np.asarray(vector.detach().cpu().numpy() if hasattr(vector, "detach") else vector, np.float32)[0]

    def _candidates(self, query_vector: np.ndarray, pool: int, where: dict | None) -> list[SearchHit]:
        """Stage 1: FAISS without filters, Chroma's filtered search with them."""
        if where is None:
            scores, numbers = self.index.search(query_vector[None], min(pool, len(self.index)))  # (1, n)
            keep = numbers[0] >= 0
            ids = [self._str_ids[int(n)] for n in numbers[0][keep]]
            records = self.store.get(ids, include_embeddings=False)
            rows = zip(ids, scores[0][keep].tolist(), records.metadatas, records.documents)
        else:
            found = self.store.query(query_vector, min(pool, self.store.count()), where=where)
            rows = zip(found.ids[0], found.scores[0].tolist(), found.metadatas[0], found.documents[0])
        return [self._hit(memory_id, score, score, metadata, document)
                for memory_id, score, metadata, document in rows]

    def _hit(self, memory_id: str, score: float, stage1: float, metadata: dict, document: str | None) -> SearchHit:
        decoded = decode_metadata(metadata, memory_id)
        decoded["media_path"] = self._media_from(decoded)
        return SearchHit(memory_id, 0, float(score), float(stage1), metadata=decoded, document=document)

    @staticmethod
    def _sort(hits: list[SearchHit]) -> None:
        hits.sort(key=lambda hit: -hit.score)  # stable: ties keep stage-1 order

    def _weighted_candidates(self, query_vector: np.ndarray, pool: int, where: dict | None, k: int,
                             recency_weight: float, half_life_days: float, importance_weight: float,
                             now: float | None) -> list[SearchHit]:
        """Stage-1 candidates with recency/importance added, exactly: a memory outside the pool
        scores at most (the pool's lowest cosine + the largest bonus), so the pool grows (x4)
        until its k-th weighted score beats that bound or it holds every memory."""
        total = self.store.count()
        while True:
            hits = self._candidates(query_vector, pool, where)
            if not (recency_weight or importance_weight):
                return hits
            lowest = min((hit.stage1_score for hit in hits), default=0.0)
            self._weigh(hits, recency_weight, half_life_days, importance_weight, now)
            bound = lowest + max(recency_weight, 0.0) + max(importance_weight, 0.0)
            if pool >= total or len(hits) < pool or (len(hits) >= k and hits[k - 1].score >= bound):
                return hits
            pool = min(4 * pool, total)

    def _weigh(self, hits: list[SearchHit], recency_weight: float, half_life_days: float,
               importance_weight: float, now: float | None) -> None:
        """Generative Agents' recency and importance added to the stage-1 score (both off by default)."""
        if not hits or (not recency_weight and not importance_weight):
            return
        times = np.array([hit.metadata.get("timestamp", np.nan) for hit in hits], dtype=np.float64)
        recency = _recency(times, time.time() if now is None else float(now), half_life_days * 86_400.0)
        for hit, fresh in zip(hits, recency.tolist()):
            hit.score += recency_weight * fresh + importance_weight * float(hit.metadata.get("importance", 0.0))
        self._sort(hits)

    def _load_image(self, hit: SearchHit):
        from PIL import Image

        path = hit.metadata.get("media_path")
        if hit.metadata.get("modality") != "image" or path is None:
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:
            return None

    def _rerank(self, query: str, hits: list[SearchHit], rerank_k: int | None, weight: float | None) -> None:
        """Re-score image candidates in the top ``rerank_k``; they move only among image slots."""
        default_k, default_weight = self._rerank_defaults()
        window = hits[: int(rerank_k or default_k)]
        weight = default_weight if weight is None else float(weight)
        images = [(slot, hit, self._load_image(hit)) for slot, hit in enumerate(window)]
        images = [(slot, hit, image) for slot, hit, image in images if image is not None]
        if not images:
            return
        logits = self.stage2.rerank(query, [image for _, _, image in images])  # (n,)
        for (_, hit, _), logit in zip(images, logits.tolist()):
            hit.match_logit = float(logit)
            hit.score = float(logit) + weight * hit.stage1_score
        slots = [slot for slot, _, _ in images]
        ordered = sorted((hit for _, hit, _ in images), key=lambda hit: -hit.score)
        for slot, hit in zip(slots, ordered):
            hits[slot] = hit

    # ------------------------------------------------------------------ graph and GAR
    def graph(self) -> EpisodicGraph:
        """The episodic graph over every memory (built from Chroma + FAISS on first use)."""
        with self._mutex:
            self._fresh()
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
                self._gar = None
            return self._graph

    def _metadata_of(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        records = self.store.get(ids, include_embeddings=False)
        return {memory_id: self._decoded(memory_id, metadata) for memory_id, metadata in zip(records.ids,
                                                                                           records.metadatas)}

    def _decoded(self, memory_id: str, metadata: dict) -> dict[str, Any]:
        decoded = decode_metadata(metadata, memory_id)
        decoded["media_path"] = self._media_from(decoded)
        return decoded

    @_sees_other_writers
    def related(self, memory_id: str, k: int = 10) -> list[Related]:
        """The memories most strongly linked to ``memory_id`` in the episodic graph.

        Raises:
            KeyError: ``memory_id`` is not stored (an id prefix of 8+ hex digits is accepted).
        """
        with self._mutex:
            memory_id = self.resolve_id(memory_id)
            graph = self.graph().graph
            edges = sorted(graph[int_id(memory_id)].items(), key=lambda item: -item[1]["weight"])[: int(k)]
            ids = [self._str_ids[int(number)] for number, _ in edges]
            metadata = self._metadata_of(ids) if ids else {}
            return [Related(other, float(data["weight"]), " and ".join(EDGE_REASONS[t] for t in data["types"]),
                            metadata[other]) for other, (_, data) in zip(ids, edges)]

    def resolve_id(self, memory_id: str) -> str:
        """A full id from an id or a unique prefix of at least 8 hex digits.

        Raises:
            KeyError: no memory, or the prefix is ambiguous.
        """
        memory_id = str(memory_id).strip().lower()
        if len(memory_id) >= 15 and self._str_ids.get(int(memory_id[:15], 16), "").startswith(memory_id):
            return self._str_ids[int(memory_id[:15], 16)]
        matches = [i for i in self._str_ids.values() if len(memory_id) >= 8 and i.startswith(memory_id)]
        if len(matches) != 1:
            what = "is ambiguous" if matches else "is not a stored memory"
            raise KeyError(f"id {memory_id!r} {what} in {self.root} (give 8 or more hex digits of an id from search)")
        return matches[0]

    def _gar_rerank(self, hits: list[SearchHit], query_vector: np.ndarray, k: int, where: dict | None,
                    alpha: float, related_k: int) -> list[SearchHit]:
        if not hits:
            return hits
        graph = self.graph()
        if self._gar is None or self._gar.alpha != alpha:
            self._gar = GraphAugmentedRetriever(graph, alpha=alpha)
        numbers = np.array([int_id(hit.id) for hit in hits], dtype=np.int64)
        scores = np.array([hit.score for hit in hits], dtype=np.float64)
        length = min(len(graph), max(4 * int(k), len(hits)))
        result = self._gar.rerank(numbers[None], scores[None], length, explain=True)
        ids = [self._str_ids[int(n)] for n in result.ids[0]]
        allowed = set(ids) if where is None else set(self.store.collection.get(ids=ids, where=where, include=[])["ids"])
        chosen = [(i, memory_id) for i, memory_id in enumerate(ids) if memory_id in allowed][: int(k)]
        records = self.store.get([memory_id for _, memory_id in chosen])
        stage1 = (records.embeddings @ query_vector).tolist() if chosen else []  # (n,)
        by_id = {hit.id: hit for hit in hits}
        out = []
        for (i, memory_id), metadata, document, cosine in zip(chosen, records.metadatas, records.documents, stage1):
            hit = self._hit(memory_id, result.scores[0][i], cosine, metadata, document)
            hit.match_logit = by_id[memory_id].match_logit if memory_id in by_id else None
            explanation = result.explanations[0][i]
            hit.explanation, hit.related = self._explained(explanation, memory_id, related_k)
            out.append(hit)
        return out

    def _explained(self, explanation, memory_id: str, related_k: int) -> tuple[str, list[Related]]:
        parts = [] if explanation.hit_rank is None else [f"direct hit (rank {explanation.hit_rank + 1})"]
        related: dict[str, tuple[float, str]] = {}
        for contribution in explanation.contributions:
            seed = self._str_ids[int(contribution.seed_id)]
            via = "" if contribution.via is None else f", via {self._str_ids[int(contribution.via)][:8]}"
            parts.append(f"{contribution.reason} (hit {seed[:8]}{via})")
            related.setdefault(seed, (float(contribution.strength), contribution.reason))
        for neighbour in self.related(memory_id, related_k):
            related.setdefault(neighbour.id, (neighbour.weight, neighbour.reason))
        ids = list(related)[:related_k]
        metadata = self._metadata_of(ids) if ids else {}
        return ("; ".join(parts) or "no graph path to a hit",
                [Related(i, related[i][0], related[i][1], metadata[i]) for i in ids])

    def _explain(self, query: str, hits: list[SearchHit], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for hit in hits:
            image = self._load_image(hit)
            if image is None:
                continue
            panel = self.stage2.explain(query, image, rank=hit.rank + 1, score=hit.score)
            hit.panel_path = folder / f"{hit.rank + 1:02d}_{hit.id[:12]}.png"
            panel.save(hit.panel_path)

    # ------------------------------------------------------------------ media
    def _media_from(self, metadata: dict[str, Any]) -> Path | None:
        name = metadata.get("media_file")
        if name and (self.media_dir / name).is_file():
            return self.media_dir / name
        source = metadata.get("source_path")
        if metadata.get("modality") != "text" and source and Path(source).is_file():
            return Path(source)
        return None

    @_sees_other_writers
    def media_path(self, memory_id: str) -> Path | None:
        """The file to display or play for an image/audio memory (stored copy, else the original).

        Returns ``None`` for notes and for memories whose file is nowhere to be found.
        """
        with self._mutex:
            memory_id = self.resolve_id(memory_id)
            return self._metadata_of([memory_id])[memory_id]["media_path"]

    @_sees_other_writers
    def get(self, memory_id: str) -> SearchHit:
        """One memory as a :class:`SearchHit` (scores 0), e.g. for a dashboard's detail view."""
        with self._mutex:
            memory_id = self.resolve_id(memory_id)
            records = self.store.get([memory_id], include_embeddings=False)
            return self._hit(memory_id, 0.0, 0.0, records.metadatas[0], records.documents[0])

    # ------------------------------------------------------------------ forget and consolidate
    def forget(self, ids: Iterable[str] | None = None, **filters: Any) -> int:
        """Remove memories by id, by filter (``year``, ``place``, ``modality``, ``after``,
        ``before``), or both (both must match), from Chroma, FAISS, the graph and ``media/``.

        Returns:
            How many memories were removed.

        Raises:
            ValueError: neither ids nor a filter is given, or an unknown filter name.
            KeyError: a given id is not stored (or its prefix is ambiguous); nothing is removed.
        """
        unknown = set(filters) - {"year", "place", "modality", "after", "before"}
        if unknown:
            raise ValueError(f"forget: unknown filter(s) {sorted(unknown)}; use year, place, modality, after, before")
        filters = {key: value for key, value in filters.items() if value is not None}
        if ids is None and not filters:
            raise ValueError("forget: pass ids or a filter (refusing to forget everything)")
        with self._write_lock():
            targets = self.matching_ids(ids, **filters)
            return self._remove(targets)

    @_sees_other_writers
    def matching_ids(self, ids: Iterable[str] | None = None, **filters: Any) -> list[str]:
        """Stored ids among ``ids`` (full ids or 8+ digit prefixes) that match ``filters``.

        Raises:
            KeyError: an id in ``ids`` is not stored or is an ambiguous prefix (it is named).
        """
        wanted = None if ids is None else [self.resolve_id(memory_id) for memory_id in ids]
        try:
            where = self.where(**filters) if filters else None
        except _NoMatch:
            return []
        if wanted is not None and not wanted:
            return []
        if where is None:
            return wanted or []
        found: list[str] = []
        total = self.store.count()
        for offset in range(0, total, _PAGE):
            found += self.store.collection.get(ids=wanted, where=where, limit=_PAGE, offset=offset, include=[])["ids"]
        return found

    def _remove(self, targets: list[str]) -> int:
        if not targets:
            return 0
        records = self.store.get(targets, include_embeddings=False)
        self.store.delete(ids=targets)
        self._changed()
        for metadata in records.metadatas:
            if metadata.get("media_file"):
                (self.media_dir / metadata["media_file"]).unlink(missing_ok=True)
        gone = np.array([int_id(i) for i in targets], dtype=np.int64)
        keep = self.index.ids[~np.isin(self.index.ids, gone)]
        self._rebuild_index_from(keep)
        for number in gone.tolist():
            self._str_ids.pop(number, None)
        self._invalidate()
        return len(targets)

    def consolidate(self, threshold: float = 0.97, *, same_modality: bool = True) -> int:
        """Merge near-duplicates: memories with cosine >= ``threshold`` (FAISS range search).

        Each group of linked memories (connected components) keeps its earliest memory; the
        others are removed, and the keeper's ``sources`` list every member's sources (ids,
        paths, times, places), its importance is the group's maximum. The keeper's metadata is
        written before the others are deleted, so an interrupted run loses no source.

        Args:
            threshold: cosine similarity at which two memories are near-duplicates (default 0.97).
            same_modality: only merge memories of the same modality (default ``True``).

        Returns:
            How many memories were merged into others (removed).
        """
        if not 0 < threshold <= 1:
            raise ValueError(f"consolidate: threshold must be in (0, 1], got {threshold}")
        with self._write_lock():
            if self.index is None:
                return 0
            groups = self._duplicate_groups(threshold, same_modality)
            removed: list[str] = []
            for group in groups:
                removed += self._merge(group)
            return self._remove(removed)

    def _duplicate_groups(self, threshold: float, same_modality: bool) -> list[list[str]]:
        numbers = self.index.ids
        vectors = self.index.reconstruct(numbers)  # (N, D)
        parent = {int(n): int(n) for n in numbers}

        def find(node: int) -> int:
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        modality = self._modalities() if same_modality else {}
        for start in tqdm(range(0, len(numbers), 1024), desc="consolidate", disable=not self.progress):
            results = self.index.range_search(vectors[start:start + 1024], threshold)
            for row, (_, found) in enumerate(results):
                me = int(numbers[start + row])
                for other in found.tolist():
                    if other != me and modality.get(me) == modality.get(other):
                        parent[find(other)] = find(me)
        groups: dict[int, list[str]] = {}
        for number in numbers.tolist():
            groups.setdefault(find(number), []).append(self._str_ids[number])
        return [group for group in groups.values() if len(group) > 1]

    def _modalities(self) -> dict[int, str]:
        out: dict[int, str] = {}
        total = self.store.count()
        for offset in range(0, total, _PAGE):
            page = self.store.collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
            out.update({int_id(i): (m or {}).get("modality", "") for i, m in zip(page["ids"], page["metadatas"])})
        return out

    def _merge(self, group: list[str]) -> list[str]:
        """Write the keeper's merged sources; return the ids to remove."""
        records = self.store.get(group, include_embeddings=False)
        order = sorted(range(len(group)), key=lambda i: (records.metadatas[i].get("timestamp", float("inf")),
                                                         records.metadatas[i].get("ingested_at", 0.0)))
        keeper = order[0]
        sources, seen = [], set()
        for i in order:
            for source in decode_metadata(records.metadatas[i], records.ids[i])["sources"]:
                key = (source.get("id"), source.get("path"))
                if key not in seen:
                    seen.add(key)
                    sources.append(source)
        metadata = dict(records.metadatas[keeper], sources=json.dumps(sources))
        importance = [m.get("importance") for m in records.metadatas if m.get("importance") is not None]
        if importance:
            metadata["importance"] = float(max(importance))
        self.store.collection.update(ids=[records.ids[keeper]], metadatas=[metadata])
        self._changed()
        return [records.ids[i] for i in order[1:]]

    # ------------------------------------------------------------------ maintenance
    def rebuild(self) -> dict[str, Any]:
        """Rebuild the FAISS index and the graph from Chroma and remove orphan media copies.

        Missing media copies whose original still exists with the same bytes are copied again.

        Returns:
            ``{"memories", "orphans_removed", "media_restored"}``.
        """
        with self._write_lock():
            self._rebuild_index()
            orphans = self._orphan_media()
            for path in orphans:
                path.unlink(missing_ok=True)
            restored = self._restore_media()
            if self.index is not None:
                self.graph()
            return {"memories": self.store.count(), "orphans_removed": len(orphans), "media_restored": restored}

    def _media_files(self) -> dict[str, Path]:
        return {path.name: path for path in self.media_dir.iterdir()
                if path.is_file() and not path.name.startswith(".")}

    def _orphan_media(self) -> list[Path]:
        files = self._media_files()
        referenced = self._all_metadata_field("media_file")
        return [path for name, path in files.items() if name not in referenced]

    def _all_metadata_field(self, field: str) -> set[Any]:
        values = set()
        total = self.store.count()
        for offset in range(0, total, _PAGE):
            page = self.store.collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
            values.update(m[field] for m in page["metadatas"] if m and field in m)
        return values

    @_sees_other_writers
    def check(self, *, tolerance: float = 1e-4) -> list[str]:
        """Verify that Chroma, FAISS and the graph agree; an empty list means consistent.

        Checks: the same id set in all three, equal vectors (max abs difference <= ``tolerance``)
        in Chroma, FAISS and the graph, the saved index file and manifest match the live index,
        every memory has ``modality`` and ``timestamp``, and every image/audio memory's media copy
        exists. (The graph checked is the one search would use, built from Chroma if needed.)
        """
        with self._mutex:
            records = self.store.all_embeddings(progress=self.progress)
            problems = self._check_index(records, tolerance) + self._check_saved(records.ids)
            problems += self._check_graph(records, tolerance) + self._check_metadata(records)
            return problems

    def _check_index(self, records, tolerance: float) -> list[str]:
        chroma = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        faiss_ids = np.empty(0, np.int64) if self.index is None else self.index.ids
        problems = _compare_sets("FAISS index", chroma, faiss_ids, self._str_ids)
        common = np.isin(chroma, faiss_ids)
        if common.any():
            difference = np.abs(self.index.reconstruct(chroma[common]) - records.embeddings[common]).max(axis=1)
            bad = np.flatnonzero(difference > tolerance)
            if len(bad):
                first = records.ids[int(np.flatnonzero(common)[bad[0]])]
                problems.append(f"{len(bad)} vector(s) differ between Chroma and FAISS (e.g. {first}, "
                                f"max abs diff {difference[bad[0]]:.2g}); run `mmai memory rebuild`")
        return problems

    def _check_saved(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        try:
            manifest = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return [f"{self._manifest_path} is missing or unreadable; run `mmai memory rebuild`"]
        saved = self._load_index()
        problems = []
        if manifest.get("count") != len(ids) or manifest.get("ids_sha256") != _ids_digest(ids):
            problems.append(f"{self._manifest_path} describes {manifest.get('count')} memories, "
                            f"not Chroma's {len(ids)}")
        if saved is None or len(saved) != len(ids):
            problems.append(f"{self._index_path} is missing, damaged or stale; run `mmai memory rebuild`")
        return problems

    def _check_graph(self, records, tolerance: float) -> list[str]:
        if not records.ids:
            return []
        graph = self.graph()
        chroma = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        problems = _compare_sets("episodic graph", chroma, graph.ids, self._str_ids)
        nodes = np.array(sorted(graph.graph.nodes), dtype=np.int64)
        if not np.array_equal(nodes, np.sort(graph.ids)):
            problems.append("episodic graph: its NetworkX nodes differ from its id list")
        positions = graph.positions(chroma)
        found = positions >= 0
        if found.any():
            difference = np.abs(graph.embeddings[positions[found]] - records.embeddings[found]).max()
            if difference > tolerance:
                problems.append(f"episodic graph embeddings differ from Chroma's (max abs diff {difference:.2g})")
        return problems

    def _check_metadata(self, records) -> list[str]:
        """Metadata fields, and the media copy of every image/audio memory (with a Chroma server the
        copies live on the machine that ingested them: there only both missing is a problem)."""
        problems = []
        media = self._media_files()
        local = self.store.is_local
        for memory_id, metadata in zip(records.ids, records.metadatas):
            if metadata.get("modality") not in ("image", "text", "audio") or "timestamp" not in metadata:
                problems.append(f"memory {memory_id}: metadata lacks modality or timestamp ({metadata})")
            elif metadata["modality"] != "text" and metadata.get("media_file") not in media:
                source, copy = metadata.get("source_path"), self.media_dir / str(metadata.get("media_file"))
                if self._restorable(memory_id, metadata):
                    if local:
                        problems.append(f"memory {memory_id}: media copy {copy} is missing; run "
                                        f"`mmai memory rebuild` to copy it again from {source}")
                else:
                    problems.append(f"memory {memory_id}: media copy {copy} is missing and its source {source} "
                                    "is gone or changed; restore the file or forget the memory")
        return problems

    @staticmethod
    def _restorable(memory_id: str, metadata: dict[str, Any]) -> bool:
        """Whether the memory's original still exists with the same bytes (its id is their hash)."""
        source = metadata.get("source_path")
        try:
            return bool(source) and content_id(Path(source).read_bytes()) == memory_id
        except OSError:
            return False

    def _restore_media(self) -> int:
        """Copy missing media copies again from their originals (same bytes only); returns how many."""
        media, restored = self._media_files(), 0
        total = self.store.count()
        for offset in range(0, total, _PAGE):
            page = self.store.collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
            for memory_id, metadata in zip(page["ids"], page["metadatas"]):
                name = (metadata or {}).get("media_file")
                if name and name not in media and self._restorable(memory_id, metadata):
                    atomic_copy(Path(metadata["source_path"]), self.media_dir / name)
                    restored += 1
        return restored

    @_sees_other_writers
    def stats(self) -> dict[str, Any]:
        """Counts by modality, year and place, sizes of the index and graph, and where things are."""
        with self._mutex:
            counts: dict[str, dict[Any, int]] = {"modality": {}, "year": {}, "place": {}, "time_source": {}}
            total = self.store.count()
            for offset in range(0, total, _PAGE):
                page = self.store.collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
                for metadata in page["metadatas"]:
                    for field, table in counts.items():
                        value = (metadata or {}).get(field)
                        if value is not None:
                            table[value] = table.get(value, 0) + 1
            media = self._media_files()
            return {
                "root": str(self.root), "chroma": self.store.location, "checkpoint": self.checkpoint,
                "memories": total, "by_modality": counts["modality"], "by_year": dict(sorted(counts["year"].items())),
                "by_place": dict(sorted(counts["place"].items(), key=lambda item: -item[1])),
                "time_sources": counts["time_source"],
                "index": None if self.index is None else {"kind": self.index.kind, "size": len(self.index),
                                                          "dim": self.index.dim, "on_gpu": self.index.on_gpu},
                "graph": None if self._graph is None else self._graph.stats(),
                "media_files": len(media),
                "media_megabytes": round(sum(p.stat().st_size for p in media.values()) / 1e6, 3),
                "repaired_on_open": self.repaired,
            }


def _compare_sets(name: str, chroma: np.ndarray, other: np.ndarray, names: dict[int, str]) -> list[str]:
    problems = []
    missing = chroma[~np.isin(chroma, other)]
    extra = other[~np.isin(other, chroma)]
    if len(missing):
        problems.append(f"{len(missing)} memories in Chroma are missing from the {name} "
                        f"(e.g. {names.get(int(missing[0]), missing[0])}); run `mmai memory rebuild`")
    if len(extra):
        problems.append(f"{len(extra)} ids in the {name} are not in Chroma (e.g. int id {extra[0]}); "
                        "run `mmai memory rebuild`")
    return problems
