"""Time and place in words: parse accuracy, R@5 flat vs parsed filters, "after" queries (issue 22, items 4-5).

Protocol (``--photos`` 2,000 diary photos of ``--species`` 40 synthetic species per seed, seeds
0-2, everything offline and CPU-only):

* **Memories.** The synthetic diary (:func:`mmai.data.synth.diary.build_diary`: times in
  2021-2024 UTC, ten real birding spots, outings, sightings) gives each photo a time and a place;
  its ``--photo-captions`` (10, as CUB's captions per image) captions
  (:func:`mmai.data.synth.captions.image_captions` of its species and condition), joined, are
  embedded by a *stand-in* text encoder, :class:`BagOfWords` (binary bag of words, L2-normalised,
  the vocabulary of the captions): no trained model is needed and none was available offline, so
  the *absolute* recalls say little about a trained encoder; what is measured is what the filters
  add on top of one fixed encoder.
* **Parse accuracy.** Each template of :data:`SEEN_TEMPLATES` (11 phrasings the parser of
  :mod:`mmai.memory.words` was written alongside) and of :data:`NEW_TEMPLATES` (phrasings written
  *after* the parser, to test it: other word orders, abbreviations, lower case, typos, and a few
  forms it does not know, such as "3 days ago") is filled ``--queries`` times per seed from a random
  target memory; the template states the *true* filters (the place(s) and time the words mean,
  with the query's reference time ``now`` for relative words). A query is parsed right when
  :func:`~mmai.memory.words.parse_words` returns exactly those filters (years as sets, places as
  sets, ``after``/``before`` as instants).
* **R@5.** The query's description is another caption of the target's species; relevant are the
  memories of that species that satisfy the true filters (the target among them). R@5 = relevant
  in the top 5 / min(5, relevant), for *flat* search (the whole query embedded, no filter), the
  *parsed* filters (the parser's text and filters) and the *true* filters (the description and the
  true filters). Paired 95% intervals: :func:`mmai.evaluation.stats.paired_bootstrap` over queries, seeds
  pooled.
* **After.** ``what did I see after <caption> at <place> on <day>`` for ``--after-queries`` anchors
  per seed (a sighting's first photo whose outing has a later sighting). The answer is the first
  photo of the next sighting. hit@5 of it for flat search (the whole query), the parsed filters
  without the hop (top 5 of the anchor's words within the filters) and the directed "follows" hop
  (:meth:`mmai.retrieval.graph.EpisodicGraph.following` after the top-1 anchor within the filters,
  skipping ``--burst-s`` 120 s as the search does by default). "anchor right": the top-1 anchor is
  a photo of the true anchor's sighting.
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import datetime as dt
import re
from typing import Any, Callable

import numpy as np

from mmai_apps.bench import BenchResult

UTC = dt.timezone.utc
SEASON_OF_MONTH = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
                   6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=2_000, help="diary photos per seed (default 2,000)")
    parser.add_argument("--species", type=int, default=40, help="species (default 40)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--queries", type=int, default=60, help="queries per template and seed (default 60)")
    parser.add_argument("--after-queries", type=int, default=200, help="'after' queries per seed (default 200)")
    parser.add_argument("--burst-s", type=float, default=120.0, help="the hop's burst skip (default 120, as search)")
    parser.add_argument("--k", type=int, default=5, help="K of R@K and hit@K (default 5)")
    parser.add_argument("--photo-captions", type=int, default=10,
                        help="captions whose words make a photo's stand-in embedding (default 10, CUB's captions "
                             "per image: what the photo shows; 1: one caption's 2-5 attributes)")


# ---------------------------------------------------------------------- the stand-in encoder
class BagOfWords:
    """A stand-in text encoder: binary bag of words over a fixed vocabulary, L2-normalised.

    Words outside the vocabulary (times, places, "what did I see") add nothing, so a query's
    score is the cosine of its description with a memory's caption."""

    def __init__(self, texts: list[str]) -> None:
        words = sorted({word for text in texts for word in self.words(text)})
        self.vocabulary = {word: index for index, word in enumerate(words)}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), len(self.vocabulary)), np.float32)  # (n, V)
        for row, text in enumerate(texts):
            for word in self.words(text):
                if word in self.vocabulary:
                    vectors[row, self.vocabulary[word]] = 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-9)


# ---------------------------------------------------------------------- the diary as memories
@dataclasses.dataclass
class DiaryMemories:
    """One seed's memories: per photo its species, time, place, outing, sighting and caption."""

    class_ids: np.ndarray  # (N,)
    timestamps: np.ndarray  # (N,) unix seconds UTC
    places: list[str]
    episodes: np.ndarray  # (N,)
    sightings: np.ndarray  # (N,)
    captions: list[str]
    species: list[Any]
    place_names: list[str]

    def __len__(self) -> int:
        return len(self.places)

    def when(self, index: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(float(self.timestamps[index]), UTC)


def diary_memories(photos: int, species_count: int, seed: int, photo_captions: int = 10) -> DiaryMemories:
    """``photos`` diary photos spread evenly over ``species_count`` species (deterministic); a
    photo's text is its ``photo_captions`` captions joined (what it shows, for the stand-in encoder)."""
    from mmai.data.synth.captions import image_captions
    from mmai.data.synth.diary import PLACES, build_diary
    from mmai.data.synth.species import build_species

    species = build_species(species_count, seed)
    image_classes = {image_id: image_id % species_count + 1 for image_id in range(photos)}
    entries = build_diary(species, image_classes, seed).entries
    rng = np.random.default_rng([seed, 0x0BD5])
    by_class = {s.class_id: s for s in species}
    captions = [" ".join(image_captions(by_class[image_classes[e["image_id"]]].attributes, rng, photo_captions,
                                        condition=e["condition"] if e["condition"] != "occluded" else "clear"))
                for e in entries]
    stamps = np.array([dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                       for e in entries])
    return DiaryMemories(np.array([image_classes[e["image_id"]] for e in entries]), stamps,
                         [e["place"] for e in entries], np.array([e["episode_id"] for e in entries]),
                         np.array([e["sighting_id"] for e in entries]), captions, species,
                         [place.name for place in PLACES])


# ---------------------------------------------------------------------- templates with their true filters
@dataclasses.dataclass(frozen=True)
class TrueFilters:
    """What a templated query means: years, places (full stored names), [after, before) instants."""

    years: frozenset[int] | None = None
    places: frozenset[str] | None = None
    after: float | None = None
    before: float | None = None

    @classmethod
    def of(cls, filters) -> "TrueFilters":
        from mmai.memory.ingest import parse_time

        year, place = filters.year, filters.place
        return cls(None if year is None else frozenset([year] if isinstance(year, int) else year),
                   None if place is None else frozenset([place] if isinstance(place, str) else place),
                   None if filters.after is None else parse_time(filters.after, "after"),
                   None if filters.before is None else parse_time(filters.before, "before"))

    def mask(self, memories: DiaryMemories) -> np.ndarray:
        keep = np.ones(len(memories), bool)
        if self.years is not None:
            years = np.array([memories.when(i).year for i in range(len(memories))])
            keep &= np.isin(years, list(self.years))
        if self.places is not None:
            keep &= np.isin(np.array(memories.places), list(self.places))
        if self.after is not None:
            keep &= memories.timestamps >= self.after
        if self.before is not None:
            keep &= memories.timestamps < self.before
        return keep


def _instant(day: dt.date | dt.datetime) -> float:
    if isinstance(day, dt.datetime):
        return day.timestamp()
    return dt.datetime.combine(day, dt.time(), UTC).timestamp()


def _month_span(year: int, month: int, count: int = 1) -> tuple[float, float]:
    start = dt.date(year, month, 1)
    end_month = month - 1 + count
    return _instant(start), _instant(dt.date(year + end_month // 12, end_month % 12 + 1, 1))


def _season(when: dt.datetime) -> tuple[str, int, tuple[float, float]]:
    """The season of a time, the year that names it (winter 2022 = Dec 2022-Feb 2023), its span."""
    name = SEASON_OF_MONTH[when.month]
    year = when.year - (when.month in (1, 2))
    first = {"winter": 12, "spring": 3, "summer": 6, "autumn": 9}[name]
    return name, year, _month_span(year, first, 3)


def _short(place: str) -> str:
    return place.split(",")[0].strip()


def _city(place: str, names: list[str]) -> tuple[str, frozenset[str]]:
    city = place.split(",")[1].strip()
    return city, frozenset(n for n in names if n.split(",")[1].strip() == city)


def _word_places(word: str, names: list[str]) -> frozenset[str]:
    return frozenset(n for n in names if word in BagOfWords.words(_short(n)))


def _typo(place: str, rng: np.random.Generator) -> str:
    """The short name with one inner letter of its longest word dropped (difflib ratio stays >= 0.8)."""
    words = _short(place).split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[longest]
    cut = int(rng.integers(1, len(word) - 1))
    words[longest] = word[:cut] + word[cut + 1:]
    return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Template:
    """A phrasing: ``fill(memories, index, description, rng) -> (query, TrueFilters, now)`` or
    ``None`` when the memory cannot be phrased this way (e.g. no lake in its place's name)."""

    name: str
    fill: Callable[..., tuple[str, TrueFilters, dt.datetime] | None]


NOW = dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)  #: reference time of the templates without relative words


def _t_place_year(m, i, d, rng):
    w = m.when(i)
    return f"{d} at {_short(m.places[i])} in {w.year}", TrueFilters(frozenset([w.year]), frozenset([m.places[i]])), NOW


def _t_month_year(m, i, d, rng):
    w = m.when(i)
    a, b = _month_span(w.year, w.month)
    return f"{d} in {calendar.month_name[w.month]} {w.year}", TrueFilters(after=a, before=b), NOW


def _t_place_season(m, i, d, rng):
    name, year, (a, b) = _season(m.when(i))
    return f"{d} at {_short(m.places[i])} in {name} {year}", TrueFilters(None, frozenset([m.places[i]]), a, b), NOW


def _t_day_month_year(m, i, d, rng):
    w = m.when(i).date()
    return (f"{d} on {w.day} {calendar.month_name[w.month]} {w.year}",
            TrueFilters(after=_instant(w), before=_instant(w + dt.timedelta(days=1))), NOW)


def _t_iso_day(m, i, d, rng):
    w = m.when(i).date()
    return f"{d} on {w.isoformat()}", TrueFilters(after=_instant(w), before=_instant(w + dt.timedelta(days=1))), NOW


def _t_near_the(m, i, d, rng):
    words = [w for w in ("lake", "park") if w in BagOfWords.words(_short(m.places[i]))]
    if not words:
        return None
    return f"{d} near the {words[0]}", TrueFilters(places=_word_places(words[0], m.place_names)), NOW


def _t_city(m, i, d, rng):
    city, places = _city(m.places[i], m.place_names)
    return f"{d} in {city}", TrueFilters(places=places), NOW


def _t_between(m, i, d, rng):
    y = m.when(i).year
    low = y - int(rng.integers(0, 2))
    return f"{d} between {low} and {low + 1}", TrueFilters(frozenset([low, low + 1])), NOW


def _t_since(m, i, d, rng):
    w = m.when(i)
    return f"{d} since {calendar.month_name[w.month]} {w.year}", TrueFilters(after=_month_span(w.year, w.month)[0]), NOW


def _t_before(m, i, d, rng):
    y = m.when(i).year + 1
    if y > 2024:  # "before 2025" would hold for every diary memory
        return None
    return f"{d} before {y}", TrueFilters(before=_instant(dt.date(y, 1, 1))), NOW


def _t_city_last_month(m, i, d, rng):
    w = m.when(i)
    city, places = _city(m.places[i], m.place_names)
    a, b = _month_span(w.year, w.month)
    now = dt.datetime.fromtimestamp(b, UTC) + dt.timedelta(days=10)
    return f"{d} in {city} last {calendar.month_name[w.month]}", TrueFilters(None, places, a, b), now


SEEN_TEMPLATES = [Template(*t) for t in (
    ("at PLACE in YEAR", _t_place_year), ("in MONTH YEAR", _t_month_year),
    ("at PLACE in SEASON YEAR", _t_place_season), ("on D MONTH YEAR", _t_day_month_year),
    ("on YYYY-MM-DD", _t_iso_day), ("near the lake/park", _t_near_the), ("in CITY", _t_city),
    ("between YEAR and YEAR", _t_between), ("since MONTH YEAR", _t_since), ("before YEAR", _t_before),
    ("in CITY last MONTH (now)", _t_city_last_month))]


# phrasings written after the parser
def _n_around_during_the_season_of(m, i, d, rng):
    name, year, (a, b) = _season(m.when(i))
    return (f"{d} seen around {_short(m.places[i])} during the {name} of {year}",
            TrueFilters(None, frozenset([m.places[i]]), a, b), NOW)


def _n_month_day_comma_year(m, i, d, rng):
    w = m.when(i).date()
    return (f"{d} photographed {calendar.month_name[w.month]} {w.day}, {w.year}",
            TrueFilters(after=_instant(w), before=_instant(w + dt.timedelta(days=1))), NOW)


def _n_abbrev_month_then_place(m, i, d, rng):
    w = m.when(i)
    a, b = _month_span(w.year, w.month)
    return (f"{d} in {calendar.month_abbr[w.month]}. {w.year} by {_short(m.places[i])}",
            TrueFilters(None, frozenset([m.places[i]]), a, b), NOW)


def _n_from_to(m, i, d, rng):
    y = m.when(i).year
    low = y - int(rng.integers(0, 2))
    return f"{d} from {low} to {low + 1}", TrueFilters(frozenset([low, low + 1])), NOW


def _n_lower_case_place(m, i, d, rng):
    return f"{d} at {_short(m.places[i]).lower()}", TrueFilters(places=frozenset([m.places[i]])), NOW


def _n_typo_place(m, i, d, rng):
    y = m.when(i).year
    return (f"{d} in {y} at {_typo(m.places[i], rng)}",
            TrueFilters(frozenset([y]), frozenset([m.places[i]])), NOW)


def _n_days_ago(m, i, d, rng):
    w = m.when(i).date()
    days = int(rng.integers(2, 9))
    now = dt.datetime.combine(w + dt.timedelta(days=days), dt.time(12), UTC)
    return f"{d} {days} days ago", TrueFilters(after=_instant(w), before=_instant(w + dt.timedelta(days=1))), now


def _n_past_weeks(m, i, d, rng):
    now = m.when(i) + dt.timedelta(days=int(rng.integers(1, 13)))
    return f"{d} in the past 2 weeks", TrueFilters(after=(now - dt.timedelta(days=14)).timestamp()), now


def _n_first_week_of(m, i, d, rng):
    w = m.when(i).date()
    if w.day > 7:
        return None
    start = w.replace(day=1)
    return (f"{d} during the first week of {calendar.month_name[w.month]} {w.year}",
            TrueFilters(after=_instant(start), before=_instant(start + dt.timedelta(days=7))), NOW)


NEW_TEMPLATES = [Template(*t) for t in (
    ("around PLACE during the SEASON of YEAR", _n_around_during_the_season_of),
    ("MONTH D, YEAR (no preposition)", _n_month_day_comma_year),
    ("in MON. YEAR by PLACE", _n_abbrev_month_then_place), ("from YEAR to YEAR", _n_from_to),
    ("at place (lower case)", _n_lower_case_place), ("in YEAR at PLCE (typo)", _n_typo_place),
    ("N days ago (now)", _n_days_ago), ("in the past 2 weeks (now)", _n_past_weeks),
    ("during the first week of MONTH YEAR", _n_first_week_of))]


# ---------------------------------------------------------------------- measurements
def _recall(scores: np.ndarray, mask: np.ndarray | None, relevant: np.ndarray, k: int) -> float:
    ranked = np.where(mask, scores, -np.inf) if mask is not None else scores
    top = np.argsort(-ranked, kind="stable")[:k]
    top = top[np.isfinite(ranked[top])]
    return float(relevant[top].sum() / min(k, int(relevant.sum())))


def template_queries(memories: DiaryMemories, template: Template, count: int, rng: np.random.Generator,
                     describe: Callable[[int], str]) -> list[tuple[int, str, TrueFilters, dt.datetime]]:
    """``count`` filled queries ``(target, query, true filters, now)`` of one template."""
    out, tries = [], 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count:
            raise ValueError(f"bench words: template {template.name!r} found too few memories it can phrase")
        index = int(rng.integers(len(memories)))
        filled = template.fill(memories, index, describe(index), rng)
        if filled is not None:
            out.append((index, *filled))
    return out


def parse_and_recall(memories: DiaryMemories, encoder: BagOfWords, vectors: np.ndarray, templates: list[Template],
                     count: int, k: int, rng: np.random.Generator, describe: Callable[[int], str]) -> dict[str, Any]:
    """Per query: parsed right (0/1), R@k flat / parsed / true, and the template name."""
    from mmai.memory.words import parse_words

    out: dict[str, list] = {"right": [], "flat": [], "parsed": [], "true": [], "template": []}
    for template in templates:
        for target, query, truth, now in template_queries(memories, template, count, rng, describe):
            assert truth.mask(memories)[target], (template.name, query)  # the words describe the target
            try:
                parsed = parse_words(query, memories.place_names, now)
                got, text = TrueFilters.of(parsed.filters), parsed.text
            except ValueError:
                got, text = None, query
            description = query[:len(describe(target))]
            relevant = (memories.class_ids == memories.class_ids[target]) & truth.mask(memories)
            q_full, q_text, q_desc = encoder.embed([query, text, description])
            out["right"].append(float(got == truth))
            out["flat"].append(_recall(vectors @ q_full, None, relevant, k))
            out["parsed"].append(_recall(vectors @ q_text, None if got is None else got.mask(memories), relevant, k))
            out["true"].append(_recall(vectors @ q_desc, truth.mask(memories), relevant, k))
            out["template"].append(template.name)
    return out


def after_queries(memories: DiaryMemories, encoder: BagOfWords, vectors: np.ndarray, count: int, k: int,
                  burst_s: float, rng: np.random.Generator, describe: Callable[[int], str]) -> dict[str, list[float]]:
    """hit@k of the next sighting's first photo: flat, filters without the hop, the directed hop."""
    from mmai.retrieval.graph import EpisodicGraph
    from mmai.memory.words import parse_words

    order = np.lexsort((np.arange(len(memories)), memories.timestamps, memories.episodes))
    firsts, answer = [], {}
    for position, index in enumerate(order[:-1]):
        earlier = order[position - 1] if position else None
        if earlier is not None and memories.sightings[earlier] == memories.sightings[index]:
            continue  # not a sighting's first photo
        later = [j for j in order[position + 1:] if memories.episodes[j] == memories.episodes[index]]
        nxt = next((j for j in later if memories.sightings[j] != memories.sightings[index]), None)
        if nxt is not None:
            firsts.append(int(index))
            answer[int(index)] = int(nxt)
    graph = EpisodicGraph(np.arange(len(memories)), vectors, memories.timestamps, memories.places, progress=False)
    out: dict[str, list[float]] = {"flat": [], "filters": [], "hop": [], "anchor_right": []}
    for anchor in rng.choice(firsts, size=min(count, len(firsts)), replace=False).tolist():
        day = memories.when(anchor).date()
        query = (f"what did I see after {describe(anchor)} at {_short(memories.places[anchor])} on "
                 f"{day.day} {calendar.month_name[day.month]} {day.year}")
        parsed = parse_words(query, memories.place_names, NOW)
        target = answer[anchor]
        q_full, q_text = encoder.embed([query, parsed.text])
        flat = np.argsort(-(vectors @ q_full), kind="stable")[:k]
        mask = TrueFilters.of(parsed.filters).mask(memories)
        scores = np.where(mask, vectors @ q_text, -np.inf)
        within = [int(j) for j in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[j])]
        found = within[0] if within else None
        hop = [] if found is None else [j for j, _ in graph.following(found, skip_s=burst_s)][:k]
        out["flat"].append(float(target in flat.tolist()))
        out["filters"].append(float(target in within))
        out["hop"].append(float(target in hop))
        out["anchor_right"].append(float(found is not None and memories.sightings[found] == memories.sightings[anchor]))
    return out


def _cell(values: np.ndarray) -> str:
    from mmai.evaluation.stats import mean_std

    mean, std = mean_std(values.mean(axis=1))
    return f"{mean:.3f} ± {std:.3f}"


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    from mmai.evaluation.stats import paired_bootstrap

    d = paired_bootstrap(a, b)
    return f"{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def run(args: argparse.Namespace) -> BenchResult:
    seen: dict[str, list] = {}
    new: dict[str, list] = {}
    after: dict[str, list] = {}
    for seed in args.seeds:
        memories = diary_memories(args.photos, args.species, seed, args.photo_captions)
        encoder = BagOfWords(memories.captions)
        vectors = encoder.embed(memories.captions)  # (N, V)
        rng = np.random.default_rng([seed, 0x0E1])
        from mmai.data.synth.captions import image_captions

        by_class = {s.class_id: s for s in memories.species}
        describe_cache: dict[int, str] = {}

        def describe(index: int) -> str:  # another caption of the species: the user's description
            if index not in describe_cache:
                describe_cache[index] = image_captions(by_class[int(memories.class_ids[index])].attributes,
                                                       np.random.default_rng([seed, index, 7]), 1)[0]
            return describe_cache[index]

        for store, templates in ((seen, SEEN_TEMPLATES), (new, NEW_TEMPLATES)):
            result = parse_and_recall(memories, encoder, vectors, templates, args.queries, args.k, rng, describe)
            for key, values in result.items():
                store.setdefault(key, []).append(values)
        for key, values in after_queries(memories, encoder, vectors, args.after_queries, args.k, args.burst_s,
                                         rng, describe).items():
            after.setdefault(key, []).append(values)
    rows: list[dict[str, Any]] = []
    for label, store in (("seen templates", seen), ("new phrasings", new)):
        right, flat, parsed, true = (np.array(store[key]) for key in ("right", "flat", "parsed", "true"))
        rows.append({"part": f"parse ({label})", "measure": "filters exactly right", "value": _cell(right),
                     "paired": ""})
        rows.append({"part": f"R@{args.k} ({label})", "measure": "flat search", "value": _cell(flat), "paired": ""})
        rows.append({"part": f"R@{args.k} ({label})", "measure": "parsed filters", "value": _cell(parsed),
                     "paired": "vs flat " + _diff(flat, parsed)})
        rows.append({"part": f"R@{args.k} ({label})", "measure": "true filters", "value": _cell(true),
                     "paired": "parsed vs true " + _diff(true, parsed)})
        names = store["template"][0]
        for name in dict.fromkeys(names):
            columns = [i for i, n in enumerate(names) if n == name]
            rows.append({"part": f"parse ({label})", "measure": f"  {name}", "value": _cell(right[:, columns]),
                         "paired": ""})
    flat, filters, hop, anchor = (np.array(after[key]) for key in ("flat", "filters", "hop", "anchor_right"))
    rows.append({"part": f"after hit@{args.k}", "measure": "flat search", "value": _cell(flat), "paired": ""})
    rows.append({"part": f"after hit@{args.k}", "measure": "parsed filters, no hop", "value": _cell(filters),
                 "paired": "vs flat " + _diff(flat, filters)})
    rows.append({"part": f"after hit@{args.k}", "measure": "directed follows hop", "value": _cell(hop),
                 "paired": "vs no hop " + _diff(filters, hop)})
    rows.append({"part": "after", "measure": "anchor right (top-1 in its sighting)", "value": _cell(anchor),
                 "paired": ""})
    meta = {"photos": args.photos, "species": args.species, "seeds": args.seeds, "photo_captions": args.photo_captions,
            "queries_per_template_and_seed": args.queries, "after_queries_per_seed": len(after["flat"][0]),
            "encoder": "stand-in binary bag of words over the captions' vocabulary (no trained model)",
            "relevance": "R@K: memories of the target's species inside the true filters; after: the next "
                         "sighting's first photo in the anchor's outing",
            "cells": "mean ± std over seeds; paired: mean difference [95% paired bootstrap over queries, seeds "
                     "pooled]", "burst_s": args.burst_s, "hardware": "CPU"}
    return BenchResult(rows=rows, meta=meta)
