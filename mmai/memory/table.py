"""Every memory's filterable metadata and embedding in memory: exact filtered search without Chroma's.

Chroma stays the store of record. This table is derived from it (one read of every record, the
same read the episodic graph is built from) and held by :class:`~mmai.memory.index_sync.IndexSync`
until the set of memories or any record changes. A filter (a ``where`` clause of
:func:`~mmai.memory.filters.build_where`) becomes a boolean mask over the table's columns, and
stage 1 under a filter is an exact scan of the masked rows: the ``k`` best cosines among every
memory that matches, where Chroma's filtered HNSW is approximate at scale.

The mask follows Chroma's semantics for the operators :func:`build_where` writes (``$eq``,
``$in``, ``$gt``/``$gte``/``$lt``/``$lte``, ``$and``/``$or``): a memory without the field never
matches, and a value is compared within its stored type (an ``int`` filter does not match a
stored ``float``). :meth:`MemoryTable.mask` returns ``None`` for anything else (another operator,
a field whose stored values are not all of the schema's type): the caller then asks Chroma.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmai.memory.filters import METADATA_FIELDS

__all__ = ["MemoryTable"]

_COMPARE = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
FULL_SCAN_FROM = 0.5  # a mask keeping at least this share of rows scores every row (one GEMV), else gathers


class MemoryTable:
    """Ids, embeddings and :data:`~mmai.memory.filters.METADATA_FIELDS` columns of every memory.

    Args:
        ids: ``N`` memory ids.
        numbers: ``(N,)`` their int64 ids (:func:`~mmai.memory.index_sync.int_id`).
        embeddings: ``(N, E)`` float32 unit vectors, as Chroma holds them.
        metadatas: ``N`` metadata dicts.
    """

    def __init__(self, ids: Sequence[str], numbers: np.ndarray, embeddings: np.ndarray,
                 metadatas: Sequence[dict[str, Any]]) -> None:
        self.ids = list(ids)
        self.numbers = np.asarray(numbers, dtype=np.int64)  # (N,)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (N, E)
        self._order = np.argsort(self.numbers, kind="stable")  # (N,) for positions()
        self._sorted = self.numbers[self._order]
        self.columns: dict[str, np.ndarray] = {}
        self.irregular: set[str] = set()  # fields with a stored value not of the schema's type
        for field, kind in METADATA_FIELDS.items():
            values = [metadata.get(field) for metadata in metadatas]
            if kind is str:
                if any(value is not None and not isinstance(value, str) for value in values):
                    self.irregular.add(field)
                self.columns[field] = np.array(values, dtype=object)
                continue
            if any(value is not None and (type(value) is not kind) for value in values):
                self.irregular.add(field)  # e.g. an int timestamp or a bool: Chroma compares by type
                values = [value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                          for value in values]
            self.columns[field] = np.array([np.nan if value is None else float(value) for value in values],
                                           dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, numbers: Any) -> np.ndarray:
        """Rows of int64 ids ``numbers`` (``-1`` for an id not in the table)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        found = np.searchsorted(self._sorted, numbers)
        found = np.minimum(found, max(len(self._sorted) - 1, 0))
        hit = (self._sorted[found] == numbers) if len(self._sorted) else np.zeros(numbers.shape, bool)
        return np.where(hit, self._order[found] if len(self._sorted) else -1, -1)

    # ------------------------------------------------------------------ filters
    def mask(self, where: dict[str, Any] | None) -> np.ndarray | None:
        """``(N,)`` bool: the memories ``where`` matches (all for ``None``); ``None`` when the clause
        uses something this table does not evaluate as Chroma would (the caller asks Chroma)."""
        if where is None:
            return np.ones(len(self), dtype=bool)
        try:
            return self._clause(where)
        except _Unsupported:
            return None

    def _clause(self, where: dict[str, Any]) -> np.ndarray:
        if not isinstance(where, dict) or not where:
            raise _Unsupported
        masks = []
        for key, value in where.items():
            if key in ("$and", "$or"):
                parts = [self._clause(clause) for clause in value]
                if not parts:
                    raise _Unsupported
                masks.append(np.logical_and.reduce(parts) if key == "$and" else np.logical_or.reduce(parts))
            else:
                masks.append(self._field(key, value))
        return np.logical_and.reduce(masks)

    def _field(self, field: str, condition: Any) -> np.ndarray:
        if field not in self.columns or field in self.irregular:
            raise _Unsupported
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        column, kind = self.columns[field], METADATA_FIELDS[field]
        masks = []
        for operator, value in condition.items():
            values = value if operator == "$in" else [value]
            if operator not in ("$eq", "$in", *_COMPARE) or not isinstance(values, (list, tuple)):
                raise _Unsupported
            if not all(_same_type(item, kind) for item in values):
                raise _Unsupported  # Chroma would compare across its typed columns: not mirrored here
            if kind is str:
                if operator not in ("$eq", "$in"):
                    raise _Unsupported
                masks.append(np.isin(column, np.array(list(values), dtype=object)))
            elif operator in _COMPARE:
                with np.errstate(invalid="ignore"):
                    masks.append(_COMPARE[operator](column, float(value)))  # NaN (missing) compares False
            else:
                masks.append(np.isin(column, np.array([float(item) for item in values])))
        return np.logical_and.reduce(masks)

    # ------------------------------------------------------------------ search
    def search(self, query: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of ``mask`` most similar to the unit ``query`` ``(E,)``, exactly: rows
        ``(n,)`` and cosines ``(n,)`` float32, best first (``n = min(k, mask.sum())``; equal scores in row
        order, except that which of several rows tied at the k-th score are kept is not specified)."""
        rows = np.flatnonzero(mask)
        if not len(rows) or k < 1:
            return rows[:0], np.empty(0, np.float32)
        query = np.asarray(query, dtype=np.float32)
        if len(rows) >= FULL_SCAN_FROM * len(self):
            scores = (self.embeddings @ query)[rows]  # (n,)
        else:
            scores = self.embeddings[rows] @ query  # (n,)
        k = min(int(k), len(rows))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((rows[top], -scores[top]))]  # best first, ties by row
        return rows[top], scores[top]


class _Unsupported(Exception):
    """A clause :class:`MemoryTable` does not evaluate exactly as Chroma."""


def _same_type(value: Any, kind: type) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is str:
        return isinstance(value, str)
    if kind is int:
        return isinstance(value, (int, np.integer))
    return isinstance(value, (float, np.floating))
