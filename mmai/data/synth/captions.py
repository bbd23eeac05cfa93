"""Captions in the style of the CUB ten-captions-per-image release (Reed et al., CVPR 2016).

Each caption names 2-5 attributes that are visible in its image (no colours in a grayscale
picture, nothing about a part hidden behind leaves), with varied sentence templates and synonyms
(bill/beak, crown/cap, belly/breast/abdomen, ...). Captions are lower case, describe what an
annotator sees, and never contain the species name.
"""

from __future__ import annotations

import numpy as np

from mmai.data.synth.species import Attributes

COLOUR_ATTRIBUTES = ("bill_colour", "crown_colour", "wing_colour", "belly_colour")
#: Attributes that a hidden part takes out of the captions.
PART_ATTRIBUTES = {
    "bill": ("bill_shape", "bill_length", "bill_colour"),
    "head": ("crown_colour", "eye_ring"),
    "wing": ("wing_colour", "wing_bars"),
    "tail": ("tail_length",),
}
BILL_ATTRIBUTES = ("bill_length", "bill_shape", "bill_colour")

COLOUR_WORDS = {"grey": ("grey", "gray"), "buff": ("buff", "tan", "cream colored")}
BILL_WORDS = ("bill", "beak")
SHAPE_WORDS = {"straight": ("straight", "straight pointed"), "curved": ("curved", "down curved", "decurved"),
               "hooked": ("hooked", "hook tipped"), "conical": ("conical", "cone shaped", "thick conical")}
LENGTH_WORDS = {"short": ("short", "small", "stubby"), "long": ("long", "long", "large")}
CROWN_WORDS = ("crown", "cap", "head top")
BELLY_WORDS = ("belly", "breast", "abdomen", "underside")
WING_WORDS = ("wings", "wing feathers", "secondaries")
SIZE_WORDS = ("small", "little", "medium sized", "tiny", "plump", "")


def _word(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _colour(rng: np.random.Generator, name: str) -> str:
    return _word(rng, COLOUR_WORDS.get(name, (name,)))


def _bill_phrase(a: Attributes, chosen: list[str], rng) -> str:
    words = []
    if "bill_length" in chosen:
        words.append(_word(rng, LENGTH_WORDS[a.bill_length]))
    if "bill_shape" in chosen:
        words.append(_word(rng, SHAPE_WORDS[a.bill_shape]))
    if "bill_colour" in chosen:
        words.append(_colour(rng, a.bill_colour))
    noun = _word(rng, BILL_WORDS)
    if len(words) >= 2 and rng.random() < 0.4:
        return f"a {noun} that is {', '.join(words[:-1])} and {words[-1]}"
    return f"{_article(words[0])} {' '.join(words)} {noun}"


def _wing_phrase(a: Attributes, chosen: list[str], rng) -> str:
    colour = _colour(rng, a.wing_colour) if "wing_colour" in chosen else ""
    wings = _word(rng, WING_WORDS)
    if "wing_bars" not in chosen:
        return f"{colour} {wings}" if rng.random() < 0.6 else f"{wings} that are {colour}"
    if a.wing_bars:
        bars = _word(rng, ("white wing bars", "wing bars", "wingbars", "two white bars"))
        return f"{colour} {wings} with {bars}" if colour else bars
    plain = _word(rng, ("without wing bars", "with no wing bars"))
    return f"{colour} {wings} {plain}" if colour else _word(rng, ("no wing bars", "plain wings"))


def _single_phrase(a: Attributes, name: str, rng) -> str:
    if name == "crown_colour":
        return _coloured_part(_colour(rng, a.crown_colour), _word(rng, CROWN_WORDS), rng)
    if name == "belly_colour":
        return _coloured_part(_colour(rng, a.belly_colour), _word(rng, BELLY_WORDS), rng)
    if name == "tail_length":
        return _word(rng, (f"a {a.tail_length} tail", f"{a.tail_length} tail feathers",
                           f"a tail that is {a.tail_length}"))
    if a.eye_ring:  # eye_ring
        return _word(rng, ("a white eye ring", "an eye ring", "a white ring around its eye", "a white eyering"))
    return _word(rng, ("no eye ring", "no ring around the eye"))


def _coloured_part(colour: str, part: str, rng) -> str:
    if rng.random() < 0.7:
        return f"{_article(colour)} {colour} {part}"
    return f"{_article(part)} {part} that is {colour}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _and(phrases: list[str], rng) -> str:
    if len(phrases) == 1:
        return phrases[0]
    comma = "," if len(phrases) > 2 and rng.random() < 0.3 else ""
    return f"{', '.join(phrases[:-1])}{comma} and {phrases[-1]}"


def _phrases(a: Attributes, chosen: list[str], rng) -> list[str]:
    """One noun phrase per group of chosen attributes (bill, wing, then single ones), shuffled."""
    phrases = []
    bill = [name for name in BILL_ATTRIBUTES if name in chosen]
    if bill:
        phrases.append(_bill_phrase(a, bill, rng))
    wing = [name for name in ("wing_colour", "wing_bars") if name in chosen]
    if wing:
        phrases.append(_wing_phrase(a, wing, rng))
    singles = [name for name in chosen if name not in BILL_ATTRIBUTES and name not in wing]
    phrases += [_single_phrase(a, name, rng) for name in singles]
    return [phrases[i] for i in rng.permutation(len(phrases))]


def _sentence(phrases: list[str], rng) -> str:
    size = _word(rng, SIZE_WORDS)
    bird = f"{size} bird" if size else "bird"
    templates = (
        "this bird has {list}.", "a {bird} with {list}.", "the bird has {list}.",
        "this is a {bird} with {list}.", "this {bird} has {list}.", "a bird with {list}.",
        "this {bird} has {list}", "a {bird} that has {list}.", "this particular bird has {list}.",
    )
    template = _word(rng, templates)
    text = template.format(bird=bird, list=_and(phrases, rng))
    return " ".join(text.split())


def visible_attributes(hidden_parts: set[str], grayscale: bool) -> list[str]:
    """The attribute names a caption of this picture may mention."""
    names = ["bill_shape", "bill_length", "bill_colour", "crown_colour", "wing_colour",
             "belly_colour", "tail_length", "wing_bars", "eye_ring"]
    hidden = {name for part in hidden_parts for name in PART_ATTRIBUTES[part]}
    if grayscale:
        hidden |= set(COLOUR_ATTRIBUTES)
    visible = [name for name in names if name not in hidden]
    return visible if len(visible) >= 2 else ["bill_shape", "tail_length"]


def image_captions(attributes: Attributes, rng: np.random.Generator, count: int = 10,
                   hidden_parts: set[str] | None = None, grayscale: bool = False) -> list[str]:
    """``count`` distinct-where-possible lower-case captions of one picture.

    Args:
        attributes: the species' attributes.
        rng: the image's caption generator.
        count: captions to write (default 10).
        hidden_parts: parts (bill, head, wing, tail) not to describe.
        grayscale: leave colours out.
    """
    visible = visible_attributes(hidden_parts or set(), grayscale)
    captions: list[str] = []
    for attempt in range(count * 4):
        if len(captions) == count:
            break
        k = int(rng.integers(2, min(5, len(visible)) + 1))
        chosen = [visible[i] for i in sorted(rng.choice(len(visible), size=k, replace=False))]
        caption = _sentence(_phrases(attributes, chosen, rng), rng)
        if caption not in captions or attempt >= count * 3:
            captions.append(caption)
    return captions
