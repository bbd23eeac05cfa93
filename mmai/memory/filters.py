"""Memory metadata and the filters over it: "only 2023", "only in Mumbai", "before March".

The metadata schema (:data:`METADATA_FIELDS`) is what every memory in the store may carry:
when (``timestamp``, ``year``), where (``place``, ``latitude``, ``longitude``), what kind
(``modality``), from which file (``source_path``) and, for CUB, ``image_id`` and ``class_id``.
:func:`build_where` turns keyword filters into ChromaDB ``where`` clauses
(https://docs.trychroma.com/docs/querying-collections/metadata-filtering); values are checked
against the schema first, so a typo fails loudly instead of silently matching nothing.
:class:`Filters` is the one description of "which memories" that the personal memory's search and
forget, ``mmai memory`` and the dashboard (``mmai serve``) share.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any, ClassVar, Sequence

import numpy as np

from mmai.retrieval.vectors import to_numpy

#: Metadata a memory may carry, with the Python type Chroma stores it as.
METADATA_FIELDS: dict[str, type] = {
    "timestamp": float,  # unix seconds (UTC)
    "year": int,  # derived from timestamp (UTC) when missing
    "place": str,
    "latitude": float,
    "longitude": float,
    "modality": str,  # one of MODALITIES
    "source_path": str,
    "image_id": int,
    "class_id": int,
}
MODALITIES = ("image", "text", "audio")


@dataclasses.dataclass
class Filters:
    """Which memories a search or a forget may touch; ``None`` leaves a field unfiltered.

    Every given field must hold. A list/tuple value means "any of".

    Attributes:
        year: a year or years (UTC), e.g. ``2023``.
        place: a place name or names; stored names match case-insensitively, whole
            (``"powai lake, mumbai"``) or as a part (``"Mumbai"`` matches every place in Mumbai).
        modality: ``"image"``, ``"text"``, ``"audio"`` or several.
        after: from this time on (inclusive): unix seconds, a ``datetime`` or an ISO string such
            as ``"2023-03-01"`` (no zone: UTC).
        before: before this time (exclusive), as ``after``.
    """

    year: int | Sequence[int] | None = None
    place: str | Sequence[str] | None = None
    modality: str | Sequence[str] | None = None
    after: Any = None
    before: Any = None

    FIELDS: ClassVar[tuple[str, ...]] = ("year", "place", "modality", "after", "before")

    @classmethod
    def of(cls, where: str = "filters", **fields: Any) -> "Filters":
        """``Filters(**fields)`` that names an unknown field and the known ones (a typo is an error)."""
        unknown = sorted(set(fields) - set(cls.FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown filter(s) {unknown}; use {', '.join(cls.FIELDS)}")
        return cls(**fields)

    def as_kwargs(self) -> dict[str, Any]:
        """Every field by name (``None`` for the unfiltered ones)."""
        return {field: getattr(self, field) for field in self.FIELDS}

    def active(self) -> dict[str, Any]:
        """The fields that filter (not ``None``), by name."""
        return {field: value for field, value in self.as_kwargs().items() if value is not None}

    @property
    def empty(self) -> bool:
        """Whether no field filters (every memory matches)."""
        return not self.active()


def _known_fields() -> str:
    return ", ".join(METADATA_FIELDS)


def _coerce(field: str, value: Any, where: str) -> Any:
    """Check a metadata/filter value against the field's type and return it as a Python scalar."""
    if field not in METADATA_FIELDS:
        raise ValueError(f"{where}: unknown metadata field {field!r}; known fields: {_known_fields()}")
    kind = METADATA_FIELDS[field]
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not (isinstance(value, str) if kind is str else numeric):
        raise ValueError(f"{where}: field {field!r} expects {kind.__name__}, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{where}: field {field!r} expects an integer, got {value!r}")
    value = kind(value)
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{where}: field {field!r} must be finite, got {value!r}")
    if field == "modality" and value not in MODALITIES:
        raise ValueError(f"{where}: modality must be one of {MODALITIES}, got {value!r}")
    return value


def _as_unix_seconds(value: Any, name: str) -> float:
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # naive datetimes are read as local time, as Python does
    return _coerce("timestamp", value, f"build_where({name}=...)")


def build_where(
    year: int | Sequence[int] | None = None,
    place: str | Sequence[str] | None = None,
    modality: str | Sequence[str] | None = None,
    after: float | _dt.datetime | None = None,
    before: float | _dt.datetime | None = None,
    **exact: Any,
) -> dict[str, Any] | None:
    """Build a Chroma ``where`` clause from keyword filters.

    Every given filter must hold (``$and``). A list/tuple/set value means "any of" (``$in``).
    The time range is on ``timestamp``: ``after <= timestamp < before`` (``$gte`` / ``$lt``).

    Args:
        year: a year or years, e.g. ``2023``.
        place: a place name or names, e.g. ``"Mumbai"``.
        modality: ``"image"``, ``"text"``, ``"audio"`` or several.
        after: earliest timestamp (unix seconds or ``datetime``), inclusive.
        before: latest timestamp, exclusive.
        **exact: other fields of :data:`METADATA_FIELDS`, e.g. ``class_id=12``.

    Returns:
        The ``where`` dict, or ``None`` when no filter is given (match everything).

    Raises:
        ValueError: an unknown field (the message lists the known ones), a value of the wrong
            type, or ``after >= before``.
    """
    filters = {"year": year, "place": place, "modality": modality, **exact}
    conditions = []
    for field, value in filters.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            values = [_coerce(field, item, f"build_where({field}=...)") for item in value]
            conditions.append({field: {"$in": values}})
        else:
            conditions.append({field: {"$eq": _coerce(field, value, f"build_where({field}=...)")}})
    start = None if after is None else _as_unix_seconds(after, "after")
    end = None if before is None else _as_unix_seconds(before, "before")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"build_where: after ({start}) must be earlier than before ({end})")
    if start is not None:
        conditions.append({"timestamp": {"$gte": start}})
    if end is not None:
        conditions.append({"timestamp": {"$lt": end}})
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def check_where(where: dict[str, Any] | None) -> None:
    """Raise ValueError if a ``where`` clause names a field outside :data:`METADATA_FIELDS`."""
    if where is None:
        return
    for key, value in where.items():
        if key in ("$and", "$or"):
            for clause in value:
                check_where(clause)
        elif key not in METADATA_FIELDS:
            raise ValueError(f"where: unknown filter field {key!r}; known fields: {_known_fields()}")


def clean_metadata(metadata: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate one record's metadata and return it as plain Python values.

    ``None`` values are dropped; ``year`` is filled in from ``timestamp`` (UTC) when missing.

    Raises:
        ValueError: an unknown field (the known ones are listed) or a value of the wrong type.
    """
    record = {field: _coerce(field, value, where) for field, value in (metadata or {}).items() if value is not None}
    if "timestamp" in record and "year" not in record:
        record["year"] = _dt.datetime.fromtimestamp(record["timestamp"], _dt.timezone.utc).year
    return record


def metadata_column(metadatas: Sequence[dict[str, Any]], field: str, default: Any = None) -> np.ndarray:
    """One field of many metadata dicts as an array (``default`` where absent), e.g. timestamps."""
    if field not in METADATA_FIELDS:
        raise ValueError(f"metadata_column: unknown field {field!r}; known fields: {_known_fields()}")
    return to_numpy([metadata.get(field, default) for metadata in metadatas])
