"""W&B sweep files, read and drawn locally: the same YAML that ``wandb sweep`` takes.

A sweep file (https://docs.wandb.ai/guides/sweeps/define-sweep-configuration) names a search
``method`` (grid, random, bayes), the ``metric`` to optimise, the ``parameters`` to search and
the ``command`` an agent runs. ``wandb agent`` fills the command's macros and runs it; this module
does the same without the W&B server, so that ``mmai sweep run`` (lightning_modules.sweep_runner)
can run the trials of a sweep file on a machine with no account or no network:

* :func:`load_sweep` reads and validates a file (errors name the file, the field and the fix);
* :func:`draw` gives the parameter sets: the full cartesian product for ``grid``, independent draws
  from each parameter's distribution for ``random``. ``bayes`` needs the W&B controller's
  Gaussian-process model of past runs; locally it is drawn as ``random`` (:data:`LOCAL_METHOD`);
* :func:`expand_command` substitutes the macros exactly as ``wandb agent`` does: ``${args}``
  becomes ``--name=value`` per parameter, formatted with Python's ``str`` as W&B formats it.

Library code: no Lightning, no wandb import.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("grid", "random", "bayes")
#: How each method is drawn here: ``bayes`` needs W&B's controller, so it is drawn as random.
LOCAL_METHOD = {"grid": "grid", "random": "random", "bayes": "random"}
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
    config = yaml.safe_load(path.read_text())
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
def draw(sweep: Sweep, count: int | None = None, method: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets of a local run of ``sweep``.

    Args:
        sweep: a loaded sweep.
        count: how many sets; for grid the first ``count`` of the product (default: all of it),
            for random and bayes required.
        method: override the file's method (``grid``, ``random``, ``bayes``); default the file's.
        seed: seed of the random draws (default 0); the same seed gives the same sets.

    Returns:
        One ``{name: value}`` per trial, names in the file's order.

    Raises:
        ValueError: grid over a continuous distribution, or no ``count`` for a random search.
    """
    method = method or sweep.method
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {list(METHODS)}")
    if LOCAL_METHOD[method] == "grid":
        combos = grid(sweep.parameters, where=str(sweep.path))
        return combos if count is None else combos[:count]
    if count is None or count < 1:
        raise ValueError(f"{sweep.path}: a {method} search never ends by itself; pass a count of trials (--count N)")
    rng = random.Random(seed)
    return [sample(sweep.parameters, rng) for _ in range(count)]


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


def sample(parameters: dict[str, dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """One draw of every parameter from its distribution (see :func:`sample_value`)."""
    return {name: sample_value(spec, rng) for name, spec in parameters.items()}


def sample_value(spec: dict[str, Any], rng: random.Random) -> Any:
    """One value of a parameter, with W&B's meaning of each distribution.

    ``log_uniform`` takes its bounds as natural-log exponents, ``log_uniform_values`` as values;
    ``inv_log_uniform*`` draws ``X`` with ``log(1/X)`` uniform; ``q_*`` rounds to a multiple of
    ``q`` (default 1); ``normal`` has ``mu`` 0 and ``sigma`` 1 by default.
    """
    distribution = infer_distribution(spec)
    if distribution == "constant":
        return spec["value"]
    if distribution == "categorical":
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    if distribution == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    base = distribution[2:] if distribution.startswith("q_") else distribution
    value = _continuous(base, spec, rng)
    return _quantize(value, spec.get("q", 1)) if distribution.startswith("q_") else value


def _continuous(distribution: str, spec: dict, rng: random.Random) -> float:
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    if distribution == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    if distribution == "log_uniform":
        return math.exp(rng.uniform(spec["min"], spec["max"]))
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    if distribution == "inv_log_uniform":
        return math.exp(-rng.uniform(spec["min"], spec["max"]))
    if distribution == "inv_log_uniform_values":
        return math.exp(-rng.uniform(math.log(1 / spec["max"]), math.log(1 / spec["min"])))
    if distribution == "normal":
        return rng.gauss(mu, sigma)
    if distribution == "log_normal":
        return math.exp(rng.gauss(mu, sigma))
    raise ValueError(f"distribution {distribution!r} cannot be drawn here")  # pragma: no cover - validated


def _quantize(value: float, q: float) -> int | float:
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) else float(f"{rounded:.12g}")  # 0.30000000000000004 -> 0.3


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
