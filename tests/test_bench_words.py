"""``mmai bench words``: the templates state filters that hold for their target, the parser reads
the seen templates, parsed filters beat flat search, and the CLI prints the table (issue 22)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from mmai_apps.bench import words
from mmai_apps.bench import main as bench_main


@pytest.fixture(scope="module")
def memories():
    return words.diary_memories(300, 8, seed=0)


def _describe(memories):  # the user's words: the first caption's worth of the photo's words
    return lambda index: " ".join(memories.captions[index].split(".")[0].split())


@pytest.mark.parametrize("template", words.SEEN_TEMPLATES + words.NEW_TEMPLATES, ids=lambda t: t.name)
def test_every_template_states_filters_that_hold_for_its_target(memories, template):
    rng = np.random.default_rng(0)
    filled = words.template_queries(memories, template, 8, rng, _describe(memories))
    assert len(filled) == 8
    for target, query, truth, _ in filled:
        mask = truth.mask(memories)
        assert mask[target], query
        assert mask.sum() < len(memories), query  # the words do narrow the memories


def test_seen_templates_parse_exactly_and_filters_beat_flat_search(memories):
    encoder = words.BagOfWords(memories.captions)
    vectors = encoder.embed(memories.captions)
    result = words.parse_and_recall(memories, encoder, vectors, words.SEEN_TEMPLATES, 6, 5,
                                    np.random.default_rng(1), _describe(memories))
    assert len(result["right"]) == 6 * len(words.SEEN_TEMPLATES)
    assert np.mean(result["right"]) == 1.0
    assert np.mean(result["parsed"]) == pytest.approx(np.mean(result["true"]))  # same filters: same recall
    assert np.mean(result["parsed"]) > np.mean(result["flat"]) + 0.2


def test_an_unknown_phrasing_counts_as_a_wrong_parse():
    memories = words.diary_memories(200, 6, seed=1)
    template = next(t for t in words.NEW_TEMPLATES if t.name.startswith("N days ago"))
    encoder = words.BagOfWords(memories.captions)
    result = words.parse_and_recall(memories, encoder, encoder.embed(memories.captions), [template], 5, 5,
                                    np.random.default_rng(2), _describe(memories))
    assert result["right"] == [0.0] * 5  # "3 days ago" is not a form the parser knows


def test_after_queries_hop_finds_the_next_sighting_more_often_than_flat_search(memories):
    encoder = words.BagOfWords(memories.captions)
    vectors = encoder.embed(memories.captions)
    result = words.after_queries(memories, encoder, vectors, 40, 5, 120.0, np.random.default_rng(3),
                                 _describe(memories))
    assert len(result["hop"]) == 40
    assert np.mean(result["hop"]) > np.mean(result["flat"])
    assert 0.0 < np.mean(result["anchor_right"]) <= 1.0


def test_the_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "words.json"
    assert bench_main(["words", "--photos", "200", "--species", "6", "--seeds", "0", "1", "--queries", "3",
                       "--after-queries", "10", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "filters exactly right" in table and "directed follows hop" in table
    payload = json.loads(out.read_text())
    assert payload["meta"]["seeds"] == [0, 1] and any(r["measure"] == "parsed filters" for r in payload["rows"])
    parser = argparse.ArgumentParser()
    words.add_arguments(parser)
    assert parser.parse_args([]).photos == 2_000
