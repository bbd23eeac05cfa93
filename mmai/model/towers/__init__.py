"""Encoders of the stage-1 bi-encoder: one tower per modality, each returning a pooled feature
(for retrieval) and token states (for the stage-2 re-ranker), then a projection to the shared
space.

=================  ==========================================  ===============================
tower              backbone                                    pooled feature / tokens
=================  ==========================================  ===============================
``VisionTower``    timm ViT (+ optional memory tokens)         [CLS] / patches
``CNNTower``       timm CNN (EfficientNet-Lite0 offline)       average pool / stride-16 map
``TextTower``      transformers encoder (BERT, MiniLM)         masked mean / token states
``AudioTower``     CLAP HTSAT-fused over 48 kHz waveforms      average pool / token grid
``ClipTowers``     transformers CLIP (vision + text + proj.)   CLIP's pooled / tokens
=================  ==========================================  ===============================

:func:`build_tower` builds one by kind, for configs that name towers by string;
:func:`build_towers` builds a bi-encoder's towers from its :class:`~mmai.config.BiEncoderConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from mmai.config import BiEncoderConfig

from mmai.model.towers.audio import AudioTower
from mmai.model.towers.base import TowerOutput
from mmai.model.towers.clip import ClipTextTower, ClipTowers, ClipVisionTower
from mmai.model.towers.cnn import CNNTower
from mmai.model.towers.projection import NormalizedLinear, Projection
from mmai.model.towers.text import TextTower
from mmai.model.towers.vision import VisionTower

#: kind -> tower class, for :func:`build_tower`.
TOWERS: dict[str, type[nn.Module]] = {
    "vision": VisionTower,
    "cnn": CNNTower,
    "text": TextTower,
    "audio": AudioTower,
    "clip": ClipTowers,
}


def build_tower(kind: str, **kwargs: Any) -> nn.Module:
    """Build a tower by kind.

    Args:
        kind: one of ``"vision"``, ``"cnn"``, ``"text"``, ``"audio"``, ``"clip"``.
        **kwargs: the tower's own arguments (``model_name``, ``pretrained``, ...).

    Raises:
        ValueError: unknown ``kind`` (the message lists the known ones), or the tower's own error
            for an unknown model name.
    """
    if kind not in TOWERS:
        raise ValueError(f"unknown tower kind {kind!r}; known kinds: {', '.join(TOWERS)}.")
    return TOWERS[kind](**kwargs)


def build_towers(config: BiEncoderConfig, pretrained: bool = True) -> dict[str, nn.Module]:
    """The towers of a bi-encoder config: ``{"vision", "text"}`` or ``{"clip"}``, plus ``"audio"``.

    Args:
        config: the :class:`~mmai.config.BiEncoderConfig`.
        pretrained: load the towers' pretrained weights (default True); False builds them from
            their configs only, for weights that a checkpoint is about to overwrite.
    """
    def unloaded(part):
        return part if pretrained else dataclasses.replace(part, pretrained=False)

    towers: dict[str, nn.Module] = {}
    if config.clip is not None:
        towers["clip"] = ClipTowers(max_length=config.max_length, **unloaded(config.clip).tower_kwargs())
    else:
        vision = unloaded(config.vision)
        tower_class = CNNTower if vision.tower == "cnn" else VisionTower
        towers["vision"] = tower_class(**vision.tower_kwargs())
        towers["text"] = TextTower(**unloaded(config.text).tower_kwargs())
    if config.audio is not None:
        towers["audio"] = AudioTower(**unloaded(config.audio).tower_kwargs())
    return towers


__all__ = [
    "AudioTower", "CNNTower", "ClipTextTower", "ClipTowers", "ClipVisionTower", "NormalizedLinear", "Projection",
    "TOWERS", "TextTower", "TowerOutput", "VisionTower", "build_tower", "build_towers",
]
