"""Time and place in words: "a red bird at Powai Lake in spring 2023" -> text + filters.

:func:`parse_words` finds the words of a query that say *when* or *where* and turns them into the
same :class:`~mmai.memory.filters.Filters` the flags set (``year``, ``after``/``before``,
``place``); the words are removed from the text that is embedded. :func:`merge` combines them
with the flags, the flags winning: any time flag (``--year/--after/--before``) replaces every
parsed time, ``--place`` replaces a parsed place.

**When** (all UTC, as the store's ``year`` and ``timestamp``; ``now`` is the reference time of
relative words, injectable for tests, default the clock):

* a year: ``2023``, ``in 2023`` -> ``year``; ``between 2021 and 2022`` / ``from 2021 to 2022`` ->
  both years; ``last year`` / ``this year``.
* a day: ``2023-03-05``, ``5 March 2023``, ``March 5, 2023``, ``yesterday``, ``today``.
* a month: ``March 2023``; ``in March`` (the latest March that has begun), ``last December``
  (the latest December that has ended), ``this March`` (of this year); ``last month``, ``this month``.
* a season (northern, meteorological): ``spring 2023`` = March-May, summer June-August,
  autumn/fall September-November, ``winter 2023`` = December 2023-February 2024; ``in spring``,
  ``last spring``, ``this spring`` as for months.
* ``last week`` / ``this week`` (weeks start on Monday), ``in the last 10 days`` / ``past 2 weeks``.
* a bound: ``before``/``until``/``after``/``since`` + any of the above (``until`` includes it,
  ``after`` excludes it), e.g. ``since May 2022``, ``before 2023``.

**Where**: a phrase after ``at``/``in``/``near``/``by``/``around``/``from``/``on`` that names a
*stored* place: its full name, a part of it (``Powai Lake``, ``Mumbai``: every place in Mumbai),
``the lake`` / ``the park`` (every place whose name has that word), with typos forgiven (difflib
ratio >= 0.8 for phrases of 5+ letters); a stored place's own name also counts without a
preposition. A phrase that names no stored place stays in the text ("a bird in flight").

**After** (issue 22's temporal order): ``what did I see after the heron at the lake`` - an
``after`` not followed by a time - splits the query: the words after it describe the *anchor*
memory (their time and place words become its filters), and :attr:`ParsedQuery.following` asks
the search for the memories that followed it in its outing.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import difflib
import re
from typing import Any, Sequence

from mmai.memory.filters import Filters

__all__ = ["ParsedQuery", "Phrase", "after_anchor", "describe_filters", "merge", "parse_words", "understand"]

MONTHS = {name.lower(): number for number, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): number for number, name in enumerate(calendar.month_abbr) if name})
MONTHS["sept"] = 9
#: season -> (first month, months long); winter YEAR begins in December of YEAR.
SEASONS = {"spring": (3, 3), "summer": (6, 3), "autumn": (9, 3), "fall": (9, 3), "winter": (12, 3)}
PLACE_WORDS = ("at", "in", "near", "by", "around", "from", "on")
FUZZY_RATIO = 0.8  #: difflib ratio a misspelt place name needs
FUZZY_LETTERS = 5  #: shorter phrases must match exactly

_MONTH = r"(?:" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_SEASON = r"(?:spring|summer|autumn|fall|winter)"
_YEAR = r"(?:19[7-9]\d|20\d\d)"
_DATE = (
    rf"(?P<iso>\d{{4}}-\d{{1,2}}-\d{{1,2}})"
    rf"|(?P<dmy>(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m1>{_MONTH})\s*,?\s*(?P<y1>{_YEAR}))"
    rf"|(?P<mdy>(?P<m2>{_MONTH})\s+(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s*,?\s*(?P<y2>{_YEAR}))"
    rf"|(?P<years>(?:between|from)\s+(?P<ya>{_YEAR})\s+(?:and|to|until|through)\s+(?P<yb>{_YEAR}))"
    rf"|(?P<my>(?P<m3>{_MONTH})\s*,?\s*(?:of\s+)?(?P<y3>{_YEAR}))"
    rf"|(?P<sy>(?:the\s+)?(?P<s1>{_SEASON})\s*,?\s*(?:of\s+)?(?P<y4>{_YEAR}))"
    rf"|(?P<nrel>(?:the\s+)?(?:last|past)\s+(?P<n>\d{{1,4}})\s+(?P<nunit>days?|weeks?))"
    rf"|(?P<rel>(?:the\s+)?(?P<which>last|this|past)\s+(?:(?P<m4>{_MONTH})|(?P<s2>{_SEASON})"
    rf"|(?P<unit>week|month|year)))"
    rf"|(?P<dayword>yesterday|today)"
    rf"|(?P<year>{_YEAR})"
    rf"|(?P<bare>(?:the\s+)?(?:(?P<m5>{_MONTH})|(?P<s3>{_SEASON})))"
)
_PREP = (rf"(?P<prep>in|during|on|from(?!\s+{_YEAR}\s+(?:and|to|until|through)\s)|of|around|since|before|after"
         r"|until|till|through)")
_TIME = re.compile(rf"\b(?:{_PREP}\s+)?(?:{_DATE})(?![\w-])", re.IGNORECASE)
_BAD_ISO = re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b")
_WORD = re.compile(r"[\w'’-]+")


@dataclasses.dataclass(frozen=True)
class Phrase:
    """Words of a query read as a filter: ``words`` (as typed), ``field`` (``"time"`` or
    ``"place"``) and ``meaning`` (e.g. ``"2023-03-01 <= time < 2023-06-01"``)."""

    words: str
    field: str
    meaning: str


@dataclasses.dataclass
class ParsedQuery:
    """A query split into what is embedded and the filters its words name.

    Attributes:
        query: the query as typed.
        text: what is embedded: the query without its time and place words (the anchor's words
            when ``following``); the whole query when nothing else would be left.
        filters: the filters of the words (``year``, ``after``, ``before``, ``place``), before the
            flags are merged in (:func:`merge`).
        phrases: the words read as filters, in order.
        following: the query asked what came *after* a memory ("... after the heron"): ``text``
            and ``filters`` describe that anchor memory.
        applied: the filters a search uses: ``filters`` merged with the flags' (:func:`understand`;
            the flags win), else ``filters``.
        overridden: one line per parsed filter a flag replaced.
    """

    query: str
    text: str
    filters: Filters = dataclasses.field(default_factory=Filters)
    phrases: list[Phrase] = dataclasses.field(default_factory=list)
    following: bool = False
    applied: Filters | None = None
    overridden: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.applied is None:
            self.applied = self.filters

    def summary(self) -> dict[str, Any]:
        """What was understood, for ``--json`` and the dashboard: ``embedded`` text, ``filters``
        applied, the ``from_words`` phrases, ``overridden`` lines and ``following``."""
        return {"query": self.query, "embedded": self.text, "filters": self.applied.active(),
                "from_words": [{"words": p.words, "field": p.field, "meaning": p.meaning} for p in self.phrases],
                "overridden": list(self.overridden), "following": self.following}

    def lines(self) -> list[str]:
        """Human lines: the filters applied and where each came from, what is embedded."""
        out = [f"filters: {describe_filters(self.applied)}"]
        out += [f"  from words {p.words!r}: {p.meaning}" for p in self.phrases]
        out += [f"  {line}" for line in self.overridden]
        if self.text != self.query.strip():
            out.append(f"searching for: {self.text!r}" + (" (the anchor; showing what came after it)"
                                                          if self.following else ""))
        return out


# ---------------------------------------------------------------------- time
def _utc(now: Any) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(now, dt.datetime):
        return now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)
    if isinstance(now, dt.date):
        return dt.datetime.combine(now, dt.time(), dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(now), dt.timezone.utc)


def _month_start(year: int, month: int) -> dt.date:
    year += (month - 1) // 12
    return dt.date(year, (month - 1) % 12 + 1, 1)


def _months(year: int, month: int, count: int) -> tuple[dt.date, dt.date]:
    return _month_start(year, month), _month_start(year, month + count)


def _latest(first_month: int, count: int, today: dt.date, ended: bool) -> tuple[dt.date, dt.date]:
    """The latest run of ``count`` months starting at ``first_month`` that has begun (or ended) by ``today``."""
    for year in range(today.year + 1, today.year - 3, -1):
        start, end = _months(year, first_month, count)
        if (end <= today) if ended else (start <= today):
            return start, end
    raise AssertionError("unreachable")


def _this(first_month: int, count: int, today: dt.date) -> tuple[dt.date, dt.date]:
    """The run of months holding ``today``, else the one that begins in this year."""
    for year in (today.year - 1, today.year):
        start, end = _months(year, first_month, count)
        if start <= today < end:
            return start, end
    return _months(today.year, first_month, count)


def _day(year: int, month: int, day: int, words: str) -> tuple[dt.date, dt.date]:
    try:
        start = dt.date(year, month, day)
    except ValueError:
        raise ValueError(f"query: {words!r} is not a date (no day {day} in {year}-{month:02d}); "
                         "write it like 2023-03-05 or 5 March 2023") from None
    return start, start + dt.timedelta(days=1)


def _span(match: re.Match, now: dt.datetime) -> tuple[Any, Any] | list[int] | None:
    """The time a match names: ``(start, end)`` (dates or datetimes, end exclusive), a list of
    years, or ``None`` when the words are not a time after all (a month or season with no
    preposition before it)."""
    group, today, words = match.group, now.date(), match.group(0)
    if group("iso"):
        year, month, day = (int(part) for part in group("iso").split("-"))
        return _day(year, month, day, group("iso"))
    if group("dmy"):
        return _day(int(group("y1")), MONTHS[group("m1").lower().rstrip(".")], int(group("d1")), words)
    if group("mdy"):
        return _day(int(group("y2")), MONTHS[group("m2").lower().rstrip(".")], int(group("d2")), words)
    if group("years"):
        low, high = sorted((int(group("ya")), int(group("yb"))))
        return list(range(low, high + 1))
    if group("my"):
        return _months(int(group("y3")), MONTHS[group("m3").lower().rstrip(".")], 1)
    if group("sy"):
        return _months(int(group("y4")), *SEASONS[group("s1").lower()])
    if group("nrel"):
        count = int(group("n")) * (7 if group("nunit").lower().startswith("week") else 1)
        return now - dt.timedelta(days=count), None
    if group("rel"):
        which = group("which").lower()
        if group("unit"):
            unit = group("unit").lower()
            if unit == "year":
                return [today.year - (which != "this")]
            if unit == "month":
                return _months(today.year, today.month - (which != "this"), 1)
            monday = today - dt.timedelta(days=today.weekday())
            start = monday - dt.timedelta(days=7 * (which != "this"))
            return start, start + dt.timedelta(days=7)
        first, count = ((MONTHS[group("m4").lower().rstrip(".")], 1) if group("m4")
                        else SEASONS[group("s2").lower()])
        return _this(first, count, today) if which == "this" else _latest(first, count, today, ended=True)
    if group("dayword"):
        start = today - dt.timedelta(days=group("dayword").lower() == "yesterday")
        return start, start + dt.timedelta(days=1)
    if group("year"):
        return [int(group("year"))]
    if group("bare"):
        if not group("prep"):  # "may", "fall" alone are words, not times
            return None
        first, count = ((MONTHS[group("m5").lower().rstrip(".")], 1) if group("m5") else SEASONS[group("s3").lower()])
        return _latest(first, count, today, ended=False)
    return None


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


def _as_datetime(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time(), dt.timezone.utc)


class _Time:
    """The time filters of a query being read: years and one range (intersected)."""

    def __init__(self) -> None:
        self.years: list[int] | None = None
        self.after: Any = None
        self.before: Any = None

    def add(self, span: Any, prep: str | None, words: str) -> str:
        prep = (prep or "").lower()
        if isinstance(span, list) and prep not in ("before", "after", "since", "until", "till", "through"):
            self.years = span if self.years is None else sorted(set(self.years) & set(span))
            inside = lambda year: ((self.after is None or _as_datetime(self.after) < _as_datetime(dt.date(year + 1, 1, 1)))
                                   and (self.before is None or _as_datetime(self.before) > _as_datetime(dt.date(year, 1, 1))))
            if not self.years or not any(inside(year) for year in self.years):
                raise ValueError(f"query: {words!r} contradicts the other years in the query")
            return "year " + (str(span[0]) if len(span) == 1 else f"{span[0]}-{span[-1]}")
        if isinstance(span, list):
            span = (dt.date(span[0], 1, 1), dt.date(span[-1] + 1, 1, 1))
        start, end = span
        if prep == "before":
            start, end = None, start
        elif prep in ("after",):
            start, end = end, None
        elif prep in ("since",):
            end = None
        elif prep in ("until", "till", "through"):
            start = None
        if start is not None and (self.after is None or _as_datetime(start) > _as_datetime(self.after)):
            self.after = start
        if end is not None and (self.before is None or _as_datetime(end) < _as_datetime(self.before)):
            self.before = end
        if self.after is not None and self.before is not None and _as_datetime(self.after) >= _as_datetime(self.before):
            raise ValueError(f"query: {words!r} leaves no time with the other time words "
                             f"(after {_iso(self.after)}, before {_iso(self.before)})")
        if self.years is not None and not any(
                (self.after is None or _as_datetime(self.after) < _as_datetime(dt.date(year + 1, 1, 1)))
                and (self.before is None or _as_datetime(self.before) > _as_datetime(dt.date(year, 1, 1)))
                for year in self.years):
            raise ValueError(f"query: {words!r} leaves no time in year(s) {', '.join(map(str, self.years))}")
        parts = ([f"{_iso(start)} <= time"] if start is not None else []) + \
                ([f"time < {_iso(end)}"] if end is not None else [])
        return " and ".join(parts)


def _starts_with_time(text: str, now: dt.datetime) -> bool:
    match = _TIME.match(text)
    return bool(match) and _span(match, now) is not None


# ---------------------------------------------------------------------- place
def _aliases(known_places: Sequence[str]) -> dict[str, set[str]]:
    """casefolded alias -> stored place names: each name, its comma parts, and ``the <words>``
    for the words of its first part (``the lake``)."""
    aliases: dict[str, set[str]] = {}
    for name in known_places:
        parts = [part.strip() for part in name.split(",") if part.strip()]
        for alias in {name, *parts}:
            aliases.setdefault(" ".join(_WORD.findall(alias.casefold())), set()).add(name)
        words = _WORD.findall(parts[0].casefold()) if parts else []
        for first in range(len(words)):
            for last in range(first + 1, len(words) + 1):
                aliases.setdefault("the " + " ".join(words[first:last]), set()).add(name)
    aliases.pop("", None)
    return aliases


def _match_place(words: list[str], aliases: dict[str, set[str]]) -> tuple[int, set[str]] | None:
    """The longest run of ``words`` (from the first) naming stored places: at each length, from
    the longest, an exact alias, else a close one with as many words (a typo), so the longer phrase
    wins when two stored places match ("Powai Lke" is Powai Lake, not "Powai" and a stray word)."""
    for length in range(min(len(words), 6), 0, -1):
        phrase = " ".join(words[:length]).casefold()
        core = phrase[4:] if phrase.startswith("the ") else phrase
        for candidate in (phrase, core):
            if candidate in aliases:
                return length, aliases[candidate]
        if len(core.replace(" ", "")) >= FUZZY_LETTERS:
            # cores against cores: a shared "the " must not make "the water" look like "the gate";
            # as many words: "powai lake with" is no typo of "powai lake"
            cores = {(alias[4:] if alias.startswith("the ") else alias): alias for alias in aliases
                     if alias.startswith("the ") == (core != phrase) or not alias.startswith("the ")}
            cores = {key: alias for key, alias in cores.items() if key.count(" ") == core.count(" ")}
            close = difflib.get_close_matches(core, list(cores), n=1, cutoff=FUZZY_RATIO)
            if close:
                return length, aliases[cores[close[0]]]
    return None


def _places(text: str, known_places: Sequence[str]) -> tuple[str, set[str], list[Phrase]]:
    """Place phrases of ``text``: the text without them, the stored names, the phrases."""
    aliases = _aliases(known_places)
    if not aliases:
        return text, set(), []
    tokens = list(_WORD.finditer(text))
    found: set[str] = set()
    phrases: list[Phrase] = []
    cut: list[tuple[int, int]] = []
    index = 0
    while index < len(tokens):
        word = tokens[index].group(0).casefold()
        match = None
        if word in PLACE_WORDS:
            match = _match_place([t.group(0) for t in tokens[index + 1:]], aliases)
            start = index
            if match is not None:
                match = (match[0] + 1, match[1])
        if match is None:  # a stored name without a preposition: exact and distinctive only
            bare = _match_place([t.group(0) for t in tokens[index:]], {
                alias: names for alias, names in aliases.items()
                if not alias.startswith("the ") and (" " in alias or len(alias) >= 6)})
            if bare is not None:
                phrase = " ".join(t.group(0) for t in tokens[index:index + bare[0]]).casefold()
                if phrase in aliases:
                    match, start = bare, index
        if match is None:
            index += 1
            continue
        length, names = match
        span = (tokens[start].start(), tokens[start + length - 1].end())
        cut.append(span)
        found |= names
        phrases.append(Phrase(text[span[0]:span[1]], "place", "place " + " or ".join(sorted(names))))
        index = start + length
    for begin, end in reversed(cut):
        text = text[:begin] + " " + text[end:]
    return text, found, phrases


# ---------------------------------------------------------------------- the query
def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    dangling = r"(?:at|in|on|near|by|around|from|during|of|and|,|;|:)"
    previous = None
    while previous != text:
        previous = text
        text = re.sub(rf"(?:\s|^){dangling}\s*([.!?]?)\s*$", r"\1", text, flags=re.IGNORECASE).strip()
        text = re.sub(r"^[,;:]\s*", "", text).strip()
    return text


def _read(text: str, known_places: Sequence[str], now: dt.datetime, time: _Time) -> tuple[str, set[str], list[Phrase]]:
    """Time then place phrases of ``text`` (time first: "in May 2023" is not a place)."""
    phrases: list[tuple[int, Phrase]] = []
    kept, position = [], 0
    while True:
        match = _TIME.search(text, position)
        if match is None:
            break
        span = _span(match, now)
        if span is None:
            kept.append(text[position:match.start() + 1])
            position = match.start() + 1
            continue
        meaning = time.add(span, match.group("prep"), match.group(0))
        phrases.append((match.start(), Phrase(match.group(0), "time", meaning)))
        kept.append(text[position:match.start()] + " ")
        position = match.end()
    rest = "".join(kept) + text[position:]
    for bad in _BAD_ISO.finditer(rest):  # a date-like word the time patterns refused
        raise ValueError(f"query: {bad.group(0)!r} is not a date; write it like 2023-03-05")
    rest, places, place_phrases = _places(rest, known_places)
    return rest, places, [phrase for _, phrase in sorted(phrases, key=lambda p: p[0])] + place_phrases


def parse_words(query: str, known_places: Sequence[str] = (), now: Any = None) -> ParsedQuery:
    """Read the time and place words of ``query`` (see the module docstring).

    Args:
        query: the sentence as typed.
        known_places: the store's place names (:meth:`PersonalMemory.known_places`): only these
            can be named.
        now: reference time of relative words ("yesterday", "last December"): unix seconds, a
            ``datetime`` (naive: UTC) or a ``date``; default the clock.

    Returns:
        A :class:`ParsedQuery`.

    Raises:
        ValueError: a date that does not exist ("2023-02-30") or time words that contradict each
            other ("in 2021 after 2022"); the message is one line naming the words.
    """
    if not isinstance(query, str):
        raise ValueError(f"search: query must be a sentence, got {query!r}")
    reference = _utc(now)
    time = _Time()
    following = False
    head, anchor = query, None
    for match in re.finditer(r"\bafter\s+", query, re.IGNORECASE):
        if not _starts_with_time(query[match.end() - len(match.group(0)):], reference) \
                and query[match.end():].strip():
            head, anchor, following = query[:match.start()], query[match.end():], True
            break
    rest, places, phrases = _read(anchor if following else head, known_places, reference, time)
    if following:  # the words before "after" may still say when or where ("in 2023, what came after ...")
        _, head_places, head_phrases = _read(head, known_places, reference, time)
        places |= head_places
        phrases = head_phrases + phrases
    text = _clean(rest)
    if not _WORD.search(text):
        text = _clean(anchor) if following else query.strip()
    filters = Filters(
        year=None if time.years is None else (time.years[0] if len(time.years) == 1 else time.years),
        place=None if not places else (sorted(places)[0] if len(places) == 1 else sorted(places)),
        after=None if time.after is None else _iso(time.after),
        before=None if time.before is None else _iso(time.before))
    return ParsedQuery(query, text, filters, phrases, following)


def merge(parsed: ParsedQuery, flags: Filters | None) -> tuple[Filters, list[str]]:
    """The filters of ``parsed`` with the flags' winning: a time flag (year/after/before) replaces
    every parsed time, a place flag the parsed place, and the modality comes from the flags.

    Returns:
        ``(filters, overridden)``: the merged filters and one line per parsed filter a flag replaced.
    """
    flags = flags or Filters()
    words = parsed.filters
    overridden = []
    time_flags = any(getattr(flags, name) is not None for name in ("year", "after", "before"))
    time_words = any(getattr(words, name) is not None for name in ("year", "after", "before"))
    if time_flags and time_words:
        overridden.append("time words " + ", ".join(repr(p.words) for p in parsed.phrases if p.field == "time")
                          + " ignored: the time flags win")
    if flags.place is not None and words.place is not None:
        overridden.append("place words " + ", ".join(repr(p.words) for p in parsed.phrases if p.field == "place")
                          + " ignored: the place flag wins")
    source = flags if time_flags else words
    merged = Filters(year=source.year, after=source.after, before=source.before,
                     place=flags.place if flags.place is not None else words.place, modality=flags.modality)
    return merged, overridden


def describe_filters(filters: Filters) -> str:
    """One line such as ``year 2023, place Powai Lake, Mumbai, after 2023-03-01`` (``"none"``)."""
    parts = []
    for name, value in filters.active().items():
        if isinstance(value, (list, tuple)):
            value = " or ".join(str(item) for item in value)
        parts.append(f"{name} {value}")
    return ", ".join(parts) or "none"


def understand(query: str, known_places: Sequence[str] = (), flags: Filters | None = None, now: Any = None,
               *, parse: bool = True) -> ParsedQuery:
    """:func:`parse_words` then :func:`merge` with the flags (``parse=False``: the query as typed,
    the flags alone)."""
    if not parse:
        return ParsedQuery(query, query, Filters(), [], False, flags or Filters())
    parsed = parse_words(query, known_places, now)
    parsed.applied, parsed.overridden = merge(parsed, flags)
    return parsed


def after_anchor(memory: Any, text: str, filters: Filters | None, options: Any, hits: Sequence[Any]) -> Any:
    """The anchor of an "after" query, for saying which memory the hits followed.

    The anchor is what ``following`` searched from: the first hit's first related memory (the
    search puts the anchor there); with no hits, the best match for ``text`` within ``filters``,
    searched again without ``following`` and without saliency panels (``explain_dir=None``: naming
    the anchor must not write files). One function for the command line and the dashboard.

    Args:
        memory: a :class:`~mmai.memory.personal.PersonalMemory` (anything with its ``search``).
        text, filters, options: the search's text, filters and :class:`~mmai.memory.search.SearchOptions`.
        hits: what the ``following`` search returned.

    Returns:
        The anchor (a :class:`~mmai.memory.search.Related` or a ``SearchHit``: both have ``id``
        and ``metadata``), or ``None`` when nothing matches the anchor's words.
    """
    if hits and hits[0].related:
        return hits[0].related[0]
    found = memory.search(text, 1, filters, dataclasses.replace(options, following=False, explain_dir=None))
    return found[0] if found else None
