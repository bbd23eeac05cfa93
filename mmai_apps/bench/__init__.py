"""Benchmark harness: ``mmai bench NAME``.

Every benchmark is a module in this package registered in :data:`BENCHMARKS`. A module exposes

* ``add_arguments(parser: argparse.ArgumentParser) -> None`` — its own flags, and
* ``run(args: argparse.Namespace) -> BenchResult`` — the measurement.

The harness prints the rows as a table and writes them, with the machine and protocol, as JSON
to ``--out`` (default ``bench_results/NAME.json``). Ratios are always measured side by side in one
run; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import json
import os
import platform
from pathlib import Path
from typing import Any

#: name -> module path. Later issues add their entries here.
BENCHMARKS: dict[str, str] = {
    "data": "mmai_apps.bench.data",
    "loader": "mmai_apps.bench.loader",
    "retrieval": "mmai_apps.bench.retrieval",
    "rerank": "mmai_apps.bench.rerank",
    "memory": "mmai_apps.bench.memory",
    "topdown": "mmai_apps.bench.topdown",
    "words": "mmai_apps.bench.words",
    "forgetting": "mmai_apps.bench.forgetting",
    "graph": "mmai_apps.bench.graph",
    "writes": "mmai_apps.bench.writes",
    # benchmarks of the Lightning app live beside it (mmai itself never imports Lightning)
    "train": "mmai_apps.bench.throughput",
}


@dataclasses.dataclass
class BenchResult:
    """What a benchmark measured.

    Args:
        rows: one dict per measured configuration; keys become table columns.
        meta: protocol facts that hold for every row (dataset size, image size, hardware, ...).
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """The facts every benchmark number must carry: CPU, core count, GPU if any, versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def format_table(rows: list[dict[str, Any]]) -> str:
    """Render rows as a GitHub-markdown table (columns in first-seen order)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
        return "" if value is None else str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(s.ljust(w) for s, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, body)])


def build_parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(BENCHMARKS[name])
    parser = argparse.ArgumentParser(prog=f"mmai bench {name}", description=module.__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results") / f"{name}.json",
                        help="where the JSON result goes (default: bench_results/NAME.json)")
    module.add_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``mmai bench``: ``mmai bench NAME [flags]`` or ``mmai bench --list``."""
    if not argv or argv[0] in {"-h", "--help", "--list"}:
        print("usage: mmai bench NAME [flags]    (mmai bench NAME --help for its flags)\n")
        for name, path in BENCHMARKS.items():
            doc = (importlib.import_module(path).__doc__ or "").strip().splitlines()
            print(f"  {name:<12} {doc[0] if doc else ''}")
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        raise SystemExit(f"mmai bench: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    args = build_parser(name).parse_args(argv[1:])
    module = importlib.import_module(BENCHMARKS[name])
    result: BenchResult = module.run(args)
    print(format_table(result.rows))
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": argv,
        "machine": machine_info(),
        "meta": result.meta,
        "rows": result.rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0
