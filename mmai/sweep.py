"""W&B sweep files, read and drawn locally: the same YAML that ``wandb sweep`` takes.

A sweep file (https://docs.wandb.ai/guides/sweeps/define-sweep-configuration) names a search
``method`` (grid, random, bayes), the ``metric`` to optimise, the ``parameters`` to search and
the ``command`` an agent runs. ``wandb agent`` fills the command's macros and runs it; this module
does the same without the W&B server, so that ``mmai sweep run`` (mmai_apps.sweep_runner)
can run the trials of a sweep file on a machine with no account or no network:

* :func:`load_sweep` reads and validates a file (errors name the file, the field and the fix);
* :class:`LocalSearch` gives the parameter sets one at a time and is told each trial's metric:
  the full cartesian product for ``grid``; Optuna's ``RandomSampler`` for ``random`` and its
  ``TPESampler`` for ``bayes`` (a model of the results told so far, after
  :data:`DEFAULT_STARTUP_TRIALS` random trials), the study's direction the metric's goal. Each
  W&B distribution maps to an Optuna distribution (:func:`optuna_distribution`,
  :func:`wandb_value`). :func:`draw` lists the sets drawn without results;
* :func:`expand_command` substitutes the macros exactly as ``wandb agent`` does: ``${args}``
  becomes ``--name=value`` per parameter, formatted with Python's ``str`` as W&B formats it.

Library code: no Lightning, no wandb import; optuna is imported when a random or bayes search starts.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
TOP_LEVEL_KEYS = {"program", "method", "metric", "parameters", "early_terminate", "command", "name",
                  "description", "project", "entity", "run_cap"}
#: Distribution -> the keys it needs (besides ``distribution``) and the ones it may have.
DISTRIBUTIONS: dict[str, tuple[set[str], set[str]]] = {
    "constant": ({"value"}, set()),
    "categorical": ({"values"}, {"probabilities"}),
    "int_uniform": ({"min", "max"}, set()),
    "uniform": ({"min", "max"}, set()),
    "q_uniform": ({"min", "max"}, {"q"}),
    "log_uniform": ({"min", "max"}, set()),
    "log_uniform_values": ({"min", "max"}, set()),
    "q_log_uniform": ({"min", "max"}, {"q"}),
    "q_log_uniform_values": ({"min", "max"}, {"q"}),
    "inv_log_uniform": ({"min", "max"}, set()),
    "inv_log_uniform_values": ({"min", "max"}, set()),
    "normal": (set(), {"mu", "sigma"}),
    "q_normal": (set(), {"mu", "sigma", "q"}),
    "log_normal": (set(), {"mu", "sigma"}),
    "q_log_normal": (set(), {"mu", "sigma", "q"}),
}
#: Command macros that expand to the parameters (one of them must be in ``command``).
ARGS_MACROS = {"args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json"}
COMMAND_MACROS = {"env", "interpreter", "program", *ARGS_MACROS, "args_json_file"}
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file.

    Args:
        path: the file it was read from.
        method: ``grid``, ``random`` or ``bayes``.
        metric_name: the logged key to optimise (``val/stage1/t2i/instance/R@10``).
        metric_goal: ``maximize`` or ``minimize`` (W&B's default when absent: minimize).
        parameters: name -> search constraint, as written in the file.
        command: the command with its macros (W&B's default when absent).
        program: the ``program`` key (what ``${program}`` expands to), or None.
        config: the whole file as loaded.
    """

    path: Path
    method: str
    metric_name: str
    metric_goal: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    program: str | None
    config: dict[str, Any]


# ------------------------------------------------------------------------------------ loading
def load_sweep(path: Path | str) -> Sweep:
    """Read a W&B sweep YAML (with ``yaml.safe_load``, as ``wandb sweep`` does) and validate it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid sweep; the message names the field and the fix.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist (the sweeps are in sweeps/*.yaml)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"sweep file {path} is not valid YAML ({' '.join(str(error).split())}): fix the file "
                         "(see sweeps/*.yaml)") from error
    validate_sweep(config, source=str(path))
    metric = config.get("metric") or {}
    return Sweep(path=path, method=config["method"], metric_name=metric.get("name", ""),
                 metric_goal=metric.get("goal", "minimize"), parameters=config["parameters"],
                 command=[str(c) for c in config.get("command", DEFAULT_COMMAND)],
                 program=config.get("program"), config=config)


def validate_sweep(config: Any, source: str = "<sweep>") -> None:
    """Check a loaded sweep config: keys, method, metric, parameters, command, early_terminate.

    Args:
        config: the mapping loaded from the YAML.
        source: the file name used in error messages.

    Raises:
        ValueError: naming ``source``, the field at fault and what to write instead.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source}: a sweep file is a YAML mapping (method, metric, parameters, command)")
    unknown = set(config) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {sorted(unknown)}; W&B knows {sorted(TOP_LEVEL_KEYS)}")
    if config.get("method") not in METHODS:
        raise ValueError(f"{source}: method is {config.get('method')!r}; use one of {list(METHODS)}")
    _validate_metric(config.get("metric"), config, source)
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(f"{source}: parameters must be a non-empty mapping of name -> search constraint")
    for name, spec in parameters.items():
        _validate_parameter(name, spec, f"{source}: parameters.{name}")
        if config["method"] == "grid" and "value" not in spec and "values" not in spec:
            raise ValueError(f"{source}: parameters.{name}: grid search needs `values` (or `value`); "
                             "a distribution has no finite grid")
    _validate_command(config, source)
    if "early_terminate" in config:
        _validate_early_terminate(config["early_terminate"], source)


def _validate_metric(metric: Any, config: dict, source: str) -> None:
    if metric is None:
        if config["method"] == "bayes" or "early_terminate" in config:
            raise ValueError(f"{source}: method bayes and early_terminate need a metric: {{name: KEY, goal: maximize}}")
        return
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or not metric["name"]:
        raise ValueError(f"{source}: metric needs a name, e.g. metric: {{name: val/stage1/t2i/instance/R@10, goal: maximize}}")
    if metric.get("goal", "minimize") not in GOALS:
        raise ValueError(f"{source}: metric.goal is {metric.get('goal')!r}; use one of {list(GOALS)}")
    unknown = set(metric) - {"name", "goal", "target"}
    if unknown:
        raise ValueError(f"{source}: metric has unknown key(s) {sorted(unknown)}; use name, goal, target")
    if "target" in metric:
        _number(metric["target"], f"{source}: metric.target")


def _validate_parameter(name: str, spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a parameter is a mapping such as {{values: [...]}} or {{min: 0, max: 1}}")
    if "parameters" in spec:
        raise ValueError(f"{where}: nested parameters are not supported here; flatten to dotted names "
                         "(model.lr), which is also what the CLI takes")
    distribution = infer_distribution(spec, where)
    required, optional = DISTRIBUTIONS[distribution]
    unknown = set(spec) - required - optional - {"distribution"}
    if unknown:
        raise ValueError(f"{where}: key(s) {sorted(unknown)} do not belong to distribution {distribution}; "
                         f"it takes {sorted(required | optional)}")
    missing = required - set(spec)
    if missing:
        raise ValueError(f"{where}: distribution {distribution} needs {sorted(missing)}")
    if distribution == "categorical":
        _validate_values(spec, where)
    for key in ("min", "max", "mu", "sigma", "q"):
        if key in spec:
            _number(spec[key], f"{where}.{key}")
    if "min" in spec and spec["min"] >= spec["max"]:
        raise ValueError(f"{where}: min {spec['min']} must be below max {spec['max']}")
    if distribution == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise ValueError(f"{where}: int_uniform needs integer min and max (got {spec['min']!r}, {spec['max']!r})")
    if distribution.endswith("log_uniform_values") and spec["min"] <= 0:
        raise ValueError(f"{where}: {distribution} needs min > 0 (got {spec['min']})")
    for key in ("sigma", "q"):
        if key in spec and spec[key] <= 0:
            raise ValueError(f"{where}.{key} must be positive (got {spec[key]})")


def _validate_values(spec: dict, where: str) -> None:
    values = spec["values"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}.values must be a non-empty list")
    if any(isinstance(value, str) and _looks_numeric(value) for value in values):
        raise ValueError(f"{where}.values {values}: YAML reads a number such as 1e-5 as a string; write 1.0e-5")
    probabilities = spec.get("probabilities")
    if probabilities is not None:
        if not isinstance(probabilities, list) or len(probabilities) != len(values):
            raise ValueError(f"{where}.probabilities needs one entry per value ({len(values)})")
        if abs(sum(_number(p, f"{where}.probabilities") for p in probabilities) - 1.0) > 1e-6:
            raise ValueError(f"{where}.probabilities {probabilities} must sum to 1")


def infer_distribution(spec: dict, where: str = "parameter") -> str:
    """The distribution of a parameter, inferred as W&B does when ``distribution`` is absent.

    ``values`` -> categorical, ``value`` -> constant, integer ``min``/``max`` -> int_uniform,
    float ``min``/``max`` -> uniform.

    Raises:
        ValueError: unknown distribution, or nothing to infer one from.
    """
    if "distribution" in spec:
        if spec["distribution"] not in DISTRIBUTIONS:
            raise ValueError(f"{where}: unknown distribution {spec['distribution']!r}; "
                             f"W&B knows {sorted(DISTRIBUTIONS)}")
        return spec["distribution"]
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        _number(spec["min"], f"{where}.min")
        _number(spec["max"], f"{where}.max")
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    raise ValueError(f"{where}: give `values`, `value`, `min` and `max`, or a `distribution` "
                     f"(one of {sorted(DISTRIBUTIONS)})")


def _validate_command(config: dict, source: str) -> None:
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not command:
        raise ValueError(f"{source}: command must be a list, e.g. [${{env}}, ${{program}}, fit, ${{args}}]")
    macros = {str(c)[2:-1] for c in command if str(c).startswith("${") and str(c).endswith("}")}
    macros = {m for m in macros if not m.startswith("envvar:")}
    unknown = macros - COMMAND_MACROS
    if unknown:
        raise ValueError(f"{source}: command has unknown macro(s) {sorted(unknown)}; W&B knows "
                         f"{sorted(COMMAND_MACROS)} and ${{envvar:NAME}} (wandb agent would drop the unknown ones)")
    if not macros & ARGS_MACROS:
        raise ValueError(f"{source}: command never passes the parameters: add ${{args}} (--name=value)")
    if "program" in macros and not config.get("program"):
        raise ValueError(f"{source}: command uses ${{program}} but the file has no `program` key")


def _validate_early_terminate(block: Any, source: str) -> None:
    where = f"{source}: early_terminate"
    if not isinstance(block, dict) or block.get("type") != "hyperband":
        raise ValueError(f"{where} needs type: hyperband (the one stopping algorithm W&B has)")
    unknown = set(block) - HYPERBAND_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; hyperband takes {sorted(HYPERBAND_KEYS)}")
    if "min_iter" not in block and not ("max_iter" in block and "s" in block):
        raise ValueError(f"{where} needs min_iter, or max_iter together with s")
    for key in ("min_iter", "max_iter", "s"):
        if key in block and (not isinstance(block[key], int) or block[key] < 1):
            raise ValueError(f"{where}.{key} must be a positive integer (got {block[key]!r})")
    if "eta" in block and _number(block["eta"], f"{where}.eta") <= 1:
        raise ValueError(f"{where}.eta must be above 1 (got {block['eta']})")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = "; YAML reads 1e-5 as a string: write 1.0e-5" if isinstance(value, str) and _looks_numeric(value) else ""
        raise ValueError(f"{where} must be a number (got {value!r}){hint}")
    return float(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ drawing
#: What draws each method's parameter sets here.
SAMPLERS = {"grid": "the cartesian product of the values, in file order (no sampler)",
            "random": "optuna.samplers.RandomSampler", "bayes": "optuna.samplers.TPESampler"}
#: Trials a ``bayes`` search draws at random before TPE models the results (TPE's
#: ``n_startup_trials``). Optuna's default is 10; a local sweep is short (``--count`` defaults to
#: 10), so 5 random trials are followed by TPE from the sixth.
DEFAULT_STARTUP_TRIALS = 5
_QUANTILE_EPS = 1e-12  # normal draws go through quantiles in [eps, 1 - eps]: about 7 sigma either side


class LocalSearch:
    """The parameter sets of a local run of ``sweep``, asked one at a time and told each result.

    * ``grid``: the full cartesian product of the ``values``, first parameter slowest (this
      module's own enumeration, so ``--count N`` is the first N points of the product, as in the
      files' comments; Optuna's GridSampler visits the points in random order);
    * ``random``: ``optuna.samplers.RandomSampler(seed)``, each parameter drawn independently
      from its distribution; results are ignored;
    * ``bayes``: ``optuna.samplers.TPESampler(seed, n_startup_trials)``, Optuna 5's multivariate
      TPE: the first ``n_startup_trials`` sets are its random draws (the same sets ``random``
      draws under the seed), each later set is proposed from the results told so far. W&B's
      controller uses a Gaussian process instead, so the sets differ from a W&B sweep's.

    Every W&B distribution is an Optuna distribution of an internal value and a map to the value
    the command gets (:func:`optuna_distribution`, :func:`wandb_value`), so the draws keep W&B's
    meaning of each distribution. The study's direction is the metric's goal.

    Args:
        sweep: a loaded sweep.
        method: override the file's method (``grid``, ``random``, ``bayes``); default the file's.
        seed: seed of the sampler (default 0); the same seed and results give the same sets.
        count: how many sets; for grid the first ``count`` of the product (default: all of it),
            for random and bayes required.
        n_startup_trials: random trials before TPE starts (``bayes`` only).

    Raises:
        ValueError: unknown method, grid over a continuous distribution, or no ``count`` for a
            random or bayes search.
    """

    def __init__(self, sweep: Sweep, method: str | None = None, seed: int = 0, count: int | None = None,
                 n_startup_trials: int = DEFAULT_STARTUP_TRIALS):
        self.sweep, self.method, self.seed = sweep, method or sweep.method, seed
        self.n_startup_trials = n_startup_trials
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: use one of {list(METHODS)}")
        self._listed: list[dict[str, Any]] | None = None
        self._trials: list[Any] = []  # the Optuna trial of each set asked, in order
        if self.method == "grid":
            combos = grid(sweep.parameters, where=str(sweep.path))
            self._listed = combos if count is None else combos[:count]
            self.count = len(self._listed)
            self.study = None
            return
        if count is None or count < 1:
            raise ValueError(f"{sweep.path}: a {self.method} search never ends by itself; "
                             "pass a count of trials (--count N)")
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0 (got {n_startup_trials})")
        import optuna

        self.count = count
        self.space = {name: distribution for name, spec in sweep.parameters.items()
                      if (distribution := optuna_distribution(spec)) is not None}
        sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
                   if self.method == "bayes" else optuna.samplers.RandomSampler(seed=seed))
        self.study = optuna.create_study(direction=sweep.metric_goal, sampler=sampler,
                                         study_name=str(sweep.config.get("name") or sweep.path.stem))

    @classmethod
    def listed(cls, sweep: Sweep, param_sets: list[dict[str, Any]]) -> "LocalSearch":
        """A search that gives ``param_sets`` in order (e.g. from :func:`draw`) and ignores results."""
        search = cls.__new__(cls)
        search.sweep, search.method, search.seed, search.n_startup_trials = sweep, "given", 0, 0
        search._listed, search._trials, search.count, search.study = list(param_sets), [], len(param_sets), None
        return search

    def describe(self) -> str:
        """The sampler in words, for logs and the results header."""
        if self.method == "bayes":
            return (f"Optuna TPESampler (multivariate, seed {self.seed}): the first {self.n_startup_trials} "
                    "trial(s) drawn at random, then each proposed from the results so far")
        if self.method == "random":
            return f"Optuna RandomSampler (seed {self.seed})"
        if self.method == "grid":
            return "the cartesian product of the values, in file order"
        return "given parameter sets"

    def ask(self) -> dict[str, Any] | None:
        """The next parameter set ``{name: value}`` (names in the file's order), or None when
        ``count`` sets were asked."""
        index = len(self._trials)
        if index >= self.count:
            return None
        if self._listed is not None:
            self._trials.append(None)
            return self._listed[index]
        trial = self.study.ask(self.space)
        self._trials.append(trial)
        return {name: wandb_value(spec, trial.params.get(name)) for name, spec in self.sweep.parameters.items()}

    def tell(self, index: int, value: float | None) -> None:
        """Report the metric of the ``index``-th set asked; None (a failed run, no metric) marks
        the trial failed, which TPE leaves out of its model."""
        trial = self._trials[index]
        if trial is None:
            return
        import optuna

        if _finite(value):
            self.study.tell(trial, float(value))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def draw(sweep: Sweep, count: int | None = None, method: str | None = None, seed: int = 0,
         n_startup_trials: int = DEFAULT_STARTUP_TRIALS) -> list[dict[str, Any]]:
    """The parameter sets of a local run of ``sweep`` when no result comes back.

    ``grid`` and ``random`` give exactly the sets a run draws; ``bayes`` proposes from results,
    so without them it gives TPE's startup draws (random) throughout: the first
    ``n_startup_trials`` are the ones a run draws, the later ones a run would propose from its
    results. Arguments and errors as :class:`LocalSearch`.

    Returns:
        One ``{name: value}`` per trial, names in the file's order.
    """
    search = LocalSearch(sweep, method=method, seed=seed, count=count, n_startup_trials=n_startup_trials)
    return list(iter(search.ask, None))


def grid(parameters: dict[str, dict[str, Any]], where: str = "sweep") -> list[dict[str, Any]]:
    """Every combination of the parameters' ``values`` (and ``value``s), first parameter slowest.

    Raises:
        ValueError: a parameter has a distribution instead of values.
    """
    axes = []
    for name, spec in parameters.items():
        if "values" in spec:
            axes.append(spec["values"])
        elif "value" in spec:
            axes.append([spec["value"]])
        else:
            raise ValueError(f"{where}: parameters.{name} has no `values`: a grid needs a finite list for "
                             "every parameter (draw it with --method random instead)")
    return [dict(zip(parameters, combo)) for combo in itertools.product(*axes)]


def optuna_distribution(spec: dict[str, Any]):
    """The Optuna distribution of a parameter's internal value (None for a constant).

    ========================================  ===============================================
    W&B distribution                          Optuna distribution of the internal value
    ========================================  ===============================================
    categorical ``values``                    ``CategoricalDistribution`` of the indices
    categorical with ``probabilities``        ``FloatDistribution(0, 1)``: the quantile
    int_uniform                               ``IntDistribution(min, max)``
    uniform, q_uniform                        ``FloatDistribution(min, max)``
    log_uniform_values, q_log_uniform_values  ``FloatDistribution(min, max, log=True)``
    inv_log_uniform_values                    ``FloatDistribution(min, max, log=True)``
    log_uniform, q_log_uniform                ``FloatDistribution(min, max)``: the exponent
    inv_log_uniform                           ``FloatDistribution(min, max)``: minus the log
    normal, log_normal, q_normal, ...         ``FloatDistribution(0, 1)``: the quantile
    ========================================  ===============================================

    :func:`wandb_value` maps the internal value to the parameter's value (indices to values,
    exponents through ``exp``, quantiles through the inverse CDF, ``q_*`` rounded to a multiple
    of ``q``), so a uniform draw of the internal value is a draw of W&B's distribution.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distribution = infer_distribution(spec)
    base = distribution[2:] if distribution.startswith("q_") else distribution
    if distribution == "constant":
        return None
    if distribution == "categorical":
        if spec.get("probabilities") is not None:
            return FloatDistribution(0.0, 1.0)
        return CategoricalDistribution(tuple(range(len(spec["values"]))))
    if distribution == "int_uniform":
        return IntDistribution(spec["min"], spec["max"])
    if base in ("uniform", "log_uniform", "inv_log_uniform"):
        return FloatDistribution(float(spec["min"]), float(spec["max"]))
    if base in ("log_uniform_values", "inv_log_uniform_values"):
        return FloatDistribution(float(spec["min"]), float(spec["max"]), log=True)
    if base in ("normal", "log_normal"):
        return FloatDistribution(_QUANTILE_EPS, 1.0 - _QUANTILE_EPS)
    raise ValueError(f"distribution {distribution!r} cannot be searched here")  # pragma: no cover - validated


def wandb_value(spec: dict[str, Any], internal: Any) -> Any:
    """The parameter's value for the internal value Optuna drew (see :func:`optuna_distribution`).

    W&B's meaning of each distribution: ``log_uniform`` takes its bounds as natural-log
    exponents, ``log_uniform_values`` as values; ``inv_log_uniform`` is ``exp(-U(min, max))``;
    ``q_*`` rounds to a multiple of ``q`` (default 1; an integer ``q`` gives integers);
    ``normal`` has ``mu`` 0 and ``sigma`` 1 by default.
    """
    distribution = infer_distribution(spec)
    if distribution == "constant":
        return spec["value"]
    if distribution == "categorical":
        values, probabilities = spec["values"], spec.get("probabilities")
        if probabilities is None:
            return values[int(internal)]
        cumulative = list(itertools.accumulate(probabilities))
        return values[min(bisect.bisect_right(cumulative, internal), len(values) - 1)]
    if distribution == "int_uniform":
        return int(internal)
    base = distribution[2:] if distribution.startswith("q_") else distribution
    if base in ("uniform", "log_uniform_values", "inv_log_uniform_values"):
        value = float(internal)
    elif base == "log_uniform":
        value = math.exp(internal)
    elif base == "inv_log_uniform":
        value = math.exp(-internal)
    else:  # normal, log_normal: the quantile through the inverse CDF
        value = statistics.NormalDist(spec.get("mu", 0.0), spec.get("sigma", 1.0)).inv_cdf(internal)
        value = math.exp(value) if base == "log_normal" else value
    return _quantize(value, spec.get("q", 1)) if distribution.startswith("q_") else value


def _quantize(value: float, q: float) -> int | float:
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) else float(f"{rounded:.12g}")  # 0.30000000000000004 -> 0.3


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------- commands
def render_args(params: dict[str, Any]) -> list[str]:
    """``${args}`` as ``wandb agent`` writes it: ``["--model.lr=0.001", ...]`` (values through ``str``)."""
    return [f"--{name}={value}" for name, value in params.items()]


def macro_values(params: dict[str, Any], program: str | None = None) -> dict[str, list[str]]:
    """What each command macro expands to for one parameter set, as in ``wandb agent``."""
    return {
        "env": [] if platform.system() == "Windows" else ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [program] if program else [],
        "args": render_args(params),
        "args_no_equals": [item for name, value in params.items() for item in (f"--{name}", str(value))],
        "args_no_hyphens": [f"{name}={value}" for name, value in params.items()],
        "args_no_boolean_flags": [f"--{name}" if value is True else f"--{name}={value}"
                                  for name, value in params.items() if value is not False],
        "args_json": [json.dumps(params)],
    }


def expand_command(command: list[str], params: dict[str, Any], program: str | None = None) -> list[str]:
    """The argument list ``wandb agent`` would run: ``${envvar:NAME}`` filled in, each whole-item
    macro (``${env}``, ``${program}``, ``${args}``...) replaced by its items.

    Raises:
        ValueError: ``${args_json_file}`` (it needs the agent's file; use ``${args_json}``) or an
            unknown macro.
    """
    values = macro_values(params, program)
    argv: list[str] = []
    for item in command:
        item = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(item))
        if item.startswith("${") and item.endswith("}"):
            if item[2:-1] not in values:
                raise ValueError(f"command macro {item} is not supported by the local runner; "
                                 f"it expands {sorted(values)}")
            argv += values[item[2:-1]]
        else:
            argv.append(item)
    return argv


def sort_by_metric(rows: list[dict[str, Any]], key: str, goal: str) -> list[dict[str, Any]]:
    """Rows ordered best first by ``row[key]`` under ``goal``; rows without a finite value go last.

    Args:
        rows: one dict per trial.
        key: the column holding the metric.
        goal: ``maximize`` or ``minimize``.
    """
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}: use one of {list(GOALS)}")
    sign = -1.0 if goal == "maximize" else 1.0

    def order(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0)
        return (0, sign * value)

    return sorted(rows, key=order)  # stable: ties keep trial order
