"""Restoring a memory's Chroma database from its store of record: the journal and the media copies.

Chroma holds the memories that searches read, but it is one SQLite file: deleted, truncated or
overwritten, it would take every memory with it. The journal (``ingest.journal.jsonl``: each
confirmed memory's metadata and document, later updates and forgets; see
:mod:`mmai.memory.journal`), the media copies (``media/``) and the saved embeddings
(``index.npz``, and ``index.previous.npz`` kept when an index had to be rebuilt over fewer
memories) are enough to restore it: :func:`restore` upserts every journaled memory Chroma lacks,
with its saved embedding, or one computed again with the store's checkpoint from its media copy
(or its note's text) where none is saved. :func:`differences` lists every way journal, Chroma,
index and media disagree (``mmai memory check``).

A damaged database (it does not open or read) is moved aside by :func:`move_aside` (kept,
never overwritten) before a fresh one is restored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mmai.retrieval.index import VectorIndex
from mmai.memory.journal import Journal, JournalState

__all__ = ["differences", "move_aside", "protected_media", "restore", "saved_embeddings"]


def move_aside(chroma_dir: Path) -> Path:
    """Rename the damaged ``chroma_dir`` to ``chroma.damaged-<time>`` beside it; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = chroma_dir.with_name(f"{chroma_dir.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target, n = chroma_dir.with_name(f"{chroma_dir.name}.damaged-{stamp}-{n}"), n + 1
    chroma_dir.rename(target)
    return target


def saved_embeddings(root: Path, int_id) -> dict[int, np.ndarray]:
    """``{int id: unit vector}`` from ``index.previous.npz`` then ``index.npz`` (the newer wins)."""
    vectors: dict[int, np.ndarray] = {}
    for name in ("index.previous.npz", "index.npz"):
        try:
            index = VectorIndex.load(root / name)
        except (OSError, ValueError, RuntimeError, KeyError):
            continue
        ids = index.ids
        if len(ids):
            for number, vector in zip(ids.tolist(), index.reconstruct(ids)):
                vectors[int(number)] = vector
    return vectors


def protected_media(state: JournalState, chroma_metadatas: list[dict]) -> set[str]:
    """Media file names (and id stems) a confirmed memory names: never removed as orphans."""
    names = {m.get("media_file") for m in chroma_metadatas if m.get("media_file")}
    for metadata in chroma_metadatas:  # a merge's keeper names its merged sources' copies
        if "media_file" in str(metadata.get("sources", "")):
            names |= {s.get("media_file") for s in _sources(metadata) if s.get("media_file")}
    names |= {r["metadata"].get("media_file") for r in state.records.values() if r["metadata"].get("media_file")}
    return names | set(state.ids)  # journals without records: a copy is named <id><suffix>


def _sources(metadata: dict) -> list[dict]:
    import json

    try:
        found = json.loads(metadata.get("sources") or "[]")
    except (TypeError, ValueError):
        return []
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def restore(store, journal: Journal, media_dir: Path, root: Path, embed, int_id) -> dict[str, Any]:
    """Upsert into Chroma every memory the journal holds a record of and Chroma lacks.

    Args:
        store: the (possibly empty) :class:`~mmai.memory.store.MemoryStore`.
        journal: the root's journal.
        media_dir: ``root/media``.
        root: the memory folder (saved indexes).
        embed: ``embed(modality, content) -> (E,) vector`` with the store's checkpoint, or ``None``.
        int_id: memory id -> FAISS int id.

    Returns:
        ``{"restored", "re_embedded", "unrestorable": [reasons]}``.
    """
    from mmai.memory.ingest import IngestError, read_memory_file
    from mmai.retrieval.vectors import as_unit_vectors

    state = journal.replay()
    stored = set(store.collection.get(ids=sorted(state.records), include=[])["ids"]) if state.records else set()
    missing = [i for i in state.records if i not in stored]
    if not missing:
        return {"restored": 0, "re_embedded": 0, "unrestorable": []}
    saved = saved_embeddings(root, int_id)
    ids, vectors, metadatas, documents, unrestorable, again = [], [], [], [], [], 0
    for memory_id in missing:
        record = state.records[memory_id]
        metadata, document = record["metadata"], record["document"]
        vector = saved.get(int_id(memory_id))
        if vector is None:
            try:
                if embed is None:
                    raise ValueError("no checkpoint to embed it again (pass --checkpoint)")
                if metadata.get("modality") == "text":
                    if not document:
                        raise ValueError("its note's text is not in the journal")
                    vector = embed("text", document)
                else:
                    copy = media_dir / str(metadata.get("media_file"))
                    vector = embed(metadata.get("modality", "image"), read_memory_file(copy).content)
                again += 1
            except (OSError, IngestError, ValueError) as error:
                unrestorable.append(f"memory {memory_id}: no saved embedding and cannot embed it again ({error})")
                continue
        ids.append(memory_id)
        vectors.append(np.asarray(vector, np.float32))
        metadatas.append(metadata)
        documents.append(document)
    if ids:
        rows = as_unit_vectors(np.stack(vectors), dim=store.dim, name="restored embeddings")  # (n, E)
        for start in range(0, len(ids), store.max_batch_size):
            part = slice(start, start + store.max_batch_size)
            store.collection.upsert(ids=ids[part], embeddings=rows[part], metadatas=metadatas[part],
                                    documents=documents[part])
        journal.changed()
    return {"restored": len(ids), "re_embedded": again, "unrestorable": unrestorable}


def differences(state: JournalState, chroma_ids: list[str], chroma_metadatas: list[dict], media: dict[str, Path],
                saved_ids: set[str], journal_path: Path) -> list[str]:
    """Every disagreement of journal, Chroma, saved index and media (each with what to do)."""
    problems = []
    chroma = set(chroma_ids)
    lost = [i for i in state.records if i not in chroma]
    if lost:
        problems.append(f"{len(lost)} confirmed memories in {journal_path.name} are missing from Chroma (e.g. {lost[0]}); "
                        "run `mmai memory rebuild` to restore them from the journal, media copies and saved embeddings")
    kept = sorted(chroma & state.forgotten - state.ids)
    if kept:
        problems.append(f"{len(kept)} memories forgotten in {journal_path.name} are still in Chroma (e.g. {kept[0]}); "
                        "run `mmai memory rebuild` to finish forgetting them")
    unjournaled = sorted(chroma - state.ids - state.forgotten)
    if unjournaled:
        problems.append(f"{len(unjournaled)} memories in Chroma have no line in {journal_path.name} (e.g. "
                        f"{unjournaled[0]}); run `mmai memory rebuild` to record them")
    upgradable = sorted(chroma & set(state.bare))
    if upgradable:
        problems.append(f"{len(upgradable)} memories have no record in {journal_path.name} (written before it kept "
                        f"records, e.g. {upgradable[0]}); run `mmai memory rebuild` to record them")
    if state.bad_lines:
        problems.append(f"{journal_path}: line(s) {', '.join(map(str, state.bad_lines[:5]))} do not parse (torn by a "
                        "kill?); run `mmai memory rebuild` to rewrite the journal (the old one is kept)")
    stale = sorted(saved_ids - chroma)
    if stale and not lost:
        problems.append(f"index.npz holds {len(stale)} memories Chroma does not (e.g. {stale[0]}); "
                        "run `mmai memory rebuild`")
    names = protected_media(state, chroma_metadatas)
    orphans = sorted(name for name in media if name not in names and Path(name).stem not in names)
    if orphans:
        problems.append(f"{len(orphans)} media file(s) belong to no memory (e.g. media/{orphans[0]}); "
                        "`mmai memory rebuild` removes them")
    for memory_id in lost:
        name = state.records[memory_id]["metadata"].get("media_file")
        if name and name not in media:
            problems.append(f"memory {memory_id}: journaled but its media copy media/{name} is missing too")
    return problems
