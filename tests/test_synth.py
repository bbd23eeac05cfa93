"""Tests of the synthetic CUB-200-2011 generator (mmai.data.synth) on a tiny data set."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmai.data.synth import is_grayscale, synthesize
from mmai.data.synth.captions import image_captions
from mmai.data.synth.diary import BURST_GAP_SECONDS, CONDITIONS, HARD_CONDITIONS, HARD_PROBABILITY, build_diary
from mmai.data.synth.draw import COLOURS, PARTS, draw_bird
from mmai.data.synth.layout import class_splits
from mmai.data.synth.species import (ATTRIBUTES, COLOUR_ATTRIBUTES, build_species, one_attribute_partners,
                                     swap_partners)

TINY = dict(classes=8, images=40, captions_per_image=10, image_size=64, seed=3)
BOX = r"\d+\.\d"
COLOUR_WORDS = set(COLOURS) | {"gray", "tan", "cream"}
#: Words only a caption that describes the eye ring, the wing bars or the bill shape uses.
FINE_DETAIL = re.compile(r"eye ?ring|ring around|wing ?bars|\bbars\b|plain wings|straight|curved|hook|conical|cone")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cub"
    summary = synthesize(out, workers=1, progress=False, **TINY)
    assert summary.images == 40 and summary.captions == 400 and summary.audio_clips == 40 and not summary.reused
    return out


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} must end with a newline"
    return text.splitlines()


def _species(root: Path) -> list[dict]:
    return json.loads((root / "mmai_extras" / "species_attributes.json").read_text())["species"]


def _image_rows(root: Path) -> list[tuple[int, str, int]]:
    """(image_id, relative path, class_id) from images.txt and image_class_labels.txt."""
    paths = [line.split() for line in _lines(root / "CUB_200_2011" / "images.txt")]
    labels = [line.split() for line in _lines(root / "CUB_200_2011" / "image_class_labels.txt")]
    return [(int(i), path, int(c)) for (i, path), (_, c) in zip(paths, labels)]


def _episodes(root: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(root / "mmai_extras" / "episodes.jsonl")]


def _sha256_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cub_tables_have_real_formats_and_consistent_ids(tiny):
    cub = tiny / "CUB_200_2011"
    classes = [line.split() for line in _lines(cub / "classes.txt")]
    assert [int(c) for c, _ in classes] == list(range(1, 9))
    for class_id, class_dir in classes:
        assert re.fullmatch(rf"{int(class_id):03d}\.[A-Z][A-Za-z]*(_[A-Za-z]+)+", class_dir), class_dir
    class_dirs = {int(c): d for c, d in classes}
    rows = _image_rows(tiny)
    assert [i for i, _, _ in rows] == list(range(1, 41))
    assert [c for _, _, c in rows] == sorted(c for _, _, c in rows)  # sorted by class, then index
    counts = np.bincount([c for _, _, c in rows])[1:]
    assert counts.tolist() == [5] * 8
    for image_id, path, class_id in rows:
        name = class_dirs[class_id].split(".", 1)[1]
        assert re.fullmatch(rf"{re.escape(class_dirs[class_id])}/{name}_\d{{4}}_{image_id}\.jpg", path), path
        assert (cub / "images" / path).is_file()
    split = [line.split() for line in _lines(cub / "train_test_split.txt")]
    assert [int(i) for i, _ in split] == list(range(1, 41)) and {flag for _, flag in split} == {"0", "1"}
    assert 0.35 <= np.mean([flag == "1" for _, flag in split]) <= 0.65
    boxes = _lines(cub / "bounding_boxes.txt")
    assert len(boxes) == 40 and all(re.fullmatch(rf"{i} {BOX} {BOX} {BOX} {BOX}", line)
                                    for i, line in enumerate(boxes, 1))
    assert "SYNTHETIC" in (cub / "README").read_text()


def test_images_decode_at_size_and_some_are_grayscale(tiny):
    modes = {}
    for image_id, path, _ in _image_rows(tiny):
        with Image.open(tiny / "CUB_200_2011" / "images" / path) as image:
            assert image.format == "JPEG" and image.size == (64, 64)
            modes[image_id] = image.mode
    assert {i for i, mode in modes.items() if mode == "L"} == {i for i in modes if is_grayscale(i)} == {5}
    assert set(modes.values()) == {"RGB", "L"}


def test_captions_are_n_lower_case_lines_without_species_names(tiny):
    names = [s["name"] for s in _species(tiny)]
    forbidden = {n.lower().replace("_", " ") for n in names} | {n.split("_")[-1].lower() for n in names}
    for _, path, _ in _image_rows(tiny):
        lines = _lines(tiny / "cvpr2016_cub" / "text_c10" / path.replace(".jpg", ".txt"))
        assert len(lines) == 10
        for line in lines:
            assert line == line.lower() and line.strip() and not any(word in line for word in forbidden)
            assert re.search(r"\b(bill|beak|crown|cap|head top|belly|breast|abdomen|underside|wing|wings|"
                             r"wingbars|secondaries|tail|eye ?ring|eye)\b", line), line


def test_grayscale_captions_name_no_colours():
    attributes = build_species(8, seed=0)[0].attributes
    captions = image_captions(attributes, np.random.default_rng(0), count=50, grayscale=True)
    colour_words = set(COLOURS) | {"gray", "tan", "cream"}
    mentioned = {word for caption in captions for word in re.findall(r"[a-z]+", caption)}
    assert mentioned & colour_words <= {"white"}  # "white wing bars" / "white eye ring" stay white in gray


def test_class_lists_partition_classes_by_family(tiny):
    lists = {name: _lines(tiny / "cvpr2016_cub" / f"{name}classes.txt")
             for name in ("train", "val", "test", "trainval")}
    all_classes = {line.split()[1] for line in _lines(tiny / "CUB_200_2011" / "classes.txt")}
    assert all(lists.values())
    assert set(lists["train"]) | set(lists["val"]) | set(lists["test"]) == all_classes
    assert not (set(lists["train"]) & set(lists["val"])) and not (set(lists["test"]) & set(lists["trainval"]))
    assert lists["trainval"] == sorted(lists["train"] + lists["val"])
    family = {s["class_dir"]: s["family"] for s in _species(tiny)}
    splits_of_family: dict[int, set[str]] = {}
    for name in ("train", "val", "test"):
        for class_dir in lists[name]:
            splits_of_family.setdefault(family[class_dir], set()).add(name)
    assert len(splits_of_family) >= 3 and all(len(names) == 1 for names in splits_of_family.values())


def _own_swap_pairs(species, names: list[str]) -> int:
    inside = {s.class_id for s in species if s.class_dir in set(names)}
    return sum(partner in inside for c, partners in swap_partners(species).items() if c in inside
               for partner in partners if partner > c)


@pytest.mark.parametrize("classes, seed", [(40, 0), (40, 1), (200, 0), (20, 0), (13, 2), (4, 0)])
def test_families_never_straddle_splits_and_val_test_get_swap_pairs(classes, seed):
    species = build_species(classes, seed)
    splits = class_splits(species, seed)
    assert splits == class_splits(species, seed)
    split_of = {c: name for name in ("train", "val", "test") for c in splits[name]}
    assert sorted(split_of) == sorted(s.class_dir for s in species)
    for family in {s.family for s in species}:
        assert len({split_of[s.class_dir] for s in species if s.family == family}) == 1, family
    targets = {"train": classes // 2, "val": max(1, classes // 4)}
    targets["test"] = classes - targets["train"] - targets["val"]
    for name, target in targets.items():
        assert splits[name] and abs(len(splits[name]) - target) <= max(2, classes // 40), (name, len(splits[name]))
    pairs = {name: _own_swap_pairs(species, splits[name]) for name in ("train", "val", "test")}
    if sum(len(p) for p in swap_partners(species).values()) // 2 >= 3:
        assert pairs["val"] >= 1 and pairs["test"] >= 1, pairs
    if (classes, seed) == (40, 0):  # the demo's data set
        assert pairs["val"] >= 2 and pairs["test"] >= 2, pairs


def test_same_arguments_give_byte_identical_files_for_any_worker_count(tiny, tmp_path):
    parallel = tmp_path / "parallel"
    synthesize(parallel, workers=2, progress=False, **TINY)
    first, second = _sha256_tree(tiny), _sha256_tree(parallel)
    assert first.keys() == second.keys() and len(first) > 3 * 40
    assert [path for path in first if first[path] != second[path]] == []


def test_second_call_reuses_and_foreign_contents_raise(tiny, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    summary = synthesize(tiny, workers=1, progress=False, **TINY)
    assert summary.reused and summary.images == 40 and summary.megabytes > 0
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=r"other arguments \(seed: 3 there vs 4 asked\).*empty directory"):
        synthesize(tiny, workers=1, progress=False, **{**TINY, "seed": 4})
    old = tmp_path / "old"
    marker = json.loads((tiny / "mmai_extras" / "synth_args.json").read_text())
    (old / "mmai_extras").mkdir(parents=True)
    (old / "mmai_extras" / "synth_args.json").write_text(json.dumps({**marker, "format_version": 1,
                                                                     "mmai_version": "0.1.0"}))
    with pytest.raises(ValueError, match=r"format version 1 there \(made by MMAI 0\.1\.0, an older format\) "
                                         r"vs 3 .*delete .* or pick another directory"):
        synthesize(old, workers=1, progress=False, **TINY)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*pick an empty directory"):
        synthesize(tmp_path, workers=1, progress=False, **TINY)


@pytest.mark.parametrize("override, message", [
    ({"classes": 3}, "classes=3"), ({"classes": 1000}, "classes=1000"), ({"images": 7}, "images=7"),
    ({"captions_per_image": 0}, "captions_per_image=0"), ({"image_size": 16}, "image_size=16"),
    ({"seed": -1}, "seed=-1"),
])
def test_invalid_arguments_raise_errors_naming_the_value(tmp_path, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synthesize(tmp_path / "out", progress=False, **{**TINY, **override})
    assert not (tmp_path / "out").exists()


def test_part_boxes_lie_in_the_bird_box_and_the_bill_touches_the_head(tiny):
    birds = {int(line.split()[0]): [float(v) for v in line.split()[1:]]
             for line in _lines(tiny / "CUB_200_2011" / "bounding_boxes.txt")}
    parts: dict[int, dict[str, list[float]]] = {}
    for line in _lines(tiny / "mmai_extras" / "part_boxes.txt"):
        image_id, part, *box = line.split()
        assert re.fullmatch(rf"{BOX} {BOX} {BOX} {BOX}", " ".join(box))
        parts.setdefault(int(image_id), {})[part] = [float(v) for v in box]
    assert sorted(parts) == list(range(1, 41))
    conditions = {e["image_id"]: e["condition"] for e in _episodes(tiny)}
    for image_id, boxes in parts.items():
        assert set(boxes) == {"bill", "head", "wing", "tail"}
        bx, by, bw, bh = birds[image_id]
        smallest = 3 if conditions[image_id] == "distant" else 10
        assert 0 <= bx and 0 <= by and bx + bw <= 64 and by + bh <= 64 and bw > smallest and bh > smallest
        for x, y, w, h in boxes.values():
            assert w > 0 and h > 0
            assert bx - 0.1 <= x and by - 0.1 <= y and x + w <= bx + bw + 0.1 and y + h <= by + bh + 0.1
        (x, y, w, h), (hx, hy, hw, hh) = boxes["bill"], boxes["head"]
        gap_x = max(hx - (x + w), x - (hx + hw), 0)
        gap_y = max(hy - (y + h), y - (hy + hh), 0)
        assert gap_x <= 1.0 and gap_y <= 1.0, (image_id, boxes)


def _dominant_hz(path: Path) -> float:
    clip, rate = soundfile.read(path)
    spectrum = np.abs(np.fft.rfft(clip))
    frequencies = np.fft.rfftfreq(len(clip), 1 / rate)
    spectrum[frequencies < 500] = 0
    return float(frequencies[spectrum.argmax()])


def test_songs_are_48khz_mono_pcm16_with_species_pitch(tiny):
    species = {s["class_id"]: s for s in _species(tiny)}
    dominant: dict[int, list[float]] = {}
    for _, path, class_id in _image_rows(tiny):
        wav = tiny / "mmai_extras" / "audio" / path.replace(".jpg", ".wav")
        info = soundfile.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_16")
        assert 0.6 <= info.duration <= 1.2
        dominant.setdefault(class_id, []).append(_dominant_hz(wav))
    for class_id, values in dominant.items():
        base = species[class_id]["song"]["base_hz"]
        assert all(base / 1.3 < hz < base * 1.3 for hz in values), (class_id, base, values)
    low = min(species, key=lambda c: species[c]["song"]["base_hz"])
    high = max(species, key=lambda c: species[c]["song"]["base_hz"])
    assert np.median(dominant[high]) > 2 * np.median(dominant[low])


def test_species_are_distinct_and_most_have_a_one_attribute_partner():
    species = build_species(200, seed=0)
    assert len({s.attributes for s in species}) == 200 and len({s.name for s in species}) == 200
    partners = one_attribute_partners(species)
    assert np.mean([bool(p) for p in partners.values()]) >= 0.3
    changed = {name for a in species for b in species if a.attributes.differences(b.attributes) == 1
               for name in ATTRIBUTES if getattr(a.attributes, name) != getattr(b.attributes, name)}
    assert {"bill_shape", "bill_length", "bill_colour"} <= changed
    assert [s.name for s in build_species(200, seed=0)] == [s.name for s in species]
    assert [s.attributes for s in build_species(200, seed=1)] != [s.attributes for s in species]


def test_diary_puts_each_photo_on_an_outing_at_one_home_place(tiny):
    species = {s["class_id"]: s for s in _species(tiny)}
    entries = [json.loads(line) for line in _lines(tiny / "mmai_extras" / "episodes.jsonl")]
    classes = {image_id: class_id for image_id, _, class_id in _image_rows(tiny)}
    assert [e["image_id"] for e in entries] == list(range(1, 41))
    outings: dict[int, list[dict]] = {}
    for entry in entries:
        assert set(entry) == {"image_id", "timestamp", "place", "latitude", "longitude", "episode_id",
                              "sighting_id", "condition"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["timestamp"])
        assert entry["place"] in species[classes[entry["image_id"]]]["places"]
        outings.setdefault(entry["episode_id"], []).append(entry)
    assert sorted(outings) == list(range(len(outings))) and 1 < len(outings) < 40
    starts = []
    for episode in map(outings.get, sorted(outings)):
        times = sorted(dt.datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%SZ") for e in episode)
        assert len({e["place"] for e in episode}) == 1
        assert times[-1] - times[0] <= dt.timedelta(hours=3) and 2021 <= times[0].year <= 2024
        starts.append(times[0])
    assert starts == sorted(starts)  # episode ids follow time


def test_lead_reader_parses_the_synthetic_layout(tiny):
    from mmai.data.cub import read_cub, read_extras, split_images

    index = read_cub(tiny)
    assert len(index.images) == 40 and index.captions_root is not None and index.extras_root is not None
    splits = split_images(index, "zero-shot")
    assert sum(len(images) for images in splits.values()) == 40 and all(splits.values())
    extras = read_extras(index)
    assert len(extras.part_boxes) == 40 and len(extras.episodes) == 40
    assert index.audio_path(index.images[0]) is not None


def _changed(a: dict, b: dict) -> set[str]:
    return {name for name in ATTRIBUTES if a[name] != b[name]}


def test_swap_variants_exchange_two_colours_of_their_founder_and_are_recorded(tiny):
    recorded = {s["class_id"]: s for s in _species(tiny)}
    species = build_species(TINY["classes"], TINY["seed"])
    assert "swap" in {s.kind for s in species}  # the tiny set has swap pairs
    assert {s.kind for s in build_species(200, seed=0)} == {"founder", "one-attribute", "swap"}
    partners, one = swap_partners(species), one_attribute_partners(species)
    for s in species:
        entry = recorded[s.class_id]
        assert (entry["kind"], entry["variant_of"], entry["family"]) == (s.kind, s.variant_of, s.family)
        assert entry["swapped"] == (list(s.swapped) if s.swapped else None)
        assert entry["swap_partners"] == partners[s.class_id] and entry["one_attribute_partners"] == one[s.class_id]
        assert entry["attributes"] == {name: getattr(s.attributes, name) for name in ATTRIBUTES}
    for data_set in (species, build_species(200, seed=0)):
        _check_variants(data_set)


def _check_variants(species) -> None:
    by_id = {s.class_id: s for s in species}
    for s in species:
        if s.kind == "founder":
            assert s.variant_of is None and s.swapped is None
            continue
        founder = by_id[s.variant_of]
        assert founder.kind == "founder" and founder.family == s.family
        a, b = vars(s.attributes), vars(founder.attributes)
        if s.kind == "one-attribute":
            assert len(_changed(a, b)) == 1 and s.swapped is None
        else:
            first, second = s.swapped
            assert _changed(a, b) == {first, second} and {first, second} <= set(COLOUR_ATTRIBUTES)
            assert (a[first], a[second]) == (b[second], b[first]) and a[first] != a[second]
            assert a[first] in ATTRIBUTES[first] and a[second] in ATTRIBUTES[second]


def test_swap_partners_are_symmetric_two_colour_exchanges():
    species = build_species(200, seed=0)
    by_id = {s.class_id: s for s in species}
    partners = swap_partners(species)
    pairs = {(c, p) for c, ps in partners.items() for p in ps}
    assert pairs and pairs == {(p, c) for c, p in pairs}
    for c, p in pairs:
        a, b = vars(by_id[c].attributes), vars(by_id[p].attributes)
        first, second = sorted(_changed(a, b))
        assert {first, second} <= set(COLOUR_ATTRIBUTES) and (a[first], a[second]) == (b[second], b[first])
    swaps = [s for s in species if s.kind == "swap"]
    assert len(pairs) // 2 == len(swaps) >= 25  # every swap pair is a founder and its swap variant
    assert all(partners[s.class_id] == [s.variant_of] for s in swaps)
    assert len({s.name for s in species}) == 200


def _check_sightings(entries: list[dict], classes: dict[int, int]) -> dict[int, list[dict]]:
    sightings: dict[int, list[dict]] = {}
    for entry in entries:
        assert entry["condition"] in CONDITIONS
        sightings.setdefault(entry["sighting_id"], []).append(entry)
    assert sorted(sightings) == list(range(len(sightings)))
    order = []
    for sighting_id, photos in sorted(sightings.items()):
        photos.sort(key=lambda e: (e["timestamp"], e["image_id"]))
        times = [dt.datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%SZ") for e in photos]
        assert 1 <= len(photos) <= 6
        assert len({classes[e["image_id"]] for e in photos}) == 1
        assert len({(e["place"], e["latitude"], e["longitude"], e["episode_id"]) for e in photos}) == 1
        assert times[-1] - times[0] <= dt.timedelta(seconds=120)
        assert all(later - earlier >= dt.timedelta(seconds=int(BURST_GAP_SECONDS[0]))
                   for earlier, later in zip(times, times[1:]))
        assert photos[0]["condition"] == "clear"  # a sighting with a hard photo has a clear one
        order.append((photos[0]["episode_id"], times[0], sighting_id))
    assert order == sorted(order)  # numbered in episode order, then in time order
    return sightings


def test_diary_photos_come_in_bursts_of_one_bird_at_one_spot(tiny):
    classes = {image_id: class_id for image_id, _, class_id in _image_rows(tiny)}
    sightings = _check_sightings(_episodes(tiny), classes)
    assert any(len(photos) > 1 for photos in sightings.values()) and len(sightings) < 40


def test_hard_photos_have_the_documented_fraction_and_mix():
    species = build_species(40, seed=0)
    classes = {image_id: 1 + (image_id - 1) % 40 for image_id in range(1, 3001)}
    entries = build_diary(species, classes, seed=0).entries
    sightings = _check_sightings(entries, classes)
    later = [e for photos in sightings.values() for e in photos[1:]]
    hard = [e["condition"] for e in later if e["condition"] != "clear"]
    assert len(later) > 1000 and abs(len(hard) / len(later) - HARD_PROBABILITY) < 0.04
    counts = [hard.count(name) / len(hard) for name in HARD_CONDITIONS]
    assert all(abs(share - 0.25) < 0.06 for share in counts), counts
    assert all(photos[0]["condition"] == "clear" for photos in sightings.values() if len(photos) == 1)
    assert 0.1 < len(hard) / len(entries) < 0.3
    assert build_diary(species, classes, seed=0).entries == entries


def _words(captions: list[str]) -> set[str]:
    return {word for caption in captions for word in re.findall(r"[a-z]+", caption)}


def test_captions_leave_out_what_the_condition_hides():
    for s in build_species(12, seed=0):
        rng = np.random.default_rng(s.class_id)
        low_light = image_captions(s.attributes, rng, count=30, condition="low_light")
        assert not _words(low_light) & (COLOUR_WORDS | {"white"}), low_light
        for condition in ("distant", "motion_blur"):
            captions = image_captions(s.attributes, rng, count=30, condition=condition)
            assert not any(FINE_DETAIL.search(caption) for caption in captions), (condition, captions)
        distant_gray = image_captions(s.attributes, rng, count=10, condition="distant", grayscale=True)
        assert all("tail" in caption for caption in distant_gray)  # the only thing left to see
        clear = image_captions(s.attributes, rng, count=30)
        assert _words(clear) & COLOUR_WORDS and any(FINE_DETAIL.search(caption) for caption in clear)
    with pytest.raises(ValueError, match="condition='foggy'"):
        image_captions(build_species(4)[0].attributes, np.random.default_rng(0), condition="foggy")


def test_written_captions_follow_each_photos_condition(tiny):
    conditions = {e["image_id"]: e["condition"] for e in _episodes(tiny)}
    assert set(conditions.values()) - {"clear"}  # the tiny set has hard photos
    for image_id, path, _ in _image_rows(tiny):
        captions = _lines(tiny / "cvpr2016_cub" / "text_c10" / path.replace(".jpg", ".txt"))
        if conditions[image_id] == "low_light":
            assert not _words(captions) & (COLOUR_WORDS | {"white"}), captions
        if conditions[image_id] in ("distant", "motion_blur"):
            assert not any(FINE_DETAIL.search(caption) for caption in captions), captions


def _draw(condition: str, index: int = 0):
    attributes = build_species(8, seed=0)[index].attributes
    return draw_bird(attributes, np.random.default_rng([7, index]), 128, condition=condition)


def test_hard_conditions_change_the_picture_as_documented():
    for index in range(4):
        clear = _draw("clear", index)
        pixels = np.asarray(clear.image, dtype=np.float64)
        assert clear.hidden_parts == set()
        dark = np.asarray(_draw("low_light", index).image, dtype=np.float64)
        assert dark.mean() < 0.4 * pixels.mean()
        blocks = [p.reshape(16, 8, 16, 8, 3).mean(axis=(1, 3)) for p in (pixels, dark)]  # averages out the noise
        chroma = [(b.max(axis=2) - b.min(axis=2)).mean() for b in blocks]
        assert chroma[1] < 0.15 * chroma[0]  # washed out beyond the darkening (0.3 at most)
        grain = [np.abs(np.diff(p, axis=1)).mean() for p in (0.3 * pixels, dark)]
        assert grain[1] > 1.5 * grain[0]  # noisier than the clear photo darkened
        blurred = np.asarray(_draw("motion_blur", index).image, dtype=np.float64)
        edges = [np.percentile(np.abs(np.diff(p, axis=0))[:, :-1] + np.abs(np.diff(p, axis=1))[:-1], 99)
                 for p in (pixels, blurred)]  # the strongest edges, above the sensor noise
        assert edges[1] < 0.7 * edges[0]
        distant = _draw("distant", index)
        assert max(distant.bird_box[2:]) < 0.6 * max(clear.bird_box[2:])
        for x, y, w, h in distant.part_boxes.values():
            bx, by, bw, bh = distant.bird_box
            assert w > 0 and bx - 0.1 <= x and x + w <= bx + bw + 0.1 and by - 0.1 <= y and y + h <= by + bh + 0.1
        occluded = _draw("occluded", index)
        assert 1 <= len(occluded.hidden_parts) and occluded.hidden_parts <= set(PARTS)
        assert occluded.part_boxes == clear.part_boxes  # the leaves change the picture, not the bird
    with pytest.raises(ValueError, match="condition='foggy'"):
        _draw("foggy")
