"""Synthetic bird species: points in a small space of fine-grained visual attributes.

CUB-200-2011 (Wah et al., 2011) is hard because many species differ in one detail: a curved
instead of a straight bill, a red instead of a black crown. The synthetic species reproduce this.
They are built in *families*: a founder drawn at random, one to three *one-attribute* variants
that each change exactly one attribute of the founder (bill attributes most often), so many
species pairs differ in exactly one attribute, and, with probability :data:`SWAP_PROBABILITY`, a
*swap* variant: the founder with the colours of two parts exchanged (``orange bill, grey belly``
becomes ``grey bill, orange belly``). A swap pair has the same bag of attribute words and differs
only in which colour goes with which part, the binding that bag-of-words models miss (ARO,
Yuksekgonul et al., ICLR 2023). Families keep adjacent class ids, like CUB's taxonomic order.
Every swap pair is a founder and its own swap variant: a species that would form a swap pair
with any other species is never added, so swap pairs never straddle families.

Names are made up from a species' own attributes in CUB's style (``Orange_billed_Curvebill``);
the invented nouns (``Curvebill``) never occur in captions.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from mmai.data.synth.song import SongParams, random_song

#: Attribute name -> its possible values. Order matters: it is the order of the tuple
#: :meth:`Attributes.values` and of the documentation in ``mmai_extras/README.md``.
ATTRIBUTES: dict[str, tuple] = {
    "bill_shape": ("straight", "curved", "hooked", "conical"),
    "bill_length": ("short", "long"),
    "bill_colour": ("black", "orange", "yellow", "grey"),
    "crown_colour": ("red", "blue", "black", "yellow", "brown", "grey", "white", "green"),
    "wing_colour": ("brown", "black", "blue", "grey", "green", "red"),
    "belly_colour": ("white", "yellow", "red", "buff", "grey", "orange"),
    "tail_length": ("short", "long"),
    "wing_bars": (False, True),
    "eye_ring": (False, True),
}

#: How often a family variant changes each attribute: the bill most, as in the hardest CUB pairs.
VARIANT_WEIGHTS: dict[str, float] = {
    "bill_shape": 0.24, "bill_length": 0.10, "bill_colour": 0.14, "crown_colour": 0.12,
    "wing_colour": 0.10, "belly_colour": 0.10, "tail_length": 0.07, "wing_bars": 0.07, "eye_ring": 0.06,
}

#: Attributes whose values are colours; a swap variant exchanges the values of two of them.
COLOUR_ATTRIBUTES = ("bill_colour", "crown_colour", "wing_colour", "belly_colour")

#: Chance that a family gets a swap variant (dropped only when the swapped species exists
#: already or would be a swap of another species): 0.75, so that the demo's 40 classes at seed 0
#: have swap pairs in val and in test and several in all.
SWAP_PROBABILITY = 0.75

#: How many one-attribute variants a family draws (uniform, inclusive): 1-3 by default.
VARIANTS = (1, 3)

#: Species kinds (:attr:`Species.kind`).
KINDS = ("founder", "one-attribute", "swap")

#: Invented nouns per bill shape (never used in captions).
NOUNS: dict[str, tuple[str, ...]] = {
    "straight": ("Spearbill", "Reedhopper", "Warblet"),
    "curved": ("Curvebill", "Sicklebill", "Bowbeak"),
    "hooked": ("Hookbill", "Talonbeak", "Shrikelet"),
    "conical": ("Conebill", "Seedcracker", "Finchling"),
}

#: Geographic prefixes that make a name unique when its descriptor and noun are taken.
PREFIXES = ("Lesser", "Greater", "Northern", "Southern", "Eastern", "Western", "Mountain",
            "Marsh", "Coastal", "Island", "Forest", "Desert", "Common", "Dusky", "Pale")


@dataclasses.dataclass(frozen=True)
class Attributes:
    """The visual attributes of one species (values from :data:`ATTRIBUTES`)."""

    bill_shape: str
    bill_length: str
    bill_colour: str
    crown_colour: str
    wing_colour: str
    belly_colour: str
    tail_length: str
    wing_bars: bool
    eye_ring: bool

    def values(self) -> tuple:
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def differences(self, other: Attributes) -> int:
        """How many attributes differ between two species."""
        return sum(a != b for a, b in zip(self.values(), other.values()))


@dataclasses.dataclass(frozen=True)
class Species:
    """One class of the synthetic CUB.

    Args:
        class_id: 1-based class id (``classes.txt``).
        name: ``Title_case_with_underscores`` made-up name, unique.
        family: index of the family (founder, one-attribute variants, swap variant) it belongs to.
        attributes: its visual attributes.
        song: parameters of its song (see :mod:`mmai.data.synth.song`).
        kind: ``"founder"``, ``"one-attribute"`` (the founder with one attribute changed) or
            ``"swap"`` (the founder with the values of two colour attributes exchanged).
        variant_of: class id of the founder it varies (None for founders).
        swapped: for swaps, the two exchanged attributes in :data:`COLOUR_ATTRIBUTES` order.
    """

    class_id: int
    name: str
    family: int
    attributes: Attributes
    song: SongParams
    kind: str = "founder"
    variant_of: int | None = None
    swapped: tuple[str, str] | None = None

    @property
    def class_dir(self) -> str:
        """CUB's class folder name, e.g. ``017.Orange_billed_Curvebill``."""
        return f"{self.class_id:03d}.{self.name}"


def _pick(rng: np.random.Generator, values: tuple):
    return values[int(rng.integers(len(values)))]


def random_attributes(rng: np.random.Generator) -> Attributes:
    """A species founder: every attribute drawn uniformly."""
    return Attributes(**{name: _pick(rng, values) for name, values in ATTRIBUTES.items()})


def _variant(founder: Attributes, rng: np.random.Generator) -> Attributes:
    """The founder with exactly one attribute changed (chosen by :data:`VARIANT_WEIGHTS`)."""
    names = list(VARIANT_WEIGHTS)
    weights = np.array([VARIANT_WEIGHTS[name] for name in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    others = tuple(v for v in ATTRIBUTES[name] if v != getattr(founder, name))
    return dataclasses.replace(founder, **{name: _pick(rng, others)})


def valid_swaps(attributes: Attributes) -> list[tuple[str, str]]:
    """Pairs of colour attributes whose values can be exchanged: the two values differ and each
    is a possible value of the other attribute (a crown can be red, a bill cannot)."""
    pairs = []
    for first, second in itertools.combinations(COLOUR_ATTRIBUTES, 2):
        a, b = getattr(attributes, first), getattr(attributes, second)
        if a != b and a in ATTRIBUTES[second] and b in ATTRIBUTES[first]:
            pairs.append((first, second))
    return pairs


def swapped(attributes: Attributes, pair: tuple[str, str]) -> Attributes:
    """``attributes`` with the values of the two attributes in ``pair`` exchanged."""
    first, second = pair
    return dataclasses.replace(attributes, **{first: getattr(attributes, second),
                                              second: getattr(attributes, first)})


def _swap_images(attributes: Attributes) -> list[Attributes]:
    return [swapped(attributes, pair) for pair in valid_swaps(attributes)]


@dataclasses.dataclass(frozen=True)
class _Member:
    family: int
    attributes: Attributes
    kind: str
    founder_index: int | None  # index into the chosen list; None for founders
    swapped: tuple[str, str] | None = None


def _attribute_families(classes: int, rng: np.random.Generator, swap_share: float = SWAP_PROBABILITY,
                        variant_range: tuple[int, int] = VARIANTS) -> list[_Member]:
    """``classes`` distinct attribute tuples in families of 1-5 members.

    A family is its founder, ``variant_range[0]``-``variant_range[1]`` one-attribute variants (default 1-3;
    duplicates dropped) and, with probability ``swap_share`` (default :data:`SWAP_PROBABILITY`), a
    swap variant of a valid pair (:func:`valid_swaps`)
    chosen uniformly; such a family draws its founder among those that have a valid pair (86 %
    of all attribute tuples do). Candidates that would form a swap pair
    with an existing species (other than a swap variant with its own founder) are dropped, so
    every swap pair is (founder, swap variant). Members are kept in the order founder, swap,
    one-attribute variants, as far as the family may grow: at most a quarter of the classes (at
    least 2), so that small data sets still split by family near half/quarter/quarter, and the
    first three families leave room for the next ones, so there are always at least three
    families (train, val and test each need one).
    """
    chosen: list[_Member] = []
    seen: set[Attributes] = set()
    swap_of: dict[Attributes, list[Attributes]] = {}  # attributes -> species it would be a swap of

    def admit(attributes: Attributes) -> None:
        seen.add(attributes)
        for image in _swap_images(attributes):
            swap_of.setdefault(image, []).append(attributes)

    family = 0
    while len(chosen) < classes:
        wants_swap = bool(rng.random() < swap_share)
        founder = random_attributes(rng)
        while founder in seen or founder in swap_of or (wants_swap and not valid_swaps(founder)):
            founder = random_attributes(rng)
        admit(founder)
        variants = []
        for _ in range(int(rng.integers(variant_range[0], variant_range[1] + 1))):
            variant = _variant(founder, rng)
            if variant not in seen and variant not in swap_of:
                admit(variant)
                variants.append(_Member(family, variant, "one-attribute", len(chosen)))
        swaps = []
        if wants_swap:
            pairs = valid_swaps(founder)
            pair = pairs[int(rng.integers(len(pairs)))]
            swap = swapped(founder, pair)
            if swap not in seen and swap_of.get(swap) == [founder]:
                admit(swap)
                swaps.append(_Member(family, swap, "swap", len(chosen), pair))
        room = min(classes - len(chosen) - max(0, 2 - family), max(2, classes // 4))
        chosen.extend(([_Member(family, founder, "founder", None)] + swaps + variants)[:max(room, 0)])
        family += 1
    return chosen


def _descriptors(attributes: Attributes) -> list[str]:
    """Name descriptors in CUB's style, one per attribute (``Red_crowned``, ``Long_tailed``)."""
    a = attributes
    words = [f"{a.bill_colour.title()}_billed", f"{a.crown_colour.title()}_crowned",
             f"{a.belly_colour.title()}_bellied", f"{a.wing_colour.title()}_winged",
             f"{a.bill_length.title()}_billed", f"{a.tail_length.title()}_tailed"]
    if a.wing_bars:
        words.append("Barred")
    if a.eye_ring:
        words.append("Spectacled")
    return words


def species_name(attributes: Attributes, taken: set[str], rng: np.random.Generator) -> str:
    """A unique made-up name built from the species' own attributes."""
    descriptors = _descriptors(attributes)
    descriptors = [descriptors[i] for i in rng.permutation(len(descriptors))]
    nouns = NOUNS[attributes.bill_shape]
    candidates = itertools.chain(
        (f"{d}_{n}" for d in descriptors for n in nouns),
        (f"{p}_{d}_{n}" for p in PREFIXES for d in descriptors for n in nouns),
        (f"{descriptors[0]}_{nouns[0]}_{k}" for k in itertools.count(2)),
    )
    return next(name for name in candidates if name not in taken)


def build_species(classes: int, seed: int = 0, swap_share: float = SWAP_PROBABILITY,
                  variants: tuple[int, int] = VARIANTS) -> list[Species]:
    """The ``classes`` species of a synthetic CUB, deterministic in ``seed``.

    Args:
        classes: number of species (class ids 1..classes).
        seed: random seed (default 0).
        swap_share: chance that a family gets a swap variant (default :data:`SWAP_PROBABILITY`);
            1.0 with few variants gives many swap pairs (binding cases) per split.
        variants: ``(low, high)`` one-attribute variants per family (default :data:`VARIANTS`);
            ``(0, 1)`` makes small families, so a split of a given size holds more of them.

    Returns:
        Species in class-id order; families have adjacent ids (founder first, then its swap
        variant, then its one-attribute variants). There are at least three families. Song
        base pitches are spread evenly on a log scale over 1.5-8 kHz and assigned in a seeded
        random order, so any two species have different pitch and the extremes differ by a
        factor of ~5.
    """
    rng = np.random.default_rng([seed, 0x5BEC1E5])
    if not 0.0 <= swap_share <= 1.0:
        raise ValueError(f"build_species: swap_share={swap_share}; need a probability in [0, 1]")
    if not 0 <= variants[0] <= variants[1] <= 3:
        raise ValueError(f"build_species: variants={tuple(variants)}; need 0 <= low <= high <= 3")
    members = _attribute_families(classes, rng, swap_share, tuple(variants))
    pitch_rank = rng.permutation(classes)
    taken: set[str] = set()
    species = []
    for index, member in enumerate(members):
        name = species_name(member.attributes, taken, rng)
        taken.add(name)
        song = random_song(rng, pitch_fraction=pitch_rank[index] / max(classes - 1, 1))
        variant_of = None if member.founder_index is None else member.founder_index + 1
        species.append(Species(index + 1, name, member.family, member.attributes, song, member.kind, variant_of,
                               member.swapped))
    return species


def one_attribute_partners(species: list[Species]) -> dict[int, list[int]]:
    """class id -> class ids of the species that differ from it in exactly one attribute."""
    partners: dict[int, list[int]] = {s.class_id: [] for s in species}
    values = {s.class_id: s.attributes.values() for s in species}
    for position in range(len(ATTRIBUTES)):
        groups: dict[tuple, list[int]] = {}
        for class_id, row in values.items():  # same key = equal in every other attribute
            groups.setdefault(row[:position] + row[position + 1:], []).append(class_id)
        for members in groups.values():
            for class_id in members:
                partners[class_id] += [other for other in members if other != class_id]
    return {class_id: sorted(ids) for class_id, ids in partners.items()}


def swap_partners(species: list[Species]) -> dict[int, list[int]]:
    """class id -> class ids of the species equal to it except for the values of two colour
    attributes exchanged (symmetric; computed from the attributes alone, like
    :func:`one_attribute_partners`)."""
    by_attributes = {s.attributes: s.class_id for s in species}
    partners: dict[int, list[int]] = {}
    for s in species:
        found = (by_attributes.get(image) for image in _swap_images(s.attributes))
        partners[s.class_id] = sorted(class_id for class_id in found if class_id is not None)
    return partners
