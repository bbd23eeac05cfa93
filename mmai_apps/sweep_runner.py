"""``mmai sweep run``: the trials of a W&B sweep file, run here without the W&B server.

``wandb agent`` asks the W&B server for a parameter set, fills the sweep's ``command`` with it and
runs it. This runner asks :class:`mmai.sweep.LocalSearch` instead (grid = the whole product,
random = Optuna's RandomSampler, bayes = Optuna's TPESampler, seeded), fills the command the same
way, runs the trial, and tells the search the trial's metric before asking for the next set (so
TPE proposes from the results so far). Each trial runs:

* as a subprocess (default): exactly the command ``wandb agent`` would run, with this Python
  environment's ``bin`` first on ``PATH`` so ``${env} mmai`` is this checkout's ``mmai``;
* or in-process (``--in-process``): ``mmai_apps.cli.main`` called on the same arguments, which saves
  the start-up of a Python process per trial.

Either way the runner appends ``--run_dir OUT/trial-NNN`` and a :class:`callbacks.SweepMetricsCallback`
that writes the run's validation metrics to ``OUT/trial-NNN/sweep_metrics.json``; the sweep
metric's value of a trial is its last validation's value, as W&B's run summary holds it, and is
what the search is told (a failed run, or one without the metric, is a failed Optuna trial). The
results go to ``OUT/results.md`` and ``OUT/results.csv``, best first under the metric's goal.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from callbacks import SweepMetricsCallback
from mmai_apps.bench import format_table
from mmai.sweep import (DEFAULT_STARTUP_TRIALS, METHODS, LocalSearch, Sweep, expand_command, load_sweep,
                        sort_by_metric)

METRICS_FILE = "sweep_metrics.json"
LOG_FILE = "output.log"


@dataclass
class Trial:
    """One run of a sweep: its parameters, command, outcome and metric.

    Args:
        index: position in the drawn order (0-based).
        params: ``{name: value}`` of this trial.
        argv: the full command run (macros filled, runner's and extra arguments appended).
        run_dir: the trial's ``--run_dir`` (logs, checkpoints, W&B run, metrics file).
        status: ``pending``, ``ok``, ``failed`` (non-zero exit or exception) or ``no metric``.
        seconds: wall time of the run.
        value: the sweep metric at the last validation (W&B's summary value), or None.
        best: the best value over all validations under the goal, or None.
        metrics: every metric at the end of the run (``final`` of the metrics file).
    """

    index: int
    params: dict[str, Any]
    argv: list[str]
    run_dir: Path
    status: str = "pending"
    seconds: float = 0.0
    value: float | None = None
    best: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# -------------------------------------------------------------------------------- the trials
def plan_trial(sweep: Sweep, index: int, params: dict[str, Any], out: Path, extra_args: Sequence[str] = ()) -> Trial:
    """The ``index``-th trial: the command exactly as ``wandb agent`` fills it for ``params``
    (:func:`mmai.sweep.expand_command`), then this runner's ``--run_dir`` and metrics callback,
    then ``extra_args`` (last, so they win)."""
    run_dir = out / f"trial-{index:03d}"
    callback = {"class_path": "callbacks.SweepMetricsCallback", "init_args": {"path": str(run_dir / METRICS_FILE)}}
    argv = [*expand_command(sweep.command, params, sweep.program), f"--run_dir={run_dir}",
            f"--trainer.callbacks+={json.dumps(callback)}", *extra_args]
    return Trial(index=index, params=params, argv=argv, run_dir=run_dir)


def plan_trials(sweep: Sweep, param_sets: list[dict[str, Any]], out: Path,
                extra_args: Sequence[str] = ()) -> list[Trial]:
    """The trials of ``param_sets`` (see :func:`plan_trial`)."""
    return [plan_trial(sweep, index, params, out, extra_args) for index, params in enumerate(param_sets)]


def run_trial(trial: Trial, sweep: Sweep, workdir: Path, in_process: bool = False) -> Trial:
    """Run one trial and read its metric from ``run_dir/sweep_metrics.json``; never raises for a
    failed run (the status says ``failed`` and the log is in ``run_dir/output.log``)."""
    trial.run_dir.mkdir(parents=True, exist_ok=True)
    (trial.run_dir / "command.txt").write_text(shlex.join(trial.argv) + "\n")
    start = time.perf_counter()
    ok = _run_in_process(trial, workdir) if in_process else _run_subprocess(trial, workdir)
    trial.seconds = time.perf_counter() - start
    _read_metrics(trial, sweep)
    trial.status = "failed" if not ok else ("ok" if trial.value is not None else "no metric")
    return trial


def _run_subprocess(trial: Trial, workdir: Path) -> bool:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # this env's mmai
    with open(trial.run_dir / LOG_FILE, "w") as log:
        completed = subprocess.run(trial.argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    return completed.returncode == 0


def _run_in_process(trial: Trial, workdir: Path) -> bool:
    from mmai_apps.cli import main as mmai_main

    argv = trial.argv[1:] if trial.argv[0] == "/usr/bin/env" else trial.argv
    if Path(argv[0]).name != "mmai":
        raise ValueError(f"--in-process runs `mmai ...` commands only; this sweep runs {argv[0]!r}: "
                         "drop --in-process to run it as a subprocess")
    previous = Path.cwd()
    ok = True
    try:
        os.chdir(workdir)
        ok = mmai_main(argv[1:]) in (0, None)
    except (Exception, SystemExit):  # a trial's failure (parse error included) is recorded, not fatal
        ok = False
        (trial.run_dir / LOG_FILE).write_text(traceback.format_exc())
    finally:
        os.chdir(previous)
        from lightning_glue.tracking import finish_wandb_run  # Lightning: imported only when a run ends

        finish_wandb_run(exit_code=0 if ok else 1)
    return ok


def _read_metrics(trial: Trial, sweep: Sweep) -> None:
    path = trial.run_dir / METRICS_FILE
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    values = [v[sweep.metric_name] for v in summary["validations"] if _finite(v.get(sweep.metric_name))]
    trial.metrics = summary["final"]
    trial.value = values[-1] if values else None
    trial.best = (max if sweep.metric_goal == "maximize" else min)(values) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def run_sweep(sweep: Sweep, search: LocalSearch | Sequence[dict[str, Any]], out: Path, extra_args: Sequence[str] = (),
              workdir: Path | None = None, in_process: bool = False) -> list[Trial]:
    """Run the trials of a sweep one after the other: ask ``search`` for a parameter set, run it,
    tell ``search`` its metric (:attr:`Trial.value`, None when it failed), until ``search`` is done.

    Args:
        sweep: the loaded sweep file.
        search: a :class:`mmai.sweep.LocalSearch`, or parameter sets to run in order (e.g. from
            :func:`mmai.sweep.draw`).
        out: output folder; one ``trial-NNN`` run directory per trial.
        extra_args: appended to every trial's command (e.g. ``--trainer.max_epochs 1``).
        workdir: where the commands run; relative paths in the command are read from here
            (default: the current directory).
        in_process: call ``mmai_apps.cli.main`` here instead of starting a process per trial.

    Returns:
        The trials in asked order, with status and metric.
    """
    out = Path(out).resolve()
    workdir = Path(workdir or Path.cwd()).resolve()
    if (out / "results.csv").exists():
        raise FileExistsError(f"{out} already holds a sweep's results: pass another --out")
    if not isinstance(search, LocalSearch):
        search = LocalSearch.listed(sweep, list(search))
    trials: list[Trial] = []
    while (params := search.ask()) is not None:
        trial = plan_trial(sweep, len(trials), params, out, list(extra_args))
        trials.append(trial)
        print(f"[sweep] trial {trial.index + 1}/{search.count}: {' '.join(f'{k}={v}' for k, v in params.items())}",
              flush=True)
        run_trial(trial, sweep, workdir, in_process=in_process)
        search.tell(trial.index, trial.value if trial.status == "ok" else None)
        shown = "n/a" if trial.value is None else f"{trial.value:.4f}"
        print(f"[sweep] trial {trial.index + 1}/{search.count} {trial.status} in {trial.seconds:.1f} s: "
              f"{sweep.metric_name} = {shown}", flush=True)
        if trial.status == "failed":
            _print_log_tail(trial.run_dir / LOG_FILE)
    return trials


def _print_log_tail(path: Path, lines: int = 15) -> None:
    if path.is_file():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"[sweep] last lines of {path}:\n" + "\n".join("    " + line for line in tail), flush=True)


# ----------------------------------------------------------------------------------- results
def results_rows(trials: list[Trial], sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial, best first (finished runs before failed ones): rank, trial, metric, best,
    status, seconds, parameters, run_dir."""
    rows = [{"trial": t.index, sweep.metric_name: t.value, "best": t.best, "status": t.status,
             "seconds": round(t.seconds, 1), **t.params, "run_dir": str(t.run_dir)} for t in trials]
    ok = [row for row in rows if row["status"] == "ok"]
    rest = [row for row in rows if row["status"] != "ok"]  # a failed run's partial metric never ranks above a finished one
    ranked = sort_by_metric(ok, sweep.metric_name, sweep.metric_goal) + sort_by_metric(rest, sweep.metric_name,
                                                                                       sweep.metric_goal)
    return [{"rank": rank, **row} for rank, row in enumerate(ranked, 1)]


def write_results(trials: list[Trial], sweep: Sweep, out: Path, header: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results.md`` (header + table) and ``results.csv`` (the table plus every final
    metric of each run); returns both paths."""
    rows = results_rows(trials, sweep)
    by_index = {t.index: t for t in trials}
    extra = sorted({k for t in trials for k in t.metrics if k != sweep.metric_name})
    csv_path, md_path = out / "results.csv", out / "results.md"
    out.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], *extra] if rows else ["rank"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{k: by_index[row["trial"]].metrics.get(k) for k in extra}})
    lines = [f"# Sweep results: {sweep.path}", ""] + [f"- {key}: {value}" for key, value in header.items()]
    shown = [{k: _cell(v) if k in (sweep.metric_name, "best") else ("n/a" if v is None else str(v))
              for k, v in row.items() if k != "run_dir"} for row in rows]  # parameters as the CLI got them
    table = format_table(shown)
    md_path.write_text("\n".join([*lines, "", table, "", f"Run directories: {out}/trial-NNN", ""]))
    return md_path, csv_path


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def overridden_parameters(sweep: Sweep, extra_args: list[str]) -> list[str]:
    """Sweep parameters that an extra argument sets again (extra arguments come last, so they win)."""
    named = {arg[2:].split("=", 1)[0] for arg in extra_args if arg.startswith("--")}
    return [name for name in sweep.parameters if name in named]


def check_trial_flags(trials: Sequence[Trial], workdir: Path) -> tuple[list[str], int]:
    """Parse each ``mmai fit|validate|test|predict`` / ``mmai rerank fit`` trial's arguments with
    the command's own LightningCLI parser (nothing is built or run), from ``workdir`` as the run
    would, so a misspelt flag or a bad value fails before any trial trains. Returns one line per
    trial that does not parse, and how many trials were checked (other programs are not)."""
    import contextlib
    import io

    from mmai_apps.cli import APP_COMMANDS, USER_ERRORS, user_message
    from mmai_apps.lightning_cli import parse_config
    from mmai_apps.resources import resolve_path_args
    from mmai.sweep import render_args

    problems, checked = [], 0
    previous = Path.cwd()
    try:
        os.chdir(workdir)
        for trial in trials:
            argv = trial.argv[1:] if trial.argv[0] == "/usr/bin/env" else trial.argv
            if Path(argv[0]).name != "mmai" or len(argv) < 2:
                continue
            if argv[1] in APP_COMMANDS:
                args, rerank = argv[2:], False
            elif argv[1:3] == ["rerank", "fit"]:
                args, rerank = argv[3:], True
            else:
                continue
            checked += 1
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    parse_config(resolve_path_args(args), rerank=rerank)
            except SystemExit:  # jsonargparse printed usage and "error: ..." (kept: the error lines)
                lines = [line.strip() for line in errors.getvalue().splitlines()]
                reason = " ".join(line for line in lines[next((i for i, line in enumerate(lines)
                                                               if line.startswith("error:")), len(lines)):] if line)
                problems.append(f"trial {trial.index} ({shlex.join(render_args(trial.params))}): its flags do not parse: "
                                f"{reason or 'see the parser output with --debug'}")
            except USER_ERRORS as error:
                problems.append(f"trial {trial.index} ({shlex.join(render_args(trial.params))}): {user_message(error)}")
    finally:
        os.chdir(previous)
    return problems, checked


# -------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmai sweep",
        description="Run the trials of a W&B sweep file here, without the W&B server. Arguments after "
                    "`--` are appended to every trial's command.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="draw parameter sets, run each trial, write results.md/.csv sorted by the metric")
    run.add_argument("sweep", type=Path, help="a sweep file, e.g. sweeps/bi_encoder_grid.yaml")
    run.add_argument("--count", type=int, default=None,
                     help="number of trials (grid: the first N of the product, default all; random/bayes: default 10)")
    run.add_argument("--method", choices=METHODS, default=None,
                     help="override the file's method (grid: the product; random: Optuna RandomSampler; "
                          "bayes: Optuna TPESampler)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    run.add_argument("--startup-trials", type=int, default=DEFAULT_STARTUP_TRIALS,
                     help=f"bayes: trials drawn at random before TPE proposes from the results "
                          f"(TPESampler's n_startup_trials; default {DEFAULT_STARTUP_TRIALS})")
    run.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/NAME-TIME)")
    run.add_argument("--workdir", type=Path, default=None,
                     help="where the trial commands run; their relative paths start here (default: cwd)")
    run.add_argument("--in-process", action="store_true",
                     help="run `mmai` commands in this process: no start-up per trial, but trials share its "
                          "memory and a hard crash ends the sweep (default: a subprocess per trial)")
    run.add_argument("--dry-run", action="store_true", help="print the trial commands and stop")
    return parser


def main(argv: list[str]) -> int:
    """``mmai sweep run SWEEP.yaml [--count N] [--method M] [--seed S] [--startup-trials N] [--out DIR]
    [-- EXTRA ARGS]``."""
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    sweep = load_sweep(args.sweep)
    method = args.method or sweep.method
    count = args.count if args.count is not None or method == "grid" else 10
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the runner prints each trial itself
    search = LocalSearch(sweep, method=method, seed=args.seed, count=count, n_startup_trials=args.startup_trials)
    out = args.out or Path("runs") / "sweeps" / f"{sweep.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[sweep] {sweep.path}: {search.count} trial(s), method {method}: {search.describe()}; "
          f"metric {sweep.metric_name} ({sweep.metric_goal})", flush=True)
    for name in overridden_parameters(sweep, extra):
        print(f"[sweep] warning: the extra argument --{name} overrides the sweep parameter {name} in every trial",
              flush=True)
    if args.dry_run:
        if method == "bayes" and count > args.startup_trials:
            print(f"[sweep] dry run: trials after the first {args.startup_trials} are proposed from the results "
                  "of earlier ones, so they are shown as TPE draws them with no results (at random)", flush=True)
        trials = plan_trials(sweep, list(iter(search.ask, None)), Path(out).resolve(), extra)
        for trial in trials:
            print(shlex.join(trial.argv))
        problems, checked = check_trial_flags(trials, args.workdir or Path.cwd())
        for problem in problems:
            print(f"[sweep] dry run: {problem}", file=sys.stderr, flush=True)
        if problems:
            return 2
        print(f"[sweep] dry run: the flags of {checked} trial(s) parse as their command takes them", flush=True)
        return 0
    trials = run_sweep(sweep, search, out, extra, workdir=args.workdir, in_process=args.in_process)
    header = {"method": method, "sampler": search.describe(), "trials": f"{len(trials)} "
              f"({sum(t.status == 'ok' for t in trials)} ok)",
              "metric": f"{sweep.metric_name}, goal {sweep.metric_goal}; the value at the last validation "
                        "(W&B's run summary), `best` = best over the run's validations",
              "command": f"`{' '.join(sweep.command)}`", "extra args": f"`{shlex.join(extra)}`" if extra else "none",
              "mode": "in-process" if args.in_process else "subprocess per trial"}
    md_path, csv_path = write_results(trials, sweep, Path(out).resolve(), header)
    print("\n" + md_path.read_text())
    print(f"[sweep] wrote {md_path} and {csv_path}")
    return 0 if any(t.status == "ok" for t in trials) else 1
