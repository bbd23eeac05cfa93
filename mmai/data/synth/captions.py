"""Captions in the style of the CUB ten-captions-per-image release (Reed et al., CVPR 2016).

Each caption names 2-5 attributes that are visible in its image, with varied sentence templates
and synonyms (bill/beak, crown/cap, belly/breast/abdomen, ...). What is not visible is left out
(:data:`CONDITION_HIDDEN`): no colours in a grayscale picture; in low light no colour words at
all (not even the white of wing bars or an eye ring); under motion blur no eye ring, wing bars
or bill shape; for a distant bird also no bill length; nothing about a part hidden behind
leaves. Captions are lower case, describe what an annotator sees, and never contain the species
name.
"""

from __future__ import annotations

import numpy as np

from mmai.data.synth.species import Attributes

COLOUR_ATTRIBUTES = ("bill_colour", "crown_colour", "wing_colour", "belly_colour")
#: Every attribute a caption can state, in the order of :func:`visible_attributes` (and of the
#: bits of a caption's attribute mask, :func:`mmai.data.consistency.attribute_mask`).
CAPTION_ATTRIBUTES = ("bill_shape", "bill_length", "bill_colour", "crown_colour", "wing_colour",
                      "belly_colour", "tail_length", "wing_bars", "eye_ring")
#: Attributes that a hidden part takes out of the captions.
PART_ATTRIBUTES = {
    "bill": ("bill_shape", "bill_length", "bill_colour"),
    "head": ("crown_colour", "eye_ring"),
    "wing": ("wing_colour", "wing_bars"),
    "tail": ("tail_length",),
}
BILL_ATTRIBUTES = ("bill_length", "bill_shape", "bill_colour")
#: Photo condition (see :mod:`mmai.data.synth.diary`) -> attributes its captions leave out.
CONDITION_HIDDEN: dict[str, tuple[str, ...]] = {
    "clear": (),
    "low_light": COLOUR_ATTRIBUTES,
    "motion_blur": ("eye_ring", "wing_bars", "bill_shape"),
    "distant": ("eye_ring", "wing_bars", "bill_shape", "bill_length"),
    "occluded": (),  # the hidden parts say what is left out
}
#: Conditions whose captions use no colour word at all ("wing bars", not "white wing bars").
COLOURLESS = ("low_light",)

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


def _wing_phrase(a: Attributes, chosen: list[str], rng, colourless: bool = False) -> str:
    colour = _colour(rng, a.wing_colour) if "wing_colour" in chosen else ""
    wings = _word(rng, WING_WORDS)
    if "wing_bars" not in chosen:
        return f"{colour} {wings}" if rng.random() < 0.6 else f"{wings} that are {colour}"
    if a.wing_bars:
        bars = _word(rng, ("wing bars", "wingbars", "two wing bars", "barred wings") if colourless else
                     ("white wing bars", "wing bars", "wingbars", "two white bars"))
        return f"{colour} {wings} with {bars}" if colour else bars
    plain = _word(rng, ("without wing bars", "with no wing bars"))
    return f"{colour} {wings} {plain}" if colour else _word(rng, ("no wing bars", "plain wings"))


def _single_phrase(a: Attributes, name: str, rng, colourless: bool = False) -> str:
    if name == "crown_colour":
        return _coloured_part(_colour(rng, a.crown_colour), _word(rng, CROWN_WORDS), rng)
    if name == "belly_colour":
        return _coloured_part(_colour(rng, a.belly_colour), _word(rng, BELLY_WORDS), rng)
    if name == "tail_length":
        return _word(rng, (f"a {a.tail_length} tail", f"{a.tail_length} tail feathers",
                           f"a tail that is {a.tail_length}"))
    if a.eye_ring:  # eye_ring
        return _word(rng, ("an eye ring", "a ring around its eye", "an eyering") if colourless else
                     ("a white eye ring", "an eye ring", "a white ring around its eye", "a white eyering"))
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


def _phrases(a: Attributes, chosen: list[str], rng, colourless: bool = False) -> list[str]:
    """One noun phrase per group of chosen attributes (bill, wing, then single ones), shuffled."""
    phrases = []
    bill = [name for name in BILL_ATTRIBUTES if name in chosen]
    if bill:
        phrases.append(_bill_phrase(a, bill, rng))
    wing = [name for name in ("wing_colour", "wing_bars") if name in chosen]
    if wing:
        phrases.append(_wing_phrase(a, wing, rng, colourless))
    singles = [name for name in chosen if name not in BILL_ATTRIBUTES and name not in wing]
    phrases += [_single_phrase(a, name, rng, colourless) for name in singles]
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


def visible_attributes(hidden_parts: set[str], grayscale: bool, condition: str = "clear") -> list[str]:
    """The attribute names a caption of this picture may mention (possibly only one: a distant
    bird in grayscale shows its tail length and nothing else)."""
    names = list(CAPTION_ATTRIBUTES)
    hidden = {name for part in hidden_parts for name in PART_ATTRIBUTES[part]} | set(CONDITION_HIDDEN[condition])
    if grayscale:
        hidden |= set(COLOUR_ATTRIBUTES)
    return [name for name in names if name not in hidden]


def image_captions(attributes: Attributes, rng: np.random.Generator, count: int = 10,
                   hidden_parts: set[str] | None = None, grayscale: bool = False,
                   condition: str = "clear") -> list[str]:
    """``count`` distinct-where-possible lower-case captions of one picture (the texts of
    :func:`named_captions`)."""
    return [caption for caption, _ in named_captions(attributes, rng, count, hidden_parts, grayscale, condition)]


def named_captions(attributes: Attributes, rng: np.random.Generator, count: int = 10,
                   hidden_parts: set[str] | None = None, grayscale: bool = False,
                   condition: str = "clear") -> list[tuple[str, tuple[str, ...]]]:
    """``count`` distinct-where-possible lower-case captions of one picture, each with the names
    of the attributes it states (in :data:`CAPTION_ATTRIBUTES` order): what the caption says of
    the bird, written beside the captions in ``mmai_extras/caption_attributes.jsonl``.

    Args:
        attributes: the species' attributes.
        rng: the image's caption generator.
        count: captions to write (default 10).
        hidden_parts: parts (bill, head, wing, tail) not to describe.
        grayscale: leave colours out.
        condition: the photo's condition (:data:`CONDITION_HIDDEN` says what it leaves out).
    """
    if condition not in CONDITION_HIDDEN:
        raise ValueError(f"image_captions: condition={condition!r}; expected one of {sorted(CONDITION_HIDDEN)}")
    visible = visible_attributes(hidden_parts or set(), grayscale, condition)
    colourless = condition in COLOURLESS
    captions: list[tuple[str, tuple[str, ...]]] = []
    if not visible:  # everything hidden (not drawn by the generator, but keep the contract)
        return [("a bird mostly hidden behind leaves.", ())] * count
    for attempt in range(count * 4):
        if len(captions) == count:
            break
        k = int(rng.integers(min(2, len(visible)), min(5, len(visible)) + 1))
        chosen = [visible[i] for i in sorted(rng.choice(len(visible), size=k, replace=False))]
        caption = _sentence(_phrases(attributes, chosen, rng, colourless), rng)
        if all(caption != text for text, _ in captions) or attempt >= count * 3:
            captions.append((caption, tuple(chosen)))
    return captions
