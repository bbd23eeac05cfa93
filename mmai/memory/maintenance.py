"""Keeping a personal memory tidy: forget, consolidate, rebuild, check, stats.

* **forget** removes memories (by id and/or :class:`~mmai.memory.filters.Filters`) from Chroma,
  FAISS, the graph and ``media/``.
* **consolidate** merges near-duplicates (cosine >= a threshold, FAISS range search): each group
  keeps its earliest memory, whose ``sources`` list every member's; the keeper is written before
  the others are deleted, so an interrupted run loses no source.
* **rebuild** first restores into Chroma every memory the journal confirmed and Chroma lacks
  (:mod:`mmai.memory.recovery`: a lost or damaged database comes back from the journal, the
  media copies and the saved embeddings), then rebuilds the FAISS index and graph from Chroma,
  removes orphan media copies (left by a kill mid-ingest; never a copy a confirmed journal
  record names, and none at all while Chroma is empty) and copies missing ones again from
  originals that still have their bytes.
* **check** verifies that journal, Chroma, FAISS, the graph and the media agree, the saved index
  matches, and every media copy exists; **stats** counts memories by modality, year and place.

Writers hold the store's write lock.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
from tqdm.auto import tqdm

from mmai.memory.files import atomic_copy, atomic_write
from mmai.memory.filters import Filters
from mmai.memory.index_sync import IndexSync, ids_digest, int_id
from mmai.memory.ingest import content_id
from mmai.memory.journal import Journal
from mmai.memory.records import Records, decode_metadata
from mmai.memory.recovery import differences, protected_media, restore, saved_embeddings
from mmai.memory.store import MemoryStore

__all__ = ["Maintenance"]


class Maintenance:
    """Forget, consolidate, rebuild, check and stats over one memory's parts.

    Args:
        store, sync, records, journal: the memory's parts.
        media_dir: ``root/media``.
        write_lock: the store's write lock (a context manager factory).
        progress: tqdm bars.
    """

    def __init__(self, store: MemoryStore, sync: IndexSync, records: Records, journal: Journal, media_dir: Path,
                 write_lock: Callable[[], ContextManager], progress: bool) -> None:
        self.store, self.sync, self.records, self.journal = store, sync, records, journal
        self.media_dir, self.write_lock, self.progress = Path(media_dir), write_lock, progress

    # ------------------------------------------------------------------ forget
    def forget(self, ids: Iterable[str] | None, filters: Filters | None) -> int:
        """See :meth:`PersonalMemory.forget`."""
        if ids is None and (filters is None or filters.empty):
            raise ValueError("forget: pass ids or a filter (refusing to forget everything)")
        with self.write_lock():
            return self.remove(self.records.matching_ids(ids, filters))

    def remove(self, targets: list[str], *, keep_media: bool = False, why: str = "forget") -> int:
        """Remove memories from Chroma, their media copies (unless ``keep_media``: a merge's keeper
        names them in its sources), the index and the graph."""
        if not targets:
            return 0
        records = self.store.get(targets, include_embeddings=False, missing="skip")
        self.journal.forgotten(targets, why)  # first: a kill after it still forgets them (rebuild finishes it)
        self.store.delete(ids=targets)
        self.journal.changed()
        for memory_id, metadata in ([] if keep_media else zip(records.ids, records.metadatas)):
            names = {metadata.get("media_file")} | {source.get("media_file") for source in  # merged ones' copies too
                                                    decode_metadata(metadata, memory_id)["sources"]}
            for name in names - {None, ""}:
                (self.media_dir / str(name)).unlink(missing_ok=True)
        self.sync.remove(targets)
        return len(targets)

    # ------------------------------------------------------------------ consolidate
    def consolidate(self, threshold: float = 0.97, same_modality: bool = True) -> int:
        """See :meth:`PersonalMemory.consolidate`."""
        if not 0 < threshold <= 1:
            raise ValueError(f"consolidate: threshold must be in (0, 1], got {threshold}")
        with self.write_lock():
            if self.sync.index is None:
                return 0
            groups = self._duplicate_groups(threshold, same_modality)
            if not groups:
                return 0
            self._save_undo(groups)  # first: a kill mid-merge can still be undone
            removed: list[str] = []
            for group in groups:
                removed += self._merge(group)
            return self.remove(removed, keep_media=True, why="merged")

    # ------------------------------------------------------------------ undo a consolidate
    @property
    def undo_dir(self) -> Path:
        return self.media_dir.parent / "consolidate-undo"

    def _save_undo(self, groups: list[list[str]], new: list[dict] | None = None) -> Path:
        """Every member of ``groups`` as it is now (metadata, document, embedding), in one file;
        ``new`` records (``id``, ``metadata``, ``document``, ``vector``) are members not in Chroma."""
        new = new or []
        fresh = {record["id"] for record in new}
        found = self.store.get([i for group in groups for i in group if i not in fresh], include_embeddings=True)
        ids = list(found.ids) + [record["id"] for record in new]
        records = {i: {"metadata": m, "document": d} for i, m, d in zip(found.ids, found.metadatas, found.documents)}
        records.update({r["id"]: {"metadata": r["metadata"], "document": r["document"]} for r in new})
        vectors = np.concatenate([np.asarray(found.embeddings, np.float32).reshape(len(found.ids), -1),
                                  np.asarray([r["vector"] for r in new], np.float32).reshape(len(new), -1)]) \
            if new else np.asarray(found.embeddings, np.float32)
        entry = {"time": time.time(), "groups": groups, "records": records}
        self.undo_dir.mkdir(exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        target = self.undo_dir / f"{stem}.npz"
        serial = 1
        while target.exists():  # two merges in one second (one per ingest batch): each its own file
            target, serial = self.undo_dir / f"{stem}-{serial:03d}.npz", serial + 1
        atomic_write(target, lambda file: np.savez(file, ids=np.array(ids), embeddings=vectors,
                                                  entry=np.array(json.dumps(entry))))
        return target

    def absorb(self, groups: dict[str, list[dict]]) -> None:
        """Merge new memories into stored ones at ingest (the write-time policy's MERGE), undoably.

        ``groups``: ``{kept id: [{"id", "metadata", "document", "vector", "path"}, ...]}``, the new
        records (media copies already written) never written to Chroma. Like :meth:`consolidate`:
        the undo record first (so ``consolidate --undo`` brings them back as memories of their
        own), then the journal confirms and forgets them as ``"merged"``, then each kept memory
        lists them in its sources. Called under the write lock."""
        new = [record for records in groups.values() for record in records]
        self._save_undo([[keeper] + [r["id"] for r in records] for keeper, records in groups.items()], new)
        self.journal.confirm([r["id"] for r in new], [r["path"] for r in new],
                             [{"metadata": r["metadata"], "document": r["document"]} for r in new])
        self.journal.forgotten([r["id"] for r in new], "merged")
        kept = self.store.get(list(groups), include_embeddings=False)
        ids, metadatas = [], []
        for keeper, metadata in zip(kept.ids, kept.metadatas):
            ids.append(keeper)
            metadatas.append(merged_metadata([(keeper, metadata)] + [(r["id"], r["metadata"]) for r in groups[keeper]]))
        self.store.collection.update(ids=ids, metadatas=metadatas)
        self.journal.updated(ids, metadatas)
        self.journal.changed()
        self.sync.touch(ids)  # their importance may have changed

    def undo_files(self) -> list[Path]:
        return sorted(self.undo_dir.glob("*.npz")) if self.undo_dir.is_dir() else []

    def undo_consolidate(self) -> dict[str, Any]:
        """Undo the latest consolidate: the merged memories come back with their own metadata,
        text and embedding, and each keeper gets its metadata of before the merge. A group whose
        keeper was forgotten since stays merged (forget wins), and so does a member forgotten since.

        Returns ``{"restored", "groups", "skipped_groups", "file"}``.

        Raises:
            FileNotFoundError: no consolidate to undo.
        """
        with self.write_lock():
            files = self.undo_files()
            if not files:
                raise FileNotFoundError(f"{self.undo_dir}: no consolidate to undo")
            path = files[-1]
            try:
                with np.load(path, allow_pickle=False) as saved:
                    ids, vectors = [str(i) for i in saved["ids"]], np.asarray(saved["embeddings"], np.float32)
                    entry = json.loads(str(saved["entry"]))
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{path}: unreadable undo record ({error}); it is left as it is") from error
            row = {memory_id: n for n, memory_id in enumerate(ids)}
            state = self.journal.replay()
            stored = set(self.sync.chroma_ids())
            restore_ids, keepers, skipped = [], [], 0
            for group in entry["groups"]:
                keeper = next((i for i in group if i in stored), None)
                if keeper is None:
                    skipped += 1
                    continue
                keepers.append(keeper)
                # a merged member is journaled forgotten "merged"; one forgotten later by the user stays gone
                restore_ids += [i for i in group if i != keeper and i not in stored
                                and self._forgotten_by_merge(i, state)]
            if keepers:
                metadatas = [entry["records"][i]["metadata"] for i in keepers]
                self.store.collection.update(ids=keepers, metadatas=metadatas)
                self.journal.updated(keepers, metadatas)
                self.sync.touch(keepers)
            if restore_ids:
                records = [entry["records"][i] for i in restore_ids]
                vectors_back = vectors[[row[i] for i in restore_ids]]
                self.store.collection.upsert(ids=restore_ids, embeddings=vectors_back,
                                             metadatas=[r["metadata"] for r in records],
                                             documents=[r["document"] for r in records])
                self.journal.confirm(restore_ids, [str(r["metadata"].get("source_path", "")) for r in records],
                                     records)
                self.sync.add(restore_ids, vectors_back)
            self.journal.changed()
            self.sync.finish()
            done = path.with_suffix(".undone")
            os.replace(path, done)  # kept, renamed: a second --undo goes to the consolidate before
            return {"restored": len(restore_ids), "groups": len(keepers), "skipped_groups": skipped,
                    "file": str(done)}

    def _forgotten_by_merge(self, memory_id: str, state) -> bool:
        """Whether the journal's last word on ``memory_id`` is a merge (not a later forget)."""
        return memory_id in state.forgotten and state.why.get(memory_id) == "merged"

    def duplicate_groups(self, threshold: float = 0.97, same_modality: bool = True) -> list[list[str]]:
        """The groups :meth:`consolidate` would merge (nothing is changed): consolidate's dry run."""
        if not 0 < threshold <= 1:
            raise ValueError(f"consolidate: threshold must be in (0, 1], got {threshold}")
        return [] if self.sync.index is None else self._duplicate_groups(threshold, same_modality)

    def _duplicate_groups(self, threshold: float, same_modality: bool) -> list[list[str]]:
        index = self.sync.index
        numbers = index.ids
        vectors = index.reconstruct(numbers)  # (N, D)
        parent = {int(n): int(n) for n in numbers}

        def find(node: int) -> int:
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        modality = self._modalities() if same_modality else {}
        place = self._places()  # only one place's memories merge: the keeper's place stays every source's
        for start in tqdm(range(0, len(numbers), 1024), desc="consolidate", disable=not self.progress):
            results = index.range_search(vectors[start:start + 1024], threshold)
            for row, (_, found) in enumerate(results):
                me = int(numbers[start + row])
                for other in found.tolist():
                    if other != me and modality.get(me) == modality.get(other) and place.get(me) == place.get(other):
                        parent[find(other)] = find(me)
        groups: dict[int, list[str]] = {}
        for number in numbers.tolist():
            groups.setdefault(find(number), []).append(self.sync.str_ids[number])
        return [group for group in groups.values() if len(group) > 1]

    def _places(self) -> dict[int, str]:
        return {int_id(i): m.get("place", "") for ids, page in self.records.metadata_pages()
                for i, m in zip(ids, page)}

    def _modalities(self) -> dict[int, str]:
        return {int_id(i): m.get("modality", "") for ids, page in self.records.metadata_pages()
                for i, m in zip(ids, page)}

    def _merge(self, group: list[str]) -> list[str]:
        """Write the keeper's merged sources; return the ids to remove."""
        records = self.store.get(group, include_embeddings=False)
        order = sorted(range(len(group)), key=lambda i: (records.metadatas[i].get("timestamp", float("inf")),
                                                         records.metadatas[i].get("ingested_at", 0.0)))
        keeper = order[0]
        metadata = merged_metadata([(records.ids[i], records.metadatas[i]) for i in order])
        self.store.collection.update(ids=[records.ids[keeper]], metadatas=[metadata])
        self.journal.updated([records.ids[keeper]], [metadata])
        self.sync.touch([records.ids[keeper]])
        self.journal.changed()
        return [records.ids[i] for i in order[1:]]

    # ------------------------------------------------------------------ rebuild
    def rebuild(self, embed=None, moved_aside: Path | None = None) -> dict[str, Any]:
        """See :meth:`PersonalMemory.rebuild`; ``embed(modality, content)`` embeds a memory again
        where no saved embedding is left (``None``: none can be)."""
        with self.write_lock():
            local = self.store.is_local  # a server's memories come from many machines' journals
            recovered = restore(self.store, self.journal, self.media_dir, self.sync.root, embed, int_id) if local \
                else {"restored": 0, "re_embedded": 0, "unrestorable": []}
            state = self.journal.replay()
            finished = sorted(set(self.sync.chroma_ids()) & state.forgotten - state.ids) if local else []
            if finished:  # forgotten in the journal, then killed before Chroma was changed
                self.store.delete(ids=finished)
                self.journal.changed()
            recorded = self._record_unjournaled(state) if local else 0
            count = self.store.count()
            if count:
                self.sync.rebuild()
            else:
                self.sync.sync()
            metadatas = [m for _, page in self.records.metadata_pages() for m in page]
            orphans: list[Path] = []
            if count:  # never with an empty Chroma: every copy would look like an orphan
                names = protected_media(state, metadatas)
                orphans = [path for name, path in self._media_files().items()
                           if name not in names and path.stem not in names]
                for path in orphans:
                    path.unlink(missing_ok=True)
            restored = self._restore_media()
            if self.sync.index is not None:
                self.sync.graph()
            report = {"memories": count, "restored_from_journal": recovered["restored"],
                      "re_embedded": recovered["re_embedded"], "orphans_removed": len(orphans),
                      "media_restored": restored, "journal_records_added": recorded,
                      "forgets_finished": len(finished), "journal_rewritten": self._rewrite_torn_journal(state)}
            if moved_aside is not None:
                report["damaged_chroma_kept_at"] = str(moved_aside)
            if recovered["unrestorable"]:
                report["unrestorable"] = recovered["unrestorable"]
            return report

    def _record_unjournaled(self, state) -> int:
        """Journal the records of Chroma memories the journal holds no record of (older journals)."""
        ids, paths, records = [], [], []
        for page_ids, page in self.records.metadata_pages():
            missing = [i for i in page_ids if i not in state.records]
            if not missing:
                continue
            found = self.store.get(missing, include_embeddings=False, missing="skip")
            for memory_id, metadata, document in zip(found.ids, found.metadatas, found.documents):
                ids.append(memory_id)
                paths.append(str(metadata.get("source_path", "")))
                records.append({"metadata": metadata, "document": document})
        if ids:
            self.journal.confirm(ids, paths, records)
        return len(ids)

    def _rewrite_torn_journal(self, state) -> bool:
        """A journal with unparseable lines: kept beside, replaced by one line per stored memory."""
        if not state.bad_lines:
            return False
        path = self.journal.journal_path
        kept = path.with_name(f"{path.name}.torn-{int(time.time())}")
        found = self.store.all_embeddings(progress=False)
        lines = b"".join((json.dumps({"time": time.time(), "confirmed": [i], "paths": [str(m.get("source_path", ""))],
                                      "records": [{"metadata": m, "document": d}]}) + "\n").encode()
                         for i, m, d in zip(found.ids, found.metadatas, found.documents))
        os.link(path, kept)  # the old journal stays, under its new name
        atomic_write(path, lambda file: file.write(lines))
        return True

    def _media_files(self) -> dict[str, Path]:
        return {path.name: path for path in self.media_dir.iterdir()
                if path.is_file() and not path.name.startswith(".")}

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
        for ids, page in self.records.metadata_pages():
            for memory_id, metadata in zip(ids, page):
                name = metadata.get("media_file")
                if name and name not in media and self._restorable(memory_id, metadata):
                    atomic_copy(Path(metadata["source_path"]), self.media_dir / name)
                    restored += 1
        return restored

    # ------------------------------------------------------------------ check
    def check(self, tolerance: float = 1e-4) -> list[str]:
        """See :meth:`PersonalMemory.check`."""
        records = self.store.all_embeddings(progress=self.progress)
        problems = self._check_journal(records)
        problems += self._check_index(records, tolerance) + self._check_saved(records.ids)
        problems += self._check_graph(records, tolerance) + self._check_metadata(records)
        return problems

    def _check_journal(self, records) -> list[str]:
        if not self.store.is_local:  # a Chroma server's memories come from many machines' journals
            return []
        state = self.journal.replay()
        known = {int_id(i): i for i in [*records.ids, *state.ids, *state.forgotten]}
        saved = {known.get(number, str(number)) for number in saved_embeddings(self.sync.root, int_id)}
        return differences(state, records.ids, records.metadatas, self._media_files(), saved,
                           self.journal.journal_path)

    def _check_index(self, records, tolerance: float) -> list[str]:
        index = self.sync.index
        chroma = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        faiss_ids = np.empty(0, np.int64) if index is None else index.ids
        problems = _compare_sets("FAISS index", chroma, faiss_ids, self.sync.str_ids)
        common = np.isin(chroma, faiss_ids)
        if common.any():
            difference = np.abs(index.reconstruct(chroma[common]) - records.embeddings[common]).max(axis=1)
            bad = np.flatnonzero(difference > tolerance)
            if len(bad):
                first = records.ids[int(np.flatnonzero(common)[bad[0]])]
                problems.append(f"{len(bad)} vector(s) differ between Chroma and FAISS (e.g. {first}, "
                                f"max abs diff {difference[bad[0]]:.2g}); run `mmai memory rebuild`")
        return problems

    def _check_saved(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        manifest_path, index_path = self.sync.manifest_path, self.sync.index_path
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return [f"{manifest_path} is missing or unreadable; run `mmai memory rebuild`"]
        saved = self.sync.load()
        problems = []
        if manifest.get("count") != len(ids) or manifest.get("ids_sha256") != ids_digest(ids):
            problems.append(f"{manifest_path} describes {manifest.get('count')} memories, not Chroma's {len(ids)}")
        if saved is None or len(saved) != len(ids):
            problems.append(f"{index_path} is missing, damaged or stale; run `mmai memory rebuild`")
        return problems

    def _check_graph(self, records, tolerance: float) -> list[str]:
        if not records.ids:
            return []
        graph = self.sync.graph()
        chroma = np.array([int_id(i) for i in records.ids], dtype=np.int64)
        problems = _compare_sets("episodic graph", chroma, graph.ids, self.sync.str_ids)
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

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Counts by modality, year, place and time source; index, graph and media sizes."""
        counts: dict[str, dict[Any, int]] = {"modality": {}, "year": {}, "place": {}, "time_source": {}}
        for _, page in self.records.metadata_pages():
            for metadata in page:
                for field, table in counts.items():
                    value = metadata.get(field)
                    if value is not None:
                        table[value] = table.get(value, 0) + 1
        media, index, graph = self._media_files(), self.sync.index, self.sync.built_graph
        return {
            "memories": self.store.count(), "by_modality": counts["modality"],
            "by_year": dict(sorted(counts["year"].items())),
            "by_place": dict(sorted(counts["place"].items(), key=lambda item: -item[1])),
            "time_sources": counts["time_source"],
            "index": None if index is None else {"kind": index.kind, "size": len(index), "dim": index.dim,
                                                 "on_gpu": index.on_gpu},
            "graph": None if graph is None else graph.stats(),
            "media_files": len(media),
            "media_megabytes": round(sum(p.stat().st_size for p in media.values()) / 1e6, 3),
        }


def merged_metadata(members: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The keeper's metadata after a merge: ``members`` are ``(id, metadata)``, the keeper first.
    Its sources list every member's sources once (by id and path), each member's own source with
    its media copy (kept, not deleted), and its importance is the members' highest."""
    sources, seen = [], set()
    for memory_id, metadata in members:
        for source in decode_metadata(metadata, memory_id)["sources"]:
            if metadata.get("media_file") and source.get("id") == memory_id:
                source.setdefault("media_file", metadata["media_file"])
            key = (source.get("id"), source.get("path"))
            if key not in seen:
                seen.add(key)
                sources.append(source)
    merged = dict(members[0][1], sources=json.dumps(sources))
    importance = [m.get("importance") for _, m in members if m.get("importance") is not None]
    if importance:
        merged["importance"] = float(max(importance))
    return merged


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
