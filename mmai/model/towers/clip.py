"""CLIP as a pair of towers: the zero-shot baseline of the MMAI ablation.

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021) through transformers' ``CLIPModel``. :class:`ClipTowers` splits it into a vision and a
text tower with the same interface as :class:`~mmai.model.towers.vision.VisionTower` and
:class:`~mmai.model.towers.text.TextTower` (pooled feature + token states), plus CLIP's own
projections wrapped with L2 normalisation, so ``BiEncoder(clip=ClipTowers(...))`` reproduces CLIP's
zero-shot similarities exactly and can also be fine-tuned with the momentum queue.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from mmai.config import ClipConfig
from mmai.model.towers.base import TowerOutput
from mmai.pretrained import load_or_explain, resolve_model_path
from mmai.model.towers.projection import NormalizedLinear

#: OpenAI CLIP's image normalisation, used when no preprocessor config is at hand.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVisionTower(nn.Module):
    """CLIP's image encoder: pooled [CLS] (after CLIP's post-LayerNorm) and patch tokens.

    Args:
        vision_model: ``CLIPModel.vision_model``.
        image_mean, image_std: the normalisation the weights expect.

    Attributes:
        width: D (vision hidden size); num_patches: N.
    """

    def __init__(self, vision_model: nn.Module, image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
                 image_std: tuple[float, ...] = OPENAI_CLIP_STD) -> None:
        super().__init__()
        self.model = vision_model
        config = vision_model.config
        self.width = int(config.hidden_size)
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def forward(self, images: torch.Tensor) -> TowerOutput:
        """``(B, 3, H, W)`` -> ``TowerOutput(pooled (B, D), patches (B, N, D))``."""
        output = self.model(pixel_values=images)
        return TowerOutput(output.pooler_output, output.last_hidden_state[:, 1:])  # (B, D), (B, N, D)


class ClipTextTower(nn.Module):
    """CLIP's text encoder: pooled end-of-text state and all token states.

    Args:
        text_model: ``CLIPModel.text_model``.
        tokenizer: the CLIP tokenizer, or None for a random test model without one.
        max_length: token limit of :meth:`tokenize` (default 77, CLIP's context).

    Attributes:
        width: D (text hidden size).
    """

    def __init__(self, text_model: nn.Module, tokenizer: Any | None = None, max_length: int = 77) -> None:
        super().__init__()
        self.model = text_model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.width = int(text_model.config.hidden_size)

    def tokenize(self, texts: list[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids": (B, L), "attention_mask": (B, L)}`` for a list of captions."""
        if self.tokenizer is None:
            raise ValueError("this CLIP text tower was built without a tokenizer (random config); "
                             "build ClipTowers from a local directory or hub id to get one.")
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:
        """``(B, L)`` ids and mask -> ``TowerOutput(pooled (B, D), token states (B, L, D))``."""
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return TowerOutput(output.pooler_output, output.last_hidden_state)  # (B, D), (B, L, D)


class ClipTowers(nn.Module):
    """A ``CLIPModel`` split into towers and projections.

    Args:
        model_name: hub id or local directory (default ``"openai/clip-vit-base-patch16"``).
        pretrained: load the weights (default True). With False and a name that is not a local
            directory, nothing is read: ``CLIPConfig(**config_overrides)`` is built (tests use a
            tiny one: ``{"projection_dim": 32, "text_config": {...}, "vision_config": {...}}``).
        config_overrides: ``CLIPConfig`` fields.
        max_length: text token limit (default 77).
        local_files_only: never contact the hub (default False).

    Attributes:
        vision: :class:`ClipVisionTower`; text: :class:`ClipTextTower`.
        vision_projection, text_projection: CLIP's projections + L2 normalisation
            (:class:`~mmai.model.towers.projection.NormalizedLinear`).
        embed_dim: CLIP's projection size (512 for ViT-B/16).
        temperature: CLIP's learnt temperature, ``1 / exp(logit_scale)`` (0.01 for OpenAI CLIP).
    """

    def __init__(
        self,
        model_name: str = ClipConfig.model_name,
        pretrained: bool = ClipConfig.pretrained,
        config_overrides: dict[str, Any] | None = None,
        max_length: int = 77,
        local_files_only: bool = ClipConfig.local_files_only,
    ) -> None:
        super().__init__()
        path = resolve_model_path(model_name, tower="clip")
        hub_kwargs = {"local_files_only": local_files_only}
        overrides = dict(config_overrides or {})
        reads_files = pretrained or os.path.isdir(path)
        if pretrained:
            model = load_or_explain(CLIPModel.from_pretrained, path, "clip", **hub_kwargs, **overrides)
        elif os.path.isdir(path):
            model = CLIPModel(CLIPConfig.from_pretrained(path, **overrides))
        else:
            model = CLIPModel(CLIPConfig(**overrides))
        tokenizer = load_or_explain(AutoTokenizer.from_pretrained, path, "clip", **hub_kwargs) if reads_files else None
        mean, std = self._image_normalisation(path, reads_files, hub_kwargs)
        self.model_name = model_name
        self.vision = ClipVisionTower(model.vision_model, mean, std)
        self.text = ClipTextTower(model.text_model, tokenizer, max_length)
        self.vision_projection = NormalizedLinear(model.visual_projection)
        self.text_projection = NormalizedLinear(model.text_projection)
        self.embed_dim = int(model.config.projection_dim)
        self.temperature = float(math.exp(-model.logit_scale.item()))

    @staticmethod
    def _image_normalisation(path: str, reads_files: bool, hub_kwargs: dict[str, Any]) -> tuple[tuple, tuple]:
        if reads_files:
            try:
                processor = CLIPImageProcessor.from_pretrained(path, **hub_kwargs)
                return tuple(processor.image_mean), tuple(processor.image_std)
            except OSError:
                pass  # no preprocessor_config.json: CLIP's standard normalisation
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm CLIP embeddings: image ``(B, E)`` and text ``(Bt, E)``."""
        image_embedding = self.vision_projection(self.vision(images).pooled)  # (B, E)
        text_embedding = self.text_projection(self.text(input_ids, attention_mask).pooled)  # (Bt, E)
        return image_embedding, text_embedding
