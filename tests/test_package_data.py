"""configs/ and sweeps/ are package data of mmai_apps, found through importlib.resources: in a checkout,
and in a wheel installed somewhere else, run from a folder outside any checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from mmai_apps.resources import data_root, packaged, resolve_path, resolve_path_args

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(path.relative_to(REPO / "mmai_apps")) for folder in ("configs", "sweeps")
                 for path in (REPO / "mmai_apps" / folder).rglob("*") if path.is_file())


def test_the_packaged_folders_are_the_package_resources_and_the_checkout_links_to_them():
    assert data_root() == Path(str(files("mmai_apps")))
    assert {"base.yaml", "profiles/tiny_cpu.yaml", "experiments/ablation.yaml"} <= {
        str(path.relative_to(data_root() / "configs")) for path in (data_root() / "configs").rglob("*.yaml")}
    assert (data_root() / "sweeps" / "bi_encoder_grid.yaml").is_file()
    for folder in ("configs", "sweeps"):  # the documented configs/... paths are real paths in a checkout
        assert (REPO / folder).is_symlink() and (REPO / folder).resolve() == (data_root() / folder).resolve()


def test_configs_paths_outside_a_checkout_are_read_from_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("configs/base.yaml") == str(packaged("configs/base.yaml"))
    assert resolve_path_args(["fit", "--config", "configs/base.yaml", "--config=configs/profiles/tiny_cpu.yaml",
                              "sweeps/gar_grid.yaml", "configs/nope.yaml", "--out", "runs/x"]) == [
        "fit", "--config", str(packaged("configs/base.yaml")),
        f"--config={packaged('configs/profiles/tiny_cpu.yaml')}", str(packaged("sweeps/gar_grid.yaml")),
        "configs/nope.yaml", "--out", "runs/x"]  # a path in neither place is left for the command's error
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("seed_everything: 1\n")
    assert resolve_path("configs/base.yaml") == "configs/base.yaml"  # a file in the working folder wins


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (building in place would leave build/ in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for package in ("mmai", "mmai_apps", "lightning_modules", "lightning_glue", "datamodules", "callbacks"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("mmai-*.whl")
    return wheel


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs_from_any_folder(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"mmai_apps/{name}" for name in SHIPPED} <= names, "pyproject.toml's package-data misses files"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = f"""
import sys
from pathlib import Path
site = Path({str(site)!r})
import mmai_apps.ablate as ablate, mmai_apps.demo as demo
from mmai_apps.resources import data_root, resolve_path
assert data_root() == site / "mmai_apps", data_root()
assert ablate.REPO == demo.REPO == site / "mmai_apps"
assert Path(resolve_path("configs/profiles/tiny_cpu.yaml")) == site / "mmai_apps/configs/profiles/tiny_cpu.yaml"
settings = ablate.load_settings(ablate.REPO / "configs/experiments/ablation.yaml", quick=True)
assert all(Path(ablate._config_path(c)).is_relative_to(site) for c in settings["bi_encoder"]["configs"])
from mmai_apps.cli import main
sys.exit(main(["fit", "--print_config", "--config", "configs/base.yaml", "--config", "configs/profiles/tiny_cpu.yaml"]))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class_path: lightning_glue.tracking.MMAIWandbLogger" in result.stdout
    assert "image_size: 64" in result.stdout  # the tiny profile was layered over the base


def test_an_installed_copy_records_no_commit_of_the_repository_around_its_environment(tmp_path):
    """A venv inside some checkout: site-packages is not that checkout's code, so its commit is not ours."""
    import subprocess

    from lightning_glue.tracking import code_version

    outer = tmp_path / "checkout"
    (outer / "venv" / "site-packages").mkdir(parents=True)
    (outer / "file.txt").write_text("x")
    git = ["git", "-C", str(outer), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "file.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    installed = code_version(outer / "venv" / "site-packages")
    assert installed["commit"] is None and installed["dirty"] is None and installed["package_version"]
    checkout = code_version(outer)
    assert checkout["commit"] == head and checkout["dirty"] is False
    (outer / "file.txt").write_text("changed")
    assert code_version(outer)["dirty"] is True
