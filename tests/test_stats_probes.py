"""The paired bootstrap on cases with known answers; the binding and burst probes on hand-built galleries."""

import numpy as np
import pytest

from mmai.evaluation.probes import binding_probe, burst_probe, burst_recovery, pair_outcomes, per_caption, probe_words
from mmai.evaluation.stats import GAIN, LOSS, NO_GAIN, mean_std, paired_bootstrap


# ------------------------------------------------------------------------------ paired bootstrap
def test_constant_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    a = rng.random((3, 500))
    result = paired_bootstrap(a, a + 0.1, resamples=500)
    assert result.difference == pytest.approx(0.1)
    assert result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)
    assert result.verdict == GAIN and result.seeds == 3 and result.queries == 500


def test_bernoulli_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    queries, p = 4000, 0.3
    b = (rng.random(queries) < p).astype(float)
    result = paired_bootstrap(np.zeros(queries), b, resamples=4000, seed=3)
    observed = b.mean()
    half_width = 1.959964 * np.sqrt(observed * (1 - observed) / queries)
    assert result.difference == pytest.approx(observed)
    assert result.low == pytest.approx(observed - half_width, abs=0.15 * half_width)
    assert result.high == pytest.approx(observed + half_width, abs=0.15 * half_width)


def test_pairing_removes_the_between_query_spread():
    # Queries differ hugely in difficulty; row B beats row A by 0.02 on every query. Paired, the
    # gain is certain; resampling the two rows independently would see mostly query spread.
    rng = np.random.default_rng(2)
    a = rng.random((2, 300)) * 10
    b = a + 0.02 + rng.normal(0, 0.001, size=a.shape)
    result = paired_bootstrap(a, b)
    assert result.low > 0.015 and result.high < 0.025 and result.verdict == GAIN
    assert paired_bootstrap(b, a).verdict == LOSS


def test_equal_rows_are_no_measurable_gain():
    rng = np.random.default_rng(4)
    a = (rng.random((3, 800)) < 0.5).astype(float)
    b = (rng.random((3, 800)) < 0.5).astype(float)
    result = paired_bootstrap(a, b, seed=0)
    assert result.low < 0 < result.high and result.verdict == NO_GAIN


def test_bootstrap_refuses_rows_that_do_not_pair():
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap(np.zeros((3, 10)), np.zeros((3, 11)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([0.0, np.nan]), np.zeros(2))


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)


# ------------------------------------------------------------------------------ binding probe
def _species(**extra):
    base = {"bill_colour": "orange", "crown_colour": "red", "wing_colour": "brown", "belly_colour": "grey"}
    swapped = {**base, "bill_colour": "grey", "belly_colour": "orange"}
    return {"species": [
        {"class_id": 1, "attributes": {**base, **extra}, "swap_partners": [2]},
        {"class_id": 2, "attributes": {**swapped, **extra}, "swap_partners": [1]},
        {"class_id": 3, "attributes": {**base, "bill_colour": "black"}, "swap_partners": []},
    ]}


def test_probe_words_leave_out_a_colour_an_unswapped_part_shares():
    species = _species()["species"]
    assert probe_words(species[0]["attributes"], species[1]["attributes"]) == ["grey", "orange"]
    grey_wings = _species(wing_colour="grey")["species"]
    assert probe_words(grey_wings[0]["attributes"], grey_wings[1]["attributes"]) == ["orange"]


def test_binding_probe_pairs_each_naming_caption_with_every_confuser_image():
    image_ids, class_ids = [10, 11, 20, 21, 30], [1, 1, 2, 2, 3]
    captions = ["a bird with an orange bill.", "a bird with a red crown.", "this bird has a gray belly.",
                "a bird with an orange belly.", "a bird with a black bill."]
    text_image_ids = [10, 10, 11, 20, 30]
    probe = binding_probe(captions, text_image_ids, image_ids, class_ids, _species())
    pairs = sorted(zip(probe.text_rows.tolist(), probe.true_rows.tolist(), probe.confuser_rows.tolist()))
    # caption 0 (image 10 = position 0) vs both class-2 images; caption 1 names no swapped colour;
    # caption 2 ("gray" = grey) of image 11 (position 1); caption 3 of class 2 vs both class-1 images.
    assert pairs == [(0, 0, 2), (0, 0, 3), (2, 1, 2), (2, 1, 3), (3, 2, 0), (3, 2, 1)]
    assert probe.words[0] == "orange" and probe.words[2] == "grey"

    rankings = np.array([[0, 2, 3, 1, 4],   # caption 0: true first, both confusers below
                         [4, 3, 2, 1, 0],
                         [2, 1, 3, 0, 4],   # caption 2: confuser 2 above, confuser 3 below the true image
                         [0, 1, 4, -1, -1], # caption 3: true (2) and confusers (0, 1)... confusers first
                         [4, 0, 1, 2, 3]])
    outcome = pair_outcomes(rankings, probe)
    by_pair = dict(zip(zip(probe.text_rows.tolist(), probe.confuser_rows.tolist()), outcome.tolist()))
    assert by_pair == {(0, 2): 1.0, (0, 3): 1.0, (2, 2): 0.0, (2, 3): 1.0, (3, 0): 0.0, (3, 1): 0.0}
    captions_, means = per_caption(outcome, probe.text_rows)
    assert captions_.tolist() == [0, 2, 3] and means.tolist() == [1.0, 0.5, 0.0]


def test_pair_outcomes_fall_back_to_stage1_scores_beyond_the_list():
    probe = binding_probe(["an orange bill"], [10], [10, 20], [1, 2], _species())
    short = np.array([[-1]])  # neither image in the (empty) list
    assert pair_outcomes(short, probe).tolist() == [0.5]
    scores = np.array([[0.2, 0.9]])  # the confuser is more similar
    assert pair_outcomes(short, probe, lambda t, i: scores[t, i]).tolist() == [0.0]


def test_binding_probe_is_empty_without_swap_partners():
    probe = binding_probe(["an orange bill"], [10], [10], [1], {"species": [{"class_id": 1, "attributes": {}}]})
    assert len(probe) == 0 and pair_outcomes(np.zeros((1, 1), int), probe).shape == (0,)


# ------------------------------------------------------------------------------ burst probe
def test_burst_recovery_counts_hard_sighting_mates_in_the_top_k():
    image_ids = [1, 2, 3, 4, 5]
    sightings = [7, 7, 7, 8, 8]
    conditions = ["clear", "low_light", "distant", "clear", "clear"]
    text_image_ids = [1, 1, 2, 4]  # two captions of the clear photo 1, one of a hard photo, one of sighting 8
    probe = burst_probe(text_image_ids, image_ids, sightings, conditions)
    assert probe.text_rows.tolist() == [0, 1]  # only clear photos of sightings with hard photos
    assert [t.tolist() for t in probe.targets] == [[1, 2], [1, 2]]
    rankings = np.array([[0, 1, 3, 4, 2], [0, 2, 1, 3, 4], [1, 0, 2, 3, 4], [3, 4, 0, 1, 2]])
    assert burst_recovery(rankings, probe, k=2).tolist() == [0.5, 0.5]
    assert burst_recovery(rankings, probe, k=3).tolist() == [0.5, 1.0]


def test_saved_outcomes_load_in_one_query_order_whatever_order_the_run_gathered(tmp_path):
    from callbacks.retrieval import _save_outcomes, load_outcomes

    ids = np.array([5, 5, 3, 3, 9])  # captions of images 5, 3, 9 as one run gathered them
    hits = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    binding_rows, binding = np.array([0, 3]), np.array([0.25, 0.75])  # probe captions: row 0 (image 5), row 3 (3)
    _save_outcomes(tmp_path / "a.npz", {"query/text_image_ids": ids, "stage1/t2i/class/hit@1": hits,
                                        "query/binding_text_rows": binding_rows, "stage1/probe/binding": binding})
    order = np.array([2, 3, 0, 1, 4])  # the same captions gathered in another order by another run
    inverse = np.argsort(order)
    _save_outcomes(tmp_path / "b.npz", {"query/text_image_ids": ids[order], "stage1/t2i/class/hit@1": hits[order],
                                        "query/binding_text_rows": np.sort(inverse[binding_rows]),
                                        "stage1/probe/binding": binding[np.argsort(inverse[binding_rows])]})
    a, b = load_outcomes(tmp_path / "a.npz"), load_outcomes(tmp_path / "b.npz")
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert a["query/text_image_ids"].tolist() == [3, 3, 5, 5, 9]
    assert a["stage1/probe/binding"].tolist() == [0.75, 0.25]  # image 3's caption first now


def test_one_unit_gives_no_verdict_however_large_the_difference():
    from mmai.evaluation.stats import TOO_FEW_UNITS

    a, b = np.zeros((1, 147)), np.full((1, 147), -0.2)  # `mmai ablate --quick`: 147 probe captions, 1 swap pair
    result = paired_bootstrap(a, b, units=np.zeros(147, dtype=int))
    assert result.units == 1 and result.low == result.high == pytest.approx(-0.2)  # a point, not an interval
    assert result.verdict == TOO_FEW_UNITS
    assert paired_bootstrap(a, b, units=np.arange(147) % 2).verdict == LOSS  # two units: an interval again
