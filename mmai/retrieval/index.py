"""Stage-1 vector index: FAISS HNSW (or exact flat) over normalised embeddings.

HNSW is the graph-based approximate nearest-neighbour search of Malkov & Yashunin (TPAMI 2018),
as implemented by FAISS (Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs",
2017). Scores are inner products of L2-normalised float32 vectors, i.e. cosine similarities.

The index keeps its own ``int64`` id array next to the FAISS index (position ``i`` in FAISS is
memory ``ids[i]``), so the same code path serves the CPU index and a GPU copy. Files are written
atomically: everything (FAISS bytes, ids, config) goes into one ``.npz`` written to a temporary
file in the same folder and moved into place with ``os.replace``.

Example:
    >>> index = VectorIndex(dim=512, kind="hnsw")
    >>> index.add(image_embeddings, ids=image_ids)            # (N, 512), (N,)
    >>> scores, ids = index.search(text_embeddings, k=10)     # (Q, 10), (Q, 10)
    >>> index.save("runs/val.index.npz"); index = VectorIndex.load("runs/val.index.npz")
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from mmai.io import atomic_write
from mmai.retrieval.vectors import as_ids, as_unit_vectors

KINDS = ("hnsw", "flat")
FILE_FORMAT = "mmai.VectorIndex"
FILE_VERSION = 1
_ADD_CHUNK = 16_384  # vectors per FAISS add call (progress bar granularity)


class VectorIndex:
    """Cosine-similarity index over memories with int64 ids.

    Args:
        dim: embedding dimension ``D`` (e.g. 512).
        kind: ``"hnsw"`` (IndexHNSWFlat, approximate, default) or ``"flat"`` (IndexFlatIP, exact).
        hnsw_m: HNSW neighbours per node (default 32).
        ef_construction: HNSW candidate list size while building (default 200).
        ef_search: HNSW candidate list size while searching (default 128; settable later
            through :attr:`ef_search`). Larger is slower and more exact.
        use_gpu: move the index to GPU 0 when faiss-gpu sees a GPU (default ``False``). Only
            ``"flat"`` runs on the GPU (FAISS has no GPU HNSW); an HNSW index stays on the CPU.

    Vectors that are not unit-norm are normalised on ``add`` and ``search`` (so a score is always
    a cosine). Ids are ``>= 0`` and unique across the index; ``-1`` in results means "no result".
    Removing vectors is not supported: rebuild the index (HNSW cannot delete).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "hnsw",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        use_gpu: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"VectorIndex kind={kind!r} is not known; choose one of {KINDS}")
        if dim <= 0:
            raise ValueError(f"VectorIndex dim must be positive, got {dim}")
        self.dim = int(dim)
        self.kind = kind
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self._ef_search = int(ef_search)
        self._ids = np.empty(0, dtype=np.int64)  # (N,) position -> memory id
        self._cpu_index = self._new_faiss_index()
        self._index = self._cpu_index
        self.on_gpu = False
        if use_gpu:
            self._move_to_gpu()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, vectors: Any, ids: Any = None, *, kind: str = "hnsw", progress: bool = True, **options: Any
    ) -> "VectorIndex":
        """Create an index of ``kind`` and add ``vectors`` ``(N, D)`` with ``ids`` ``(N,)`` in one call.

        ``options`` are the constructor's keyword arguments (``hnsw_m``, ``ef_search``, ...).
        """
        dim = np.shape(vectors)[-1]
        index = cls(dim, kind, **options)
        index.add(vectors, ids, progress=progress)
        return index

    def _new_faiss_index(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self._ef_search
        return index

    def _move_to_gpu(self) -> None:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            return  # faiss-cpu or no visible GPU: stay on the CPU
        if self.kind != "flat":
            return  # FAISS has no GPU HNSW
        self._gpu_resources = faiss.StandardGpuResources()
        self._index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._cpu_index)
        self.on_gpu = True

    def _to_cpu(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def ids(self) -> np.ndarray:
        """``(N,)`` int64 ids in insertion order (a copy)."""
        return self._ids.copy()

    @property
    def ef_search(self) -> int:
        """HNSW search-time candidate list size (ignored by ``"flat"``)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = int(value)
        if self.kind == "hnsw":
            faiss.downcast_index(self._index).hnsw.efSearch = self._ef_search

    def __repr__(self) -> str:
        where = "gpu" if self.on_gpu else "cpu"
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, size={len(self)}, device={where})"

    # ------------------------------------------------------------------ add / search
    def add(self, vectors: Any, ids: Any = None, *, progress: bool = True) -> None:
        """Add ``vectors`` ``(N, D)`` labelled ``ids`` ``(N,)``.

        Args:
            vectors: embeddings; normalised here if they are not unit-norm.
            ids: unique int64 memory ids, not yet in the index. Default: ``len(self) + arange(N)``.
            progress: show a tqdm bar when adding more than 16,384 vectors.

        Raises:
            ValueError: wrong dimension, NaN/inf or zero rows, bad or already-present ids. The
                index is unchanged when this is raised.
        """
        vectors = as_unit_vectors(vectors, dim=self.dim, name="VectorIndex.add vectors")  # (N, D)
        if ids is None:
            ids = len(self) + np.arange(len(vectors), dtype=np.int64)
        ids = as_ids(ids, len(vectors), name="VectorIndex.add ids")  # (N,)
        present = np.isin(ids, self._ids)
        if present.any():
            raise ValueError(
                f"VectorIndex.add: {present.sum()} id(s) are already in the index, e.g. "
                f"{ids[present][0]}; ids must be unique (rebuild the index to replace vectors)"
            )
        starts = range(0, len(vectors), _ADD_CHUNK)
        show = progress and len(vectors) > _ADD_CHUNK
        for start in tqdm(starts, desc=f"index add ({self.kind})", disable=not show, unit="chunk"):
            self._index.add(vectors[start : start + _ADD_CHUNK])
        self._ids = np.concatenate([self._ids, ids])

    def _check_searchable(self, queries: Any) -> np.ndarray:
        if len(self) == 0:
            raise ValueError("index is empty: add vectors or build the index first")
        return as_unit_vectors(queries, dim=self.dim, name="VectorIndex queries")  # (Q, D)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` memories by cosine similarity.

        Args:
            queries: ``(Q, D)`` embeddings, or one ``(D,)`` embedding (then ``Q = 1``).
            k: results per query (``>= 1``).

        Returns:
            ``(scores, ids)``: float32 ``(Q, k)`` cosines in descending order and int64
            ``(Q, k)`` memory ids. When fewer than ``k`` results exist (small index, or HNSW
            missing some), the tail is padded with id ``-1`` and score ``-inf``.

        Raises:
            ValueError: the index is empty, bad ``k``, or invalid queries.
        """
        queries = self._check_searchable(queries)  # (Q, D)
        if int(k) < 1:
            raise ValueError(f"VectorIndex.search: k must be >= 1, got {k}")
        scores, positions = self._index.search(queries, int(k))  # (Q, k), (Q, k)
        return self._label(scores, positions)

    def _label(self, scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        missing = positions < 0
        ids = np.where(missing, -1, self._ids[np.where(missing, 0, positions)])  # (Q, k)
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return scores, ids

    def range_search(self, queries: Any, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """All memories with cosine ``>= threshold`` to each query (approximate for HNSW).

        Args:
            queries: ``(Q, D)`` embeddings, or one ``(D,)`` embedding.
            threshold: the cosine similarity a result must reach.

        Returns:
            One ``(scores, ids)`` pair per query, each sorted by descending score; lengths vary.
        """
        queries = self._check_searchable(queries)  # (Q, D)
        # FAISS keeps results with score > radius for inner product; nudge so ">=" holds.
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        lims, scores, positions = self._index.range_search(queries, radius)
        results = []
        for q in range(len(queries)):
            q_scores, q_positions = scores[lims[q] : lims[q + 1]], positions[lims[q] : lims[q + 1]]
            order = np.argsort(-q_scores, kind="stable")
            results.append((q_scores[order].astype(np.float32), self._ids[q_positions[order]]))
        return results

    def reconstruct(self, ids: Any) -> np.ndarray:
        """The stored (normalised) vectors ``(n, D)`` of memory ``ids`` ``(n,)``.

        Raises:
            KeyError: an id is not in the index (the first one is named).
        """
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))  # (n,)
        order = np.argsort(self._ids, kind="stable")
        slots = np.minimum(np.searchsorted(self._ids[order], ids), max(len(order) - 1, 0))
        found = (self._ids[order[slots]] == ids) if len(order) else np.zeros(len(ids), bool)
        if not found.all():
            raise KeyError(f"VectorIndex.reconstruct: id {ids[~found][0]} is not in the index")
        return self._to_cpu().reconstruct_batch(order[slots].astype(np.int64))  # (n, D)

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self._ef_search,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write index, ids and config to one ``.npz`` file, atomically.

        The data goes to a temporary file in the same folder, is flushed to disk, and then
        replaces ``path`` with ``os.replace``; if anything fails, an existing file at ``path``
        is left exactly as it was and the temporary file is removed. A GPU index is copied back
        to the CPU for writing.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "faiss_index": faiss.serialize_index(self._to_cpu()),  # uint8 bytes
            "ids": self._ids,
            "config": np.frombuffer(json.dumps(self._config()).encode(), dtype=np.uint8),
        }
        atomic_write(path, lambda file: np.savez(file, **payload))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, use_gpu: bool = False) -> "VectorIndex":
        """Read an index written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a VectorIndex file (or is damaged).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VectorIndex.load: no index file at {path}; build and save() one first")
        try:
            with np.load(path, allow_pickle=False) as data:
                config = json.loads(data["config"].tobytes().decode())
                ids = data["ids"].astype(np.int64)
                faiss_bytes = data["faiss_index"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated or garbage
            raise ValueError(f"VectorIndex.load: {path} is not a readable VectorIndex file "
                             f"({type(error).__name__}: {error})") from error
        if config.get("format") != FILE_FORMAT:
            raise ValueError(f"VectorIndex.load: {path} has format {config.get('format')!r}, expected {FILE_FORMAT!r}")
        index = cls(
            config["dim"],
            config["kind"],
            hnsw_m=config["hnsw_m"],
            ef_construction=config["ef_construction"],
            ef_search=config["ef_search"],
        )
        try:
            index._cpu_index = faiss.deserialize_index(faiss_bytes)
        except RuntimeError as error:
            raise ValueError(f"VectorIndex.load: {path} holds a damaged FAISS index ({error})") from error
        index._index = index._cpu_index
        index._ids = ids
        if index._index.ntotal != len(ids):
            raise ValueError(f"VectorIndex.load: {path} holds {index._index.ntotal} vectors but {len(ids)} ids")
        index.ef_search = config["ef_search"]
        if use_gpu:
            index._move_to_gpu()
        return index
