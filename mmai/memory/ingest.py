"""Reading a person's files as memories: what a file is, when and where it was made.

Episodic memory (Tulving, 1972) ties each item to a time and a place; this module finds both for
every file it ingests and says where each came from. One file becomes one
:class:`MemoryFile`: its content (a decoded image, a note's text or a 48 kHz mono waveform), its
id (the SHA-256 of its bytes, so the same file is the same memory wherever it lies) and its
metadata.

Supported files (:data:`SUFFIXES`):

* images — ``.jpg .jpeg .png .webp .bmp .gif .tif .tiff`` (Pillow; EXIF orientation applied);
* text notes — ``.txt .md`` (UTF-8; the text becomes the memory's document);
* audio — ``.wav .flac`` (soundfile; channels averaged, resampled to 48 kHz with a polyphase filter).

Time, first source that has one wins (the source is kept as ``time_source``):

1. the sidecar ``<file>.json`` beside the file (e.g. ``photo.jpg.json``: the Google Takeout
   convention), field ``time``;
2. the ``--meta`` table (JSON ``{file name: {...}}`` / list of objects with ``file``, or CSV with a
   ``file`` column), keyed by file name (or by the path as given);
3. the image's EXIF ``DateTimeOriginal`` (with ``OffsetTimeOriginal`` when present, else read as
   UTC), then EXIF ``DateTime``;
4. the file's modification time (``time_source="file mtime"``) — unless ``require_time`` is set,
   in which case a file without any of the above is rejected.

Place: ``place`` (a name), ``latitude``/``longitude`` (degrees) from the sidecar, then the meta
table, then EXIF GPS (coordinates only). Sidecar and meta fields: ``time`` (ISO-8601 such as
``2023-05-14T07:32:10Z``, ``2023-05-14``, EXIF style ``2023:05:14 07:32:10`` or unix seconds;
times without a zone are UTC), ``place``, ``latitude``, ``longitude``, ``importance`` (0-1) and
``caption`` (a description, stored as the document of an image or audio memory). Aliases:
``timestamp``/``datetime``/``date`` for ``time``, ``lat``, ``lon``/``lng``. Any other field is
an error naming the file and the field, so a typo never passes silently.

Every problem raises :class:`IngestError` (a ``ValueError``) whose message names the file, the
field or value at fault and what to do; :class:`~mmai.memory.personal.PersonalMemory` reports it
as the rejection reason and goes on with the other files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

#: file suffix -> modality.
SUFFIXES: dict[str, str] = {
    **{s: "image" for s in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")},
    **{s: "text" for s in (".txt", ".md")},
    **{s: "audio" for s in (".wav", ".flac")},
}
AUDIO_SAMPLE_RATE = 48_000
MAX_FILE_BYTES = 256 * 2**20  # a larger file is rejected (default 256 MiB)
ID_HEX_CHARS = 32  # memory id = the first 32 hex digits (128 bits) of the SHA-256 of the file bytes

#: accepted sidecar/meta field -> canonical field.
FIELD_ALIASES = {
    "time": "time", "timestamp": "time", "datetime": "time", "date": "time",
    "place": "place", "latitude": "latitude", "lat": "latitude",
    "longitude": "longitude", "lon": "longitude", "lng": "longitude",
    "importance": "importance", "caption": "caption",
}
_META_KEY_COLUMNS = ("file", "filename", "name", "path")
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_EXIF_DATETIME_ORIGINAL, _EXIF_OFFSET_ORIGINAL, _IFD0_DATETIME = 0x9003, 0x9011, 0x0132


class IngestError(ValueError):
    """A file cannot become a memory; the message says which file, what is wrong and what to do."""


@dataclasses.dataclass
class MemoryFile:
    """One file read and validated, ready to embed.

    Attributes:
        path: the file as given (absolute).
        id: content hash, the first :data:`ID_HEX_CHARS` hex digits of SHA-256 of the bytes.
        modality: ``"image"``, ``"text"`` or ``"audio"``.
        content: ``PIL.Image`` (RGB) for images, ``str`` for notes, ``(S,)`` float32 48 kHz mono
            waveform for audio.
        metadata: ``timestamp`` (unix s, UTC), ``place``, ``latitude``, ``longitude``,
            ``modality``, ``source_path``, ``time_source``, ``importance`` (absent keys: unknown).
        document: the note's text or the caption, else ``None``.
        suffix: lower-case file suffix (``".jpg"``), used for the stored media copy.
    """

    path: Path
    id: str
    modality: str
    content: Any
    metadata: dict[str, Any]
    document: str | None
    suffix: str


# ---------------------------------------------------------------------- paths
def modality_of(path: Path) -> str:
    """The modality of ``path`` from its suffix.

    Raises:
        IngestError: the suffix is not one of :data:`SUFFIXES`.
    """
    modality = SUFFIXES.get(path.suffix.lower())
    if modality is None:
        kinds = ", ".join(f"{label} ({' '.join(s for s, k in SUFFIXES.items() if k == m)})"
                          for m, label in (("image", "images"), ("text", "notes"), ("audio", "audio")))
        raise IngestError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; MMAI ingests {kinds}")
    return modality


def is_sidecar(path: Path) -> bool:
    """True for ``<file>.json`` sidecars whose ``<file>`` exists beside them."""
    return path.suffix.lower() == ".json" and path.with_suffix("").is_file() and path.with_suffix("").suffix != ""


def expand_paths(paths: Iterable[str | os.PathLike], *, follow_links: bool = False,
                 skipped: list[tuple[Path, str]] | None = None,
                 roots: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Files named by ``paths``: files as given, folders walked recursively (sorted).

    Hidden files and sidecars are skipped inside folders; a sidecar named directly is kept (and
    rejected later as unsupported, which tells the user what happened). A symbolic link found
    inside a folder is followed only when its target lies inside one of the given ``paths``
    (a link to ``/etc/passwd`` in a photo folder is not a memory), unless ``follow_links``.

    Args:
        paths: files and folders.
        follow_links: also follow links whose target is outside the given paths.
        skipped: when a list, ``(link, reason)`` of every link not followed is appended to it.
        roots: where links may point (default: ``paths``), e.g. every path of one ingest when
            ``paths`` is one of them.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    given_paths = [Path(given).expanduser() for given in paths]
    roots = [Path(root).expanduser().resolve() for root in (given_paths if roots is None else roots)]
    found: list[Path] = []
    for path in given_paths:
        if path.is_dir():
            found += _walk(path, roots, follow_links, skipped if skipped is not None else [])
        elif path.is_file():
            found.append(path.absolute())
        else:
            raise FileNotFoundError(f"ingest: {path} does not exist (give files or folders of memories)")
    return list(dict.fromkeys(found))  # drop repeats, keep order


def _walk(folder: Path, roots: list[Path], follow_links: bool, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Files under ``folder`` (sorted), following only links that stay inside ``roots``."""
    found: list[Path] = []
    visited = {folder.resolve()}
    pending = [folder]
    while pending:
        current = pending.pop()
        for child in sorted(current.iterdir(), reverse=True):
            if child.name.startswith("."):
                if child.is_dir() and not child.is_symlink():
                    skipped.append((child.absolute(), f"{child}: a hidden folder (its name starts with '.') was not "
                                                      "walked; name it on the command line to ingest it"))
                continue
            if child.is_symlink():
                target = child.resolve()
                if not follow_links and not any(target == root or root in target.parents for root in roots):
                    skipped.append((child.absolute(), f"{child}: a link to {target}, outside the given folders, "
                                                      "was not followed (pass --follow-links to ingest it)"))
                    continue
            if child.is_dir():
                real = child.resolve()
                if real not in visited:  # links can make loops
                    visited.add(real)
                    pending.append(child)
            elif child.is_file() and not is_sidecar(child):
                found.append(child.absolute())
    return sorted(found)


def content_id(data: bytes) -> str:
    """The memory id of a file's bytes: the first :data:`ID_HEX_CHARS` hex digits of SHA-256."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX_CHARS]


# ---------------------------------------------------------------------- time and place fields
def parse_time(value: Any, where: str) -> float:
    """Unix seconds (UTC) of a time value.

    Accepts unix seconds (int/float, or a numeric string), ``datetime``, ISO-8601 (``Z`` or an
    offset; a date alone is midnight), or EXIF ``YYYY:MM:DD HH:MM:SS``. Times without a zone are UTC.

    Raises:
        IngestError: the value is none of these (``where`` names the file and field).
    """
    if isinstance(value, bool):
        raise IngestError(f"{where}: expected a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise IngestError(f"{where}: time must be finite, got {value!r}")
        return float(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        if len(text) >= 19 and text[4] == ":" and text[7] == ":":  # EXIF 'YYYY:MM:DD HH:MM:SS'
            text = text[:4] + "-" + text[5:7] + "-" + text[8:]
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).timestamp()
    raise IngestError(
        f"{where}: cannot read {value!r} as a time; use ISO-8601 like '2023-05-14T07:32:10Z', "
        "a date '2023-05-14', or unix seconds"
    )


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise IngestError(f"{where}: expected a number in [{low}, {high}], got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise IngestError(f"{where}: expected a number in [{low}, {high}], got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise IngestError(f"{where}: expected a number in [{low}, {high}], got {value!r}")
    return number


def validate_fields(record: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a sidecar/meta record and return it with canonical field names and parsed values.

    Args:
        record: raw fields, e.g. ``{"time": "2023-05-14T07:32:10Z", "place": "Mumbai"}``.
        source: where the record came from, for messages (e.g. ``"sidecar photo.jpg.json"``).

    Returns:
        A dict over ``time`` (unix s), ``place``, ``latitude``, ``longitude``, ``importance``,
        ``caption``; empty values (``None``, ``""``) are dropped.

    Raises:
        IngestError: an unknown field, a field given twice under two aliases, or a bad value.
    """
    if not isinstance(record, dict):
        raise IngestError(f"{source}: expected a JSON object of fields, got {type(record).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in record.items():
        key = FIELD_ALIASES.get(str(raw_key).strip().lower())
        where = f"{source}: field {raw_key!r}"
        if key is None:
            raise IngestError(f"{where} is not known; use {', '.join(sorted(set(FIELD_ALIASES.values())))}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key in out:
            raise IngestError(f"{where} repeats {key!r} under another name; give it once")
        if key == "time":
            out[key] = parse_time(value, where)
        elif key in ("place", "caption"):
            if not isinstance(value, str):
                raise IngestError(f"{where}: expected text, got {value!r}")
            out[key] = value.strip()
        elif key == "latitude":
            out[key] = _number(value, where, -90.0, 90.0)
        elif key == "longitude":
            out[key] = _number(value, where, -180.0, 180.0)
        else:  # importance
            out[key] = _number(value, where, 0.0, 1.0)
    if ("latitude" in out) != ("longitude" in out):
        missing = "longitude" if "latitude" in out else "latitude"
        raise IngestError(f"{source}: field {missing!r} is missing; give latitude and longitude together")
    return out


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The validated fields of ``<path>.json`` (``None`` when there is no sidecar).

    Raises:
        IngestError: the sidecar is not valid JSON or has a bad field (both named).
    """
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IngestError(f"sidecar {sidecar}: not valid UTF-8 JSON ({error}); fix or remove it") from None
    return validate_fields(record, f"sidecar {sidecar}")


class MetaTable:
    """The ``--meta`` file: per-file time/place records keyed by file name (or path as given).

    Args:
        path: a ``.json`` file (``{"photo.jpg": {"time": ..., "place": ...}}`` or a list of
            objects with a ``file`` key) or a ``.csv`` file with a ``file`` column (also accepted:
            ``filename``, ``name``, ``path``) and field columns.

    Raises:
        FileNotFoundError: no such file.
        IngestError: unreadable, a record without a file name, a name given twice, or a bad
            field (the row and field are named).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--meta {self.path}: no such file")
        rows = self._read_csv() if self.path.suffix.lower() == ".csv" else self._read_json()
        self.records: dict[str, dict[str, Any]] = {}
        for label, name, fields in rows:
            if not name:
                raise IngestError(f"--meta {self.path} {label}: no file name (column/key 'file')")
            if name in self.records:
                raise IngestError(f"--meta {self.path} {label}: file {name!r} appears twice; keep one record")
            self.records[name] = validate_fields(fields, f"--meta {self.path} {label} ({name})")

    def _read_json(self) -> list[tuple[str, str, dict]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise IngestError(f"--meta {self.path}: not valid UTF-8 JSON ({error})") from None
        if isinstance(data, dict):
            return [(f"key {name!r}", str(name), fields) for name, fields in data.items()]
        if isinstance(data, list):
            rows = []
            for number, item in enumerate(data):
                if not isinstance(item, dict):
                    raise IngestError(f"--meta {self.path} item {number}: expected an object, got {item!r}")
                item = dict(item)
                key = next((k for k in _META_KEY_COLUMNS if k in item), None)
                rows.append((f"item {number}", str(item.pop(key, "") or ""), item))
            return rows
        raise IngestError(f"--meta {self.path}: expected an object keyed by file name or a list of objects")

    def _read_csv(self) -> list[tuple[str, str, dict]]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            key = next((k for k in _META_KEY_COLUMNS if k in (reader.fieldnames or [])), None)
            if key is None:
                raise IngestError(f"--meta {self.path}: CSV needs a 'file' column; found {reader.fieldnames}")
            rows = []
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                row = {k: v for k, v in row.items() if k is not None}
                rows.append((f"line {number}", (row.pop(key) or "").strip(), row))
            return rows

    def lookup(self, path: Path, given: str | None = None) -> dict[str, Any] | None:
        """The record of ``path``: by the path as given, the absolute path, then the file name."""
        for key in (given, str(path), path.name):
            if key and key in self.records:
                return self.records[key]
        return None


# ---------------------------------------------------------------------- readers
def _exif_fields(image) -> tuple[dict[str, Any], str | None]:
    """Time and GPS from an image's EXIF, and which tag gave the time."""
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF is "no EXIF", not a broken image
        return {}, None
    fields: dict[str, Any] = {}
    source = None
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        original = sub.get(_EXIF_DATETIME_ORIGINAL)
        if original:
            offset = sub.get(_EXIF_OFFSET_ORIGINAL) or ""
            fields["time"] = parse_time(f"{str(original).strip()}{str(offset).strip()}", "EXIF DateTimeOriginal")
            source = "EXIF DateTimeOriginal"
        elif exif.get(_IFD0_DATETIME):
            fields["time"] = parse_time(str(exif[_IFD0_DATETIME]).strip(), "EXIF DateTime")
            source = "EXIF DateTime"
    except (IngestError, ValueError, TypeError, KeyError):
        source = None  # an unreadable EXIF date: fall through to other sources
        fields.pop("time", None)
    try:
        gps = exif.get_ifd(_GPS_IFD)
        if 2 in gps and 4 in gps:
            latitude, longitude = _degrees(gps[2], gps.get(1, "N")), _degrees(gps[4], gps.get(3, "E"))
            if -90 <= latitude <= 90 and -180 <= longitude <= 180:
                fields["latitude"], fields["longitude"] = latitude, longitude
    except (ValueError, TypeError, ZeroDivisionError, IndexError):
        pass
    return fields, source


def _degrees(dms: Any, reference: Any) -> float:
    """EXIF (degrees, minutes, seconds) rationals and an N/S/E/W reference -> signed degrees."""
    degrees, minutes, seconds = (float(part) for part in dms)
    value = degrees + minutes / 60.0 + seconds / 3600.0
    reference = reference.decode() if isinstance(reference, bytes) else str(reference)
    return round(-value if reference.strip().upper() in ("S", "W") else value, 7)


#: a JPEG is decoded in draft mode at no less than this many pixels a side (the towers take 224-336)
DECODE_SIDE = 1024
#: other formats (PNG, WebP, ...) decode in full: above this many pixels they are refused, size named
MAX_DECODE_PIXELS = 40_000_000


def read_image(path: Path, data: bytes):
    """Decode an image (checked, EXIF-rotated, RGB) and its EXIF time/GPS.

    Raises:
        IngestError: the bytes do not decode as an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure check (truncated/corrupt files)
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if image.format == "JPEG":  # decode at 1/2..1/8 scale, no smaller than DECODE_SIDE: cheap for any size
            image.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
        elif width * height > MAX_DECODE_PIXELS:
            raise IngestError(
                f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels); a {image.format or 'non-JPEG'} "
                f"that large takes {width * height * 3 / 2**30:.1f} GiB or more to decode, above the "
                f"{MAX_DECODE_PIXELS / 1e6:.0f}-megapixel budget (the model sees it at a few hundred pixels): "
                f"downscale it (e.g. to {DECODE_SIDE * 4} px on its long side) or save it as JPEG, then ingest it again")
        image.load()  # full decode
        fields, source = _exif_fields(image)
        image = ImageOps.exif_transpose(image).convert("RGB")
    except IngestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise IngestError(f"{path}: corrupt or unreadable image ({type(error).__name__}: {error}); "
                          "re-export or remove it") from None
    if min(image.size) < 1:
        raise IngestError(f"{path}: image has no pixels ({image.size})")
    return image, fields, source


def read_note(path: Path, data: bytes) -> str:
    """A text note's content (UTF-8, BOM allowed).

    Raises:
        IngestError: not UTF-8, or empty.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise IngestError(f"{path}: note is not UTF-8 text ({error}); save it as UTF-8") from None
    if not text.strip():
        raise IngestError(f"{path}: note is empty; nothing to remember")
    return text.strip()


def read_audio(path: Path, data: bytes, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """A recording as ``(S,)`` float32 mono at ``sample_rate`` (default 48 kHz).

    Channels are averaged; other rates are resampled with a polyphase filter (scipy).

    Raises:
        IngestError: not a readable WAV/FLAC, silent-length (no samples) or non-finite.
    """
    import soundfile
    from scipy.signal import resample_poly

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (S, C)
    except (RuntimeError, ValueError, TypeError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise IngestError(f"{path}: corrupt or unreadable audio ({error}); MMAI reads WAV and FLAC") from None
    if samples.shape[0] == 0:
        raise IngestError(f"{path}: audio has no samples")
    mono = samples.mean(axis=1)  # (S,)
    if rate != sample_rate:
        divisor = math.gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // divisor, int(rate) // divisor).astype(np.float32)  # (S',)
    if not np.isfinite(mono).all():
        raise IngestError(f"{path}: audio has NaN/inf samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


# ---------------------------------------------------------------------- one file
def _merge_fields(*records: tuple[str, dict[str, Any] | None]) -> tuple[dict[str, Any], dict[str, str]]:
    """First-wins merge of ``(label, record)`` pairs; returns the fields and the label of each.

    Labels are the ``time_source`` values: ``"sidecar"``, ``"meta"``, ``"EXIF DateTimeOriginal"``
    or ``"EXIF DateTime"``; a file without any of them gets ``"file mtime"``.
    """
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for label, record in records:
        for key, value in (record or {}).items():
            if key not in merged:
                merged[key], sources[key] = value, label
    return merged, sources


def read_memory_file(
    path: Path, *, meta: MetaTable | None = None, given: str | None = None, require_time: bool = False,
    max_bytes: int = MAX_FILE_BYTES,
) -> MemoryFile:
    """Read, validate and describe one file.

    Args:
        path: the file.
        meta: the ``--meta`` table, if any.
        given: the path as the user typed it (a meta-table key), default ``str(path)``.
        require_time: reject a file whose time would come only from its modification time.
        max_bytes: larger files are rejected (default :data:`MAX_FILE_BYTES`).

    Returns:
        The :class:`MemoryFile`.

    Raises:
        IngestError: unsupported type, too large, corrupt, bad sidecar, or no time when required.
    """
    path = Path(path).absolute()
    modality = modality_of(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise IngestError(f"{path}: {size / 2**20:.1f} MiB is larger than the {max_bytes / 2**20:.0f} MiB limit")
    if size == 0:
        raise IngestError(f"{path}: file is empty")
    data = path.read_bytes()
    sidecar = read_sidecar(path)
    table = meta.lookup(path, given) if meta is not None else None
    exif, exif_source = {}, None
    document = None
    if modality == "image":
        content, exif, exif_source = read_image(path, data)
    elif modality == "text":
        content = document = read_note(path, data)
    else:
        content = read_audio(path, data)
    fields, origin = _merge_fields(("sidecar", sidecar), ("meta", table), ("exif", exif))
    time_source = {"sidecar": "sidecar", "meta": "meta", "exif": exif_source}.get(origin.get("time", ""))
    if "time" not in fields:
        if require_time:
            raise IngestError(
                f"{path}: no timestamp (no EXIF DateTimeOriginal, no 'time' in a sidecar {path.name}.json "
                "or in --meta); add one, or allow the file's modification time (drop --require-time)"
            )
        fields["time"], time_source = path.stat().st_mtime, "file mtime"
    if modality != "text" and fields.get("caption"):
        document = fields["caption"]
    metadata = {
        "timestamp": float(fields["time"]), "place": fields.get("place"),
        "latitude": fields.get("latitude"), "longitude": fields.get("longitude"),
        "modality": modality, "source_path": str(path), "time_source": time_source,
        "importance": fields.get("importance"),
    }
    return MemoryFile(path, content_id(data), modality, content,
                      {k: v for k, v in metadata.items() if v is not None}, document, path.suffix.lower())


# ---------------------------------------------------------------------- the synthetic diary
def synthetic_collection(
    root: str | os.PathLike, limit: int | None = None, *, audio: bool = True
) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    """The synthetic CUB's photos (and songs) with the diary's time and place: a ready collection.

    ``mmai data synth --out DIR`` writes ``DIR/CUB_200_2011/images/...`` and
    ``DIR/mmai_extras/episodes.jsonl`` (time, place, latitude, longitude per image) and
    ``DIR/mmai_extras/audio/<class>/<stem>.wav`` (the song recorded with each photo; see
    ``DIR/mmai_extras/README.md``). Each song shares its photo's diary entry.

    Args:
        root: the synthetic data set's folder (``DIR``).
        limit: only the first ``limit`` images in diary (image id) order (default: all).
        audio: include the songs (default ``True``).

    Returns:
        ``(paths, overrides)``: files to ingest and ``{str(path): {"time", "place", "latitude",
        "longitude", "source": "synthetic diary"}}`` for the ``overrides`` of
        :meth:`~mmai.memory.personal.PersonalMemory.ingest`.

    Raises:
        FileNotFoundError: ``root`` is not a synthetic CUB (the missing file is named).
    """
    root = Path(root).expanduser()
    images_txt, diary = root / "CUB_200_2011" / "images.txt", root / "mmai_extras" / "episodes.jsonl"
    for needed in (images_txt, diary):
        if not needed.is_file():
            raise FileNotFoundError(f"--from-synthetic {root}: no {needed.relative_to(root)}; write the data set "
                                    f"with `mmai data synth --out {root}` first")
    relpaths = dict(line.split(maxsplit=1) for line in images_txt.read_text(encoding="utf-8").splitlines() if line)
    paths: list[Path] = []
    overrides: dict[str, dict[str, Any]] = {}
    entries = [json.loads(line) for line in diary.read_text(encoding="utf-8").splitlines() if line.strip()]
    for entry in entries[:limit]:
        relpath = relpaths[str(entry["image_id"])].strip()
        fields = {key: entry[key] for key in ("place", "latitude", "longitude")}
        fields.update(time=entry["timestamp"], source="synthetic diary")
        image = (root / "CUB_200_2011" / "images" / relpath).absolute()
        song = (root / "mmai_extras" / "audio" / relpath).with_suffix(".wav").absolute()
        for path in (image, song) if audio and song.is_file() else (image,):
            paths.append(path)
            overrides[str(path)] = fields
    return paths, overrides
