"""``synthesize``: write a complete synthetic CUB-200-2011 + caption release + MMAI extras.

The diary is built first: it decides each photo's sighting and condition, which the drawing
and the captions need. Per-image work (drawing, JPEG, captions, song) then runs in a process
pool. Every image draws its randomness from its own generators seeded by ``(seed, image_id,
stream)`` and what a sighting's photos share from ``(seed, sighting_id, LOOK)``, so the files
are byte-identical whatever the number of workers or the order they finish in.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from mmai import __version__
from mmai.data.synth.captions import named_captions
from mmai.data.synth.diary import build_diary
from mmai.data.synth.draw import draw_bird, random_look
from mmai.data.synth.layout import (CAPTIONS_DIR, CUB_DIR, EXTRAS_DIR, PlannedImage, class_splits, plan_images,
                                    write_boxes, write_class_lists, write_cub_tables)
from mmai.data.synth.readme import cub_readme, extras_readme
from mmai.data.synth.song import SAMPLE_RATE, render_song
from mmai.data.synth.species import (ATTRIBUTES, SWAP_PROBABILITY, VARIANTS, Species, build_species,
                                     one_attribute_partners, swap_partners, swapped, valid_swaps)

#: 3: caption_attributes.jsonl (what each caption states) and the family shape options
#: (``swap_share``, ``variants``); 2: swap variants and their fields in species_attributes.json,
#: family-wise class splits, sightings and photo conditions in episodes.jsonl (1: MMAI before these).
FORMAT_VERSION = 3
CAPTION_ATTRIBUTES_FILE = "caption_attributes.jsonl"
#: Counterfactual twins of the training photos (``twins=True``): the table and the image folder.
TWINS_FILE, TWINS_DIR = "twins.jsonl", "twins"
JPEG_QUALITY = 90
#: Image ids with ``image_id % GRAYSCALE_EVERY == GRAYSCALE_OFFSET`` are grayscale (~1 %, as in
#: real CUB); a fixed rule, so even a 5-image data set has one.
GRAYSCALE_EVERY = 97
GRAYSCALE_OFFSET = 5
MARKER = "synth_args.json"
_DRAW, _CAPTIONS, _SONG, _TWIN = 0, 1, 2, 3  # per-image random streams
_LOOK = 0x51647  # per-sighting stream (third seed word; never one of the per-image streams)


@dataclasses.dataclass
class SynthSummary:
    """What :func:`synthesize` wrote.

    Args:
        out: the data set root (holds ``CUB_200_2011/``, ``cvpr2016_cub/``, ``mmai_extras/``).
        classes: number of species.
        images: number of images.
        captions: number of caption lines (images × captions_per_image).
        audio_clips: number of WAV files (0 without audio).
        seconds: wall time of the call.
        megabytes: size of everything under ``out`` (MB = 10**6 bytes).
        reused: True when a complete data set with the same arguments was already there.
    """

    out: Path
    classes: int
    images: int
    captions: int
    audio_clips: int
    seconds: float
    megabytes: float
    reused: bool = False


def is_grayscale(image_id: int) -> bool:
    """Whether image ``image_id`` is saved as a single-channel (``L``) JPEG."""
    return image_id % GRAYSCALE_EVERY == GRAYSCALE_OFFSET


def _check_arguments(classes: int, images: int, captions_per_image: int, image_size: int, seed: int) -> None:
    problems = []
    if not 4 <= classes <= 999:
        problems.append(f"classes={classes}: need 4 to 999 (train, val and test each need a class; "
                        "class folders have 3-digit ids)")
    if images < classes:
        problems.append(f"images={images}: need at least one image per class (images >= classes={classes})")
    if captions_per_image < 1:
        problems.append(f"captions_per_image={captions_per_image}: need at least 1")
    if image_size < 32:
        problems.append(f"image_size={image_size}: need at least 32 pixels for the bill to be visible")
    if seed < 0:
        problems.append(f"seed={seed}: need a non-negative integer")
    if problems:
        raise ValueError("synthesize: invalid arguments: " + "; ".join(problems))


def _folder_megabytes(root: Path) -> float:
    total = sum(entry.stat().st_size for entry in root.rglob("*") if entry.is_file())
    return round(total / 1e6, 1)


def _existing(out: Path, record: dict, started: float) -> SynthSummary | None:
    """The summary of a finished identical run in ``out``; raises if ``out`` holds anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthesize: out={out} is a file; pick an empty or new directory")
    marker = out / EXTRAS_DIR / MARKER
    if marker.exists():
        found = json.loads(marker.read_text(encoding="utf-8"))
        found_args = {key: value for key, value in found.items() if key != "mmai_version"}
        if found_args.get("format_version") != record["format_version"]:
            made_by = f"MMAI {found['mmai_version']}" if found.get("mmai_version") else "another MMAI"
            age = "an older" if (found_args.get("format_version") or 0) < record["format_version"] else "a newer"
            raise ValueError(
                f"synthesize: {out} already holds a synthetic CUB made with other arguments: format version "
                f"{found_args.get('format_version')!r} there (made by {made_by}, {age} format) vs "
                f"{record['format_version']} written by this MMAI; delete {out} or pick another directory")
        if found_args == record:
            return SynthSummary(out, record["classes"], record["images"],
                                record["images"] * record["captions_per_image"],
                                record["images"] if record["audio"] else 0,
                                round(time.perf_counter() - started, 3), _folder_megabytes(out), reused=True)
        differing = sorted(key for key in set(found_args) | set(record) if found_args.get(key) != record.get(key))
        details = ", ".join(f"{key}: {found_args.get(key)!r} there vs {record.get(key)!r} asked" for key in differing)
        raise ValueError(f"synthesize: {out} already holds a synthetic CUB made with other arguments "
                         f"({details}); pick an empty directory or delete {out}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"synthesize: {out} is not empty and holds no complete synthetic CUB (no {marker}); "
                         "pick an empty directory (or delete this one if it is a broken earlier run)")
    return None


_WORKER: dict = {}


def _init_worker(out: Path, species: list[Species], shots: dict[int, tuple[int, str]], captions_per_image: int,
                 image_size: int, seed: int, audio: bool, twin_classes: frozenset = frozenset()) -> None:
    _WORKER.update(out=out, species={s.class_id: s for s in species}, shots=shots,
                   captions_per_image=captions_per_image, image_size=image_size, seed=seed, audio=audio,
                   twin_classes=twin_classes, pairs=_twin_pairs(species))


def _twin_pairs(species: list[Species]) -> dict[int, tuple[str, str]]:
    """class id -> the colour pair its twins exchange: a swap pair's own pair (so the twin of a
    founder's photo looks like its swap partner), else none (:func:`twin_pair` draws one)."""
    pairs = {s.class_id: s.swapped for s in species if s.swapped}
    for s in species:
        if s.kind == "swap" and s.variant_of is not None:
            pairs.setdefault(s.variant_of, s.swapped)
    return pairs


def twin_pair(species: Species, own_pair: tuple[str, str] | None, rng: np.random.Generator) -> tuple[str, str] | None:
    """The two colour attributes a photo's counterfactual twin exchanges: the species' swap pair
    when it has one, else a valid pair drawn by ``rng`` (None when no pair is valid)."""
    if own_pair is not None:
        return tuple(own_pair)
    pairs = valid_swaps(species.attributes)
    return pairs[int(rng.integers(len(pairs)))] if pairs else None


def render_twin(attributes, pair: tuple[str, str], image_id: int, seed: int, image_size: int, grayscale: bool,
                condition: str, look):
    """The photo of ``image_id`` drawn again with the colours of ``pair`` exchanged: the same
    random streams, so pose, framing, background, perch, light and condition are identical and
    only the pixels of the parts painted with those two colours change (TripletCLIP's
    counterfactual image, made exact by the renderer; elsewhere a pixel can move by one grey level,
    since the exposure jitter pivots on the image's mean)."""
    return draw_bird(swapped(attributes, pair), np.random.default_rng([seed, image_id, _DRAW]), image_size,
                     grayscale, condition, look)


def _render(planned: PlannedImage) -> tuple[int, tuple, dict, list, tuple | None]:
    """Draw, caption and sing one image (and its twin, for a training class when asked); returns
    (image_id, bird box, part boxes, the attribute names each caption states, the twin's pair)."""
    state = _WORKER
    species = state["species"][planned.class_id]
    grayscale = is_grayscale(planned.image_id)
    sighting, condition = state["shots"][planned.image_id]
    seed = [state["seed"], planned.image_id]
    look = random_look(np.random.default_rng([state["seed"], sighting, _LOOK]))
    drawing = draw_bird(species.attributes, np.random.default_rng(seed + [_DRAW]), state["image_size"], grayscale,
                        condition, look)
    drawing.image.save(state["out"] / CUB_DIR / "images" / f"{planned.relpath}.jpg", quality=JPEG_QUALITY)
    named = named_captions(species.attributes, np.random.default_rng(seed + [_CAPTIONS]),
                           state["captions_per_image"], drawing.hidden_parts, grayscale, condition)
    text = state["out"] / CAPTIONS_DIR / "text_c10" / f"{planned.relpath}.txt"
    text.write_text("".join(f"{caption}\n" for caption, _ in named), encoding="utf-8")
    if state["audio"]:
        clip = render_song(species.song, np.random.default_rng(seed + [_SONG]))
        soundfile.write(state["out"] / EXTRAS_DIR / "audio" / f"{planned.relpath}.wav", clip, SAMPLE_RATE,
                        subtype="PCM_16", format="WAV")
    pair = None
    if planned.class_id in state["twin_classes"] and not grayscale and condition != "low_light":  # colours visible
        pair = twin_pair(species, state["pairs"].get(planned.class_id),
                         np.random.default_rng(seed + [_TWIN]))
        if pair is not None:
            twin = render_twin(species.attributes, pair, planned.image_id, state["seed"], state["image_size"],
                               grayscale, condition, look)
            twin.image.save(state["out"] / EXTRAS_DIR / TWINS_DIR / f"{planned.relpath}.jpg", quality=JPEG_QUALITY)
    return planned.image_id, drawing.bird_box, drawing.part_boxes, [list(names) for _, names in named], pair


def _render_all(planned: list[PlannedImage], init_args: tuple, workers: int, progress: bool):
    """Run :func:`_render` over every image (in a pool when ``workers > 1``), results by image id."""
    bar = tqdm(total=len(planned), desc="synthesising CUB", unit="img", disable=not progress)
    results = {}
    if workers <= 1:
        _init_worker(*init_args)
        for item in planned:
            image_id, box, parts, stated, pair = _render(item)
            results[image_id] = (box, parts, stated, pair)
            bar.update()
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, _init_worker, init_args) as pool:
            for image_id, box, parts, stated, pair in pool.imap_unordered(_render, planned, chunksize=16):
                results[image_id] = (box, parts, stated, pair)
                bar.update()
    bar.close()
    return results


def _species_json(species: list[Species], homes: dict[int, list[str]]) -> dict:
    partners, swaps = one_attribute_partners(species), swap_partners(species)
    return {
        "format_version": FORMAT_VERSION,
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
        "species": [{"class_id": s.class_id, "class_dir": s.class_dir, "name": s.name, "family": s.family,
                     "kind": s.kind, "variant_of": s.variant_of,
                     "swapped": list(s.swapped) if s.swapped else None,
                     "attributes": dataclasses.asdict(s.attributes), "one_attribute_partners": partners[s.class_id],
                     "swap_partners": swaps[s.class_id],
                     "places": homes[s.class_id], "song": dataclasses.asdict(s.song)} for s in species],
    }


def _make_folders(out: Path, species: list[Species], audio: bool, twin_classes: frozenset = frozenset()) -> None:
    for s in species:
        (out / CUB_DIR / "images" / s.class_dir).mkdir(parents=True, exist_ok=True)
        (out / CAPTIONS_DIR / "text_c10" / s.class_dir).mkdir(parents=True, exist_ok=True)
        if s.class_id in twin_classes:
            (out / EXTRAS_DIR / TWINS_DIR / s.class_dir).mkdir(parents=True, exist_ok=True)
        if audio:
            (out / EXTRAS_DIR / "audio" / s.class_dir).mkdir(parents=True, exist_ok=True)


def synthesize(out: Path, classes: int = 200, images: int = 11788, captions_per_image: int = 10,
               image_size: int = 128, seed: int = 0, audio: bool = True, workers: int | None = None,
               progress: bool = True, swap_share: float = SWAP_PROBABILITY,
               variants: tuple[int, int] = VARIANTS, twins: bool = False) -> SynthSummary:
    """Write a synthetic CUB-200-2011 with captions, songs and a diary under ``out``.

    Args:
        out: an empty or new directory (default layout: ``out/CUB_200_2011``, ``out/cvpr2016_cub``,
            ``out/mmai_extras``).
        classes: number of species, 4-999 (default 200, as CUB).
        images: number of images, spread evenly over the classes (default 11788, as CUB).
        captions_per_image: caption lines per image (default 10, as the caption release).
        image_size: side of the square JPEGs in pixels (default 128).
        seed: random seed; the same arguments give byte-identical files (default 0).
        audio: also write one song WAV per image (default True).
        workers: processes for the per-image work (default None: ``os.cpu_count()``).
        progress: show a tqdm progress bar (default True).
        swap_share: chance that a family gets a swap variant (default 0.75; 1.0 for many binding
            cases, see :func:`~mmai.data.synth.species.build_species`).
        variants: ``(low, high)`` one-attribute variants per family (default ``(1, 3)``; ``(0, 1)``
            gives small families, so each split holds more of them and more swap pairs).
        twins: also render each training-split photo's counterfactual twin (two part colours
            exchanged, everything else identical; :func:`render_twin`) into ``mmai_extras/twins/``
            with ``twins.jsonl``: image negatives that only binding can tell apart (default False).

    Returns:
        A :class:`SynthSummary`. If ``out`` already holds a complete data set made with the same
        arguments, nothing is rewritten and the summary has ``reused=True``.

    Raises:
        ValueError: on invalid arguments, or when ``out`` holds anything but such a data set.
    """
    started = time.perf_counter()
    _check_arguments(classes, images, captions_per_image, image_size, seed)
    out = Path(out).expanduser()
    record = {"format_version": FORMAT_VERSION, "classes": classes, "images": images,
              "captions_per_image": captions_per_image, "image_size": image_size, "seed": seed, "audio": audio,
              "swap_share": float(swap_share), "variants": [int(v) for v in variants], "twins": bool(twins)}
    existing = _existing(out, record, started)
    if existing is not None:
        return existing
    species = build_species(classes, seed, swap_share, tuple(variants))
    planned = plan_images(species, images, seed)
    write_cub_tables(out, species, planned)
    splits = class_splits(species, seed)
    write_class_lists(out, splits)
    train = set(splits["train"])
    twin_classes = frozenset(s.class_id for s in species if twins and s.class_dir in train)
    _make_folders(out, species, audio, twin_classes)
    diary = build_diary(species, {p.image_id: p.class_id for p in planned}, seed)
    shots = {e["image_id"]: (e["sighting_id"], e["condition"]) for e in diary.entries}
    workers = max(1, min(workers or os.cpu_count() or 1, len(planned)))
    init_args = (out, species, shots, captions_per_image, image_size, seed, audio, twin_classes)
    results = _render_all(planned, init_args, workers, progress)
    write_boxes(out, {i: r[0] for i, r in results.items()}, {i: r[1] for i, r in results.items()})
    extras = out / EXTRAS_DIR
    (extras / CAPTION_ATTRIBUTES_FILE).write_text(
        "".join(json.dumps({"image_id": i, "attributes": results[i][2]}) + "\n" for i in sorted(results)),
        encoding="utf-8")
    if twins:
        relpaths = {p.image_id: p.relpath for p in planned}
        (extras / TWINS_FILE).write_text("".join(
            json.dumps({"image_id": i, "file": f"{TWINS_DIR}/{relpaths[i]}.jpg", "swapped": list(results[i][3])}) + "\n"
            for i in sorted(results) if results[i][3] is not None), encoding="utf-8")
    (extras / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in diary.entries), encoding="utf-8")
    (extras / "species_attributes.json").write_text(json.dumps(_species_json(species, diary.homes), indent=1) + "\n",
                                                    encoding="utf-8")
    arguments = {key: value for key, value in record.items() if key != "format_version"}
    (out / CUB_DIR / "README").write_text(cub_readme(arguments), encoding="utf-8")
    (extras / "README.md").write_text(extras_readme(arguments), encoding="utf-8")
    (extras / MARKER).write_text(json.dumps({**record, "mmai_version": __version__}, indent=1) + "\n",
                                 encoding="utf-8")
    return SynthSummary(out, classes, images, images * captions_per_image, images if audio else 0,
                        round(time.perf_counter() - started, 3), _folder_megabytes(out))
