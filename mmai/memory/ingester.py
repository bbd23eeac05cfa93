"""Adding files to a personal memory, crash-safely, in confirmed batches.

Files are read by :mod:`mmai.memory.ingest` (what a file is, when and where it was made). Ids are
content hashes, so ingest is idempotent: the same file ingested twice, from anywhere, is a
duplicate, and its other path is added to the memory's ``sources``.

Each batch (default 16 files): read and validate, embed, copy the media file into
``root/media/<id><suffix>`` (atomically), write the batch to Chroma, and only then append a line
naming its ids to the journal (:meth:`~mmai.memory.journal.Journal.confirm`, fsynced): a memory
is *confirmed* (reported as added) once it is there. A process killed at any moment leaves
Chroma with every confirmed memory; the FAISS file may then be stale, and the next open repairs
it from Chroma. A media copy written just before a kill may be an orphan that ``rebuild()``
removes. The whole ingest holds the store's write lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
from tqdm.auto import tqdm

from mmai.memory.files import atomic_copy
from mmai.memory.filters import METADATA_FIELDS, clean_metadata
from mmai.memory.index_sync import IndexSync
from mmai.memory.ingest import (IngestError, MemoryFile, MetaTable, content_id, expand_paths, modality_of,
                                read_memory_file, validate_fields)
from mmai.memory.journal import Journal
from mmai.memory.models import MemoryModels
from mmai.memory.records import decode_metadata
from mmai.memory.store import MemoryStore
from mmai.retrieval.vectors import as_unit_vectors
from mmai.memory.write_policy import ADD, DISCARD, MERGE, Decision, WritePolicy, decide

__all__ = ["EXTRA_FIELDS", "IngestReport", "Ingester"]

#: metadata kept beside METADATA_FIELDS (Chroma values are scalars: ``sources`` is a JSON string).
EXTRA_FIELDS: dict[str, type] = {"time_source": str, "sources": str, "media_file": str, "importance": float,
                                 "ingested_at": float}


@dataclasses.dataclass
class IngestReport:
    """What :meth:`PersonalMemory.ingest` did.

    Attributes:
        added: ids of the memories written (confirmed), in order.
        duplicates: ``(path, id)`` of files already stored (same bytes).
        rejected: ``(path, reason)`` of files not stored.
        skipped: ``(link, reason)`` of symbolic links not followed (they leave the given folders).
        merged: ``(path, kept id)`` of files merged into a memory of their burst by the write-time
            policy (:mod:`mmai.memory.write_policy`; undone by ``consolidate --undo``).
        discarded: ``(path, kept id)`` of files the policy found to add nothing: not stored, their
            path listed in that memory's sources (the file itself is untouched).
        seconds: wall time.
    """

    added: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    merged: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    discarded: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    rejected: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None

    def summary(self) -> str:
        """``"added 12, duplicates 3, rejected 1 in 4.2 s"`` and one line per rejection."""
        decided = (f", merged {len(self.merged)}, discarded {len(self.discarded)}"
                   if self.merged or self.discarded else "")
        lines = [f"added {len(self.added)}{decided}, duplicates {len(self.duplicates)}, rejected {len(self.rejected)} "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  rejected: {reason}" for _, reason in self.rejected]  # reasons name their file
        lines += [f"  skipped: {reason}" for _, reason in self.skipped]
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)


def _write_failure(error: Exception, first: Path, confirmed: int) -> str | None:
    """One line for a batch that could not be written (disk full, I/O, database), or ``None`` when
    ``error`` is not such a failure (then it propagates)."""
    import errno
    import sqlite3

    kept = (f"the {confirmed} memories confirmed before it are stored; nothing else was written (run the same "
            "ingest again once fixed: confirmed files are skipped as duplicates)")
    if isinstance(error, OSError):
        what = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or type(error).__name__)
        where = error.filename or f"the batch starting at {first}"
        return f"{what} writing {where} ({error.strerror or error}); {kept}"
    text = str(error)
    if isinstance(error, sqlite3.Error) or type(error).__module__.startswith("chromadb"):
        what = "disk full" if "full" in text or "No space" in text else "database write failed"
        return f"{what} writing the Chroma database ({type(error).__name__}: {text.splitlines()[0][:160] if text else ''}); {kept}"
    return None


def clean_record(metadata: dict[str, Any], where: str) -> dict[str, Any]:
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


class Ingester:
    """Writes files into the store, the media folder, the journal and the index.

    Args:
        store, sync, journal, models: the memory's parts.
        media_dir: ``root/media``.
        write_lock: the store's write lock (a context manager factory).
        absorb: merges new records into kept memories, undoably
            (:meth:`~mmai.memory.maintenance.Maintenance.absorb`), for the write-time policy.
    """

    def __init__(self, store: MemoryStore, sync: IndexSync, journal: Journal, models: MemoryModels, media_dir: Path,
                 write_lock: Callable[[], ContextManager], absorb: Callable[[dict[str, list[dict]]], None]) -> None:
        self.store, self.sync, self.journal, self.models = store, sync, journal, models
        self.media_dir, self.write_lock, self.absorb = Path(media_dir), write_lock, absorb
        self.stop_requested: str | None = None  # set (e.g. by a SIGTERM handler): stop after the batch

    def ingest(self, paths: Sequence[str | os.PathLike], meta: str | os.PathLike | None, progress: bool, *,
               require_time: bool = False, batch_size: int = 16, overrides: dict[str, dict[str, Any]] | None = None,
               follow_links: bool = False, policy: WritePolicy | None = None) -> IngestReport:
        """Add files (or folders of files) as memories.

        Args:
            paths: image, note and audio files, or folders (walked recursively).
            meta: a JSON/CSV table of per-file ``time``/``place``/``latitude``/``longitude``
                (see :class:`~mmai.memory.ingest.MetaTable`).
            progress: tqdm bar (``PersonalMemory.ingest``'s default: the memory's ``progress``).
            require_time: reject files whose time would come only from the file's mtime.
            batch_size: files per confirmed batch (default 16).
            overrides: ``{absolute path: {field: value}}`` metadata that wins over every other
                source; fields as in sidecars, plus ``source``: the ``time_source`` label to record
                (default ``"override"``), and ``source_path``: what to record as the file's origin
                instead of its path (e.g. a dashboard upload's name, not its temporary copy).
            follow_links: follow symbolic links inside the folders even when their target is
                outside the given paths (default ``False``: skipped, listed in ``skipped``).
            policy: write-time decisions (:mod:`mmai.memory.write_policy`): each new memory is
                added, merged into a memory of its burst, or discarded as adding nothing; default
                ``None``: every file is added.

        Returns:
            An :class:`IngestReport`; a file that cannot be read is rejected with its reason.

        Raises:
            FileNotFoundError, IngestError: ``meta`` is missing or invalid (nothing is written).
            ValueError: no checkpoint (nothing is written).
        """
        started = time.perf_counter()
        report = IngestReport()
        table = None if meta is None else MetaTable(meta)
        files = self._expand(paths, report, follow_links)
        if files:
            self.models.encoder  # noqa: B018 - load the model first: no model is a usage error, not a file's
        with self.write_lock():
            seen: dict[str, Path] = {}
            if self.store.is_local:  # a Chroma server's memories come from many machines' journals
                state = self.journal.replay()
                self._refuse_if_chroma_lost(state)
                self._confirm_killed_batch(state)
                # a file merged into a kept memory is stored there: ingested again, it is a duplicate
                seen.update({i: Path() for i in state.forgotten if state.why.get(i) == "merged"})
            bar = tqdm(total=len(files), desc="ingest", unit="file", disable=not progress)
            for start in range(0, len(files), max(1, batch_size)):
                batch = files[start:start + batch_size]
                try:
                    self._ingest_batch(batch, table, require_time, overrides or {}, report, seen, policy)
                except Exception as error:  # noqa: BLE001 - an OS/database write error ends the run, reported
                    report.stopped = _write_failure(error, batch[0][0], len(report.added))
                    if report.stopped is None:
                        raise
                    break
                bar.update(len(batch))
                bar.set_postfix(added=len(report.added), dup=len(report.duplicates), rejected=len(report.rejected),
                                **({"merged": len(report.merged) + len(report.discarded)} if policy else {}))
                if self.stop_requested and start + batch_size < len(files):
                    report.stopped = (f"{self.stop_requested} after {len(report.added)} confirmed memories; "
                                      f"{len(files) - start - len(batch)} files not read (run the same ingest again "
                                      "to add them: confirmed ones are skipped as duplicates)")
                    break
            bar.close()
            if report.added:
                try:
                    self.sync.finish()
                    self.models.record_dim(self.sync.index.dim)
                except OSError as error:  # the index is derived: the next open rebuilds it from Chroma
                    report.stopped = (report.stopped or "") + (
                        f"{'; ' if report.stopped else ''}could not save the FAISS index "
                        f"({error.strerror or error}: {error.filename}); the next command rebuilds it from Chroma")
        report.seconds = time.perf_counter() - started
        return report

    def _refuse_if_chroma_lost(self, state) -> None:
        """Refuse to write over a store whose Chroma lacks journaled memories: the new index would
        replace the saved embeddings that ``rebuild`` restores them with."""
        if not state.records:
            return
        stored = set(self.store.collection.get(ids=sorted(state.records), include=[])["ids"])
        lost = [memory_id for memory_id in state.records if memory_id not in stored]
        if lost:
            root = self.journal.root
            raise ValueError(f"{root}: {len(lost)} confirmed memories of {self.journal.journal_path.name} are missing "
                             f"from Chroma (e.g. {lost[0]}; its database was lost or replaced); run `mmai memory "
                             f"rebuild --root {root}` first to restore them, then ingest again")

    def _confirm_killed_batch(self, state) -> int:
        """Journal the memories a killed ingest wrote to Chroma but never confirmed (a kill between
        the Chroma write and the journal line leaves at most one batch so); returns how many.

        Under the write lock mmai writes Chroma only so, and its record is complete (one upsert,
        after the media copy). A memory written into Chroma by other code is journaled here too,
        which makes it restorable like the rest (``check`` names such memories until then)."""
        unconfirmed = sorted(self._chroma_ids() - state.ids - state.forgotten)
        if not unconfirmed:
            return 0
        found = self.store.get(unconfirmed, include_embeddings=False, missing="skip")
        self.journal.confirm(list(found.ids), [str(m.get("source_path", "")) for m in found.metadatas],
                             [{"metadata": m, "document": d} for m, d in zip(found.metadatas, found.documents)])
        self.journal.changed()
        return len(found.ids)

    def _chroma_ids(self) -> set[str]:
        """Every id in Chroma. Under the write lock the index was just synced with Chroma (the lock's
        ``on_lock`` refresh), so its id map is that set when the counts agree, which a kill between
        the Chroma write and the journal line cannot leave (it adds memories); else Chroma is read
        (a scan of every id: seconds at 100,000 memories)."""
        known = self.sync.str_ids
        if self.sync.index is not None and len(known) == len(self.sync.index) == self.store.count():
            return set(known.values())
        return set(self.sync.chroma_ids())

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

    def _ingest_batch(self, batch, table, require_time, overrides, report, seen, policy=None) -> None:
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
        decisions = self._decide(files, vectors, policy) if files and policy is not None else [Decision(ADD)] * len(files)
        added = [n for n, decision in enumerate(decisions) if decision.action == ADD]
        if added:
            self._write([files[n] for n in added], vectors[added])
            for n in added:
                seen[files[n].id] = files[n].path
            report.added += [files[n].id for n in added]
        self._merge_into_kept(files, vectors, decisions, report)
        seen.update({files[n].id: files[n].path for n, d in enumerate(decisions) if d.action != ADD})
        self._add_sources([(memory_id, overrides.get(str(path), {}).get("source_path", path))
                           for path, memory_id in duplicates])

    def _decide(self, files: list[MemoryFile], vectors: np.ndarray, policy: WritePolicy) -> list[Decision]:
        """The policy's decision for each embedded file, against the stored memories of its burst
        (read from Chroma by time window) and the files before it in this batch. A file whose time
        is only its mtime has no burst (copied folders share mtimes): it is added."""
        vectors = as_unit_vectors(vectors, dim=self.store.dim, name=f"embeddings of {files[0].path} ...")
        times = np.array([np.nan if f.metadata.get("time_source") == "file mtime" else
                          float(f.metadata.get("timestamp", np.nan)) for f in files])
        windows = [{"$and": [{"timestamp": {"$gte": t - policy.burst_s}}, {"timestamp": {"$lte": t + policy.burst_s}}]}
                   for t in sorted(set(times[np.isfinite(times)].tolist()))]
        stored = None
        if windows and self.store.count():
            found = self.store.collection.get(where=windows[0] if len(windows) == 1 else {"$or": windows},
                                              include=["embeddings", "metadatas"])
            usable = [n for n, m in enumerate(found["metadatas"]) if m.get("time_source") != "file mtime"]
            stored = {"ids": [found["ids"][n] for n in usable],
                      "vectors": np.asarray(found["embeddings"], np.float32)[usable] if usable else np.zeros((0, 1)),
                      "timestamps": [float(found["metadatas"][n].get("timestamp", np.nan)) for n in usable],
                      "places": [found["metadatas"][n].get("place", "") for n in usable],
                      "modalities": [found["metadatas"][n].get("modality", "") for n in usable]}
        new = {"ids": [f.id for f in files], "vectors": vectors, "timestamps": times,
               "places": [f.metadata.get("place", "") for f in files], "modalities": [f.modality for f in files]}
        return decide(policy, new, stored)

    def _merge_into_kept(self, files: list[MemoryFile], vectors: np.ndarray, decisions: list[Decision],
                         report: IngestReport) -> None:
        """Discarded files join their kept memory's sources; merged ones are absorbed into it (their
        record, embedding and media copy kept for ``consolidate --undo``)."""
        discarded = [(files[n], d.target) for n, d in enumerate(decisions) if d.action == DISCARD]
        if discarded:
            self._add_sources([(target, f.metadata.get("source_path", f.path)) for f, target in discarded])
            report.discarded += [(f.path, target) for f, target in discarded]
        merged = [n for n, d in enumerate(decisions) if d.action == MERGE]
        if not merged:
            return
        groups: dict[str, list[dict]] = {}
        for n in merged:
            memory_file = files[n]
            metadata = self._record_metadata(memory_file)
            groups.setdefault(decisions[n].target, []).append(
                {"id": memory_file.id, "metadata": metadata, "document": memory_file.document,
                 "vector": as_unit_vectors(vectors[n], dim=self.store.dim, name=str(memory_file.path))[0],
                 "path": str(memory_file.path)})
        self.absorb(groups)
        report.merged += [(files[n].path, decisions[n].target) for n in merged]

    def _duplicates(self, batch, report: IngestReport, seen: dict[str, Path]) -> list[tuple[Path, str]]:
        """``(path, id)`` of files in ``batch`` already stored, or with the same bytes as a file
        earlier in this run or batch."""
        ids = {}
        for path, _ in batch:
            try:
                modality_of(path)
                data = path.read_bytes()
                if not data:
                    continue  # rejected as empty when read: not a duplicate of another empty file
                ids[path] = content_id(data)
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
            self.journal.updated(ids, metadatas)
            self.journal.changed()

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
        if memory_file.modality == "audio" and not self.models.has_audio:
            raise IngestError(f"{path}: checkpoint has no audio tower: train with model.bi_encoder.audio to ingest audio "
                              "memories (the bi-encoder's audio tower embeds them in the same space)")
        return memory_file

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
        vectors = getattr(self.models.encoder, method)([f.content for f in group])
        vectors = np.asarray(vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else vectors, np.float32)
        if vectors.shape[0] != len(group) or not np.isfinite(vectors).all():
            raise ValueError(f"{method} returned {vectors.shape} for {len(group)} files, or NaN/inf")
        return vectors  # (n, E)

    def _record_metadata(self, memory_file: MemoryFile) -> dict[str, Any]:
        """A new memory's Chroma metadata; its media copy is written first (atomically)."""
        metadata = dict(memory_file.metadata, ingested_at=time.time())
        if memory_file.modality != "text":
            target = self.media_dir / f"{memory_file.id}{memory_file.suffix}"
            if not target.exists():
                atomic_copy(memory_file.path, target)
            metadata["media_file"] = target.name
        metadata["sources"] = json.dumps([{"id": memory_file.id, "path": metadata["source_path"],
                                           "timestamp": metadata["timestamp"], "place": metadata.get("place")}])
        return clean_record(metadata, f"memory {memory_file.path}")

    def _write(self, files: list[MemoryFile], vectors: np.ndarray) -> None:
        """Media copies, then Chroma, then the journal (confirmation), then the in-memory index."""
        metadatas = [self._record_metadata(memory_file) for memory_file in files]
        ids = [memory_file.id for memory_file in files]
        vectors = as_unit_vectors(vectors, dim=self.store.dim, name=f"embeddings of {files[0].path} ...")  # (n, E)
        documents = [f.document for f in files]
        self.store.collection.upsert(ids=ids, embeddings=vectors, metadatas=metadatas, documents=documents)
        self.journal.confirm(ids, [str(f.path) for f in files],
                             [{"metadata": m, "document": d} for m, d in zip(metadatas, documents)])
        self.journal.changed()
        self.sync.add(ids, vectors)
