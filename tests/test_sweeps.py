"""W&B sweep files (sweeps/*.yaml), the local drawer (mmai.sweep) and `mmai sweep run`."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import textwrap
import types

import pytest
import torch
import yaml

from fit_helpers import REPO, TINY_MODEL
from mmai_apps.lightning_cli import parse_config
from mmai_apps.sweep_runner import Trial, main as sweep_main, plan_trial, run_sweep, write_results
from mmai.evaluation.metrics import evaluate_retrieval
from mmai.sweep import (ARGS_MACROS, GOALS, METHODS, LocalSearch, draw, expand_command, grid, infer_distribution,
                        load_sweep, optuna_distribution, render_args, sort_by_metric)

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


def _write_sweep(tmp_path, config: dict, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _logged_stage1_keys(eval_ks) -> set[str]:
    """The keys BiEncoderModule logs at validation: ``val/stage1/`` + evaluate_retrieval's keys."""
    torch.manual_seed(0)
    embeddings = torch.randn(4, 8)
    ids = torch.arange(4)
    metrics = evaluate_retrieval(embeddings, ids, ids, embeddings, ids, ids, ks=tuple(eval_ks))
    return {f"val/stage1/{key}" for key in metrics}


def _logged_two_stage_keys(eval_ks) -> set[str]:
    """The keys RetrievalEvalCallback logs for a module with a re-ranker: ``val/two_stage/`` +
    evaluate_two_stage's keys (its stage-1-only path has the same keys)."""
    from mmai.retrieval.two_stage import evaluate_two_stage

    torch.manual_seed(0)
    images, texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1), torch.randn(8, 8)
    ids, owners = torch.arange(4), torch.arange(8) // 2
    result = evaluate_two_stage(None, torch.zeros(4, 2, 8), torch.zeros(8, 3, 8), torch.ones(8, 3, dtype=torch.long),
                                images, torch.nn.functional.normalize(texts, dim=-1), ids, ids, owners, owners,
                                k=4, ks=tuple(k for k in eval_ks if k <= 4) or (1,), progress=False)
    prefixes = {key.rsplit("/R@", 1)[0] for key in result.metrics}  # e.g. t2i/instance
    return {f"val/two_stage/{prefix}/R@{k}" for prefix in prefixes for k in eval_ks}


def _is_rerank(sweep) -> bool:
    return expand_command(sweep.command, {}, sweep.program)[2] == "rerank"


def _cli_args(sweep, params: dict) -> list[str]:
    """The arguments after `mmai fit` / `mmai rerank fit` of a trial."""
    return expand_command(sweep.command, params, sweep.program)[4 if _is_rerank(sweep) else 3:]


def parse_rerank_config(args: list[str]):
    """Parse (links and the data settings read from the bi-encoder checkpoint applied) a `mmai rerank fit`
    command without building anything."""
    return parse_config(args, rerank=True)


@pytest.fixture(scope="module")
def bi_encoder_ckpt(tmp_path_factory):
    """A real tiny bi-encoder checkpoint: the re-ranker's CLI reads the data settings from it."""
    from tiny_checkpoints import make_bi_encoder_ckpt

    return make_bi_encoder_ckpt(tmp_path_factory.mktemp("bi_encoder"))


def _parse_trial(sweep, params: dict, bi_encoder_ckpt):
    """The parsed config of a trial; a re-rank trial gets the test's checkpoint (the file's one is
    written by `mmai fit` first)."""
    args = _cli_args(sweep, params)
    if _is_rerank(sweep):
        return parse_rerank_config([*args, "--model.bi_encoder_ckpt", str(bi_encoder_ckpt)])
    return parse_config(args)


def _coverage_sets(sweep) -> list[dict]:
    """Parameter sets that use every listed value of every parameter at least once."""
    widest = max(len(spec.get("values", [None])) for spec in sweep.parameters.values())
    sets = []
    for i, params in enumerate(draw(sweep, count=widest, method="random", seed=1)):
        params.update({name: spec["values"][i % len(spec["values"])]
                       for name, spec in sweep.parameters.items() if "values" in spec})
        sets.append(params)
    return sets


# ----------------------------------------------------------------------------- the sweep files
def test_there_are_a_bayes_and_a_grid_sweep():
    methods = {load_sweep(path).method for path in SWEEP_FILES}
    assert {"bayes", "grid"} <= methods


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_structure_is_valid_for_wandb(path):
    sweep = load_sweep(path)  # validates: keys, method, metric, parameters, command, early_terminate
    raw = yaml.safe_load(path.read_text())
    assert raw["method"] in METHODS and raw["metric"]["goal"] in GOALS
    assert raw["program"] == "mmai"  # W&B requires `program`; ${program} expands to it
    for name, spec in raw["parameters"].items():
        distribution = infer_distribution(spec)
        assert "values" in spec or "value" in spec or {"min", "max"} <= set(spec), name
        if distribution.endswith("log_uniform_values"):
            assert 0 < spec["min"] < spec["max"], name
    if raw["method"] == "bayes":
        assert raw["early_terminate"]["type"] == "hyperband" and raw["early_terminate"]["min_iter"] >= 1


def test_there_is_a_sweep_over_rerank_k_and_lambda_that_runs_the_reranker():
    swept = {name for path in SWEEP_FILES if _is_rerank(sweep := load_sweep(path)) for name in sweep.parameters}
    assert {"retrieval.rerank_k", "retrieval.stage1_weight"} <= swept


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_command_is_mmai_fit_or_rerank_fit_with_args(path):
    sweep = load_sweep(path)
    assert "${args}" in sweep.command and not set(sweep.command) & {f"${{{m}}}" for m in ARGS_MACROS - {"args"}}
    argv = expand_command(sweep.command, {"model.lr": 0.001}, sweep.program)
    assert argv[:3] in (["/usr/bin/env", "mmai", "fit"], ["/usr/bin/env", "mmai", "rerank"]) and \
        argv[-1] == "--model.lr=0.001"
    if _is_rerank(sweep):
        assert argv[3] == "fit" and "--model.bi_encoder_ckpt" in argv
    configs = [argv[i + 1] for i, item in enumerate(argv) if item == "--config"]
    assert configs and all((REPO / config).is_file() for config in configs)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_metric_is_a_key_the_run_logs(path, monkeypatch, bi_encoder_ckpt):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    config = _parse_trial(sweep, {}, bi_encoder_ckpt)
    logged = _logged_stage1_keys(config.model.eval_ks)
    assert "val/stage1/t2i/instance/R@10" in logged  # the key ModelCheckpoint monitors in base.yaml
    ks = config.retrieval.ks
    logged |= {f"val/{stage}/t2i/{relevance}/R@{k}" for stage in ("gar", "gar_control")  # GAR over gallery images
               for relevance in ("instance", "class") for k in ks}
    if _is_rerank(sweep):  # RetrievalEvalCallback's stage 2, and the key the re-ranker's ModelCheckpoint monitors
        two_stage = _logged_two_stage_keys(config.model.eval_ks)
        assert "val/two_stage/t2i/instance/R@10" in two_stage
        logged |= two_stage
    assert sweep.metric_name in logged, f"{path.name}: {sweep.metric_name} is never logged; logged: {sorted(logged)}"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_parameter_is_a_real_argument_of_its_command(path, monkeypatch, bi_encoder_ckpt):
    """Drawn sets (and every listed value) pass the real LightningCLI parser and land where named."""
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    param_sets = draw(sweep, count=6, method="random", seed=0) + _coverage_sets(sweep)
    if sweep.method == "grid":
        param_sets += draw(sweep)
    for params in param_sets:
        try:
            config = _parse_trial(sweep, params, bi_encoder_ckpt)
        except SystemExit:
            pytest.fail(f"{path.name}: its command rejects {render_args(params)} (see the parser error above)")
        for name, value in params.items():
            assert config[name] == value, f"{path.name}: {name}={value} parsed as {config[name]!r}"
        assert config.retrieval.rerank_k <= config.retrieval.candidates, "re-rank K beyond the stage-1 list"
        if not _is_rerank(sweep):
            global_batch = config.data.batch_size * config.trainer.devices
            assert config.model.bi_encoder.queue_size % global_batch == 0, \
                f"queue_size {config.model.bi_encoder.queue_size} vs batch {global_batch}"


def test_a_misspelt_parameter_fails_the_cli_check(monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(REPO / "sweeps/bi_encoder_grid.yaml")
    with pytest.raises(SystemExit):
        parse_config(expand_command(sweep.command, {"model.learning_rate": 0.001}, sweep.program)[3:])


# ------------------------------------------------------------------------------------ drawing
def test_grid_enumerates_the_full_cartesian_product(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path, {
        "program": "train.py", "method": "grid", "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]}, "c": {"value": 0.5}}}))
    combos = draw(sweep)
    assert combos == [{"a": a, "b": b, "c": 0.5} for a, b in itertools.product([1, 2, 3], ["x", "y"])]
    assert draw(sweep, count=4) == combos[:4]


def test_grid_over_a_distribution_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"parameters\.lr.*grid search needs `values`"):
        load_sweep(_write_sweep(tmp_path, {"program": "t.py", "method": "grid", "metric": {"name": "m"},
                                           "parameters": {"lr": {"min": 0.1, "max": 1.0}}}))
    with pytest.raises(ValueError, match=r"parameters\.lr has no `values`"):
        grid({"lr": {"min": 0.1, "max": 1.0}})


def test_random_draws_are_reproducible_by_seed():
    sweep = load_sweep(REPO / "sweeps/bi_encoder_bayes.yaml")
    first = draw(sweep, count=5, seed=3)
    assert first == draw(sweep, count=5, seed=3)
    assert first != draw(sweep, count=5, seed=4)
    assert len({json.dumps(params, sort_keys=True) for params in first}) == 5


def test_random_draws_respect_their_distributions(tmp_path):
    parameters = {
        "lr": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 1.0e-1},
        "exp": {"distribution": "log_uniform", "min": -2.0, "max": 1.0},
        "inv": {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1.0},
        "beta": {"min": 0.0, "max": 2.0},
        "layers": {"min": 1, "max": 4},
        "step": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
        "width": {"distribution": "q_log_uniform_values", "min": 8, "max": 512, "q": 8},
        "noise": {"distribution": "normal", "mu": 1.0, "sigma": 0.5},
        "choice": {"values": ["a", "b"], "probabilities": [0.8, 0.2]},
        "plain": {"values": ["x", "y", "z"]},
        "fixed": {"value": 7},
    }
    sweep = load_sweep(_write_sweep(tmp_path, {"program": "t.py", "method": "random", "parameters": parameters}))
    draws = draw(sweep, count=4000, seed=0)  # Optuna's RandomSampler through the W&B -> Optuna mapping
    column = {name: [d[name] for d in draws] for name in parameters}
    assert all(1e-5 <= v <= 1e-1 for v in column["lr"])
    below_geometric_mean = sum(v < math.sqrt(1e-5 * 1e-1) for v in column["lr"]) / len(draws)
    assert below_geometric_mean == pytest.approx(0.5, abs=0.04)  # uniform in log space, not in value
    assert all(math.exp(-2) <= v <= math.exp(1) for v in column["exp"])
    assert all(0.01 <= v <= 1.0 for v in column["inv"])
    assert all(0.0 <= v <= 2.0 for v in column["beta"]) and isinstance(column["beta"][0], float)
    assert set(column["layers"]) == {1, 2, 3, 4}
    assert set(column["step"]) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(isinstance(v, int) and v % 8 == 0 and 8 <= v <= 512 for v in column["width"])
    assert sum(column["noise"]) / len(draws) == pytest.approx(1.0, abs=0.05)
    assert column["choice"].count("a") / len(draws) == pytest.approx(0.8, abs=0.03)
    assert all(column["plain"].count(v) / len(draws) == pytest.approx(1 / 3, abs=0.03) for v in "xyz")
    assert set(column["fixed"]) == {7}
    assert list(draws[0]) == list(parameters)  # names in the file's order, as ${args} lists them


def test_random_search_needs_a_count(tmp_path):
    sweep = load_sweep(REPO / "sweeps/bi_encoder_bayes.yaml")
    with pytest.raises(ValueError, match="--count"):
        draw(sweep)


def test_wandb_distributions_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert optuna_distribution({"distribution": "log_uniform_values", "min": 1.0e-4, "max": 0.1}) == \
        FloatDistribution(1.0e-4, 0.1, log=True)
    assert optuna_distribution({"min": 0.0, "max": 2.0}) == FloatDistribution(0.0, 2.0)
    assert optuna_distribution({"min": 1, "max": 4}) == IntDistribution(1, 4)
    assert optuna_distribution({"values": [256, 512, 1024]}) == CategoricalDistribution((0, 1, 2))
    assert optuna_distribution({"distribution": "log_uniform", "min": -2.0, "max": 1.0}) == FloatDistribution(-2.0, 1.0)
    assert optuna_distribution({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}) == \
        FloatDistribution(0.0, 1.0)
    assert optuna_distribution({"value": 3}) is None  # a constant is not searched


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_the_study_direction_is_the_metric_goal_and_bayes_is_seeded_tpe(tmp_path, goal):
    import optuna

    sweep = load_sweep(_write_sweep(tmp_path, {"program": "t.py", "method": "bayes",
                                               "metric": {"name": "m", "goal": goal},
                                               "parameters": {"x": {"min": 0.0, "max": 1.0}}}))
    search = LocalSearch(sweep, seed=3, count=4, n_startup_trials=2)
    assert search.study.direction == optuna.study.StudyDirection[goal.upper()]
    assert isinstance(search.study.sampler, optuna.samplers.TPESampler)
    assert search.study.sampler._n_startup_trials == 2
    assert isinstance(LocalSearch(sweep, method="random", count=1).study.sampler, optuna.samplers.RandomSampler)
    assert LocalSearch(sweep, method="random", count=1).study.direction == search.study.direction
    assert draw(sweep, count=3, seed=3) == draw(sweep, count=3, seed=3)


# -------------------------------------------------------------------------------- ${args} etc.
def test_args_render_exactly_as_wandb_agent_renders_them():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"model.lr": 0.001, "model.lr_pretrained": 1e-05, "model.bi_encoder.queue_size": 1024,
              "model.bi_encoder.class_positives": True, "model.bi_encoder.distill_alpha": 0.0, "data.shuffle": False}
    assert render_args(params)[:3] == ["--model.lr=0.001", "--model.lr_pretrained=1e-05", "--model.bi_encoder.queue_size=1024"]
    agent = create_sweep_command_args({"args": {name: {"value": value} for name, value in params.items()}})
    for macro in ("args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json"):
        assert expand_command([f"${{{macro}}}"], params) == agent[macro], macro


def test_command_macros_expand_like_the_agent(monkeypatch):
    monkeypatch.setenv("MMAI_SWEEP_TEST", "configs")
    command = ["${env}", "${interpreter}", "${program}", "--config", "${envvar:MMAI_SWEEP_TEST}/base.yaml", "${args}"]
    argv = expand_command(command, {"x": 1}, program="train.py")
    assert argv == ["/usr/bin/env", "python", "train.py", "--config", "configs/base.yaml", "--x=1"]


@pytest.mark.parametrize("change, message", [
    ({"method": "hyperopt"}, "method is 'hyperopt'"),
    ({"metric": {"name": "m", "goal": "max"}}, "metric.goal"),
    ({"parameters": {"lr": {"distribution": "log_uniform_values", "min": "1e-5", "max": 0.1}}}, "write 1.0e-5"),
    ({"parameters": {"lr": {"distribution": "log_uniform_values", "min": 0.0, "max": 0.1}}}, "min > 0"),
    ({"parameters": {"lr": {"distribution": "uniform", "min": 1.0, "max": 0.1}}}, "must be below max"),
    ({"parameters": {"lr": {"distribution": "gamma", "min": 1.0, "max": 2.0}}}, "unknown distribution"),
    ({"parameters": {"lr": {"values": [1], "min": 0.0}}}, "do not belong to distribution categorical"),
    ({"command": ["${env}", "mmai", "fit", "${argz}"]}, r"unknown macro\(s\) \['argz'\]"),
    ({"command": ["${env}", "mmai", "fit"]}, "never passes the parameters"),
    ({"program": None}, "no `program` key"),
    ({"early_terminate": {"type": "hyperband", "eta": 2}}, "min_iter"),
    ({"metric": None}, "need a metric"),
    ({"paramters": {}}, r"unknown top-level key\(s\) \['paramters'\]"),
])
def test_invalid_sweep_files_name_the_file_and_field(tmp_path, change, message):
    config = yaml.safe_load((REPO / "sweeps/bi_encoder_bayes.yaml").read_text())
    config.update(change)
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ValueError, match=message) as error:
        load_sweep(_write_sweep(tmp_path, config, "broken.yaml"))
    assert "broken.yaml" in str(error.value)


# ----------------------------------------------------------------------------------- the runner
FAKE_TRAIN = textwrap.dedent("""\
    # Stands in for `mmai fit`: reads --name=value flags, writes the metrics file the runner reads.
    import json, pathlib, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    x = float(args["x"])
    run_dir = pathlib.Path(args["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    validations = [{"epoch": 0, "score": x / 2}, {"epoch": 1, "score": x}]
    (run_dir / "sweep_metrics.json").write_text(json.dumps({"finished": True, "validations": validations,
                                                            "final": {"score": x, "other": 2 * x}}))
    sys.exit(1 if x < 0 else 0)
""")


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_runner_runs_the_default_wandb_command_and_ranks_by_goal(tmp_path, goal):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    sweep_file = _write_sweep(tmp_path, {"program": "fake_train.py", "method": "grid",
                                         "metric": {"name": "score", "goal": goal},
                                         "parameters": {"x": {"values": [1.0, 3.0, -5.0, 2.0]}}})
    out = tmp_path / "out"
    assert sweep_main(["run", str(sweep_file), "--out", str(out), "--workdir", str(tmp_path)]) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = [3.0, 2.0, 1.0] if goal == "maximize" else [1.0, 2.0, 3.0]
    assert [float(row["x"]) for row in rows] == [*expected, -5.0]  # the failed run ranks last
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "failed"]
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    assert rows[0]["other"] == str(2 * expected[0])  # every final metric of the run is in the CSV
    best_of_first = max(expected[0] / 2, expected[0]) if goal == "maximize" else min(expected[0] / 2, expected[0])
    assert float(rows[0]["best"]) == best_of_first
    markdown = (out / "results.md").read_text()
    assert f"score, goal {goal}" in markdown and "| rank" in markdown
    command = (out / f"trial-{int(rows[0]['trial']):03d}" / "command.txt").read_text()
    assert command.startswith("/usr/bin/env python fake_train.py") and f"--x={expected[0]}" in command


FAKE_OBJECTIVE = textwrap.dedent("""\
    # Stands in for `mmai fit` with a cheap objective: score = -(x - target)^2, less 0.1 off the good arm.
    import json, pathlib, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    score = -(float(args["x"]) - float(args["target"])) ** 2 - (0.0 if args["arm"] == "good" else 0.1)
    run_dir = pathlib.Path(args["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep_metrics.json").write_text(json.dumps({"finished": True, "final": {"score": score},
                                                            "validations": [{"epoch": 0, "score": score}]}))
""")
BAYES_SWEEP = {"program": "fake_objective.py", "method": "bayes", "metric": {"name": "score", "goal": "maximize"},
               "parameters": {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0},
                              "arm": {"values": ["bad", "good"]}}}


def _sweep_trials(tmp_path, name: str, target: float, *options: str) -> list[dict]:
    """Run the bayes sweep on the fake objective through `mmai sweep run`; the trials' rows in trial order."""
    out = tmp_path / name
    assert sweep_main(["run", str(tmp_path / "sweep.yaml"), "--out", str(out), "--workdir", str(tmp_path),
                       "--count", "14", "--seed", "0", *options, "--", f"--target={target}"]) == 0
    with open(out / "results.csv") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["trial"]))
    assert [row["status"] for row in rows] == ["ok"] * 14
    return [{"x": float(row["x"]), "arm": row["arm"], "score": float(row["score"])} for row in rows]


def test_bayes_sweep_is_optuna_tpe_that_proposes_from_the_trials_results(tmp_path):
    """The same seeded bayes sweep on two objectives: the 6 startup trials are the same random draws,
    the later ones follow each objective's results (random drawing would give the same 14 sets)."""
    (tmp_path / "fake_objective.py").write_text(FAKE_OBJECTIVE)
    _write_sweep(tmp_path, BAYES_SWEEP)
    low = _sweep_trials(tmp_path, "low", 0.1, "--startup-trials", "6")
    high = _sweep_trials(tmp_path, "high", 0.9, "--startup-trials", "6")
    random_run = _sweep_trials(tmp_path, "random", 0.1, "--method", "random")
    params = lambda rows: [(row["x"], row["arm"]) for row in rows]  # noqa: E731

    assert params(low)[:6] == params(high)[:6] == params(random_run)[:6]  # startup: TPE's seeded random draws
    assert params(random_run) == [(p["x"], p["arm"]) for p in draw(load_sweep(tmp_path / "sweep.yaml"), count=14,
                                                                   method="random", seed=0)]  # ignores results
    assert all(a != b for a, b in zip(params(low)[6:], params(high)[6:]))  # after startup: each follows its results
    near = lambda rows, target: sum(abs(row["x"] - target) < 0.25 for row in rows[6:])  # noqa: E731
    assert near(low, 0.1) >= 4 and near(high, 0.9) >= 4  # ... towards each objective's optimum: most later
    assert near(low, 0.1) > near(random_run, 0.1)  # trials near it, more than random draws put there
    mean_score = lambda rows: sum(row["score"] for row in rows) / len(rows)  # noqa: E731
    assert mean_score(low[6:]) > mean_score(random_run[6:])  # better trials than random draws of the same seed
    assert sum(row["arm"] == "good" for row in low[6:]) > sum(row["arm"] == "good" for row in low[:6])


def test_the_search_is_told_each_trials_metric_and_a_failed_trial_is_failed(tmp_path):
    import optuna

    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)  # exits 1 for x < 0
    sweep = load_sweep(_write_sweep(tmp_path, {"program": "fake_train.py", "method": "bayes",
                                               "metric": {"name": "score", "goal": "maximize"},
                                               "parameters": {"x": {"values": [2.0, -1.0, 3.0]}}}))
    search = LocalSearch(sweep, count=6, seed=0, n_startup_trials=2)
    trials = run_sweep(sweep, search, tmp_path / "out", workdir=tmp_path)
    told = search.study.trials
    assert len(told) == len(trials) == 6
    for trial, frozen in zip(trials, told):
        assert trial.params["x"] == [2.0, -1.0, 3.0][frozen.params["x"]]
        if trial.params["x"] < 0:  # the run failed: its partial metric is not what the search learns from
            assert trial.status == "failed" and frozen.state == optuna.trial.TrialState.FAIL
        else:  # the metric at the last validation, as W&B's run summary holds it
            assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.value == trial.value == trial.params["x"]


def _wandb_agent_argv(config: dict, params: dict, tmp_path, monkeypatch) -> list[str]:
    """The argv `wandb agent` starts for a run with ``params`` of a sweep ``config``: wandb's own
    Agent._command_run, with the process start replaced by a recorder."""
    import wandb.wandb_agent as wandb_agent

    started = []

    def record(command=None, **kwargs):
        started.append(command)
        return types.SimpleNamespace()  # the agent notes its sigterm time on it

    monkeypatch.setattr(wandb_agent, "AgentProcess", record)
    for name, value in {"WANDB_DIR": str(tmp_path), "WANDB_SWEEP_ID": "local", "WANDB_RUN_ID": "",
                        "WANDB_SWEEP_PARAM_PATH": ""}.items():
        monkeypatch.setenv(name, value)  # _command_run sets the last two: restored after the test
    agent = wandb_agent.Agent(api=None, queue=None)
    if isinstance(config.get("command"), list):  # what Agent.run takes from the sweep config
        agent._sweep_command = list(config["command"])
    agent._command_run({"run_id": "run1", "program": config.get("program"),
                        "args": {name: {"value": value} for name, value in params.items()}})
    return started[0]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_each_trial_runs_the_command_wandb_agent_builds_for_its_parameters(path, tmp_path, monkeypatch):
    """For the parameters the local sampler draws, a trial's argv is wandb agent's argv, then the
    runner's --run_dir and metrics callback, then the extra arguments."""
    sweep = load_sweep(path)
    config = yaml.safe_load(path.read_text())
    extra = ["--trainer.max_epochs", "1"]
    for index, params in enumerate(draw(sweep, count=None if sweep.method == "grid" else 3)[:3]):
        trial = plan_trial(sweep, index, params, tmp_path / "out", extra)
        agent = _wandb_agent_argv(config, params, tmp_path, monkeypatch)
        assert trial.argv[:len(agent)] == agent
        runner_own = trial.argv[len(agent):]
        assert runner_own[0] == f"--run_dir={tmp_path / 'out' / f'trial-{index:03d}'}"
        assert runner_own[1].startswith("--trainer.callbacks+=") and runner_own[2:] == extra


def test_a_custom_command_with_every_macro_runs_as_wandb_agent_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMAI_SWEEP_TEST", "configs")
    config = {"program": "train.py", "method": "bayes", "metric": {"name": "m", "goal": "minimize"},
              "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 1.0e-1},
                             "layers": {"min": 1, "max": 4}, "flag": {"values": [True, False]},
                             "width": {"distribution": "q_uniform", "min": 8, "max": 64, "q": 8}},
              "command": ["${env}", "${interpreter}", "${program}", "--config", "${envvar:MMAI_SWEEP_TEST}/x.yaml",
                          "${args}", "${args_no_equals}", "${args_no_hyphens}", "${args_no_boolean_flags}",
                          "${args_json}"]}
    sweep = load_sweep(_write_sweep(tmp_path, config))
    for params in draw(sweep, count=4, seed=1):
        assert expand_command(sweep.command, params, sweep.program) == \
            _wandb_agent_argv(config, params, tmp_path, monkeypatch)


def test_runner_refuses_in_process_for_a_command_that_is_not_mmai(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path, {"program": "train.py", "method": "grid", "metric": {"name": "m"},
                                               "parameters": {"x": {"values": [1]}}}))
    with pytest.raises(ValueError, match="--in-process runs `mmai ...` commands only"):
        run_sweep(sweep, draw(sweep), tmp_path / "out", in_process=True)


def test_results_table_is_sorted_by_metric_and_goal(tmp_path):
    sweep = load_sweep(REPO / "sweeps/bi_encoder_grid.yaml")
    key = sweep.metric_name
    trials = [Trial(index=i, params={"model.bi_encoder.queue_size": q}, argv=[], run_dir=tmp_path / f"t{i}", status=status,
                    value=value, best=value, metrics={key: value} if value is not None else {})
              for i, (q, value, status) in enumerate([(256, 0.2, "ok"), (1024, None, "no metric"), (2048, 0.6, "ok")])]
    md_path, csv_path = write_results(trials, sweep, tmp_path, {"method": "grid"})
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model.bi_encoder.queue_size"] for row in rows] == ["2048", "256", "1024"]
    assert md_path.read_text().index("0.6000") < md_path.read_text().index("0.2000")
    ordered = [row["m"] for row in sort_by_metric([{"m": 1.0}, {"m": float("nan")}, {"m": 0.5}], "m", "minimize")]
    assert ordered[:2] == [0.5, 1.0] and math.isnan(ordered[2])


@pytest.fixture(scope="module")
def shards(synth_shards):
    return synth_shards


@pytest.mark.slow
def test_sweep_run_trains_two_tiny_trials_and_ranks_them(shards, tmp_path):
    """`mmai sweep run` on the grid file's own command: two real `mmai fit` processes."""
    config = yaml.safe_load((REPO / "sweeps/bi_encoder_grid.yaml").read_text())
    config["parameters"] = {"model.bi_encoder.temperature_init": {"values": [0.05, 0.1]}}
    sweep_file = _write_sweep(tmp_path, config)
    out = tmp_path / "out"
    extra = [*TINY_MODEL, "--data.shard_dir", str(shards), "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "2"]
    assert sweep_main(["run", str(sweep_file), "--out", str(out), "--workdir", str(REPO), "--", *extra]) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    metric = config["metric"]["name"]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    values = [float(row[metric]) for row in rows]
    assert values == sorted(values, reverse=True) and all(0.0 <= v <= 1.0 for v in values)
    for row in rows:  # the drawn value reached the model: the learnt temperature starts there
        assert float(row["train/temperature"]) == pytest.approx(float(row["model.bi_encoder.temperature_init"]), rel=0.1)
        summary = json.loads((out / f"trial-{int(row['trial']):03d}" / "sweep_metrics.json").read_text())
        assert summary["finished"] and len(summary["validations"]) == 1
    assert metric in (out / "results.md").read_text()



def test_a_misspelt_rerank_parameter_fails_the_cli_check(monkeypatch, bi_encoder_ckpt):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(REPO / "sweeps/rerank_grid.yaml")
    with pytest.raises(SystemExit):
        _parse_trial(sweep, {"retrieval.rerank_top_k": 8}, bi_encoder_ckpt)


@pytest.mark.slow
def test_sweep_run_trains_two_tiny_rerankers_and_k_reaches_the_evaluation(shards, bi_encoder_ckpt, tmp_path):
    """`mmai sweep run` on the re-rank grid's own command: two real `mmai rerank fit` processes."""
    config = yaml.safe_load((REPO / "sweeps/rerank_grid.yaml").read_text())
    config["parameters"] = {"retrieval.rerank_k": {"values": [2, 5]}, "retrieval.stage1_weight": {"values": [0.5]}}
    sweep_file = _write_sweep(tmp_path, config)
    out = tmp_path / "out"
    extra = ["--model.bi_encoder_ckpt", str(bi_encoder_ckpt), "--data.shard_dir", str(shards),
             "--data.batch_size", "4", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
             "--model.reranker", json.dumps({"hidden_dim": 32, "num_layers": 2, "num_heads": 2}),
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--retrieval.candidates", "10"]
    assert sweep_main(["run", str(sweep_file), "--out", str(out), "--workdir", str(REPO), "--", *extra]) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    metric = config["metric"]["name"]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    assert all(0.0 <= float(row[metric]) <= 1.0 for row in rows)
    for row in rows:  # the drawn K is the K the callback re-ranked with
        assert float(row["val/two_stage/k"]) == float(row["retrieval.rerank_k"])


def test_a_dry_run_parses_every_trials_flags_so_a_typo_fails_before_any_trial(tmp_path, monkeypatch, capsys):
    from mmai_apps.cli import main

    monkeypatch.chdir(REPO)
    config = yaml.safe_load((REPO / "sweeps/bi_encoder_grid.yaml").read_text())
    config["parameters"] = {"model.bi_encoder.hard_negative_beta": {"values": [0.0, 0.5]}}
    good = _write_sweep(tmp_path, config)
    assert main(["sweep", "run", str(good), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "flags of 2 trial(s) parse" in capsys.readouterr().out
    config["parameters"] = {"model.bi_encoder.hard_negative_bta": {"values": [0.0, 0.5]}}
    typo = _write_sweep(tmp_path, config, "typo.yaml")
    assert main(["sweep", "run", str(typo), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "trial 0" in err and "hard_negative_bta" in err and "usage:" not in err
    assert not (tmp_path / "out").exists()
