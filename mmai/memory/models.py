"""The models of a personal memory: which checkpoint embedded it (``root/config.json``), loaded once.

The checkpoint (a bi-encoder or re-ranker ``.ckpt``) is remembered in ``config.json`` with a
fingerprint (SHA-256 of its size and first 8 MiB: the same model file wherever it is moved) on
first use, so later opens may omit it. A different model than the one the memories were embedded
with is refused: its vectors would not be comparable. The stage-1 model (:attr:`MemoryModels.encoder`)
and the re-ranker (:attr:`MemoryModels.stage2`) are loaded on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mmai.memory.files import atomic_write

__all__ = ["FORMAT", "MemoryModels", "checkpoint_fingerprint"]

FORMAT = "mmai.PersonalMemory"


def checkpoint_fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint's size and first 8 MiB: the same model file wherever it is moved."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as file:
        digest.update(file.read(8 * 2**20))
    return digest.hexdigest()[:16]


class MemoryModels:
    """``root/config.json`` and the models it names.

    Args:
        root: the memory folder.
        encoder: a preloaded stage-1 model (``embed_images``/``embed_texts``/``embed_audio``,
            ``has_audio``, ``embed_dim``) used instead of loading the checkpoint.
        stage2: a preloaded re-ranker (``rerank``, ``explain``, ``rerank_k``, ``stage1_weight``)
            used instead of loading the checkpoint.
    """

    def __init__(self, root: Path, encoder: Any = None, stage2: Any = None) -> None:
        self.root = Path(root)
        self._encoder, self._stage2 = encoder, stage2
        if encoder is None and stage2 is not None:
            self._encoder = getattr(stage2, "stage1", None)
        self._checked: set[str] = set()  # checkpoints read once and found valid
        self.config = self._read()
        self.checkpoint: str | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def _read(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            return {"format": FORMAT, "version": 1}
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.config_path} is not valid JSON ({error}); fix it or delete it "
                             "(it only records the checkpoint)") from None
        if config.get("format") != FORMAT:
            raise ValueError(f"{self.config_path}: not a PersonalMemory config (format {config.get('format')!r})")
        return config

    def write(self) -> None:
        data = (json.dumps(self.config, indent=1) + "\n").encode()
        atomic_write(self.config_path, lambda file: file.write(data))

    def check_checkpoint(self, path: Path) -> None:
        """Raise FileNotFoundError/ValueError (from :func:`~mmai.checkpoint.read_checkpoint`) unless
        ``path`` is a readable checkpoint (read once per object)."""
        if str(path) in self._checked:
            return
        from mmai.checkpoint import read_checkpoint

        read_checkpoint(path, "--checkpoint")
        self._checked.add(str(path))

    def resolve(self, checkpoint: str | os.PathLike | None, stored: int) -> str | None:
        """Set :attr:`checkpoint`: the injected model's, the given file (recorded in the config), or
        the recorded one. ``stored`` is how many memories the store holds (a different model is
        refused when there are any)."""
        if self._encoder is not None:
            self.checkpoint = str(getattr(self._encoder, "checkpoint", None) or "injected encoder")
            return self.checkpoint
        recorded = self.config.get("checkpoint")
        if checkpoint is None:
            self.checkpoint = recorded
            return recorded
        path = Path(checkpoint).expanduser().absolute()
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} does not exist: pass a .ckpt written by `mmai fit` "
                                    "or `mmai rerank fit`")
        fingerprint = checkpoint_fingerprint(path)
        if (recorded, self.config.get("fingerprint")) != (str(path), fingerprint):
            self.check_checkpoint(path)  # a file that is no checkpoint is never recorded
        if recorded and self.config.get("fingerprint") != fingerprint and stored > 0:
            raise ValueError(
                f"{self.root}: its {stored} memories were embedded with {recorded} "
                f"(fingerprint {self.config.get('fingerprint')}); {path} is a different model whose vectors "
                "are not comparable. Use a new --root and ingest the files again there"
            )
        self.config.update(checkpoint=str(path), fingerprint=fingerprint)
        self.write()
        self.checkpoint = str(path)
        return self.checkpoint

    @property
    def loaded_encoder(self) -> bool:
        return self._encoder is not None

    @property
    def encoder(self):
        """The stage-1 model (loaded on first use from the checkpoint)."""
        if self._encoder is None:
            if self.checkpoint is None:
                raise ValueError(f"{self.root} has no checkpoint yet: pass checkpoint=... (--checkpoint PATH), "
                                 "a bi-encoder or re-ranker .ckpt from `mmai fit` / `mmai rerank fit`")
            from mmai.inference import load_stage1

            self._encoder = load_stage1(self.checkpoint)
        return self._encoder

    @property
    def stage2(self):
        """The re-ranker (loaded on first use; needs a re-ranker checkpoint)."""
        if self._stage2 is None:
            if self.checkpoint is None or not Path(self.checkpoint).is_file():
                raise ValueError(f"re-ranking and saliency need a re-ranker checkpoint; {self.root} has "
                                 f"{self.checkpoint!r}")
            from mmai.inference import load_stage2

            self._stage2 = load_stage2(self.checkpoint)
            if self._encoder is None:
                self._encoder = self._stage2.stage1  # the same bi-encoder: keep one copy
        return self._stage2

    @property
    def has_audio(self) -> bool:
        return bool(getattr(self.encoder, "has_audio", False))

    def record_dim(self, dim: int) -> None:
        """Remember the embedding size in the config once a model has embedded something."""
        if self._encoder is not None and "embed_dim" not in self.config:
            self.config["embed_dim"] = int(dim)
            self.write()
