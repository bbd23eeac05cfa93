"""Personalised PageRank by batched power iteration on a sparse adjacency (HippoRAG's retrieval walk).

PageRank (Page et al., 1999) with a personalised restart distribution (Haveliwala, 2002) scores
every node by how often a random walk that restarts at the seeds visits it. This implementation
runs many seed distributions (queries) at once as one sparse-dense product per step, on the
row-normalised CSR adjacency, and is numerically the same as
``networkx.pagerank(G, alpha=damping, personalization=seeds)``: ``damping`` is NetworkX's ``alpha``
(the probability of following an edge), dangling nodes send their mass back according to the
personalisation vector, the walk starts uniform, and a query stops when its L1 change is
below ``N * tol``.

:func:`push_pagerank` is the local alternative (Andersen, Chung & Lang, FOCS 2006, "forward
push"): mass is pushed from the seeds outwards until every node's residual is at most ``eps``, so
it touches only the seeds' neighbourhood, not the whole graph, and converges to the same vector.
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
    _forward: sparse.csr_matrix | None = dataclasses.field(default=None, repr=False)

    @property
    def forward(self) -> sparse.csr_matrix:
        """``(N, N)`` CSR of ``P`` itself (row ``u``: where ``u``'s mass goes), made on first use."""
        if self._forward is None:
            self._forward = sparse.csr_matrix(self.transposed.T)
        return self._forward

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


def push_pagerank(transition: Transition, personalization: np.ndarray, damping: float, eps: float = 1e-10,
                  max_rounds: int = 10_000) -> np.ndarray:
    """Personalised PageRank ``(N,)`` of one normalised ``personalization`` ``(N,)`` by forward push.

    Each round, every node whose residual exceeds ``eps`` keeps ``(1 - damping)`` of it as rank and
    pushes ``damping`` of it along its out-edges (a dangling node sends it back to the seeds, as
    NetworkX and :func:`power_iteration` do); it stops when no residual exceeds ``eps``. The result
    is below the exact vector by at most the residual left (each node's at most ``eps``): nodes
    far from the seeds, where little mass arrives, are the only ones not visited.
    """
    forward = transition.forward
    restart = np.asarray(personalization, dtype=np.float64)
    rank = np.zeros(len(restart))
    residual = restart.copy()
    dangling = transition.dangling
    for _ in range(max_rounds):
        active = np.flatnonzero(residual > eps)
        if not active.size:
            return rank
        mass = residual[active]
        residual[active] = 0.0
        rank[active] += (1 - damping) * mass
        moved = damping * mass  # (a,)
        residual += forward[active].T @ moved  # (N,): only the active rows' edges are read
        returned = moved[dangling[active]].sum()
        if returned:
            residual += returned * restart
    warnings.warn(f"push_pagerank: residuals above eps={eps} after {max_rounds} rounds", RuntimeWarning,
                  stacklevel=2)
    return rank


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
