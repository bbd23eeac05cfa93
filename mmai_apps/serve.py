"""``mmai serve``: a browser dashboard over a personal memory (Gradio, local only).

The dashboard is a thin view of :class:`~mmai.memory.personal.PersonalMemory`:

* **search** — a query box, filters (year, place, modality, after/before) and the re-rank
  (stage-2 fusion re-ranker) and GAR (graph-augmented retrieval) toggles; the results come back
  as a gallery captioned with rank, score, place and date; the query's time and place words
  ("at Powai Lake in spring 2023", "last December") become filters, said in the status line
  (the form's fields win; a box turns it off), and "what did I see after the heron" lists what
  followed that memory in its outing;
* **inspect** — selecting a result shows the saliency overlay of the query on that image (the
  re-ranker's cross-attention, :mod:`mmai.reranker.saliency`), its associated memories from the episodic
  graph with the reason ("same outing" / "similar content"), a player for audio memories and the
  text of notes;
* **add** — an upload form whose files are checked (allowed type, size limit, the image or
  recording decodes, the note is UTF-8) before anything is stored; each file is reported as
  added, duplicate or rejected with the reason.

Privacy: the server binds to 127.0.0.1 unless told otherwise, Gradio's analytics are off
(``GRADIO_ANALYTICS_ENABLED=False``, set before Gradio is imported), no share link is made, the
default theme's fonts are bundled, and nothing here calls the internet. Gradio's temporary files
(gallery thumbnails, copies of uploads) go to a private folder under the store root
(``ROOT/.serve-cache/pid…``, mode 0700, files 0600) that is removed when the server stops (those
of a killed server are removed at the next start), not to the system temp folder. An upload's
``source_path`` records the name it was uploaded under, not the temporary copy. User text (places,
file names, queries, notes' paths) is escaped before it goes into Markdown, so a place like
``![x](http://host/p.png)`` shows as text instead of loading a remote image.

Example::

    mmai serve --root runs/memories --checkpoint runs/reranker.ckpt      # http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import html
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mmai.memory.filters import Filters  # noqa: E402
from mmai.memory.forgetting import POLICIES as FORGETTING, describe_usage, parse_budget  # noqa: E402
from mmai.memory.ingest import SUFFIXES, IngestError, parse_time, read_memory_file  # noqa: E402
from mmai.memory.personal import PersonalMemory  # noqa: E402
from mmai.memory.search import SearchOptions  # noqa: E402
from mmai.memory.words import after_anchor  # noqa: E402
from mmai.memory.write_policy import POLICIES  # noqa: E402
from mmai.viz.panels import load_font, wrap_text  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
MODALITY_CHOICES = ("any", "image", "text", "audio")
THUMBNAIL_SIZE = 256
CACHE_EXPIRY = (600, 3600)  # Gradio deletes its temporary files older than an hour, checking every 10 min
UPLOAD_SOURCE = "uploaded via dashboard: "  # + the file's name: the source_path of an upload
SETTING_FLAGS = {"rerank_k": "--rerank-k", "stage1_weight": "--stage1-weight"}  # how given re-rank settings are named
CSS = """
#mmai-results .caption-label { font-size: 0.8rem; max-width: 96%; }
#mmai-details { font-size: 0.95rem; }
#mmai-related table { font-size: 0.8rem; }
#mmai-related th, #mmai-related td { padding: 4px 6px; }
#mmai-status { min-height: 1.5rem; }
"""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~<>:])")  # ':' too: no autolinks


def md_escape(text: Any) -> str:
    """``text`` shown literally in Markdown: HTML escaped and Markdown's punctuation backslashed,
    so user text cannot add links, images (remote beacons) or markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


# ---------------------------------------------------------------------- upload checks
@dataclasses.dataclass
class UploadCheck:
    """The verdict on one uploaded file before anything is stored.

    Attributes:
        path: the uploaded file.
        name: its file name as the user sent it.
        modality: ``"image"``, ``"text"`` or ``"audio"`` when accepted, else ``None``.
        reason: why it was rejected (``None`` when it passed).
        memory_id: the id it would get (content hash) when accepted.
    """

    path: Path
    name: str
    modality: str | None
    reason: str | None
    memory_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_upload(path: str | os.PathLike, max_bytes: int) -> UploadCheck:
    """Check one upload: an allowed type, at most ``max_bytes``, and content that decodes.

    Images are fully decoded (a truncated or corrupt file fails), notes must be UTF-8 and not
    empty, recordings must be readable WAV/FLAC. Nothing is written anywhere.

    Args:
        path: the uploaded file (Gradio keeps the user's file name).
        max_bytes: the size limit in bytes.

    Returns:
        An :class:`UploadCheck`; ``reason`` names the file and what to do when it fails.
    """
    path = Path(path)
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        allowed = " ".join(sorted(SUFFIXES))
        return UploadCheck(path, name, None,
                           f"{name}: file type {suffix or '(none)'!r} is not allowed; upload one of {allowed}")
    if not path.is_file():
        return UploadCheck(path, name, None, f"{name}: the upload did not arrive (no file at {path}); try again")
    size = path.stat().st_size
    if size > max_bytes:
        return UploadCheck(path, name, None,
                           f"{name}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.1f} MiB upload limit "
                           "(mmai serve --max-upload-mb); ingest large files with `mmai memory ingest`")
    try:
        memory_file = read_memory_file(path, max_bytes=max_bytes)
    except IngestError as error:
        return UploadCheck(path, name, None, str(error).replace(str(path), name))
    return UploadCheck(path, name, memory_file.modality, None, memory_file.id)


def upload_meta(names: Sequence[str], place: str | None, when: str | None) -> dict[str, dict[str, Any]] | None:
    """The ``--meta`` records that give every upload the form's place and time (``None`` if neither).

    Raises:
        ValueError: ``when`` is not a readable time (the message says which formats work).
    """
    record: dict[str, Any] = {}
    if place and place.strip():
        record["place"] = place.strip()
    if when and when.strip():
        parse_time(when.strip(), "upload form: time")  # IngestError (a ValueError) names the formats
        record["time"] = when.strip()
    return {name: dict(record) for name in names} if record else None


# ---------------------------------------------------------------------- search filters
def parse_filters(year: Any, place: Any, modality: Any, after: Any, before: Any) -> Filters:
    """Turn the form's strings into the library's :class:`~mmai.memory.filters.Filters` (one value
    per field; times as unix seconds).

    Raises:
        ValueError: a year that is not a whole number, an unknown modality, an unreadable date,
            or ``after`` not earlier than ``before`` (the message names the field).
    """
    filters = Filters()
    if year not in (None, "") and not (isinstance(year, float) and math.isnan(year)):
        try:
            filters.year = int(str(year).strip().split(".")[0]) if str(year).strip() else None
        except ValueError:
            raise ValueError(f"Year: {year!r} is not a year; type e.g. 2023 or leave it empty") from None
    if place and str(place).strip() and str(place).strip() != "any":
        filters.place = str(place).strip()
    if modality and modality != "any":
        if modality not in MODALITY_CHOICES:
            raise ValueError(f"Modality: {modality!r} is not one of {', '.join(MODALITY_CHOICES)}")
        filters.modality = str(modality)
    for field in ("after", "before"):
        value = {"after": after, "before": before}[field]
        if value and str(value).strip():
            setattr(filters, field, parse_time(str(value).strip(), f"{field.capitalize()}"))
    if filters.after is not None and filters.before is not None and filters.after >= filters.before:
        raise ValueError(f"After ({after}) must be earlier than Before ({before})")
    return filters


# ---------------------------------------------------------------------- rendering
def format_time(timestamp: Any) -> str:
    """``2023-05-14 07:32 UTC`` for unix seconds; ``"unknown time"`` when absent."""
    if timestamp is None or (isinstance(timestamp, float) and not math.isfinite(timestamp)):
        return "unknown time"
    return dt.datetime.fromtimestamp(float(timestamp), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def hit_caption(hit: Any) -> str:
    """The gallery caption of a hit: ``#1 · 0.812 · Powai Lake · 2023-05-14`` (place up to its first comma)."""
    metadata = hit.metadata or {}
    date = format_time(metadata.get("timestamp")).split(" ")[0]
    place = (metadata.get("place") or "no place").split(",")[0]
    return f"#{hit.rank + 1} · {hit.score:.3f} · {place} · {date}"


def text_card(text: str, title: str, size: int = THUMBNAIL_SIZE, background=(250, 246, 231)) -> Image.Image:
    """A square card with a title and wrapped text, for notes and recordings in the gallery."""
    card = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(card)
    margin, title_size, body_size = size // 16, size // 10, size // 13
    title_font, body_font = load_font(title_size), load_font(body_size)
    draw.text((margin, size // 7), title, fill=(120, 70, 0), font=title_font)
    y = size // 7 + title_size + margin // 2
    lines = wrap_text(draw, text, body_font, size - 2 * margin) if text else []
    for number, line in enumerate(lines):
        if y + 2 * body_size > size * 0.78 and number < len(lines) - 1:  # the caption covers the bottom
            draw.text((margin, y), line + " …", fill=(40, 40, 40), font=body_font)
            break
        draw.text((margin, y), line, fill=(40, 40, 40), font=body_font)
        y += int(body_size * 1.25)
    return card


def waveform_card(samples: np.ndarray | None, title: str, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A square card with a recording's waveform (min/max envelope per pixel column)."""
    card = text_card("", title, size, background=(232, 240, 250))
    if samples is None or len(samples) == 0:
        return card
    draw = ImageDraw.Draw(card)
    middle, half = size // 2, size // 5
    margin = size // 16
    columns = np.array_split(np.asarray(samples, dtype=np.float32), size - 2 * margin)  # one chunk per column
    peak = max(float(np.abs(samples).max()), 1e-6)
    for x, chunk in enumerate(columns, start=margin):
        if len(chunk):
            top, bottom = float(chunk.max()) / peak, float(chunk.min()) / peak
            draw.line([(x, middle - top * half), (x, middle - bottom * half)], fill=(30, 80, 160))
    return card


def read_audio_file(path: Path | None) -> tuple[int, np.ndarray] | None:
    """``(sample_rate, samples)`` of a recording for ``gr.Audio`` (``None`` when unreadable)."""
    if path is None or not Path(path).is_file():
        return None
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (RuntimeError, ValueError):
        return None
    return int(rate), samples.mean(axis=1)  # (S,)


# ---------------------------------------------------------------------- the dashboard's logic
class Dashboard:
    """The callbacks of the dashboard, kept apart from the layout so tests can call them.

    Args:
        memory: the personal memory to search and add to.
        max_upload_mb: uploads larger than this are rejected (default 20 MiB).
        k: results per search (default 12).
        options: the search settings (``rerank_k``, ``stage1_weight``, ``gar_weight``, ``damping``,
            ...; default :class:`~mmai.memory.search.SearchOptions`); the form's toggles set
            ``rerank`` and ``gar``.
    """

    def __init__(self, memory: PersonalMemory, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, k: int = 12,
                 options: SearchOptions | None = None) -> None:
        self.memory = memory
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.k = k
        self.options = options or SearchOptions()
        self.reranker_note = ""

    # ---------------------------------------------------------------- search
    def search(self, query: str, year: Any = None, place: Any = None, modality: Any = "any", after: Any = None,
               before: Any = None, rerank: bool = False, gar: bool = False, k: Any = None, parse: bool = True,
               now: Any = None, top_down: bool = False):
        """Run a search; returns ``(gallery items, hits, query, status markdown)``.

        With ``parse`` (the form's "Read time and place words" box) the query's time and place
        words become filters (:meth:`PersonalMemory.understand`; the form's fields win) and the
        status says which; "... after the heron" lists what followed the anchor. ``now`` is the
        reference time of relative words (default the clock). ``top_down`` (the form's "Top-down"
        box) runs stage 1 as the entropy-driven top-down descent (:mod:`mmai.retrieval.topdown`) and
        the status says how many memories it scored. Problems (empty query, bad filter,
        no checkpoint) come back as the status line and an empty gallery, never as an exception,
        so the page always says what happened.
        """
        query = (query or "").strip()
        if not query:
            return [], [], "", "Type what you are looking for, e.g. *a white bird with an orange beak*."
        try:
            filters = parse_filters(year, place, modality, after, before)
            if rerank and not self.has_reranker:
                return [], [], query, (f"**Re-rank is unavailable:** {self.reranker_note} — switch re-rank off "
                                       "or serve a re-ranker checkpoint.")
            parsed = self.memory.understand(query, filters, now, parse=bool(parse))
            options = dataclasses.replace(self.options, rerank=bool(rerank), gar=bool(gar),
                                          top_down=self.options.top_down or bool(top_down),
                                          following=self.options.following or parsed.following)
            hits = self.memory.search(parsed.text, int(k or self.k), parsed.applied, options)
            anchor = after_anchor(self.memory, parsed.text, parsed.applied, options, hits) if options.following \
                else None
        except (ValueError, KeyError) as error:
            return [], [], query, f"**Search failed:** {md_escape(error)}"
        gallery = [(self.thumbnail(hit), hit_caption(hit)) for hit in hits]
        return gallery, hits, query, self._search_status(query, hits, parsed.applied, options) + self._words_status(
            parsed, anchor, bool(hits))

    @staticmethod
    def _words_status(parsed: Any, anchor: Any = None, found: bool = True) -> str:
        """What the query's words were read as: the filters they set, what a form field replaced,
        the text searched for, the anchor of an "after" query (:func:`~mmai.memory.words.after_anchor`)
        and, with nothing after it, that nothing came after it."""
        lines = [f"*{md_escape(phrase.words)}* → {md_escape(phrase.meaning)}" for phrase in parsed.phrases]
        lines += [md_escape(line) for line in parsed.overridden]
        if not lines and not parsed.following:
            return ""
        text = f" Searched for *{md_escape(parsed.text)}*" if parsed.text != parsed.query.strip() else ""
        after = ""
        if parsed.following and anchor is not None:
            after = (f" Showing what came after the best match ({md_escape(anchor.id[:8])}, "
                     f"{md_escape(format_time(anchor.metadata.get('timestamp')))})."
                     + ("" if found else " Nothing came after it in its outing."))
        return ("<br>Filters from your words: " + "; ".join(lines) + "." if lines else "") + text + (
            "." if text else "") + after

    def rerank_settings(self) -> str:
        """Which ``rerank_k`` and ``stage1_weight`` re-ranking uses and where they come from."""
        return self.memory.rerank_settings(self.options).describe(SETTING_FLAGS)

    def _search_status(self, query: str, hits: list, filters: Filters, options: SearchOptions) -> str:
        active = ", ".join(f"{key}={md_escape(value if key not in ('after', 'before') else format_time(value))}"
                           for key, value in filters.active().items())
        query = md_escape(query)
        stages = " + ".join(["stage 1 (top-down)" if options.top_down else "stage 1"]
                            + (["re-rank"] if options.rerank else []) + (["GAR"] if options.gar else []))
        descent = self.memory.searcher.last_top_down if options.top_down else None
        if descent is not None:
            settings = f" {descent.describe(len(self.memory.index))}." + (  # numbers and our words only
                f" Re-rank: {md_escape(self.rerank_settings())}." if options.rerank else "")
        if not hits:
            return f"No memory matches *{query}*" + (f" with {active}." if active else ".")
        if descent is None:
            settings = f" Re-rank: {md_escape(self.rerank_settings())}." if options.rerank else ""
        return (f"{len(hits)} memories for *{query}* ({stages}" + (f"; filters: {active}" if active else "")
                + f"). Select one to see why it matched.{settings}")

    def thumbnail(self, hit: Any) -> Image.Image:
        """The gallery picture of a hit: the photo, a note card, or a waveform card."""
        modality = (hit.metadata or {}).get("modality")
        path = (hit.metadata or {}).get("media_path")
        if modality == "image" and path is not None and Path(path).is_file():
            with Image.open(path) as image:
                picture = image.convert("RGB")
            picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            return picture
        if modality == "audio":
            audio = read_audio_file(path)
            name = Path((hit.metadata or {}).get("source_path", "recording")).name
            return waveform_card(None if audio is None else audio[1], f"♪ {name}")
        return text_card(hit.document or "(no text)", "Note" if modality == "text" else str(modality or "memory"))

    # ---------------------------------------------------------------- inspect
    @functools.cached_property
    def reranker(self):
        """The memory's stage-2 model, or ``None`` for a bi-encoder checkpoint (see :attr:`reranker_note`)."""
        try:
            return self.memory.stage2
        except (ValueError, FileNotFoundError) as error:
            self.reranker_note = str(error)
            return None

    @property
    def has_reranker(self) -> bool:
        return self.reranker is not None

    def select(self, index: int | None, hits: list, query: str):
        """Show one result; returns ``(overlay, overlay note, details, related, audio, note text)``.
        Selecting a result is opening it: its access is recorded (:meth:`PersonalMemory.open`'s log)."""
        if index is None or not hits or not 0 <= int(index) < len(hits):
            return None, "", "Select a result to see why it matched.", "", None, ""
        hit = hits[int(index)]
        self.memory.access_log.record([hit.id], via="dashboard")  # selecting a result opens it (access count)
        modality = hit.metadata.get("modality")
        overlay, note = self.overlay(hit, query)
        audio = read_audio_file(hit.metadata.get("media_path")) if modality == "audio" else None
        text = (hit.document or "") if modality == "text" else ""
        from mmai.memory.forgetting import describe_usage

        opened = self.memory.access_log.read().get(hit.id)
        details = self.details(hit) + f"\n\n**Opened:** {md_escape(describe_usage(opened))}"
        return overlay, note, details, self.related(hit), audio, text

    def overlay(self, hit: Any, query: str) -> tuple[Image.Image | None, str]:
        """The saliency panel of ``query`` on the hit's image, or why there is none."""
        modality = hit.metadata.get("modality")
        if modality != "image":
            return None, f"No saliency overlay: this is a {modality} memory (the overlay explains images)."
        if getattr(hit, "panel_path", None) and Path(hit.panel_path).is_file():
            panel = Image.open(hit.panel_path).convert("RGB")
            return panel, "Saliency of the query on this photo (re-ranker attention)."
        if self.reranker is None:
            return None, ("No saliency overlay: the checkpoint is a bi-encoder without a re-ranker; "
                          "serve a re-ranker checkpoint to see where the query matched.")
        path = hit.metadata.get("media_path")
        if path is None or not Path(path).is_file():
            return None, f"No saliency overlay: the photo of memory {hit.id} is missing from the store."
        with Image.open(path) as image:
            photo = image.convert("RGB")
        panel = self.reranker.explain(query, photo, rank=hit.rank + 1, score=hit.score)
        return panel, "Saliency of the query on this photo: original | heatmap | overlay (re-ranker attention)."

    @staticmethod
    def details(hit: Any) -> str:
        """Markdown facts of a hit: scores, time, place, source."""
        metadata = hit.metadata or {}
        scores = [f"score **{hit.score:.3f}**", f"stage 1 {hit.stage1_score:.3f}"]
        if getattr(hit, "match_logit", None) is not None:
            scores.append(f"match logit {hit.match_logit:.2f}")
        sources = [source.get("path") if isinstance(source, dict) else source
                   for source in metadata.get("sources") or [metadata.get("source_path")]]
        lines = [
            f"### #{hit.rank + 1} · {metadata.get('modality', 'memory')}",
            " · ".join(scores),
            f"**When:** {format_time(metadata.get('timestamp'))}"
            + (f" (from {md_escape(metadata['time_source'])})" if metadata.get("time_source") else ""),
            f"**Where:** {md_escape(metadata.get('place') or 'unknown place')}"
            + (f" ({metadata['latitude']:.4f}, {metadata['longitude']:.4f})"
               if metadata.get("latitude") is not None and metadata.get("longitude") is not None else ""),
            f"**Source:** {', '.join(md_escape(Path(str(s)).name) for s in sources if s)}",
            f"**Id:** `{md_escape(hit.id)}`",
        ]
        if getattr(hit, "explanation", None):
            lines.insert(2, f"**Why (GAR):** {md_escape(hit.explanation)}")
        return "\n\n".join(lines)

    def related(self, hit: Any, k: int = 6) -> str:
        """Markdown table of the hit's associated memories (from GAR, else the graph neighbours)."""
        related = list(getattr(hit, "related", None) or [])
        if not related:
            try:
                related = self.memory.related(hit.id, k=k)
            except (KeyError, ValueError) as error:
                return f"No associated memories: {md_escape(error)}"
        if not related:
            return "No associated memories (no memory shares this outing or looks alike)."
        rows = ["| memory | why | weight | when | where |", "|---|---|---|---|---|"]
        for item in related[:k]:
            metadata = item.metadata or {}
            label = md_escape(Path(str(metadata.get("source_path", item.id))).name)
            rows.append(f"| {label} ({md_escape(metadata.get('modality', '?'))}) | {md_escape(item.reason)} | "
                        f"{item.weight:.2f} | {format_time(metadata.get('timestamp'))[:16]} | "
                        f"{md_escape(metadata.get('place') or '—')} |")
        return "**Associated memories** (episodic graph)\n\n" + "\n".join(rows)

    # ---------------------------------------------------------------- forget by use
    def forget_preview(self, policy: str, budget: str) -> tuple[str, list[str]]:
        """What a budgeted forget would remove (markdown) and those ids (kept for the confirmation)."""
        if policy not in FORGETTING:
            return f"Choose a policy: {', '.join(FORGETTING)}.", []
        try:
            total = self.memory.store.count()
            keep_count = parse_budget(budget, total)
            kept, forgotten, score = self.memory.forget_plan(policy, keep_count)
        except ValueError as error:
            return f"**Nothing to preview:** {md_escape(error)}", []
        if not forgotten:
            return f"By **{policy}** every one of the {total} memories stays (budget {keep_count}).", []
        stats = self.memory.access_log.read()
        metadata = self.memory.records.metadata_of(forgotten)
        rows = ["| memory | score | use | made | place |", "|---|---|---|---|---|"]
        for memory_id in sorted(forgotten, key=lambda i: score[i])[:20]:
            facts = metadata.get(memory_id, {})
            label = md_escape(Path(str(facts.get("source_path", memory_id))).name)
            rows.append(f"| {label} `{memory_id[:8]}` | {score[memory_id]:.3g} | "
                        f"{md_escape(describe_usage(stats.get(memory_id)))} | "
                        f"{format_time(facts.get('timestamp'))[:16]} | {md_escape(facts.get('place') or '—')} |")
        more = f"\n\n… and {len(forgotten) - 20} more." if len(forgotten) > 20 else ""
        return (f"By **{policy}**, keeping {len(kept)} of {total}, these **{len(forgotten)}** would be forgotten "
                f"(tick the box and press Forget to do it):\n\n" + "\n".join(rows) + more), forgotten

    def forget_by_use(self, policy: str, budget: str, confirmed: bool, previewed: list[str] | None) -> str:
        """Forget exactly what :meth:`forget_preview` showed, once the user confirmed it."""
        if not previewed:
            return "Preview first: nothing is forgotten that was not shown."
        if not confirmed:
            return "Tick **Yes, forget the memories shown** to forget them; nothing was forgotten."
        try:
            keep_count = parse_budget(budget, self.memory.store.count())
            forgotten = self.memory.forget_budget(policy, keep_count, expected=previewed)
        except ValueError as error:
            return f"**Nothing was forgotten:** {md_escape(error)}"
        return f"Forgot {len(forgotten)} memories by **{policy}**; {self.memory.store.count()} remain."

    # ---------------------------------------------------------------- add
    def upload(self, files: Sequence[Any] | None, place: str | None = None, when: str | None = None,
               merge_bursts: bool = False) -> str:
        """Check the uploaded files, ingest those that pass, and report every file's fate (markdown);
        ``merge_bursts``: the write-time policy (:mod:`mmai.memory.write_policy`, ``ingest --policy
        merge``) folds near-identical frames of a burst into its kept memory."""
        paths = [Path(getattr(item, "name", item)) for item in (files or [])]
        if not paths:
            return "Choose one or more photos (.jpg .png …), notes (.txt .md) or recordings (.wav .flac) first."
        checks = [check_upload(path, self.max_upload_bytes) for path in paths]
        lines = [f"- **rejected** {md_escape(check.reason)}" for check in checks if not check.ok]
        accepted = [check for check in checks if check.ok]
        if accepted:
            try:
                meta = upload_meta([check.name for check in accepted], place, when)
            except ValueError as error:
                return f"**Nothing was added:** {md_escape(error)}"
            lines = self._ingest(accepted, meta, merge_bursts) + lines
        return "\n".join(lines)

    def _ingest(self, accepted: list[UploadCheck], meta: dict | None, merge_bursts: bool = False) -> list[str]:
        """Ingest the accepted uploads with the form's place/time; their ``source_path`` is the
        name they were uploaded under (the file read is Gradio's temporary copy)."""
        overrides = {}
        for check in accepted:
            record = dict((meta or {}).get(check.name, {}), source_path=f"{UPLOAD_SOURCE}{check.name}")
            if "time" in record:
                record["source"] = "upload form"
            overrides[str(check.path.absolute())] = record
        report = self.memory.ingest([check.path for check in accepted], progress=False, overrides=overrides,
                                    policy=POLICIES["merge"] if merge_bursts else None)
        added = set(report.added)
        lines = [f"- **added** {md_escape(check.name)} ({check.modality}) as `{check.memory_id}`" for check in accepted
                 if check.memory_id in added]
        lines += [f"- **duplicate** {md_escape(Path(path).name)} is already stored as `{memory_id}`"
                  for path, memory_id in report.duplicates]
        lines += [f"- **merged** {md_escape(Path(path).name)} into `{target}` (same burst; undo: consolidate --undo)"
                  for path, target in report.merged]
        lines += [f"- **discarded** {md_escape(Path(path).name)}: a copy of `{target}` (listed in its sources)"
                  for path, target in report.discarded]
        lines += [f"- **rejected** {md_escape(reason.replace(str(path), Path(path).name))}"
                  for path, reason in report.rejected]
        return lines


# ---------------------------------------------------------------------- layout
def _filters_row(places: Sequence[str]):
    with gr.Row():
        year = gr.Textbox(label="Year", placeholder="e.g. 2023", scale=1, min_width=90, elem_id="mmai-year")
        place = gr.Dropdown(["any", *places], value="any", label="Place (or part of a name)", allow_custom_value=True,
                            filterable=True, scale=2, min_width=160, elem_id="mmai-place")
        modality = gr.Dropdown(list(MODALITY_CHOICES), value="any", label="Modality", scale=1, min_width=110,
                               elem_id="mmai-modality")
        after = gr.Textbox(label="After", placeholder="2023-05-01", scale=1, min_width=110, elem_id="mmai-after")
        before = gr.Textbox(label="Before", placeholder="2023-06-01", scale=1, min_width=110, elem_id="mmai-before")
    return year, place, modality, after, before


def build_app(memory: PersonalMemory, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, k: int = 12,
              options: SearchOptions | None = None) -> gr.Blocks:
    """The dashboard of ``memory`` as a Gradio app (launch it with :func:`launch`).

    Args:
        memory: the personal memory to show.
        max_upload_mb: upload size limit in MiB (default 20).
        k: results per search (default 12).
        options: search settings (see :class:`Dashboard`).
    """
    board = Dashboard(memory, max_upload_mb=max_upload_mb, k=k, options=options)
    with gr.Blocks(title="MMAI — personal memory", analytics_enabled=False, delete_cache=CACHE_EXPIRY) as app:
        gr.Markdown("## MMAI personal memory\nSearch your photos, notes and recordings in words.")
        with gr.Row():
            query = gr.Textbox(label="Search", placeholder="a white bird with an orange beak at the lake",
                               elem_id="mmai-query", scale=5)
            search = gr.Button("Search", variant="primary", elem_id="mmai-search", scale=1, min_width=100)
        year, place, modality, after, before = _filters_row(memory.known_places())
        with gr.Row():
            rerank = gr.Checkbox(label="Re-rank (stage 2)", value=board.has_reranker, interactive=board.has_reranker,
                                 elem_id="mmai-rerank")
            gar = gr.Checkbox(label="GAR (associated memories)", value=False, elem_id="mmai-gar")
            count = gr.Slider(1, 50, value=k, step=1, label="Results")
            words = gr.Checkbox(label="Read time and place words", value=True, elem_id="mmai-parse")
            top_down = gr.Checkbox(label="Top-down (schemas first, fewer memories scored)", value=False,
                                   elem_id="mmai-top-down")
        status = gr.Markdown(elem_id="mmai-status")
        hits, searched = gr.State([]), gr.State("")
        with gr.Row():
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Results", columns=3, height=760, object_fit="cover",
                                     allow_preview=False, elem_id="mmai-results")
            with gr.Column(scale=1):
                overlay = gr.Image(label="Why it matched (saliency)", type="pil", interactive=False, show_label=False,
                                   elem_id="mmai-overlay", height=380)
                overlay_note = gr.Markdown(elem_id="mmai-overlay-note")
                audio = gr.Audio(label="Recording", type="numpy", interactive=False, visible=False,
                                 elem_id="mmai-audio")
                note = gr.Textbox(label="Note", lines=3, interactive=False, visible=False, elem_id="mmai-note")
                details = gr.Markdown("Select a result to see why it matched.", elem_id="mmai-details")
                related = gr.Markdown(elem_id="mmai-related")
        with gr.Accordion("Add memories", open=False):
            files = gr.File(label="Photos, notes, recordings", file_count="multiple",
                            file_types=sorted(SUFFIXES), elem_id="mmai-upload")
            with gr.Row():
                upload_place = gr.Textbox(label="Place (optional)", placeholder="e.g. Lakeside",
                                          elem_id="mmai-upload-place")
                upload_time = gr.Textbox(label="Time (optional)", placeholder="2023-05-14T07:30:00Z",
                                         elem_id="mmai-upload-time")
                merge_bursts = gr.Checkbox(label="Merge near-identical burst frames", value=False,
                                           elem_id="mmai-merge-bursts")
            add = gr.Button("Add to memory", elem_id="mmai-add")
            upload_report = gr.Markdown(elem_id="mmai-upload-report")
        with gr.Accordion("Forget by use", open=False):
            with gr.Row():
                forget_policy = gr.Dropdown(list(FORGETTING), value="retention", label="Keep by",
                                            elem_id="mmai-forget-policy")
                forget_budget = gr.Textbox(label="Keep (memories, or a share)", placeholder="e.g. 500 or 80%",
                                           elem_id="mmai-forget-budget")
                preview = gr.Button("Preview", elem_id="mmai-forget-preview")
            forget_list = gr.Markdown(elem_id="mmai-forget-list")
            previewed = gr.State([])
            with gr.Row():
                forget_yes = gr.Checkbox(label="Yes, forget the memories shown", value=False,
                                         elem_id="mmai-forget-yes")
                forget_now = gr.Button("Forget", variant="stop", elem_id="mmai-forget")
            forget_report = gr.Markdown(elem_id="mmai-forget-report")

        inputs = [query, year, place, modality, after, before, rerank, gar, count, words, top_down]
        outputs = [gallery, hits, searched, status]

        def on_search(text, year, place, modality, after, before, rerank, gar, count, words, top_down):
            return board.search(text, year, place, modality, after, before, rerank, gar, count, words,
                                top_down=top_down)

        search.click(on_search, inputs, outputs, api_name="search")  # the API name the dashboard always had
        query.submit(on_search, inputs, outputs)

        def on_select(chosen: gr.SelectData, current_hits: list, current_query: str):
            picture, why, facts, associated, recording, text = board.select(chosen.index, current_hits, current_query)
            return (picture, why, facts, associated, gr.update(value=recording, visible=recording is not None),
                    gr.update(value=text, visible=bool(text)))

        gallery.select(on_select, [hits, searched], [overlay, overlay_note, details, related, audio, note])
        add.click(board.upload, [files, upload_place, upload_time, merge_bursts], upload_report)
        preview.click(board.forget_preview, [forget_policy, forget_budget], [forget_list, previewed])
        forget_now.click(board.forget_by_use, [forget_policy, forget_budget, forget_yes, previewed], forget_report)
    return app


# ---------------------------------------------------------------------- serving
@contextmanager
def private_temp_dir(root: str | os.PathLike):
    """Gradio's temporary files in ``root/.serve-cache/pid<PID>-…`` (0700, files 0600), removed on exit.

    Sets ``GRADIO_TEMP_DIR`` and a 077 umask for the duration (build the app inside: Gradio
    reads the folder when components are made); folders left by servers that are no longer
    running are removed first.
    """
    parent = Path(root) / ".serve-cache"
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.chmod(0o700)
    for stale in parent.glob("pid*-*"):
        pid = stale.name[3:].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"pid{os.getpid()}-", dir=parent))  # mode 0700
    previous = os.environ.get("GRADIO_TEMP_DIR")
    umask = os.umask(0o077)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield folder
    finally:
        os.umask(umask)
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second TERM must not break the clean-up
    raise KeyboardInterrupt  # Gradio's blocking loop stops on it, and the finally clauses clean up



def is_loopback(host: str) -> bool:
    """True when ``host`` only listens on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(app: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, block: bool = True,
           max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, quiet: bool = False):
    """Serve ``app`` locally: no share link, no analytics, no server-side rendering (no Node).

    Args:
        app: from :func:`build_app`.
        host: interface to bind (default ``127.0.0.1``: this machine only).
        port: TCP port (default 7860).
        block: wait until the server stops (``False``: return at once, for tests).
        max_upload_mb: Gradio refuses larger uploads before they reach the dashboard.
        quiet: do not print the URL.
    """
    if not is_loopback(host):
        print(f"mmai serve: WARNING: binding to {host} exposes your memories to other machines", file=sys.stderr)
    return app.launch(server_name=host, server_port=int(port), share=False, prevent_thread_lock=not block,
                      show_error=True, quiet=quiet, ssr_mode=False, pwa=False, mcp_server=False,
                      max_file_size=int(max_upload_mb * 2**20), footer_links=[], css=CSS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmai serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the memory folder (as for `mmai memory`)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="bi-encoder or re-ranker checkpoint (default: the one remembered in ROOT/config.json)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default 7860)")
    parser.add_argument("--chroma-host", default=None, help="use a Chroma server instead of ROOT's embedded store")
    parser.add_argument("--chroma-port", type=int, default=8000, help="the Chroma server's port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"reject larger uploads (default {DEFAULT_MAX_UPLOAD_MB:g} MiB)")
    parser.add_argument("--results", type=int, default=12, help="results per search (default 12)")
    parser.add_argument("--rerank-k", type=int, default=None,
                        help="candidates the re-ranker re-scores (default: the value it was validated with)")
    parser.add_argument("--stage1-weight", type=float, default=None, metavar="LAMBDA",
                        help="re-rank score = match logit + LAMBDA x stage-1 cosine (default: the validated value)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmai serve``."""
    args = build_parser().parse_args(argv)
    try:
        options = SearchOptions(rerank_k=args.rerank_k, stage1_weight=args.stage1_weight)
        memory = PersonalMemory(args.root, args.checkpoint, chroma_host=args.chroma_host,
                                chroma_port=args.chroma_port, create=False)
    except (ValueError, FileNotFoundError) as error:
        print(f"mmai serve: error: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with private_temp_dir(memory.root):
            app = build_app(memory, max_upload_mb=args.max_upload_mb, k=args.results, options=options)
            try:
                print(f"mmai serve: re-rank uses {memory.rerank_settings(options).describe(SETTING_FLAGS)}",
                      file=sys.stderr)
            except (ValueError, FileNotFoundError):
                pass  # a bi-encoder checkpoint: the page says why re-rank is off
            try:
                # Gradio's own loop prints a share-link hint and "Keyboard interruption ..." on a stop:
                # launched quietly without it, the one line below says where the dashboard is
                launch(app, args.host, args.port, max_upload_mb=args.max_upload_mb, block=False, quiet=True)
                print(f"mmai serve: the dashboard of {memory.root} is at {app.local_url} (Ctrl-C or SIGTERM stops it)",
                      file=sys.stderr, flush=True)
                while True:
                    time.sleep(3600)
            finally:
                app.close()
    except KeyboardInterrupt:
        pass  # SIGTERM or Ctrl-C outside Gradio's loop (while starting or closing): a requested stop
    finally:
        memory.close()
    return 0
