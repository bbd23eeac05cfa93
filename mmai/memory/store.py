"""Persistent memory store: ids, embeddings and metadata in ChromaDB, with metadata filters.

ChromaDB (https://docs.trychroma.com) runs embedded (``PersistentClient``, a folder on disk) by
default, or as a client of a Chroma server (``HttpClient``) when ``host`` is given. MMAI always
computes embeddings itself, so collections are created with ``embedding_function=None`` and
every call passes embeddings: Chroma never loads (or downloads) its default ONNX text model.
Telemetry is switched off in code (environment variable and client settings).

Metadata follows :data:`~mmai.memory.filters.METADATA_FIELDS` (time, year, place, coordinates,
modality, source path, image and class ids); :func:`~mmai.memory.filters.build_where` (in
``filters.py``, re-exported here) turns keyword filters such as "only 2023" or "only in Mumbai,
before March" into Chroma ``where`` clauses.

Example:
    >>> store = MemoryStore("runs/memories")
    >>> store.add(["17", "18"], embeddings, [{"timestamp": 1.69e9, "place": "Mumbai", "modality": "image"}] * 2)
    >>> hits = store.query(query_embedding, k=5, where=build_where(year=2023, place="Mumbai"))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mmai.memory.filters import METADATA_FIELDS, MODALITIES, build_where, check_where, clean_metadata
from mmai.retrieval.vectors import as_unit_vectors

__all__ = ["METADATA_FIELDS", "MODALITIES", "MemoryStore", "StoreDamagedError", "StoreHits", "StoreRecords",
           "build_where"]


class StoreDamagedError(ValueError):
    """The embedded Chroma database does not open or read (truncated, overwritten, not SQLite).

    Attributes:
        folder: the ``chroma/`` folder.
    """

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder

DEFAULT_COLLECTION = "memories"


def _chromadb():
    """Import chromadb with telemetry disabled before its first import."""
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb
    from chromadb.config import Settings

    return chromadb, Settings(anonymized_telemetry=False)


@dataclasses.dataclass
class StoreRecords:
    """Records read from the store, in the order asked for.

    Attributes:
        ids: ``N`` memory ids (strings).
        embeddings: ``(N, D)`` float32 unit vectors (``None`` if not requested).
        metadatas: ``N`` metadata dicts (empty dict where a record has none).
        documents: ``N`` documents or ``None`` entries.
    """

    ids: list[str]
    embeddings: np.ndarray | None
    metadatas: list[dict[str, Any]]
    documents: list[str | None]


@dataclasses.dataclass
class StoreHits:
    """Nearest memories per query; lists can be shorter than ``k`` when a filter leaves fewer.

    Attributes:
        ids: per query, the memory ids, best first.
        scores: per query, ``(n,)`` float32 cosine similarities (``1 - chroma cosine distance``).
        metadatas: per query, the hits' metadata dicts.
        documents: per query, the hits' documents (``None`` entries where absent).
    """

    ids: list[list[str]]
    scores: list[np.ndarray]
    metadatas: list[list[dict[str, Any]]]
    documents: list[list[str | None]]


class MemoryStore:
    """A ChromaDB collection of memories with validated embeddings and metadata.

    Args:
        path: folder of the embedded database (``PersistentClient``); ignored when ``host`` is set.
        collection: collection name (3-512 characters of ``[a-zA-Z0-9._-]``; default ``"memories"``).
        host: a Chroma server's host name; when given, ``HttpClient(host, port)`` is used.
        port: the server's port (default 8000).
        ssl: use HTTPS for the server (default ``False``).

    The collection uses cosine space (``hnsw:space: cosine``) and no embedding function.
    Embeddings are validated (dimension equal to the collection's, finite, non-zero) and
    normalised before anything is written, so a bad call leaves the store as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        collection: str = DEFAULT_COLLECTION,
        *,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
    ) -> None:
        self._where = (path, collection, host, port, ssl)
        self._connect()

    def _connect(self) -> None:
        path, collection, host, port, ssl = self._where
        chromadb, settings = _chromadb()
        if host is not None:
            self.client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
            self.location = f"{'https' if ssl else 'http'}://{host}:{port}"
        elif path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.location = str(path)
            try:
                self.client = chromadb.PersistentClient(path=str(path), settings=settings)
                self._open_collection(collection)
                self.collection.count()  # a damaged file may open and fail on the first read
            except Exception as error:  # noqa: BLE001 - chromadb/sqlite raise many kinds; all mean "unreadable"
                if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
                    raise
                database = Path(path) / "chroma.sqlite3"
                raise StoreDamagedError(
                    f"the Chroma database {database} cannot be read ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:160] if str(error) else 'no detail'}); run `mmai memory rebuild "
                    f"--root {Path(path).parent}` to restore the memories from the journal, media copies and saved "
                    "embeddings (the damaged database is moved aside and kept, not overwritten)", Path(path)) from None
            return
        else:
            raise ValueError("MemoryStore needs a folder (path=...) or a Chroma server (host=...)")
        self._open_collection(collection)

    def _open_collection(self, collection: str) -> None:
        self.collection = self.client.get_or_create_collection(
            name=collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )
        self.max_batch_size = int(self.client.get_max_batch_size())

    @property
    def is_local(self) -> bool:
        """True for an embedded store (a folder), False for a Chroma server."""
        return self._where[2] is None

    def __repr__(self) -> str:
        return f"MemoryStore({self.location!r}, collection={self.collection.name!r}, count={self.count()})"

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the client (and its SQLite files for an embedded store)."""
        if hasattr(self.client, "close"):
            self.client.close()

    def reopen(self) -> None:
        """Close the client and connect again, so that what other processes wrote is seen.

        An embedded client keeps its vector segment in memory: once another process writes the
        same folder, its queries fail (``InternalError: Error finding id``) or miss the new
        records until it is reopened. (Other clients of the same folder in this process share
        Chroma's cached system; they must be closed too for the reopened one to start fresh.)
        """
        self.close()
        self._connect()

    # ------------------------------------------------------------------ reading
    def count(self) -> int:
        """Number of memories in the collection."""
        return int(self.collection.count())

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the stored memories (``None`` while the store is empty)."""
        peek = self.collection.get(limit=1, include=["embeddings"])
        return None if not peek["ids"] else int(len(peek["embeddings"][0]))

    def get(self, ids: Iterable[Any], *, include_embeddings: bool = True, page_size: int = 5000,
            missing: str = "raise") -> StoreRecords:
        """Records for ``ids``, in that order, read in pages of ``page_size`` ids (SQLite limits the
        variables of one query, so a single call with 100,000 ids would fail).

        Args:
            missing: ``"raise"`` (default) or ``"skip"``: leave out ids that are not stored (a
                reader racing another process's forget: the memory went between the index hit
                and this read).

        Raises:
            KeyError: with ``missing="raise"``, an id is not stored (the first missing one is named).
        """
        if missing not in ("raise", "skip"):
            raise ValueError(f"MemoryStore.get: missing must be 'raise' or 'skip', got {missing!r}")
        wanted = [str(i) for i in ids]
        include = ["metadatas", "documents"] + (["embeddings"] if include_embeddings else [])
        if not wanted:
            return StoreRecords([], np.empty((0, 0), np.float32) if include_embeddings else None, [], [])
        step = max(1, min(page_size, self.max_batch_size))
        found: dict[str, list] = {"ids": [], "metadatas": [], "documents": [], "embeddings": []}
        for start in range(0, len(wanted), step):
            page = self.collection.get(ids=wanted[start:start + step], include=include)
            for key in found:
                values = page.get(key)
                found[key].extend(list(values) if values is not None else [None] * len(page["ids"]))
        position = {memory_id: i for i, memory_id in enumerate(found["ids"])}
        absent = [memory_id for memory_id in wanted if memory_id not in position]
        if absent and missing == "raise":
            raise KeyError(f"MemoryStore.get: {len(absent)} id(s) not stored, e.g. {absent[0]!r}")
        order = [position[memory_id] for memory_id in wanted if memory_id in position]
        return self._records(found, order, include_embeddings)

    def all_embeddings(self, *, batch_size: int | None = None, progress: bool = True) -> StoreRecords:
        """Every record with its embedding, read in pages (for rebuilding an index or graph)."""
        batch_size = batch_size or self.max_batch_size
        total = self.count()
        pages = []
        for offset in tqdm(range(0, total, batch_size), desc="read store", disable=not progress or total <= batch_size):
            page = self.collection.get(
                limit=batch_size, offset=offset, include=["embeddings", "metadatas", "documents"]
            )
            pages.append(self._records(page, range(len(page["ids"])), True))
        if not pages:
            return StoreRecords([], np.empty((0, self.dim or 0), np.float32), [], [])
        return StoreRecords(
            ids=[i for page in pages for i in page.ids],
            embeddings=np.concatenate([page.embeddings for page in pages]),
            metadatas=[m for page in pages for m in page.metadatas],
            documents=[d for page in pages for d in page.documents],
        )

    @staticmethod
    def _records(found: dict[str, Any], order: Iterable[int], with_embeddings: bool) -> StoreRecords:
        order = list(order)
        metadatas = found.get("metadatas") or [None] * len(found["ids"])
        documents = found.get("documents") or [None] * len(found["ids"])
        embeddings = None
        if with_embeddings:
            embeddings = np.asarray(found["embeddings"], dtype=np.float32)[order]  # (N, D)
        return StoreRecords(
            ids=[found["ids"][i] for i in order],
            embeddings=embeddings,
            metadatas=[dict(metadatas[i] or {}) for i in order],
            documents=[documents[i] for i in order],
        )

    def query(self, embeddings: Any, k: int = 10, where: dict[str, Any] | None = None) -> StoreHits:
        """The ``k`` most similar memories to each query embedding, optionally filtered.

        Args:
            embeddings: ``(Q, D)`` query embeddings, or one ``(D,)`` (then ``Q = 1``).
            k: results per query (fewer come back when fewer memories match).
            where: a filter from :func:`build_where` (or a Chroma ``where`` dict on known fields).

        Raises:
            ValueError: the store is empty, the dimension differs from the stored one,
                NaN/inf queries, ``k < 1`` or an unknown filter field.
        """
        dim = self.dim
        if dim is None:
            raise ValueError(f"MemoryStore {self.location!r} is empty: add memories before querying")
        queries = as_unit_vectors(embeddings, dim=dim, name="MemoryStore.query embeddings")  # (Q, D)
        if int(k) < 1:
            raise ValueError(f"MemoryStore.query: k must be >= 1, got {k}")
        check_where(where)
        found = self.collection.query(
            query_embeddings=queries, n_results=int(k), where=where,
            include=["metadatas", "documents", "distances"],
        )
        documents = found.get("documents") or [[None] * len(row) for row in found["ids"]]
        return StoreHits(
            ids=found["ids"],
            scores=[1.0 - np.asarray(row, dtype=np.float32) for row in found["distances"]],
            metadatas=[[dict(m or {}) for m in row] for row in found["metadatas"]],
            documents=[list(row) for row in documents],
        )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        ids: Iterable[Any],
        embeddings: Any,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        documents: Sequence[str | None] | None = None,
        *,
        progress: bool = True,
    ) -> int:
        """Insert or update (upsert) memories; adding the same records twice changes nothing.

        Everything is validated before the first write; writes go in batches of at most
        ``client.get_max_batch_size()`` records.

        Args:
            ids: ``N`` unique ids (ints are stored as their decimal string).
            embeddings: ``(N, D)`` embeddings; normalised here (cosine space).
            metadatas: ``N`` dicts over :data:`METADATA_FIELDS` (``None`` values dropped;
                ``year`` filled in from ``timestamp``, in UTC, when missing).
            documents: ``N`` texts (e.g. the caption) or ``None``.
            progress: show a tqdm bar when more than one batch is written.

        Returns:
            The number of records written.

        Raises:
            ValueError: length mismatch, duplicate ids, wrong dimension, NaN/inf or zero rows,
                an unknown metadata field or a value of the wrong type.
        """
        ids = [str(i) for i in ids]
        vectors = as_unit_vectors(embeddings, dim=self.dim, name="MemoryStore.add embeddings")  # (N, D)
        if len(vectors) != len(ids):
            raise ValueError(f"MemoryStore.add: {len(ids)} ids but {len(vectors)} embeddings")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            duplicate = next(i for i in ids if i in seen or seen.add(i))
            raise ValueError(f"MemoryStore.add: duplicate id {duplicate!r} in one call; ids must be unique")
        clean = self._clean_metadatas(metadatas, len(ids))
        if documents is not None and len(documents) != len(ids):
            raise ValueError(f"MemoryStore.add: {len(ids)} ids but {len(documents)} documents")
        starts = range(0, len(ids), self.max_batch_size)
        for start in tqdm(starts, desc="store add", disable=not progress or len(starts) <= 1):
            batch = slice(start, start + self.max_batch_size)
            self.collection.upsert(
                ids=ids[batch],
                embeddings=vectors[batch],
                metadatas=None if clean is None else clean[batch],
                documents=None if documents is None else list(documents[batch]),
            )
        return len(ids)

    @staticmethod
    def _clean_metadatas(metadatas: Sequence[dict[str, Any] | None] | None, count: int) -> list | None:
        if metadatas is None:
            return None
        if len(metadatas) != count:
            raise ValueError(f"MemoryStore.add: {count} ids but {len(metadatas)} metadatas")
        clean = []
        for row, metadata in enumerate(metadatas):
            record = clean_metadata(metadata, f"MemoryStore.add metadatas[{row}]")
            clean.append(record or None)  # Chroma refuses empty dicts
        return clean

    def delete(self, ids: Iterable[Any] | None = None, where: dict[str, Any] | None = None) -> int:
        """Delete memories by id, by filter, or both (both must match).

        Returns:
            How many records were removed.

        Raises:
            ValueError: neither ``ids`` nor ``where`` is given (refusing to empty the store
                by accident), or ``where`` names an unknown field.
        """
        if ids is None and where is None:
            raise ValueError("MemoryStore.delete: pass ids=... or where=... (refusing to delete everything)")
        check_where(where)
        before = self.count()
        self.collection.delete(ids=None if ids is None else [str(i) for i in ids], where=where)
        return before - self.count()
