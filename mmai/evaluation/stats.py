"""Uncertainty of a difference between two ablation rows: a paired bootstrap over queries.

Two rows of the ablation table are evaluated on the same queries (the same val captions, in the
same order) with the same seeds, so their per-query outcomes pair up: query ``q`` under seed
``s`` has an outcome in row A and one in row B (a hit at 1, a binding-probe win, ...). The
difference of the rows' means is estimated, and its sampling uncertainty measured, by resampling
*queries* with replacement (Efron & Tibshirani, 1993; the paired bootstrap of significance
testing in IR and NLP, e.g. Koehn, EMNLP 2004): one resample draws ``Q`` query indices, applies
the same indices to both rows and to every seed (pairing across rows and pooling over seeds), and
records the mean difference. The 2.5th and 97.5th percentiles of the resampled differences are
the 95% interval. Seeds are pooled, not resampled: with three seeds, a bootstrap over seeds has
nothing to draw from; the spread over seeds is reported beside the interval as mean ± std.

A row "gains" over the row above it only when the whole interval lies above 0; an interval that
holds 0 is "no measurable gain", one entirely below 0 a "loss" (:func:`verdict`). A difference
over a single independent unit (a val split with one swap pair) says neither: its interval is the
point itself, so its verdict is "too few units to tell (1)".
"""

from __future__ import annotations

import dataclasses

import numpy as np

GAIN, LOSS, NO_GAIN = "gain", "loss", "no measurable gain"
#: the verdict of a difference over one independent unit: its bootstrap interval has no width, whatever the data
TOO_FEW_UNITS = "too few units to tell (1)"


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``mean(b) - mean(a)`` over seeds and queries, with its bootstrap interval.

    Attributes:
        difference: the observed mean difference (B minus A).
        low, high: the interval's ends.
        confidence: its level (0.95 by default).
        queries: queries per seed.
        seeds: seeds pooled.
        resamples: bootstrap resamples drawn.
    """

    difference: float
    low: float
    high: float
    confidence: float
    queries: int
    seeds: int
    resamples: int
    units: int | None = None  # independent units resampled (e.g. swap pairs, species); None: queries

    @property
    def verdict(self) -> str:
        """:func:`verdict` of the interval; :data:`TOO_FEW_UNITS` when one unit (one swap pair, one
        query) was resampled: every resample is that unit, so the interval is the point itself."""
        if (self.queries if self.units is None else self.units) < 2:
            return TOO_FEW_UNITS
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> str:
    """``"gain"`` when the interval excludes 0 from above, ``"loss"`` from below, else
    ``"no measurable gain"``."""
    if low > 0:
        return GAIN
    if high < 0:
        return LOSS
    return NO_GAIN


def _as_matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"paired_bootstrap: {name} must be (seeds, queries) or (queries,) with at least one "
                         f"query, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"paired_bootstrap: {name} holds NaN or infinite values")
    return array


def paired_bootstrap(a, b, resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                     chunk: int = 250, units=None) -> PairedDifference:
    """The paired bootstrap interval of ``mean(b) - mean(a)``.

    With ``units`` the bootstrap resamples *units* instead of queries (a cluster bootstrap,
    Field & Welsh, 2007): queries of one unit are not independent samples (the 700 probe captions
    of two swap pairs are about two samples; the captions of one species share its attributes), so
    one resample draws ``U`` units with replacement and takes the mean over all their queries.

    Args:
        a, b: ``(seeds, queries)`` per-query outcomes of two rows (or ``(queries,)`` for one
            seed); row ``s`` of both is the same seed and column ``q`` the same query.
        resamples: bootstrap resamples (default 2000).
        confidence: interval level (default 0.95): the percentile interval.
        seed: seed of the resampling (default 0), so a table is reproducible.
        chunk: resamples drawn per vectorised step (memory: ``chunk x queries`` indices).
        units: ``(queries,)`` the independent unit of each query (any hashable labels, e.g. the
            swap pair's class ids as one integer, or the caption's species); default None: every
            query is its own unit.

    Returns:
        :class:`PairedDifference`.

    Raises:
        ValueError: shapes differ, or the input is empty or not finite.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: the rows must pair up query by query and seed by seed; shapes "
                         f"{a.shape} and {b.shape} differ")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_bootstrap: confidence must be in (0, 1), got {confidence}")
    differences = (b - a).mean(axis=0)  # (Q,): pooled over seeds, query by query
    queries = differences.shape[0]
    if units is None:
        sums, counts = differences, np.ones(queries)
    else:
        labels = np.asarray(units)
        if labels.shape != (queries,):
            raise ValueError(f"paired_bootstrap: units must give one unit per query ({queries}), got shape "
                             f"{labels.shape}")
        _, inverse = np.unique(labels, return_inverse=True)
        sums, counts = np.bincount(inverse, weights=differences), np.bincount(inverse).astype(np.float64)
    draws = sums.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        indices = rng.integers(0, draws, size=(count, draws))  # the same units for both rows, every seed
        means[start:start + count] = sums[indices].sum(axis=1) / counts[indices].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(differences.mean()), float(low), float(high), confidence, queries, a.shape[0],
                            resamples, None if units is None else int(draws))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value) of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std: no values")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0
