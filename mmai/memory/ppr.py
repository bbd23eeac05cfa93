"""Personalised PageRank by batched power iteration on a sparse adjacency (HippoRAG's retrieval walk).

PageRank (Page et al., 1999) with a personalised restart distribution (Haveliwala, 2002) scores
every node by how often a random walk that restarts at the seeds visits it. This implementation
runs many seed distributions (queries) at once as one sparse-dense product per step, on the
row-normalised CSR adjacency, and is numerically the same as
``networkx.pagerank(G, alpha=damping, personalization=seeds)``: ``damping`` is NetworkX's ``alpha``
(the probability of following an edge), dangling nodes send their mass back according to the
personalisation vector, the walk starts uniform, and a query stops when its L1 change is
below ``N * tol``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
from scipy import sparse


@dataclasses.dataclass
class Transition:
    """A random walk's transition, prepared once per graph.

    Attributes:
        transposed: ``(N, N)`` CSR of ``P.T``, where ``P = D^-1 A`` is the row-normalised adjacency.
        dangling: ``(N,)`` bool, nodes without out-edges.
    """

    transposed: sparse.csr_matrix
    dangling: np.ndarray

    @classmethod
    def from_adjacency(cls, adjacency: Any) -> "Transition":
        """From a weighted ``(N, N)`` adjacency (``A[i, j]``: weight of edge i -> j, non-negative)."""
        adjacency = sparse.csr_matrix(adjacency, dtype=np.float64)
        if adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"personalized_pagerank: adjacency must be square, got {adjacency.shape}")
        if adjacency.nnz and adjacency.data.min() < 0:
            raise ValueError("personalized_pagerank: edge weights must be non-negative")
        out_weight = np.asarray(adjacency.sum(axis=1)).ravel()  # (N,)
        inverse = np.divide(1.0, out_weight, out=np.zeros_like(out_weight), where=out_weight != 0)
        row_normalised = sparse.diags(inverse) @ adjacency  # (N, N), rows sum to 1 (or 0)
        return cls(sparse.csr_matrix(row_normalised.T), out_weight == 0)


def _as_personalization(seeds: Any, count: int) -> np.ndarray:
    """Seeds ``(Q, N)`` (dense or sparse) as column-normalised float64 ``(N, Q)``."""
    dense = seeds.toarray() if sparse.issparse(seeds) else np.asarray(seeds, dtype=np.float64)
    dense = np.atleast_2d(dense).astype(np.float64)
    if dense.shape[1] != count:
        raise ValueError(f"personalized_pagerank: seeds have {dense.shape[1]} columns, the graph has {count} nodes")
    if not np.isfinite(dense).all() or (dense < 0).any():
        raise ValueError("personalized_pagerank: seeds must be finite and non-negative")
    mass = dense.sum(axis=1)
    if (mass == 0).any():
        raise ValueError(f"personalized_pagerank: seed row {int(np.flatnonzero(mass == 0)[0])} is all zeros")
    return (dense / mass[:, None]).T  # (N, Q)


def power_iteration(
    transition: Transition, personalization: np.ndarray, damping: float, tol: float, max_iter: int
) -> np.ndarray:
    """PageRank columns ``(N, Q)`` for column-normalised ``personalization`` ``(N, Q)``.

    One step is ``x <- damping * (P.T x + dangling_mass(x) * p) + (1 - damping) * p``, NetworkX's.
    Each query stops when its L1 change is below ``N * tol`` (NetworkX's criterion); queries
    still moving after ``max_iter`` iterations are returned as they are, with a warning.
    """
    count = personalization.shape[0]
    dangling = np.flatnonzero(transition.dangling)
    ranks = np.empty(personalization.shape)  # (N, Q) results, filled as queries converge
    active = np.arange(personalization.shape[1])
    restart = np.ascontiguousarray(personalization, dtype=np.float64)  # (N, A) for the active queries
    current = np.full(restart.shape, 1.0 / count)  # (N, A)
    walk = transition.transposed * damping  # (N, N) damping folded in once
    for _ in range(max_iter):
        dangling_mass = current[dangling].sum(axis=0) if dangling.size else 0.0  # (A,)
        updated = walk @ current  # (N, A)
        updated += (damping * dangling_mass + (1 - damping)) * restart
        current -= updated
        moving = np.abs(current, out=current).sum(axis=0) >= count * tol  # (A,) L1 change
        current = updated
        if not moving.all():
            ranks[:, active[~moving]] = current[:, ~moving]
            active, current, restart = active[moving], current[:, moving], restart[:, moving]
        if active.size == 0:
            return ranks
    ranks[:, active] = current
    warnings.warn(
        f"personalized_pagerank: {active.size} query(ies) did not converge in {max_iter} iterations "
        f"(tol={tol}); raise max_iter or tol", RuntimeWarning, stacklevel=3,
    )
    return ranks


def personalized_pagerank(
    adjacency: Any, seeds: Any, damping: float = 0.5, tol: float = 1e-10, max_iter: int = 100
) -> np.ndarray:
    """Personalised PageRank of every node for a batch of seed distributions.

    Args:
        adjacency: ``(N, N)`` weighted adjacency (SciPy sparse or dense), ``A[i, j]`` the weight
            of edge i -> j (symmetric for an undirected graph), e.g. ``EpisodicGraph.to_csr()``;
            or a :class:`Transition` prepared from one (to reuse it across calls).
        seeds: ``(Q, N)`` non-negative seed weights (dense or sparse), or ``(N,)``; each row is
            normalised to sum 1 (the restart / personalisation distribution).
        damping: probability of following an edge at each step (NetworkX's ``alpha``; 0.5 as
            in HippoRAG).
        tol: convergence tolerance; a query stops when its L1 change < ``N * tol`` (default 1e-10).
        max_iter: iteration cap (default 100).

    Returns:
        ``(Q, N)`` float64 PageRank scores, each row summing to 1 (``(N,)`` for 1-D seeds).
    """
    transition = adjacency if isinstance(adjacency, Transition) else Transition.from_adjacency(adjacency)
    personalization = _as_personalization(seeds, transition.transposed.shape[0])  # (N, Q)
    ranks = power_iteration(transition, personalization, damping, tol, max_iter).T  # (Q, N)
    return ranks[0] if np.ndim(seeds) == 1 and not sparse.issparse(seeds) else ranks
