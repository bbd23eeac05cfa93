"""A simulated birdwatcher's diary: when and where every synthetic photo was taken.

Episodic memory (Tulving, 1972) ties items to a time and a place. The diary gives the synthetic
CUB such ties: ten real birding spots in six cities, each with its own species mix; outings of
1-3 hours at one spot on distinct days of 2021-2024; each photo taken during an outing at a spot
where its species lives. Photos of one outing share an ``episode_id`` (the outing's index in time
order) and lie within hours of each other, which is what the episodic graph's temporal edges and
GAR's control run (shuffled times and places) are about.

Within an outing a species' photos come as *sightings* (bursts): 1-6 photos of one individual
bird, :data:`BURST_GAP_SECONDS` apart (so a sighting spans at most two minutes), from one spot
(the same coordinates). Sightings never overlap in time and carry a ``sighting_id`` unique over
the data set. The first photo of a sighting is always ``"clear"``; every later one is, with
probability :data:`HARD_PROBABILITY`, taken in one of the :data:`HARD_CONDITIONS` (drawn
uniformly), so every sighting with a hard photo also has a clear one. Single-photo sightings are
clear.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from mmai.data.synth.species import Species

FIRST_DAY = dt.date(2021, 1, 1)
LAST_DAY = dt.date(2024, 12, 31)
#: Photos per sighting, drawn uniformly (capped by the photos left for that species and outing).
SIGHTING_PHOTOS = (1, 6)
#: Seconds between consecutive photos of a sighting, drawn uniformly: 5 gaps span at most 120 s.
BURST_GAP_SECONDS = (2.0, 24.0)
#: Chance that a photo after the first of its sighting is taken in a hard condition.
HARD_PROBABILITY = 0.35
#: Photo conditions; ``"clear"`` first, then the hard ones (see :func:`mmai.data.synth.draw.draw_bird`).
CONDITIONS = ("clear", "low_light", "motion_blur", "distant", "occluded")
HARD_CONDITIONS = CONDITIONS[1:]


@dataclasses.dataclass(frozen=True)
class Place:
    """A birding spot: name (with its city), latitude and longitude (degrees), UTC offset (hours)."""

    name: str
    latitude: float
    longitude: float
    utc_offset: float


PLACES = (
    Place("Powai Lake, Mumbai", 19.1273, 72.9050, 5.5),
    Place("Sewri Mudflats, Mumbai", 19.0003, 72.8605, 5.5),
    Place("Sanjay Gandhi National Park, Mumbai", 19.2147, 72.9106, 5.5),
    Place("Hebbal Lake, Bengaluru", 13.0450, 77.5910, 5.5),
    Place("Hampstead Heath, London", 51.5608, -0.1630, 0.0),
    Place("London Wetland Centre, London", 51.4770, -0.2370, 0.0),
    Place("Central Park Ramble, New York", 40.7770, -73.9690, -5.0),
    Place("Jamaica Bay Wildlife Refuge, New York", 40.6170, -73.8250, -5.0),
    Place("Tiergarten, Berlin", 52.5145, 13.3501, 1.0),
    Place("Golden Gate Park, San Francisco", 37.7694, -122.4862, -8.0),
)


def species_places(species: list[Species], rng: np.random.Generator) -> dict[int, list[int]]:
    """class id -> indices into :data:`PLACES` where the species lives (1-3 spots each)."""
    return {s.class_id: sorted(int(p) for p in rng.choice(len(PLACES), size=int(rng.integers(1, 4)), replace=False))
            for s in species}


def _sightings(photos: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Split one species' photos of an outing into consecutive sightings of 1-6 photos."""
    sightings = []
    while photos:
        take = int(rng.integers(SIGHTING_PHOTOS[0], SIGHTING_PHOTOS[1] + 1))
        sightings.append(photos[:take])
        photos = photos[take:]
    return sightings


def _outings(images_by_class: dict[int, list[int]], homes: dict[int, list[int]],
             rng: np.random.Generator) -> list[tuple[int, list[list[int]]]]:
    """Group every image into (place index, sightings) outings of 1-4 local species; a sighting
    is a list of image ids of one species, sightings in the order they happen."""
    remaining = {c: [ids[i] for i in rng.permutation(len(ids))] for c, ids in images_by_class.items()}
    residents = {p: [c for c in sorted(homes) if p in homes[c]] for p in range(len(PLACES))}
    outings = []
    while any(remaining.values()):
        weights = np.array([sum(len(remaining[c]) for c in residents[p]) for p in range(len(PLACES))], float)
        place = int(rng.choice(len(PLACES), p=weights / weights.sum()))
        present = [c for c in residents[place] if remaining[c]]
        seen = rng.choice(present, size=int(rng.integers(1, min(4, len(present)) + 1)), replace=False)
        sightings = []
        for class_id in seen:
            take = int(rng.integers(1, 9))
            sightings += _sightings(remaining[int(class_id)][:take], rng)
            remaining[int(class_id)] = remaining[int(class_id)][take:]
        outings.append((place, [sightings[i] for i in rng.permutation(len(sightings))]))
    return outings


def _conditions(count: int, rng: np.random.Generator) -> list[str]:
    """Conditions of a sighting's photos: the first clear, each later one hard with probability
    :data:`HARD_PROBABILITY` (the hard condition uniform)."""
    conditions = ["clear"]
    for _ in range(count - 1):
        hard = rng.random() < HARD_PROBABILITY
        index = int(rng.integers(len(HARD_CONDITIONS)))
        conditions.append(HARD_CONDITIONS[index] if hard else "clear")
    return conditions


def _start_times(count: int, places: list[int], rng: np.random.Generator) -> list[dt.datetime]:
    """UTC start of each outing: distinct days (while they last), early morning or late afternoon local."""
    days = (LAST_DAY - FIRST_DAY).days + 1
    chosen = rng.choice(days, size=count, replace=count > days)
    starts = []
    for day, place in zip(chosen, places):
        local_hour = rng.uniform(5.5, 9.0) if rng.random() < 0.75 else rng.uniform(15.0, 17.5)
        local = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=int(day)), dt.time()) + dt.timedelta(hours=local_hour)
        starts.append(local - dt.timedelta(hours=PLACES[place].utc_offset))
    return starts


@dataclasses.dataclass
class Diary:
    """The birdwatcher's diary.

    Args:
        entries: one dict per image, in image-id order (see :func:`build_diary`).
        homes: class id -> names of the places where the species lives.
    """

    entries: list[dict]
    homes: dict[int, list[str]]


def build_diary(species: list[Species], image_classes: dict[int, int], seed: int = 0) -> Diary:
    """The diary entry of every image, in image-id order, and the places of every species.

    Args:
        species: all species (their class ids).
        image_classes: image id -> class id.
        seed: random seed (default 0).

    Returns:
        The diary; its entries have, per image: ``image_id``, ``timestamp`` (ISO-8601 UTC, ``...Z``), ``place``,
        ``latitude``, ``longitude`` (the spot's position plus up to ~300 m of GPS scatter, the same for
        every photo of a sighting), ``episode_id`` (outing index in time order), ``sighting_id``
        (numbered over the data set in episode order, then in time order within the outing) and
        ``condition`` (one of :data:`CONDITIONS`).
    """
    rng = np.random.default_rng([seed, 0xD1A27])
    homes = species_places(species, rng)
    by_class: dict[int, list[int]] = {}
    for image_id, class_id in sorted(image_classes.items()):
        by_class.setdefault(class_id, []).append(image_id)
    outings = _outings(by_class, homes, rng)
    starts = _start_times(len(outings), [place for place, _ in outings], rng)
    order = sorted(range(len(outings)), key=lambda i: (starts[i], i))
    entries: dict[int, dict] = {}
    sighting_id = 0
    for episode_id, index in enumerate(order):
        place_index, sightings = outings[index]
        place = PLACES[place_index]
        hours = float(rng.uniform(1.0, 3.0))
        gaps = [rng.uniform(*BURST_GAP_SECONDS, size=len(photos) - 1) for photos in sightings]
        spans = np.array([float(g.sum()) for g in gaps])
        # non-overlapping sightings: sorted free time before each one, plus the spans before it
        free = np.sort(rng.uniform(0.0, hours * 3600.0 - spans.sum(), size=len(sightings)))
        begins = free + np.concatenate([[0.0], np.cumsum(spans)[:-1]])
        for photos, gap, begin in zip(sightings, gaps, begins):
            latitude = round(place.latitude + float(rng.uniform(-0.003, 0.003)), 5)
            longitude = round(place.longitude + float(rng.uniform(-0.003, 0.003)), 5)
            offsets = begin + np.concatenate([[0.0], np.cumsum(gap)])
            for image_id, offset, condition in zip(photos, offsets, _conditions(len(photos), rng)):
                when = starts[index] + dt.timedelta(seconds=int(offset))
                entries[image_id] = {
                    "image_id": image_id,
                    "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "place": place.name,
                    "latitude": latitude,
                    "longitude": longitude,
                    "episode_id": episode_id,
                    "sighting_id": sighting_id,
                    "condition": condition,
                }
            sighting_id += 1
    return Diary([entries[image_id] for image_id in sorted(entries)],
                 {class_id: [PLACES[p].name for p in places] for class_id, places in homes.items()})
