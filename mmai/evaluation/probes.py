"""Probes that ask one question of a ranking each: attribute binding and burst recovery.

**Binding probe** (ARO's attribution accuracy, Yuksekgonul et al., ICLR 2023, in retrieval
form). A *swap pair* is two species equal in everything except that the colours of two parts are
exchanged ("an orange bill and a grey belly" vs "a grey bill and an orange belly"): the same bag
of words. For every caption of an image whose species has a swap partner in the gallery and which
names a swapped colour, and for every gallery image of the partner species (the *confuser*), the
probe asks whether the true image ranks above the confuser. A model that ignores which part has
which colour scores about 50%; one that binds colour to part scores near 100%.

A caption *names a swapped colour* when it contains one of the two swapped colour words (with the
caption vocabulary's synonyms: grey/gray, buff/tan/cream colored) and that colour is not also the
colour of another, unswapped part of the species (then the word would fit both birds).

**Burst recovery** (what Graph-Augmented Retrieval is for). A *sighting* is a burst of photos of
one bird within two minutes; some of its photos are *hard* (low light, motion blur, distance,
occlusion). For every caption of a clear photo in a sighting that also holds hard photos, the
probe measures the fraction of those hard photos that the ranking places in its top ``k``: the
memories that are hard to find by content but easy to find through their neighbours.

Both work on gallery positions: ``rankings`` is ``(Nt, R)`` positions, best first (``-1`` pads),
as :func:`mmai.retrieval.two_stage.evaluate_two_stage` and GAR return them. A list-position probe can only
see what a stage re-orders: a re-ranker that re-scores the top 8 changes a pair only when both
images are in those 8 (a few % of pairs). The **direct** binding probe (:func:`direct_outcomes`)
therefore scores every triple with each stage's own scorer (stage-1 cosine, the re-ranker's match
logit, the two-stage score), as ARO does; both are reported, labelled. The triples of one swap
pair are not independent samples: intervals resample swap pairs (:attr:`BindingProbe.units`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from mmai.data.synth.captions import COLOUR_ATTRIBUTES
from mmai.data.synth.captions import COLOUR_WORDS as COLOUR_SYNONYMS  # words a caption uses for a colour value

CLEAR = "clear"


@dataclasses.dataclass(frozen=True)
class BindingProbe:
    """The probe's (caption, true image, confuser image) triples over one gallery.

    Attributes:
        text_rows: ``(P,)`` caption rows (query positions).
        true_rows: ``(P,)`` gallery position of each caption's own image.
        confuser_rows: ``(P,)`` gallery position of one image of the swap partner species.
        words: ``(P,)`` the swapped colour word the caption names (the first one, for panels).
        units: ``(P,)`` the swap pair of each triple, ``min(class) * 100000 + max(class)`` of the
            two species: the independent unit of the probe's intervals.
    """

    text_rows: np.ndarray
    true_rows: np.ndarray
    confuser_rows: np.ndarray
    words: list[str]
    units: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.text_rows.shape[0])

    @property
    def captions(self) -> np.ndarray:
        """The distinct probe captions, in row order."""
        return np.unique(self.text_rows)


def _colour_pattern(value: str) -> re.Pattern:
    words = COLOUR_SYNONYMS.get(value, (value,))
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in words) + r")\b")


def probe_words(attributes: dict, partner: dict) -> list[str]:
    """The colour values of ``attributes`` that a caption can name to tell it from ``partner``
    (its swap partner): the swapped values that no unswapped part of the species also has."""
    swapped = [name for name in COLOUR_ATTRIBUTES if attributes[name] != partner[name]]
    others = {attributes[name] for name in COLOUR_ATTRIBUTES if name not in swapped}
    return sorted({attributes[name] for name in swapped} - others)


def binding_probe(captions: Sequence[str], text_image_ids, image_ids, class_ids, species: dict) -> BindingProbe:
    """Build the probe's triples for one gallery.

    Args:
        captions: ``(Nt,)`` caption texts (query rows).
        text_image_ids: ``(Nt,)`` the image id of each caption.
        image_ids, class_ids: ``(Ni,)`` gallery images (their positions are the ranking's entries).
        species: the ``species_attributes.json`` of a synthetic CUB (``species[].class_id``,
            ``attributes``, ``swap_partners``); a file without ``swap_partners`` gives an empty probe.
    """
    image_ids, class_ids = np.asarray(image_ids), np.asarray(class_ids)
    text_image_ids = np.asarray(text_image_ids)
    by_class = {int(entry["class_id"]): entry for entry in species.get("species", [])}
    position = {int(image_id): row for row, image_id in enumerate(image_ids)}
    gallery_of = {int(c): np.flatnonzero(class_ids == c) for c in np.unique(class_ids)}
    rows: list[tuple[int, int, int, str, int]] = []
    patterns: dict[str, re.Pattern] = {}
    for text_row, (caption, image_id) in enumerate(zip(captions, text_image_ids)):
        true_row = position.get(int(image_id))
        if true_row is None:
            continue
        entry = by_class.get(int(class_ids[true_row]))
        for partner_id in (entry or {}).get("swap_partners", []):
            confusers = gallery_of.get(int(partner_id))
            if confusers is None:
                continue
            words = probe_words(entry["attributes"], by_class[int(partner_id)]["attributes"])
            named = [word for word in words if patterns.setdefault(word, _colour_pattern(word)).search(caption.lower())]
            if named:
                own = int(class_ids[true_row])
                unit = min(own, int(partner_id)) * 100000 + max(own, int(partner_id))
                rows += [(text_row, true_row, int(confuser), named[0], unit) for confuser in confusers]
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return BindingProbe(empty, empty.copy(), empty.copy(), [], empty.copy())
    text_rows, true_rows, confuser_rows, words, units = zip(*rows)
    return BindingProbe(np.array(text_rows), np.array(true_rows), np.array(confuser_rows), list(words),
                        np.array(units, dtype=np.int64))


def direct_outcomes(true_scores, confuser_scores) -> np.ndarray:
    """``(P,)`` the direct probe: 1 where a scorer gives the caption's own image a higher score than
    the confuser, 0 where lower, 0.5 on a tie (scores of the probe's triples, any scale)."""
    true_scores, confuser_scores = np.asarray(true_scores, np.float64), np.asarray(confuser_scores, np.float64)
    if true_scores.shape != confuser_scores.shape:
        raise ValueError(f"direct_outcomes: {true_scores.shape} true and {confuser_scores.shape} confuser scores")
    return np.where(true_scores > confuser_scores, 1.0, np.where(true_scores < confuser_scores, 0.0, 0.5))


def _positions(rankings: np.ndarray, query_rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Position of ``items[p]`` in ranking row ``query_rows[p]``, or ``R`` (beyond the list)."""
    rows = rankings[query_rows]  # (P, R)
    found = rows == items[:, None]  # (P, R)
    return np.where(found.any(axis=1), found.argmax(axis=1), rankings.shape[1])


def pair_outcomes(rankings, probe: BindingProbe, scores_fn=None) -> np.ndarray:
    """``(P,)`` 1 where the true image ranks above the confuser, 0 where below, 0.5 on a tie.

    Args:
        rankings: ``(Nt, R)`` gallery positions per caption, best first.
        probe: from :func:`binding_probe`.
        scores_fn: ``scores_fn(text_rows, image_rows) -> (P,)`` stage-1 similarity, used to order
            the two when neither is in the list (without it, such a pair counts 0.5).
    """
    rankings = np.asarray(rankings)
    if len(probe) == 0:
        return np.zeros(0)
    true_at = _positions(rankings, probe.text_rows, probe.true_rows)
    confuser_at = _positions(rankings, probe.text_rows, probe.confuser_rows)
    outcome = np.where(true_at < confuser_at, 1.0, np.where(true_at > confuser_at, 0.0, 0.5))
    beyond = (true_at == rankings.shape[1]) & (confuser_at == rankings.shape[1])
    if scores_fn is not None and beyond.any():
        true_score = np.asarray(scores_fn(probe.text_rows[beyond], probe.true_rows[beyond]))
        confuser_score = np.asarray(scores_fn(probe.text_rows[beyond], probe.confuser_rows[beyond]))
        outcome[beyond] = np.where(true_score > confuser_score, 1.0, np.where(true_score < confuser_score, 0.0, 0.5))
    return outcome


def per_caption(values: np.ndarray, text_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(captions, means)``: pair outcomes averaged per probe caption (the bootstrap's queries)."""
    captions, inverse = np.unique(text_rows, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=captions.shape[0])
    return captions, sums / np.bincount(inverse, minlength=captions.shape[0])


@dataclasses.dataclass(frozen=True)
class BurstProbe:
    """Queries and targets of burst recovery.

    Attributes:
        text_rows: ``(Q,)`` captions of clear photos in sightings that hold hard photos.
        targets: for each query, the gallery positions of its sighting's hard photos.
    """

    text_rows: np.ndarray
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.text_rows.shape[0])


def burst_probe(text_image_ids, image_ids, sighting_ids, conditions: Sequence[str]) -> BurstProbe:
    """Build the burst-recovery queries for one gallery.

    Args:
        text_image_ids: ``(Nt,)`` image id of each caption.
        image_ids: ``(Ni,)`` gallery image ids; sighting_ids ``(Ni,)`` (negative = unknown);
            conditions ``(Ni,)`` (``"clear"`` or a hard condition; ``""`` unknown).
    """
    image_ids, sighting_ids = np.asarray(image_ids), np.asarray(sighting_ids)
    hard = np.array([condition not in (CLEAR, "") for condition in conditions], dtype=bool)
    clear = np.array([condition == CLEAR for condition in conditions], dtype=bool)
    position = {int(image_id): row for row, image_id in enumerate(image_ids)}
    hard_of: dict[int, np.ndarray] = {}
    for sighting in np.unique(sighting_ids[hard & (sighting_ids >= 0)]):
        hard_of[int(sighting)] = np.flatnonzero(hard & (sighting_ids == sighting))
    rows, targets = [], []
    for text_row, image_id in enumerate(np.asarray(text_image_ids)):
        row = position.get(int(image_id))
        if row is None or not clear[row] or int(sighting_ids[row]) not in hard_of:
            continue
        rows.append(text_row)
        targets.append(hard_of[int(sighting_ids[row])])
    return BurstProbe(np.array(rows, dtype=np.int64), targets)


def burst_recovery(rankings, probe: BurstProbe, k: int = 10) -> np.ndarray:
    """``(Q,)`` per query: the fraction of its sighting's hard photos in the ranking's top ``k``."""
    rankings = np.asarray(rankings)[:, :k]
    return np.array([np.isin(targets, rankings[row]).mean() for row, targets in zip(probe.text_rows, probe.targets)],
                    dtype=np.float64)
