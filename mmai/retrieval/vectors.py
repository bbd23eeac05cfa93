"""Checking embeddings before they reach an index, a store or a graph.

Every component of the memory layer compares memories by cosine similarity, computed as the
inner product of L2-normalised float32 vectors (the convention of CLIP and of FAISS'
``METRIC_INNER_PRODUCT``). This module turns what callers hand in (NumPy arrays, lists, torch
tensors) into that form, and refuses what cannot be compared: wrong dimension, NaN/inf,
all-zero rows. Errors say which row is at fault, so nothing half-valid is ever written.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(array: Any) -> np.ndarray:
    """Convert a NumPy array, a nested list or a torch tensor (any device) to a NumPy array."""
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def as_unit_vectors(vectors: Any, *, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """Validate embeddings and return them L2-normalised as a C-contiguous float32 matrix.

    Args:
        vectors: ``(N, D)`` embeddings, or one ``(D,)`` embedding (treated as ``N = 1``).
        dim: the dimension ``D`` the caller expects; ``None`` accepts any.
        name: what the vectors are, used in error messages (e.g. ``"queries"``).

    Returns:
        ``(N, D)`` float32 array whose rows have unit L2 norm. Rows that were not normalised
        are normalised here (a no-op, up to rounding, for rows that already were).

    Raises:
        ValueError: the array is not 1-D/2-D or is empty, ``D != dim``, a row holds NaN/inf
            (the message gives how many rows and the first one), or a row is all zeros.
    """
    array = to_numpy(vectors)
    if array.ndim == 1:
        array = array[None, :]  # (1, D)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a (N, D) matrix, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name}: got no vectors (shape {array.shape})")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name}: expected dimension {dim}, got {array.shape[1]} (shape {array.shape}); "
            "embed with the same model/projection the index or store was built with"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)  # (N, D)
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"{name}: {bad_rows.size} of {len(array)} row(s) contain NaN or inf, first at row "
            f"{bad_rows[0]}; drop or re-embed those items before adding or querying"
        )
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # (N, 1)
    zero_rows = np.flatnonzero(norms[:, 0] == 0)
    if zero_rows.size:
        raise ValueError(
            f"{name}: {zero_rows.size} row(s) are all zeros, first at row {zero_rows[0]}; "
            "a zero vector has no direction and cannot be compared by cosine"
        )
    return array / norms


def as_ids(ids: Any, count: int, *, name: str = "ids") -> np.ndarray:
    """Validate integer memory ids: one per vector, unique, as an int64 array.

    Args:
        ids: ``(N,)`` integers (NumPy, list or torch).
        count: ``N``, the number of vectors they label.
        name: what the ids are, for error messages.

    Raises:
        ValueError: wrong length, non-integer values, negative ids (``-1`` marks "no result"
            in search outputs) or duplicates (the first duplicate is named).
    """
    array = to_numpy(ids)
    if array.ndim != 1 or len(array) != count:
        raise ValueError(f"{name}: expected {count} ids (one per vector), got shape {array.shape}")
    if count and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if count and array.min() < 0:
        raise ValueError(f"{name}: ids must be >= 0 (-1 means 'no result'), got {array.min()}")
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name}: duplicate id {unique[counts > 1][0]} in one call; ids must be unique")
    return array
