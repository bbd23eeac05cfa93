"""The configs and sweep files that ship inside the package, found through ``importlib.resources``.

``configs/`` (LightningCLI configs, profiles, the ablation config) and ``sweeps/`` (W&B sweep
files) are package data of ``mmai_apps``: an installed ``mmai`` has them in site-packages beside
this module, and a checkout has them in ``mmai_apps/`` with ``configs`` and ``sweeps`` symlinks at
the repository root, so that the documented ``configs/...`` paths are real paths there.

Outside a checkout, :func:`resolve_path_args` makes the same command lines work: a relative
``configs/...`` or ``sweeps/...`` argument that names no file in the working directory but names a
packaged one is replaced by the packaged file's path. A file in the working directory always wins,
and a path found in neither place is left as it is, so that the command's own error names it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path, PurePosixPath

#: the folders of package data that command lines may name relative to the package
PACKAGED_FOLDERS = ("configs", "sweeps")


def data_root() -> Path:
    """The folder that holds the packaged ``configs/`` and ``sweeps/`` (the installed ``mmai_apps``).

    Raises:
        RuntimeError: the package is not on a file system (a zip import), where LightningCLI could
            not read the files either.
    """
    root = files("mmai_apps")
    if not isinstance(root, Path):
        raise RuntimeError(f"mmai_apps is imported from {root!r}, not from a folder: install it "
                           "unpacked (pip install) so that its configs/ and sweeps/ are files")
    return root


def packaged(relative: str | Path) -> Path:
    """The packaged file at ``relative`` (``"configs/base.yaml"``), whether or not it exists."""
    return data_root() / relative


def resolve_path(value: str) -> str:
    """``value``, or the packaged file it names when it is a relative ``configs/...``/``sweeps/...``
    path that does not exist in the working directory but does in the package."""
    if not value or Path(value).is_absolute() or Path(value).exists():
        return value
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if not parts or parts[0] not in PACKAGED_FOLDERS:
        return value
    candidate = packaged(PurePosixPath(*parts))
    return str(candidate) if candidate.exists() else value


def resolve_path_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``configs/...``/``sweeps/...`` item resolved by :func:`resolve_path`, as a
    separate item or after ``=`` (``--config=configs/base.yaml``)."""
    resolved = []
    for item in argv:
        if item.startswith("-") and "=" in item:
            flag, value = item.split("=", 1)
            resolved.append(f"{flag}={resolve_path(value)}")
        else:
            resolved.append(resolve_path(item))
    return resolved
