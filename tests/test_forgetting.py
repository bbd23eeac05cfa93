"""Access-aware forgetting (issue 22, item 2): the policies on a hand-made history with a known
answer, the access log, the simulated user, ``mmai bench forgetting``, and, through a real
PersonalMemory, ``open`` / ``forget --policy`` / ``rebuild`` / old stores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmai.memory.forgetting import (AccessLog, Usage, derived_importance, keep, parse_budget, scores)
from mmai.memory.simulate import SimConfig, simulate

sys.path.insert(0, str(Path(__file__).parent))

DAY = 86_400.0


# ---------------------------------------------------------------------- a known answer
def _history() -> tuple[Usage, float]:
    """Five memories at day 20 (now):
    A made day 0, opened 5 times, last on day 10;  B made day 0, never opened;
    C made day 18, never opened;  D made day 0, opened once, on day 19;
    E made day 0, opened 3 times, last on day 2."""
    nan = float("nan")
    created = np.array([0, 0, 18, 0, 0]) * DAY
    counts = np.array([5, 0, 0, 1, 3])
    last = np.array([10 * DAY, nan, nan, 19 * DAY, 2 * DAY])
    return Usage(created, counts, last), 20 * DAY


@pytest.mark.parametrize("policy, kept", [
    # retention exp(-dt / (7 d * (1 + opens))): D 0.93, A 0.79, C 0.75, E 0.53, B 0.06
    ("retention", [0, 3]),
    ("lru", [2, 3]),  # last use: D day 19, C day 18 (made), A day 10
    ("lfu", [0, 4]),  # opens: A 5, E 3
    ("newest", [0, 2]),  # C, then the tie of the rest broken by index: A
])
def test_each_policy_keeps_what_its_rule_says_on_a_hand_made_history(policy, kept):
    usage, now = _history()
    assert keep(scores(policy, usage, now), 2, usage.created).tolist() == kept


def test_retention_values_and_its_order_does_not_depend_on_the_strength():
    usage, now = _history()
    values = scores("retention", usage, now, strength_days=7.0)
    assert values == pytest.approx(np.exp(-np.array([10 / 42, 20 / 7, 2 / 7, 1 / 14, 18 / 28])))
    for strength in (0.5, 30.0, 365.0):
        assert np.argsort(scores("retention", usage, now, strength_days=strength)).tolist() == \
            np.argsort(values).tolist()
    with pytest.raises(ValueError, match="strength"):
        scores("retention", usage, now, strength_days=0)
    with pytest.raises(ValueError, match="unknown policy 'oldest'"):
        scores("oldest", usage, now)


def test_generative_agents_sums_normalised_recency_importance_and_relevance():
    usage, now = _history()
    relevance = np.array([0.0, 1.0, 0.0, 0.0, 0.0])  # the user's recent queries are all about B
    plain = scores("generative_agents", usage, now, decay_per_hour=0.99)
    focused = scores("generative_agents", usage, now, decay_per_hour=0.99, relevance=relevance)
    assert np.argmax(plain) in (0, 3) and focused[1] == pytest.approx(plain[1] + 1.0)
    assert keep(focused, 2, usage.created).tolist()[0] == 0 and 1 in keep(focused, 3, usage.created)


def test_importance_is_derived_from_recalls_and_unusualness_and_given_importance_wins():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])  # the last one is unusual
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    importance = derived_importance(np.array([0, 4, 0, 0]), vectors, neighbours=2)
    assert importance[1] > importance[0] and importance[3] > importance[0]  # recalled; unusual
    assert derived_importance(np.array([0, 4, 0, 0]))[1] == 1.0  # no embeddings: recalls alone
    given = derived_importance(np.array([0, 4, 0, 0]), vectors, 2, given=np.array([np.nan, 0.0, np.nan, 2.0]))
    assert given[1] == 0.0 and given[3] == 1.0 and given[0] == importance[0]


def test_budgets_are_counts_or_shares_and_bad_ones_say_what_to_write():
    assert parse_budget("25%", 10) == 2 and parse_budget("7", 10) == 7 and parse_budget("100%", 3) == 3
    for bad in ("-1", "abc", "120%", "nan%"):
        with pytest.raises(ValueError, match="--budget"):
            parse_budget(bad, 10)


def test_the_access_log_counts_opens_skips_a_torn_line_and_prunes_forgotten_ids(tmp_path):
    log = AccessLog(tmp_path)
    assert log.read() == {}  # a store without the file: never opened
    log.record(["a", "b"], when=100.0)
    log.record(["a"], when=50.0)
    with open(log.path, "ab") as handle:
        handle.write(b'{"id": "a", "ti')  # a kill mid-append
    log.record(["b"], when=300.0)
    stats = log.read()
    assert (stats["a"].count, stats["a"].last) == (2, 100.0) and (stats["b"].count, stats["b"].last) == (2, 300.0)
    usage = log.usage(["a", "c"], [1.0, 2.0])
    assert usage.counts.tolist() == [2, 0] and usage.last[0] == 100.0 and np.isnan(usage.last[1])
    assert log.prune({"b"}) == 3  # a's two lines and the torn one
    assert set(log.read()) == {"b"} and log.read()["b"].count == 2


# ---------------------------------------------------------------------- the simulated user
def test_the_simulated_user_is_deterministic_and_its_tastes_shift_at_day_200():
    small = SimConfig(days=240)
    first, again = simulate(3, small), simulate(3, small)
    assert np.array_equal(first.target, again.target) and np.allclose(first.embeddings, again.embeddings)
    assert not np.array_equal(first.target, simulate(4, small).target)
    assert set(first.kind.tolist()) == {"recent", "revisit", "species"}
    assert first.day.min() >= 1 and first.day.max() <= 240 and np.all(np.diff(first.time) > 0)
    before = np.bincount(first.species[first.day < 200], minlength=61)[1:]
    after = np.bincount(first.species[first.day >= 200], minlength=61)[1:]
    top = int(np.argmax(first.popularity[0]))
    assert np.argmax(first.popularity[0]) != np.argmax(first.popularity[1])
    assert before[top] / before.sum() > after[top] / after.sum()  # the old favourite is seen less after the shift
    counts, last = first.accesses(100)
    opened = (first.query_day <= 100) & first.opened
    assert counts.sum() == opened.sum() and np.all(np.isnan(last[counts == 0]))
    assert np.all(first.day[first.target] <= first.query_day)  # a search is for something already seen


def test_bench_forgetting_prints_every_policy_at_every_budget(tmp_path, capsys):
    from mmai_apps.bench import main as bench_main

    out = tmp_path / "forgetting.json"
    assert bench_main(["forgetting", "--seeds", "0", "--days", "160", "--replay-days", "120",
                       "--budgets", "25", "--out", str(out)]) == 0
    assert "retention" in capsys.readouterr().out
    rows = {row["policy"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"keep all", "random", "newest", "lru", "lfu", "retention", "generative_agents",
                         "generative_agents, importance off", "oracle"}
    value = lambda policy: float(rows[policy]["future hit@10"].split()[0])  # noqa: E731
    assert value("keep all") >= max(value(p) for p in rows) and value("oracle") > value("random")
    assert "vs lru" in rows["retention"] and "vs lfu" in rows["generative_agents"]


# ---------------------------------------------------------------------- through the memory
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tiny_checkpoints import make_bi_encoder_ckpt

    return make_bi_encoder_ckpt(tmp_path_factory.mktemp("ckpt"))


def _notes(folder: Path, count: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for number in range(count):
        (folder / f"note_{number}.txt").write_text(f"note {number}: a bird with a {['red', 'blue', 'green'][number % 3]} "
                                                   f"bill seen near the water {number}")
        meta[f"note_{number}.txt"] = {"time": f"2024-01-{number + 1:02d}T08:00:00Z", "place": "Powai Lake, Mumbai"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return [folder / f"note_{number}.txt" for number in range(count)]


@pytest.fixture()
def store(tmp_path, checkpoint):
    from mmai_apps.memory_cli import main

    paths = _notes(tmp_path / "notes")
    root = tmp_path / "memory"
    assert main(["ingest", *map(str, paths), "--meta", str(tmp_path / "notes" / "meta.json"),
                 "--checkpoint", str(checkpoint), "--root", str(root), "--quiet"]) == 0
    return root


def _by_note(root: Path) -> dict[int, str]:
    from mmai.memory.personal import PersonalMemory

    with PersonalMemory(root, progress=False) as memory:
        ids, _ = memory.usage()
        return {int(Path(memory.get(i).metadata["source_path"]).stem.split("_")[1]): i for i in ids}


def test_open_counts_an_access_that_a_search_does_not_and_rebuild_keeps_it(store, capsys):
    from mmai.memory.personal import PersonalMemory
    from mmai_apps.memory_cli import main

    notes = _by_note(store)
    root = ["--root", str(store), "--quiet"]
    assert main(["search", "a bird with a red bill", "-k", "6", *root]) == 0  # listing is not opening
    with PersonalMemory(store, progress=False) as memory:
        assert all(memory.access(i).count == 0 and memory.access(i).last is None for i in notes.values())
    capsys.readouterr()
    assert main(["open", notes[2][:10], *root]) == 0
    assert "opened 1 time, last" in capsys.readouterr().out
    assert main(["open", notes[2], "--json", *root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == notes[2] and shown["access_count"] == 2 and shown["last_accessed"] > 1.7e9
    assert main(["search", "a bird", "-k", "6", "--json", *root]) == 0
    listed = {hit["id"]: hit for hit in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed[notes[2]]["access_count"] == 2 and listed[notes[0]]["access_count"] == 0
    assert listed[notes[0]]["last_accessed"] is None
    assert main(["open", "ffffffffffff", *root]) == 2  # an unknown id: one line, exit 2
    assert main(["rebuild", *root]) == 0
    with PersonalMemory(store, progress=False) as memory:
        assert memory.access(notes[2]).count == 2 and memory.access(notes[0]).count == 0


def test_an_old_store_without_access_fields_opens_as_never_accessed(store):
    from mmai.memory.personal import PersonalMemory

    (store / "access.jsonl").unlink(missing_ok=True)
    with PersonalMemory(store, progress=False) as memory:
        ids, usage = memory.usage()
        assert len(ids) == 6 and usage.counts.tolist() == [0] * 6 and np.isnan(usage.last).all()
        kept, forgotten, _ = memory.forget_plan("retention", 3, now=1.8e9)
        assert len(kept) == 3 and len(forgotten) == 3  # never opened: the newest are likeliest needed
        made = {i: memory.get(i).metadata["timestamp"] for i in ids}
        assert min(made[i] for i in kept) > max(made[i] for i in forgotten)


def test_forget_by_retention_lists_asks_and_only_forgets_with_yes(store, capsys):
    from mmai.memory.personal import PersonalMemory
    from mmai_apps.memory_cli import main

    notes = _by_note(store)
    root = ["--root", str(store), "--quiet"]
    with PersonalMemory(store, progress=False) as memory:  # the user keeps coming back to notes 0 and 1
        for day in (10, 20, 30):
            memory.open(notes[0], when=1.7040672e9 + day * DAY)
        memory.open(notes[1], when=1.7040672e9 + 30 * DAY)
    now = ["--now", "2024-02-05T00:00:00Z"]
    capsys.readouterr()
    assert main(["forget", "--policy", "retention", "--budget", "2", "--dry-run", *now, *root]) == 0
    out = capsys.readouterr().out
    assert "would keep 2 of 6 memories by retention; would forget 4" in out and "nothing was forgotten" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(notes[n][:12] for n in (2, 3, 4, 5)) and "never opened" in out
    assert main(["forget", "--policy", "retention", "--budget", "2", *now, *root]) == 0
    assert "add --yes to forget them" in capsys.readouterr().out
    with PersonalMemory(store, progress=False) as memory:
        assert memory.store.count() == 6  # no yes: nothing went
    assert main(["forget", "--policy", "retention", "--budget", "1", "--place", "Berlin", *root]) == 2
    assert "no ids or filters" in capsys.readouterr().err
    assert main(["forget", "--policy", "retention", *root]) == 2
    assert main(["forget", "--policy", "retention", "--budget", "two", *root]) == 2
    assert "--budget 'two'" in capsys.readouterr().err
    assert main(["forget", "--policy", "retention", "--budget", "2", "--yes", *now, *root]) == 0
    assert "forgot 4 memories by retention (kept 2 of 6)" in capsys.readouterr().out
    with PersonalMemory(store, progress=False) as memory:
        ids, usage = memory.usage()
        assert sorted(ids) == sorted([notes[0], notes[1]]) and sorted(usage.counts.tolist()) == [1, 3]
        assert set(memory.access_log.read()) == {notes[0], notes[1]}
        assert memory.check() == []
    journal = (store / "ingest.journal.jsonl").read_text()
    assert '"why": "forget --policy retention"' in journal


def test_search_recency_counts_from_the_last_open_not_only_from_when_it_was_made(store):
    """Generative Agents' recency is by last access: an old note the user just opened outranks a
    newer one under a recency weight, and only after the open."""
    from mmai.memory.personal import PersonalMemory
    from mmai.memory.search import SearchOptions

    notes = _by_note(store)
    options = SearchOptions(recency_weight=5.0, recency_half_life_days=1.0, now=1_704_672_000.0)  # 2024-01-08
    with PersonalMemory(store, progress=False) as memory:
        before = [h.id for h in memory.search("a bird near the water", k=6, options=options)]
        assert before[0] == notes[5]  # the newest note (Jan 6) leads by recency
        memory.open(notes[0], when=1_704_670_000.0)  # the oldest note (Jan 1), opened just before "now"
        after = [h.id for h in memory.search("a bird near the water", k=6, options=options)]
    assert after[0] == notes[0] and after[1:] == [i for i in before if i != notes[0]]
