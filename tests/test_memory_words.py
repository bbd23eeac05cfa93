"""Time and place in words, "after" queries and a photo's song (issue 22, items 4, 5 and 7).

The parser (mmai/memory/words.py) is checked on its own with an injected reference time; the
rest runs through a real PersonalMemory of the synthetic diary with tiny random checkpoints, so
results are checked against the diary's times and places, not against meaning.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mmai.memory.filters import Filters
from mmai.retrieval.graph import EpisodicGraph
from mmai.memory.ingest import synthetic_collection
from mmai.memory.personal import PersonalMemory, SearchOptions, int_id
from mmai.memory.words import merge, parse_words, understand
from mmai_apps.memory_cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoints import make_bi_encoder_ckpt, make_reranker_ckpt  # noqa: E402
from tiny_configs import TINY_CLAP  # noqa: E402

torch.set_num_threads(2)
PLACES = ["Powai Lake, Mumbai", "Sewri Mudflats, Mumbai", "Sanjay Gandhi National Park, Mumbai",
          "Hebbal Lake, Bengaluru", "Tiergarten, Berlin", "Golden Gate Park, San Francisco"]
NOW = dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.timezone.utc)
LAKES = ["Hebbal Lake, Bengaluru", "Powai Lake, Mumbai"]


# ---------------------------------------------------------------------- the parser
@pytest.mark.parametrize("query, text, filters", [
    ("a red bird at Powai Lake in spring 2023", "a red bird",
     Filters(place="Powai Lake, Mumbai", after="2023-03-01", before="2023-06-01")),
    ("a heron last December", "a heron", Filters(after="2024-12-01", before="2025-01-01")),
    ("a heron near the lake", "a heron", Filters(place=LAKES)),
    ("a bird in 2022", "a bird", Filters(year=2022)),
    ("birds between 2021 and 2023", "birds", Filters(year=[2021, 2022, 2023])),
    ("a bird at Powai Lke", "a bird", Filters(place="Powai Lake, Mumbai")),  # a typo
    ("a bird in Mumbai on 5 March 2023", "a bird",
     Filters(place=sorted(PLACES[:3]), after="2023-03-05", before="2023-03-06")),
    ("yesterday at the Tiergarten", "yesterday at the Tiergarten",  # nothing left: the whole query is embedded
     Filters(place="Tiergarten, Berlin", after="2025-01-14", before="2025-01-15")),
    ("a bird in the winter of 2022", "a bird", Filters(after="2022-12-01", before="2023-03-01")),
    ("a bird since May 2022", "a bird", Filters(after="2022-05-01")),
    ("a bird before 2023", "a bird", Filters(before="2023-01-01")),
    ("a bird in December", "a bird", Filters(after="2024-12-01", before="2025-01-01")),
    ("a bird in January", "a bird", Filters(after="2025-01-01", before="2025-02-01")),  # has begun
    ("Powai Lake birds last month", "birds",
     Filters(place="Powai Lake, Mumbai", after="2024-12-01", before="2025-01-01")),
    # words that are no time or stored place stay in the text
    ("a bird in flight", "a bird in flight", Filters()),
    ("a heron in the water", "a heron in the water", Filters()),
    ("a bird that may fall", "a bird that may fall", Filters()),
    ("a bird at Atlantis", "a bird at Atlantis", Filters()),
])
def test_time_and_place_words_become_the_filters_the_flags_set(query, text, filters):
    parsed = parse_words(query, PLACES, NOW)
    assert parsed.text == text
    assert parsed.filters == filters
    assert not parsed.following


def test_the_longest_place_phrase_wins_when_two_stored_places_match():
    places = ["Powai, Mumbai", "Powai Lake, Mumbai", "Tiergarten, Berlin"]
    for query in ("a bird at Powai Lake", "Powai Lake birds", "a bird at Powai Lke"):  # exact, bare, a typo
        parsed = parse_words(query, places, NOW)
        assert parsed.filters == Filters(place="Powai Lake, Mumbai"), query
        assert "Lake" not in parsed.text and "Lke" not in parsed.text, query
    parsed = parse_words("a bird at Powai Lake with a fish", places, NOW)  # a longer run is no typo of it
    assert parsed.filters == Filters(place="Powai Lake, Mumbai") and parsed.text == "a bird with a fish"
    assert parse_words("a bird at Powai in flight", places, NOW).filters == Filters(place="Powai, Mumbai")


def test_relative_words_resolve_against_the_injected_reference_time():
    assert parse_words("last December", PLACES, dt.datetime(2024, 12, 20)).filters == \
        Filters(after="2023-12-01", before="2024-01-01")  # this December has not ended
    assert parse_words("last December", PLACES, dt.date(2024, 1, 2)).filters == \
        Filters(after="2023-12-01", before="2024-01-01")
    assert parse_words("a bird yesterday", PLACES, 1700000000.0).filters == \
        Filters(after="2023-11-13", before="2023-11-14")  # unix seconds work too (2023-11-14 22:13 UTC)
    assert parse_words("last year", PLACES, NOW).filters == Filters(year=2024)
    assert parse_words("a bird in the last 10 days", PLACES, NOW).filters == Filters(after="2025-01-05T10:30:00Z")


def test_bad_dates_and_contradicting_words_are_one_line_errors():
    with pytest.raises(ValueError, match=r"'2023-02-30' is not a date"):
        parse_words("a bird on 2023-02-30", PLACES, NOW)
    with pytest.raises(ValueError, match="leaves no time"):
        parse_words("a bird in 2021 after 2022", PLACES, NOW)


def test_flags_win_over_the_words_and_parsing_can_be_turned_off():
    parsed = parse_words("a bird at Powai Lake in 2023", PLACES, NOW)
    merged, overridden = merge(parsed, Filters(year=[2021], modality="image"))
    assert merged == Filters(year=[2021], place="Powai Lake, Mumbai", modality="image")
    assert len(overridden) == 1 and "'in 2023'" in overridden[0] and "time flags win" in overridden[0]
    merged, overridden = merge(parsed, Filters(place=["Berlin"], after="2022-01-01"))
    assert merged == Filters(place=["Berlin"], after="2022-01-01") and len(overridden) == 2
    off = understand("a bird at Powai Lake in 2023", PLACES, Filters(modality="audio"), NOW, parse=False)
    assert off.text == "a bird at Powai Lake in 2023" and off.applied == Filters(modality="audio")


def test_after_splits_off_an_anchor_but_after_a_time_is_a_time():
    parsed = parse_words("what did I see after the heron at the lake", PLACES, NOW)
    assert parsed.following and parsed.text == "the heron" and parsed.filters == Filters(place=LAKES)
    parsed = parse_words("what did I see after March 2023", PLACES, NOW)
    assert not parsed.following and parsed.filters == Filters(after="2023-04-01")


# ---------------------------------------------------------------------- the graph's temporal order
def test_follows_links_consecutive_memories_of_an_outing_in_time_order():
    times = np.array([0.0, 30.0, 10.0, 600.0, 50_000.0, 50_040.0, 30.0])  # 4: another outing (gap > 2 h)
    places = ["lake", "lake", "lake", "lake", "lake", "park", "lake"]  # 5: another place
    ids = np.arange(100, 107)
    graph = EpisodicGraph(ids, np.eye(7, 8), times, places, progress=False)
    follows = graph.follows()
    assert sorted(follows.edges()) == [(100, 102), (101, 106), (102, 101), (106, 103)]  # ties: by id
    assert follows[106][103]["gap_s"] == 570.0
    assert graph.following(100) == [(102, 10.0), (101, 30.0), (106, 30.0), (103, 600.0)]
    assert graph.following(100, skip_s=120) == [(103, 600.0)]  # its burst left out
    assert graph.following(104) == [] and graph.following(105) == []
    with pytest.raises(KeyError):
        graph.following(1)


# ---------------------------------------------------------------------- through the memory
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {"reranker": make_reranker_ckpt(folder / "rr"),
            "audio": make_bi_encoder_ckpt(folder / "audio", audio={"pretrained": False, "max_length_s": 0.5,
                                                                   "config_overrides": TINY_CLAP, "seconds": 0.5})}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmai.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "cub"
    synthesize(root, classes=4, images=40, image_size=64, audio=True, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def diary(synth):
    return [json.loads(line) for line in (synth / "mmai_extras" / "episodes.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory, checkpoints, synth):
    root = tmp_path_factory.mktemp("memory") / "memory"
    assert main(["ingest", "--from-synthetic", str(synth), "--checkpoint", str(checkpoints["reranker"]),
                 "--root", str(root), "--quiet"]) == 0
    return root


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _year(entry: dict) -> int:
    return int(entry["timestamp"][:4])


def test_search_reads_place_and_year_words_and_says_so(store, diary, capsys):
    entry = diary[0]
    short, year = entry["place"].split(",")[0], _year(entry)
    root = ["--root", str(store), "--quiet"]
    assert main(["search", f"a bird at {short} in {year}", "-k", "50", *root]) == 0
    out = capsys.readouterr().out
    assert f"filters: year {year}, place {entry['place']}" in out
    assert f"from words 'at {short}': place {entry['place']}" in out and "searching for: 'a bird'" in out
    assert main(["search", f"a bird at {short} in {year}", "-k", "50", "--json", *root]) == 0
    captured = capsys.readouterr()
    hits = _lines(captured.out)
    expected = [e for e in diary if e["place"] == entry["place"] and _year(e) == year]
    assert len(hits) == len(expected) and all(h["filters"] == {"year": year, "place": entry["place"]} for h in hits)
    understood = json.loads(captured.err.strip().splitlines()[-1])["understood"]
    assert understood["embedded"] == "a bird" and understood["filters"] == {"year": year, "place": entry["place"]}
    assert main(["search", f"a bird at {short} in {year}", "-k", "50", "--json", "--no-parse", *root]) == 0
    assert len(_lines(capsys.readouterr().out)) == len(diary)  # nothing filtered
    other = next(e for e in diary if e["place"] != entry["place"])
    assert main(["search", f"a bird at {short}", "-k", "50", "--place", other["place"], "--json", *root]) == 0
    assert {h["metadata"]["place"] for h in _lines(capsys.readouterr().out)} == {other["place"]}  # the flag wins


def test_relative_words_use_now_and_bad_words_exit_2_with_one_line(store, diary, capsys):
    day = diary[0]["timestamp"][:10]
    following_day = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    root = ["--root", str(store), "--quiet"]
    assert main(["search", "a bird yesterday", "-k", "50", "--now", f"{following_day}T12:00:00Z", "--json", *root]) == 0
    hits = _lines(capsys.readouterr().out)
    assert hits and {h["metadata"]["timestamp"] for h in hits} <= {
        dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        for e in diary if e["timestamp"].startswith(day)}
    assert len(hits) == sum(e["timestamp"].startswith(day) for e in diary)
    assert main(["search", "a bird on 2023-02-30", *root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'2023-02-30' is not a date" in err and "Traceback" not in err
    assert main(["search", "a bird", "--now", "someday", *root]) == 2
    assert "--now" in capsys.readouterr().err


def test_following_returns_what_came_after_the_anchor_in_its_outing(store, diary):
    by_image = {e["image_id"]: e for e in diary}
    with PersonalMemory(store, progress=False) as memory:
        query = "a bird with a red bill"
        anchor = memory.search(query, 1)[0]
        anchor_time = anchor.metadata["timestamp"]
        hits = memory.search(query, 50, options=SearchOptions(following=True, burst_s=0))
        graph = memory.graph()
        episode = graph.graph.nodes[int_id(anchor.id)]["episode"]
        expected = sorted((data["timestamp"], number) for number, data in graph.graph.nodes(data=True)
                          if data["episode"] == episode and (data["timestamp"], number) > (anchor_time, int_id(anchor.id)))
        assert [int_id(h.id) for h in hits] == [number for _, number in expected]
        assert all(h.related[0].id == anchor.id and "after the anchor" in h.explanation for h in hits)
        assert all(h.metadata["place"] == anchor.metadata["place"] for h in hits)
        skipped = memory.search(query, 50, options=SearchOptions(following=True, burst_s=120))
        assert [h.id for h in skipped] == [h.id for h in hits if h.metadata["timestamp"] - anchor_time > 120]
        assert by_image  # the diary is the data


def test_after_in_words_finds_the_anchor_then_its_followers_from_the_command_line(store, diary, capsys):
    root = ["--root", str(store), "--quiet"]
    days = sorted({(e["timestamp"][:10], e["place"]) for e in diary})
    shown = 0
    with PersonalMemory(store, progress=False) as memory:
        for day, place in days:  # outings given by day and place in the anchor's words
            anchor_words = f"a bird with a red bill at {place.split(',')[0]} on {day}"
            anchor = memory.search("a bird with a red bill", 1, Filters(place=place, after=day, before=(
                dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()))[0]
            expected = memory.search("a bird with a red bill", 5, Filters(place=place, after=day, before=(
                dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()),
                SearchOptions(following=True, burst_s=0))
            assert main(["search", f"what did I see after {anchor_words}", "-k", "5", "--burst-s", "0", *root]) == 0
            out = capsys.readouterr().out
            assert f"after: {anchor.id[:12]}" in out and "(the anchor; showing what came after it)" in out
            listed = [line.split()[2] for line in out.splitlines() if line[:3].strip().rstrip(".").isdigit()]
            assert listed == [h.id[:12] for h in expected]
            assert expected or "nothing came after it in its outing" in out
            shown += bool(expected)
    assert shown >= 2


def test_naming_the_anchor_of_an_after_query_writes_no_saliency_panel(store, diary, capsys, tmp_path):
    root = ["--root", str(store), "--quiet"]
    days = sorted({(e["timestamp"][:10], e["place"]) for e in diary})
    with PersonalMemory(store, progress=False) as memory:
        for day, place in days:  # an outing whose best match has nothing after it: the anchor is looked up again
            words = f"a bird with a red bill at {place.split(',')[0]} on {day}"
            parsed = memory.understand(f"what did I see after {words}")
            options = SearchOptions(following=True, burst_s=120)
            if not memory.search(parsed.text, 5, parsed.applied, options):
                break
        else:
            pytest.skip("every outing's anchor has a follower in this diary")
        from mmai.memory.words import after_anchor

        anchor = after_anchor(memory, parsed.text, parsed.applied, options, [])
        assert anchor is not None and anchor.id == memory.search(parsed.text, 1, parsed.applied)[0].id
    panels = tmp_path / "panels"
    assert main(["search", f"what did I see after {words}", "--explain", str(panels), *root]) == 0
    out = capsys.readouterr().out
    assert f"after: {anchor.id[:12]}" in out and "nothing came after it in its outing" in out
    assert not panels.exists() or not any(panels.iterdir())


def _tone(path: Path, hz: float) -> Path:
    seconds = np.arange(24_000) / 48_000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * hz * seconds)).astype(np.float32), 48_000)
    return path


def test_related_on_a_photo_lists_the_recording_made_with_it_first(tmp_path, checkpoints):
    folder = tmp_path / "files"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "heron_1.png")
    pixels[0, 0] = 0  # the burst's second photo: nearly the same picture 5 s later
    Image.fromarray(pixels).save(folder / "heron_2.png")
    _tone(folder / "heron_song.wav", 3000.0)
    _tone(folder / "later_song.wav", 2000.0)
    meta = {"heron_1.png": "2023-05-14T07:00:00Z", "heron_2.png": "2023-05-14T07:00:05Z",
            "heron_song.wav": "2023-05-14T07:00:00Z", "later_song.wav": "2023-05-14T07:20:00Z"}
    (folder / "meta.json").write_text(json.dumps({name: {"time": when, "place": "Powai Lake, Mumbai"}
                                                  for name, when in meta.items()}))
    memory = PersonalMemory(tmp_path / "memory", checkpoints["audio"], progress=False)
    report = memory.ingest([folder / name for name in meta], folder / "meta.json")
    assert len(report.added) == 4, report.summary()
    photo, burst_mate, song, later = report.added
    related = memory.related(photo)
    edge = memory.graph().graph[int_id(photo)]
    assert edge[int_id(burst_mate)]["weight"] > edge[int_id(song)]["weight"]  # by weight alone it would be 2nd
    assert related[0].id == song and related[0].reason.startswith("recorded together")
    assert {r.id for r in related} == {burst_mate, song, later}
    assert memory.related(song)[0].id == photo  # and a song brings up its photo
    memory.close()

    # the same files without a place: the same minute alone is not "recorded together"
    (folder / "meta.json").write_text(json.dumps({name: {"time": when} for name, when in meta.items()}))
    unplaced = PersonalMemory(tmp_path / "unplaced", checkpoints["audio"], progress=False)
    photo = unplaced.ingest([folder / name for name in meta], folder / "meta.json").added[0]
    assert not any(r.reason.startswith("recorded together") for r in unplaced.related(photo))
    unplaced.close()


def test_every_diary_photo_brings_up_its_song(tmp_path, checkpoints, synth):
    paths, overrides = synthetic_collection(synth, limit=12, audio=True)
    memory = PersonalMemory(tmp_path / "memory", checkpoints["audio"], progress=False)
    report = memory.ingest(paths, overrides=overrides)
    assert len(report.added) == 24, report.summary()
    by_path = {}
    for memory_id in report.added:
        by_path[memory.get(memory_id).metadata["source_path"]] = memory_id
    for path in paths:
        if path.suffix == ".wav":
            continue
        song = by_path[str(path.parents[3] / "mmai_extras" / "audio" / path.parent.name / (path.stem + ".wav"))]
        assert memory.related(by_path[str(path)])[0].id == song
    memory.close()
