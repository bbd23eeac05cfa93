"""A simulated user of a personal memory, with known answers (issue 22's "data with known answers").

A deterministic birdwatcher over the synthetic diary's species (:func:`mmai.data.synth.species.build_species`)
and places (:data:`mmai.data.synth.diary.PLACES`, each species living at 1-3 of them):

* **Sightings.** On each of ``days`` days (400) the user goes out with probability
  ``outing_probability`` to one place and makes 1-8 sightings there, minutes apart; each sighting
  is one memory. The species seen follow a Zipf law of exponent ``zipf`` over popularity ranks
  (restricted to the place's residents) and the ranks are *reshuffled at* ``shift_day`` (200):
  what the user sees, and asks about, changes half way.
* **Embeddings.** Each species has a random unit prototype in ``dim`` dimensions; a memory is its
  species' prototype plus Gaussian noise (``memory_noise``), L2-normalised (a stand-in for a
  photo's embedding: same species close, individuals distinct).
* **Queries.** About ``queries_per_day`` (Poisson) searches a day, each for one *target* memory
  that the user then opens when a search of everything kept finds it in the top ``open_k``: a
  *recent* memory (``recent_share``: of the last 30 days, weighted ``exp(-age / 7 days)``), a
  *re-visit* of an old memory (``revisit_share``: one opened before, weighted by its opens: the
  user's favourites), or a memory of a *species* the user is into now (the rest: species drawn
  from the current popularity, the memory uniformly among that species'). The query's embedding
  is the target's plus noise (``query_noise``): the user describes what they want to find again.

Everything is a function of ``seed`` and :class:`SimConfig`, so benchmarks replay the same history
(e.g. days 1-300) and evaluate on what comes after (days 301-400). No trained model is involved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

__all__ = ["SimConfig", "Simulation", "simulate"]

DAY_S = 86_400.0
FIRST_DAY = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The simulated user's habits (see the module docstring); the defaults are issue 22's."""

    days: int = 400
    species: int = 60
    zipf: float = 1.1
    shift_day: int = 200
    outing_probability: float = 0.6
    sightings_per_outing: tuple[int, int] = (1, 8)
    queries_per_day: float = 3.0
    recent_share: float = 0.4
    revisit_share: float = 0.3
    recent_days: float = 30.0
    recent_scale_days: float = 7.0
    dim: int = 32
    memory_noise: float = 0.5
    query_noise: float = 0.7
    open_k: int = 10


@dataclasses.dataclass
class Simulation:
    """One simulated history.

    Attributes:
        memories: per memory (in creation order): ``time`` (N,) unix s, ``day`` (N,) 1-based,
            ``species`` (N,) class id, ``place`` (N,) index into ``places``, ``embeddings`` (N, dim).
        queries: per query (in time order): ``query_time`` (Q,), ``query_day`` (Q,), ``target`` (Q,)
            memory index, ``kind`` (Q,) ``"recent"``/``"revisit"``/``"species"``,
            ``query_embeddings`` (Q, dim), ``opened`` (Q,) bool: a search of every memory so far
            had the target in its top ``open_k``, so the user opened it (an access).
        places: place names.
        popularity: (2, S) species popularity before and from ``shift_day``.
    """

    config: SimConfig
    time: np.ndarray
    day: np.ndarray
    species: np.ndarray
    place: np.ndarray
    embeddings: np.ndarray
    query_time: np.ndarray
    query_day: np.ndarray
    target: np.ndarray
    kind: np.ndarray
    query_embeddings: np.ndarray
    opened: np.ndarray
    places: list[str]
    popularity: np.ndarray

    def __len__(self) -> int:
        return len(self.time)

    def created_by(self, day: int) -> np.ndarray:
        """Indices of the memories made on days 1..``day``."""
        return np.flatnonzero(self.day <= day)

    def accesses(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """Per memory, the opens on days 1..``day``: ``(count (N,), last access time (N,), NaN = never)``."""
        chosen = (self.query_day <= day) & self.opened
        counts = np.bincount(self.target[chosen], minlength=len(self)).astype(np.int64)
        last = np.full(len(self), np.nan)
        for index, when in zip(self.target[chosen].tolist(), self.query_time[chosen].tolist()):
            last[index] = when if np.isnan(last[index]) else max(last[index], when)
        return counts, last

    def access_times(self, day: int) -> list[list[float]]:
        """Per memory, the times of its opens on days 1..``day`` (in order)."""
        out: list[list[float]] = [[] for _ in range(len(self))]
        chosen = (self.query_day <= day) & self.opened
        for index, when in zip(self.target[chosen].tolist(), self.query_time[chosen].tolist()):
            out[index].append(when)
        return out

    def end_of(self, day: int) -> float:
        """Unix seconds at the end of ``day``."""
        return (FIRST_DAY + dt.timedelta(days=day)).timestamp()


def _popularity(species: int, zipf: float, rng: np.random.Generator) -> np.ndarray:
    ranks = rng.permutation(species) + 1
    weights = 1.0 / ranks.astype(np.float64) ** zipf
    return weights / weights.sum()


def simulate(seed: int = 0, config: SimConfig | None = None) -> Simulation:
    """The deterministic history of ``seed`` (see the module docstring)."""
    from mmai.data.synth.diary import PLACES, species_places
    from mmai.data.synth.species import build_species

    config = config or SimConfig()
    rng = np.random.default_rng([seed, 0x5133])
    species = build_species(config.species, seed)
    homes = species_places(species, rng)  # class id -> place indices
    residents = {p: np.array([s.class_id for s in species if p in homes[s.class_id]]) for p in range(len(PLACES))}
    residents = {p: ids for p, ids in residents.items() if len(ids)}
    popularity = np.stack([_popularity(config.species, config.zipf, rng) for _ in range(2)])  # (2, S)
    prototypes = rng.normal(size=(config.species, config.dim))
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)

    times, days, kinds_of_species, places, vectors = [], [], [], [], []
    q_time, q_day, q_target, q_kind, q_vectors, q_opened = [], [], [], [], [], []
    opens = np.zeros(0)
    for day in range(1, config.days + 1):
        now_popularity = popularity[int(day >= config.shift_day)]
        start = (FIRST_DAY + dt.timedelta(days=day - 1)).timestamp()
        if rng.random() < config.outing_probability:
            place = int(rng.choice(list(residents)))
            local = residents[place]
            weights = now_popularity[local - 1] / now_popularity[local - 1].sum()
            count = int(rng.integers(config.sightings_per_outing[0], config.sightings_per_outing[1] + 1))
            clock = start + DAY_S * rng.uniform(0.25, 0.3)
            for _ in range(count):
                class_id = int(rng.choice(local, p=weights))
                clock += float(rng.uniform(60.0, 1200.0))
                vector = prototypes[class_id - 1] + config.memory_noise * rng.normal(size=config.dim) / np.sqrt(config.dim)
                times.append(clock)
                days.append(day)
                kinds_of_species.append(class_id)
                places.append(place)
                vectors.append(vector / np.linalg.norm(vector))
        if not times:
            continue
        memory_time = np.array(times)
        memory_species = np.array(kinds_of_species)
        embeddings = np.array(vectors)
        if len(opens) < len(times):
            opens = np.concatenate([opens, np.zeros(len(times) - len(opens))])
        for _ in range(int(rng.poisson(config.queries_per_day))):
            when = start + DAY_S * float(rng.uniform(0.5, 0.99))
            draw = rng.random()
            kind, target = "species", None
            if draw < config.recent_share:
                kind = "recent"
            elif draw < config.recent_share + config.revisit_share and opens.sum() > 0:
                kind = "revisit"
            if kind == "recent":
                age = (when - memory_time) / DAY_S
                weights = np.where(age <= config.recent_days, np.exp(-age / config.recent_scale_days), 0.0)
                if weights.sum() > 0:
                    target = int(rng.choice(len(weights), p=weights / weights.sum()))
                else:
                    kind = "species"
            if kind == "revisit":
                target = int(rng.choice(len(opens), p=opens / opens.sum()))
            if kind == "species":
                seen = np.unique(memory_species)
                weights = now_popularity[seen - 1] / now_popularity[seen - 1].sum()
                class_id = int(rng.choice(seen, p=weights))
                target = int(rng.choice(np.flatnonzero(memory_species == class_id)))
            query = embeddings[target] + config.query_noise * rng.normal(size=config.dim) / np.sqrt(config.dim)
            query /= np.linalg.norm(query)
            top = np.argsort(-(embeddings @ query), kind="stable")[:config.open_k]
            opened = bool(target in top)
            if opened:
                opens[target] += 1
            q_time.append(when)
            q_day.append(day)
            q_target.append(target)
            q_kind.append(kind)
            q_vectors.append(query)
            q_opened.append(opened)
    return Simulation(config, np.array(times), np.array(days), np.array(kinds_of_species), np.array(places),
                      np.array(vectors), np.array(q_time), np.array(q_day), np.array(q_target, dtype=np.int64),
                      np.array(q_kind), np.array(q_vectors), np.array(q_opened, bool), [p.name for p in PLACES],
                      popularity)
