"""Memories read back from Chroma: decoded metadata, the media file to show, filters resolved.

Chroma metadata are scalars, so a memory's ``sources`` (every path it was ingested from) is
stored as a JSON string; :func:`decode_metadata` turns it back into a list. Images and audio are
*copied* into ``root/media`` at ingest (``media_file``), so that moving or deleting the original
does not break display or re-ranking; ``source_path`` keeps where the file came from and is shown
when the copy is not on this machine (a Chroma server shared by several machines).

:class:`Filters` name stored places loosely ("Mumbai" matches "Powai Lake, Mumbai");
:meth:`Records.where` turns them into Chroma's ``where`` clause over the places really stored.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mmai.memory.filters import Filters, build_where
from mmai.memory.index_sync import PAGE, IndexSync
from mmai.memory.ingest import parse_time
from mmai.memory.store import MemoryStore

__all__ = ["NoMatch", "Records", "Related", "SearchHit", "decode_metadata"]


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
        score: the score the list is ordered by (stage 1 + recency/importance terms; the two-stage
            score ``match_logit + stage1_weight * stage1`` for re-ranked images; GAR's fused score
            with ``gar``).
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


class NoMatch(Exception):
    """A filter that no stored memory can match (e.g. an unknown place)."""


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


class Records:
    """Reading a store's memories: pages of metadata, decoded hits, media files, filters.

    Args:
        store: the Chroma store.
        sync: the derived index (for ids).
        media_dir: ``root/media``.
    """

    def __init__(self, store: MemoryStore, sync: IndexSync, media_dir: Path) -> None:
        self.store, self.sync, self.media_dir = store, sync, Path(media_dir)
        self._places: set[str] | None = None

    def forget_cache(self) -> None:
        """Drop what depends on the set of memories (the stored places)."""
        self._places = None

    def metadata_pages(self) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        """``(ids, metadatas)`` of every memory, one page at a time."""
        total = self.store.count()
        for offset in range(0, total, PAGE):
            page = self.store.collection.get(limit=PAGE, offset=offset, include=["metadatas"])
            yield page["ids"], [metadata or {} for metadata in page["metadatas"]]

    # ------------------------------------------------------------------ decoded records
    def media_from(self, metadata: dict[str, Any]) -> Path | None:
        """The file to show: the media copy, else the original (``None`` for notes or when neither exists)."""
        name = metadata.get("media_file")
        if name and (self.media_dir / name).is_file():
            return self.media_dir / name
        source = metadata.get("source_path")
        if metadata.get("modality") != "text" and source and Path(source).is_file():
            return Path(source)
        return None

    def decoded(self, memory_id: str, metadata: dict) -> dict[str, Any]:
        decoded = decode_metadata(metadata, memory_id)
        decoded["media_path"] = self.media_from(decoded)
        return decoded

    def hit(self, memory_id: str, score: float, stage1: float, metadata: dict, document: str | None) -> SearchHit:
        return SearchHit(memory_id, 0, float(score), float(stage1), metadata=self.decoded(memory_id, metadata),
                         document=document)

    def metadata_of(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Decoded metadata of the stored ones among ``ids`` (one forgotten meanwhile is left out)."""
        records = self.store.get(ids, include_embeddings=False, missing="skip")
        return {memory_id: self.decoded(memory_id, metadata) for memory_id, metadata in zip(records.ids,
                                                                                          records.metadatas)}

    def get(self, memory_id: str) -> SearchHit:
        """One memory as a :class:`SearchHit` (scores 0)."""
        memory_id = self.sync.resolve_id(memory_id)
        records = self.store.get([memory_id], include_embeddings=False)
        return self.hit(memory_id, 0.0, 0.0, records.metadatas[0], records.documents[0])

    # ------------------------------------------------------------------ filters
    def known_places(self) -> list[str]:
        """Distinct place names of the stored memories (cached until the next change)."""
        if self._places is None:
            self._places = {m["place"] for _, page in self.metadata_pages() for m in page if m.get("place")}
        return sorted(self._places)

    def place_values(self, place: str | Sequence[str]) -> list[str]:
        """Stored places matching ``place``: exact (any case) names, else names containing it."""
        wanted = [place] if isinstance(place, str) else list(place)
        known = self.known_places()
        found: list[str] = []
        for name in wanted:
            exact = [p for p in known if p.casefold() == name.casefold()]
            found += exact or [p for p in known if name.casefold() in p.casefold()]
        if not found:
            raise NoMatch(f"no memory at a place matching {place!r}")
        return sorted(set(found))

    def where(self, filters: Filters | None) -> dict[str, Any] | None:
        """The Chroma ``where`` clause of ``filters`` (``None``: no filter).

        Raises:
            NoMatch: the place matches no stored place.
            ValueError: a bad value (see :func:`~mmai.memory.filters.build_where`).
        """
        if filters is None:
            return None
        places = None if filters.place is None else self.place_values(filters.place)
        after = None if filters.after is None else parse_time(filters.after, "after")
        before = None if filters.before is None else parse_time(filters.before, "before")
        return build_where(year=filters.year, place=places, modality=filters.modality, after=after, before=before)

    def matching_ids(self, ids: Iterable[str] | None, filters: Filters | None) -> list[str]:
        """Stored ids among ``ids`` (full ids or 8+ digit prefixes; ``None``: all) that match ``filters``.

        Raises:
            KeyError: an id in ``ids`` is not stored or is an ambiguous prefix (it is named).
        """
        wanted = None if ids is None else [self.sync.resolve_id(memory_id) for memory_id in ids]
        try:
            where = self.where(filters) if filters is not None and not filters.empty else None
        except NoMatch:
            return []
        if wanted is not None and not wanted:
            return []
        if where is None:
            return wanted or []
        found: list[str] = []
        total = self.store.count()
        for offset in range(0, total, PAGE):
            found += self.store.collection.get(ids=wanted, where=where, limit=PAGE, offset=offset, include=[])["ids"]
        return found
