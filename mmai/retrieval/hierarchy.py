"""Higher levels of the memory stream: episodes (when/where) and schemas (what).

* **Episodes** segment the stream at event boundaries, as event-segmentation theory
  (Zacks et al., 2007) and EM-LLM (Fountas et al., 2024) do: a new episode starts when the
  time gap to the previous memory exceeds ``episode_gap_s`` or the place changes.
* **Schemas** are semantic clusters of memories (spherical k-means with FAISS), the "gist"
  level of schema theory; a memory belongs to its nearest centroid.

Both give top-down retrieval a coarse-to-fine path: schema -> episode -> memory
(:mod:`mmai.retrieval.topdown`).
"""

from __future__ import annotations

import math

import faiss
import numpy as np
from scipy import sparse


def segment_episodes(timestamps: np.ndarray, gap_s: float, places: np.ndarray | None = None) -> np.ndarray:
    """Episode number of each memory: ``(N,)`` int64, numbered ``0..E-1`` in time order.

    Memories are sorted by time (ties by place); a new episode starts when the gap to the
    previous memory is ``> gap_s`` or, when ``places`` is given, the place differs. A memory
    with an unknown time (NaN) is an episode of its own.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if places is None:
        order = np.argsort(timestamps, kind="stable")
    else:
        order = np.lexsort((np.asarray(places), timestamps))
    boundary = np.zeros(len(order), dtype=bool)
    boundary[1:] = np.diff(timestamps[order]) > gap_s
    boundary[1:] |= np.isnan(timestamps[order][1:])  # NaN sorts last; each unknown time stands alone
    if places is not None:
        sorted_places = np.asarray(places)[order]
        boundary[1:] |= sorted_places[1:] != sorted_places[:-1]
    episodes = np.empty(len(order), dtype=np.int64)
    episodes[order] = np.cumsum(boundary)  # boundary[0] is False: the first episode is 0
    return episodes


def default_num_schemas(count: int, max_schemas: int = 256) -> int:
    """``round(sqrt(N / 2))``, at least 1, at most ``max_schemas`` and ``N``."""
    return int(max(1, min(round(math.sqrt(count / 2)), max_schemas, count)))


def cluster_schemas(
    embeddings: np.ndarray, num_schemas: int, *, seed: int = 0, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means over unit embeddings.

    Args:
        embeddings: ``(N, D)`` unit vectors.
        num_schemas: clusters ``S`` (clamped to ``N``).
        seed: k-means seed (default 0).
        iterations: k-means iterations (default 20).

    Returns:
        ``(schema_of (N,) int64, centroids (S, D) float32 unit vectors)``.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    num_schemas = int(min(num_schemas, len(embeddings)))
    kmeans = faiss.Kmeans(
        embeddings.shape[1], num_schemas, niter=iterations, seed=seed, spherical=True,
        min_points_per_centroid=1, max_points_per_centroid=1 << 20, verbose=False,
    )
    kmeans.train(embeddings)
    centroids = kmeans.centroids.astype(np.float32)
    return nearest_centroid(embeddings, centroids), centroids


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(N,)`` int64: the centroid of highest inner product for each embedding (exact search).

    The one assignment rule for schemas: k-means' own result and an incremental update (new
    memories joining the existing schemas) assign with it.
    """
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, nearest = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), 1)  # (N, 1)
    return nearest[:, 0].astype(np.int64)


def group_means(embeddings: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Normalised mean embedding of each group: ``(num_groups, D)`` (zero rows for empty groups)."""
    membership = sparse.csr_matrix(
        (np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(num_groups, len(groups))
    )  # (G, N)
    sums = np.asarray(membership @ embeddings.astype(np.float64))  # (G, D)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms == 0, 1, norms)).astype(np.float32)
