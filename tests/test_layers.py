"""The three layers (apps > adapters > library) as pyproject.toml's import-linter contracts state them:
kept by the code, and broken by a planted violation in a copy of the packages."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's ``lint_imports`` over the packages and pyproject.toml in ``root``, in a process of
    its own whose only path to the packages is ``root`` (never this checkout's editable install)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def copy_packages(to: Path) -> Path:
    to.mkdir()
    shutil.copy(REPO / "pyproject.toml", to)
    for package in ROOT_PACKAGES:
        shutil.copytree(REPO / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    return to


def test_root_packages_are_every_package_of_the_project():
    found = sorted(path.parent.name for path in REPO.glob("*/__init__.py"))
    assert sorted(ROOT_PACKAGES) == found


def test_the_contracts_are_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


#: (file, appended code, the broken rule import-linter must report)
PLANTED = [
    ("mmai/evaluation/metrics.py", "import lightning_modules.bi_encoder", "mmai is not allowed to import lightning_modules"),
    ("mmai/model/losses.py", "import lightning", "mmai is not allowed to import lightning"),
    ("mmai/reranker/fusion.py", "def _lazy():\n    import gradio", "mmai is not allowed to import gradio"),
    ("mmai/reranker/negatives.py", "import argparse", "mmai is not allowed to import argparse"),
    ("mmai/model/momentum.py", "import mmai_apps.cli", "mmai is not allowed to import mmai_apps"),
    ("callbacks/run_facts.py", "from lightning_modules.bi_encoder import BiEncoderModule",
     "callbacks is not allowed to import lightning_modules"),
    ("datamodules/cub_web.py", "import callbacks", "datamodules is not allowed to import callbacks"),
    ("lightning_glue/eval_set.py", "import lightning_modules.reranker",
     "lightning_glue is not allowed to import lightning_modules"),
    ("lightning_modules/reranker.py", "def _lazy():\n    from mmai_apps.lightning_cli import cli_main",
     "lightning_modules is not allowed to import mmai_apps"),
    ("mmai/retrieval/gar.py", "def _lazy():\n    from mmai.memory.store import MemoryStore",
     "mmai.retrieval is not allowed to import mmai.memory"),
    ("mmai/model/losses.py", "from mmai.reranker import fusion", "mmai.model is not allowed to import mmai.reranker"),
    ("mmai/data/cub.py", "import mmai.model.momentum", "mmai.data is not allowed to import mmai.model"),
]


def test_planted_violations_break_the_contracts(tmp_path):
    root = copy_packages(tmp_path / "copy")
    clean = lint_imports(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the copy alone keeps them
    for file, code, _ in PLANTED:
        with open(root / file, "a") as handle:
            handle.write(f"\n\n{code}\n")
    broken = lint_imports(root)
    assert broken.returncode != 0, broken.stdout
    assert "Contracts: 0 kept, 4 broken." in broken.stdout
    missing = [rule for _, _, rule in PLANTED if rule not in broken.stdout]
    assert not missing, f"not reported: {missing}\n{broken.stdout}"


def _import_module_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"]


@pytest.mark.parametrize("package", ROOT_PACKAGES)
def test_no_import_module_strings_cross_layers(package):
    """import-linter cannot see ``importlib.import_module("...")``: the one registry that uses it
    (``mmai bench``) names only modules of its own package."""
    users = sorted(str(path.relative_to(REPO)) for path in (REPO / package).rglob("*.py")
                   if _import_module_calls(path))
    assert users in ([], ["mmai_apps/bench/__init__.py"])
    if users:
        from mmai_apps.bench import BENCHMARKS

        assert all(path.startswith("mmai_apps.bench.") for path in BENCHMARKS.values()), BENCHMARKS
