"""Consistency labels (what a caption states, which species it is true of), the direct binding
probe and intervals over independent units, each on a case with a known answer."""

import json

import numpy as np
import pytest
import torch

from mmai.data.consistency import (NAMES, SpeciesTable, attribute_mask, caption_masks, chance_consistent, consistent_hits,
                              load_caption_table, random_recall, reader_ceiling)
from mmai.data.synth.captions import COLOUR_WORDS, named_captions
from mmai.data.synth.species import Attributes, build_species, swap_partners
from mmai.evaluation.probes import binding_probe, direct_outcomes
from mmai.evaluation.stats import paired_bootstrap

ORANGE_BILL = Attributes("hooked", "short", "orange", "red", "brown", "yellow", "long", True, False)


def _species(rows):
    return [{"class_id": class_id, "attributes": attributes} for class_id, attributes in rows]


def _attrs(**changes):
    base = dict(bill_shape="hooked", bill_length="short", bill_colour="orange", crown_colour="red",
                wing_colour="brown", belly_colour="white", tail_length="long", wing_bars=True, eye_ring=False)
    return {**base, **changes}


def test_named_captions_state_exactly_the_attributes_they_name():
    rng = np.random.default_rng(0)
    for caption, names in named_captions(ORANGE_BILL, rng, count=40):
        assert 2 <= len(names) <= 5 and set(names) <= set(NAMES)
        colours = {"bill_colour": "orange", "crown_colour": "red", "wing_colour": "brown", "belly_colour": "yellow"}
        for name, value in colours.items():  # a colour word is in the caption only when its part is stated
            words = COLOUR_WORDS.get(value, (value,))
            assert any(word in caption for word in words) == (name in names), (caption, names)
        assert ("tail" in caption) == ("tail_length" in names), (caption, names)
        assert ("eye" in caption) == ("eye_ring" in names), (caption, names)


def test_consistency_follows_the_stated_attributes_only():
    table = SpeciesTable.from_species(_species([
        (1, _attrs()), (2, _attrs(crown_colour="blue")), (3, _attrs(bill_colour="black")),
    ]))
    bill = attribute_mask(["bill_colour"])  # "an orange bill": true of 1 and 2, not of 3
    crown = attribute_mask(["crown_colour", "bill_colour"])  # "a red crown and an orange bill": only 1
    consistent = table.consistent(np.array([bill, crown, -1]), np.array([1, 1, 2]), np.array([1, 2, 3]))
    assert consistent.tolist() == [[True, True, False], [True, False, False], [False, True, False]]
    as_torch = table.consistent_torch(torch.tensor([bill]), torch.tensor([1]), torch.tensor([1, 2, 3]))
    assert as_torch.tolist() == [[True, True, False]]


def test_consistent_hits_ceiling_and_chance_on_a_hand_built_gallery():
    gallery_classes = np.array([1, 1, 2, 2, 3, 3, 3, 3])  # 2 + 2 + 4 images
    consistent = np.array([[True, True, False]])  # one caption of species 1, true of species 1 and 2
    rankings = np.array([[2, 4, 0]])  # a species-2 image first (consistent, wrong class), then 3, then 1
    assert consistent_hits(rankings, consistent, gallery_classes).tolist() == [[True, False, True]]
    # the perfect reader draws among the 4 consistent images: its own 2 of them at rank 1 half the time
    ceiling = reader_ceiling(consistent, np.array([1]), gallery_classes, (1, 2, 3))
    assert ceiling[1] == pytest.approx(0.5)
    assert ceiling[2] == pytest.approx(1 - (2 * 1) / (4 * 3))  # both picks species 2: 1/6
    assert ceiling[3] == pytest.approx(1.0)  # 3 of 4 leaves at most one species-2 image out
    assert chance_consistent(consistent, gallery_classes, (1,))[1] == pytest.approx(4 / 8)
    assert random_recall([1], [10], 10).tolist() == [1.0] and random_recall([0], [10], 1).tolist() == [0.0]


def test_caption_table_travels_with_the_shards_in_caption_order(tmp_path):
    from mmai.data.shards import write_shards
    from mmai.data.synth import synthesize

    synthesize(tmp_path / "synth", classes=8, images=24, image_size=48, audio=False, workers=1, progress=False)
    manifest = write_shards(tmp_path / "synth", tmp_path / "shards", samples_per_shard=8, progress=False)
    assert manifest["caption_attributes"] == "caption_attributes.json"
    table = load_caption_table(tmp_path / "shards")
    records = [json.loads(line) for line in
               (tmp_path / "synth" / "mmai_extras" / "caption_attributes.jsonl").read_text().splitlines()]
    assert sorted(table) == [record["image_id"] for record in records] == list(range(1, 25))
    first = records[0]
    assert table[1] == [attribute_mask(names) for names in first["attributes"]]
    # rows of one image, in caption-file order, interleaved with another image's rows
    masks = caption_masks(np.array([1, 2, 1, 1, 99]), table)
    assert masks.tolist() == [table[1][0], table[2][0], table[1][1], table[1][2], -1]
    assert load_caption_table(tmp_path) is None  # no table: class relevance only


def test_swap_share_and_variants_shape_the_families():
    small = build_species(60, seed=0, swap_share=1.0, variants=(0, 0))
    assert all(s.kind in ("founder", "swap") for s in small)
    pairs = sum(len(partners) for partners in swap_partners(small).values()) // 2
    assert pairs == 30  # every family a founder and its swap
    default = build_species(40, seed=0)
    assert default == build_species(40, seed=0, swap_share=0.75, variants=(1, 3))  # defaults unchanged
    with pytest.raises(ValueError, match="swap_share"):
        build_species(10, swap_share=1.5)


# ------------------------------------------------------------------------ the direct binding probe
def test_direct_probe_scores_every_triple_with_the_stages_own_scorer():
    from callbacks import RetrievalEvalCallback
    from lightning_glue.eval_set import EvalSet

    base = {"bill_colour": "orange", "crown_colour": "red", "wing_colour": "brown", "belly_colour": "grey"}
    species = [{"class_id": 1, "attributes": base, "swap_partners": [2]},
               {"class_id": 2, "attributes": {**base, "bill_colour": "grey", "belly_colour": "orange"},
                "swap_partners": [1]}]
    # 4 images (2 per species), identical stage-1 embeddings within a swap pair: a bag of words
    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), dim=1)
    captions = ["a bird with an orange bill.", "a bird with an orange belly."]
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1]]), dim=1)
    data = EvalSet(images, torch.tensor([10, 11, 20, 21]), torch.tensor([1, 1, 2, 2]),
                   torch.arange(4, dtype=torch.float64) * 1e5, torch.zeros(4), torch.zeros(4), ["a"] * 4, text,
                   torch.tensor([10, 20]), torch.tensor([1, 2]), captions)
    callback = RetrievalEvalCallback(candidates=4, ks=(1,), index_kind="flat")
    callback.species = species
    truth = {0: 1, 1: 1, 2: 2, 3: 2}  # gallery row -> class

    def binds(data, text_rows, image_rows):  # a re-ranker that binds: +1 for its own species, -1 else
        return np.array([1.0 if truth[int(i)] == int(data.text_class_ids[t]) else -1.0
                         for t, i in zip(text_rows, image_rows)])

    metrics = callback.evaluate(data, pair_logits=binds)
    assert metrics["probe/binding/pairs"] == 4 and metrics["probe/binding/units"] == 1
    assert metrics["probe/binding_direct/stage1"] == 0.5  # equal cosines: ties
    assert metrics["probe/binding_direct/rerank"] == 1.0
    assert metrics["probe/binding_direct/two_stage"] == 1.0
    assert callback.outcomes["rerank/probe/binding_direct"].tolist() == [1.0, 1.0]
    assert callback.outcomes["query/binding_units"].tolist() == [100002, 100002]
    assert direct_outcomes([1, 0, 2], [0, 1, 2]).tolist() == [1.0, 0.0, 0.5]


def test_binding_probe_units_are_swap_pairs():
    base = {"bill_colour": "orange", "crown_colour": "red", "wing_colour": "brown", "belly_colour": "grey"}
    species = {"species": [{"class_id": 3, "attributes": base, "swap_partners": [4]},
                           {"class_id": 4, "attributes": {**base, "bill_colour": "grey", "belly_colour": "orange"},
                            "swap_partners": [3]}]}
    probe = binding_probe(["an orange bill", "a grey bill"], [1, 2], [1, 2], [3, 4], species)
    assert probe.units.tolist() == [300004, 300004]


# ------------------------------------------------------------------------ intervals over units
def test_unit_bootstrap_widens_the_interval_of_one_dominant_unit():
    # 100 queries of one unit gain 1, one query of another unit gains 0: by queries the gain looks
    # certain; by units there are two samples, and a resample of the second alone gives 0.
    a = np.zeros(101)
    b = np.concatenate([np.ones(100), np.zeros(1)])
    by_query = paired_bootstrap(a, b, resamples=2000)
    by_unit = paired_bootstrap(a, b, resamples=2000, units=np.array([7] * 100 + [9]))
    assert by_query.low > 0.95 and by_query.units is None
    assert by_unit.low == 0.0 and by_unit.high == 1.0 and by_unit.units == 2
    assert by_unit.difference == by_query.difference
    # one unit per query is the query bootstrap itself
    same = paired_bootstrap(a, b, resamples=500, units=np.arange(101))
    plain = paired_bootstrap(a, b, resamples=500)
    assert (same.low, same.high) == (plain.low, plain.high)


# ------------------------------------------------------------------------ counterfactual twins
def test_twin_changes_pixels_only_at_the_swapped_parts():
    from mmai.data.synth.draw import draw_bird, random_look
    from mmai.data.synth.writer import render_twin

    attributes = Attributes("hooked", "long", "orange", "blue", "brown", "yellow", "long", False, False)
    for image_id in range(5):
        look = random_look(np.random.default_rng([0, 77 + image_id, 1]))
        photo = draw_bird(attributes, np.random.default_rng([0, image_id, 0]), 128, False, "clear", look)
        twin = render_twin(attributes, ("bill_colour", "crown_colour"), image_id, 0, 128, False, "clear", look)
        before, after = np.asarray(photo.image, np.int16), np.asarray(twin.image, np.int16)
        difference = np.abs(before - after).max(axis=2)
        # the exposure jitter pivots on the image's mean, which the recolouring moves a little: away
        # from the swapped parts a pixel may move by one grey level, never more
        changed = difference > 1
        assert changed.any() and twin.part_boxes == photo.part_boxes  # same pose and framing
        allowed = np.zeros_like(changed)
        for part in ("bill", "head"):  # the crown lies on the head; the bill is its own part
            x, y, w, h = photo.part_boxes[part]
            allowed[max(0, int(y) - 2):int(y + h) + 3, max(0, int(x) - 2):int(x + w) + 3] = True
        assert not (changed & ~allowed).any(), f"image {image_id}: pixels changed outside the bill and head"
        assert difference[allowed].max() > 40  # the parts themselves change colour
        # the twin is the swapped species: orange crown, blue bill (the colours moved, not added)
        x, y, w, h = photo.part_boxes["bill"]
        bill = after[int(y):int(y + h) + 1, int(x):int(x + w) + 1].reshape(-1, 3)
        assert (bill[:, 2] > bill[:, 0]).any()  # some blue in the twin's bill


def test_twins_are_written_for_training_photos_only(tmp_path):
    from mmai.data.synth import synthesize

    synthesize(tmp_path / "s", classes=8, images=32, image_size=48, audio=False, workers=1, progress=False,
               twins=True)
    extras = tmp_path / "s" / "mmai_extras"
    records = [json.loads(line) for line in (extras / "twins.jsonl").read_text().splitlines()]
    train = set((tmp_path / "s" / "cvpr2016_cub" / "trainclasses.txt").read_text().split())
    assert records and all(record["file"].split("/")[1] in train for record in records)
    assert all((extras / record["file"]).is_file() and len(record["swapped"]) == 2 for record in records)
