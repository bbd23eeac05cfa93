"""Vision tower: a timm Vision Transformer, optionally with learnable memory tokens.

The [CLS]-pooled feature is the stage-1 retrieval feature; the patch tokens are kept for the
stage-2 fusion re-ranker (text tokens cross-attend to them).

Memory tokens follow "Fine-tuning Image Transformers using Learnable Memory" (Sandler et al.,
CVPR 2022), the idea the MMAI design calls Memory-VLM, in its simplest input-level form (close to
the registers of Darcet et al., ICLR 2024): ``memory_tokens`` learnable embeddings are inserted
into the sequence right after the prefix tokens ([CLS], and registers where a model has them),
after the position embedding and before the blocks. They carry no position embedding, every
token may attend to them, and they are dropped from the outputs. With ``memory_tokens=0`` the
tower runs timm's own ``forward_features`` and is numerically identical to plain timm.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from mmai.config import DEFAULT_VISION_MODELS, VisionConfig
from mmai.model.towers.base import TimmPreprocessing, TowerOutput
from mmai.pretrained import load_state_dict_strictly, read_state_dict


def unknown_vision_model_message(model_name: str) -> str:
    """The error text for a name timm does not know, with the closest known names."""
    close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
    suggestion = f" Did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    return (f"unknown vision tower {model_name!r}: not a timm model name; "
            f"see timm.list_models('vit*').{suggestion}")


def load_timm_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weight file or directory into a timm model, strictly.

    ViT checkpoints go through timm's own ``checkpoint_filter_fn`` first (position embeddings are
    resampled to this ``img_size``; OpenAI-CLIP and DINOv2 layouts are converted). Classifier
    ``head.*`` weights are dropped when the model was built without a head (``num_classes=0``).

    Raises:
        FileNotFoundError: no weight file at ``path``.
        ValueError: keys or shapes do not fit; the message lists them.
    """
    state_dict = read_state_dict(path)
    if isinstance(model, timm.models.VisionTransformer):
        from timm.models.vision_transformer import checkpoint_filter_fn

        state_dict = checkpoint_filter_fn(state_dict, model)
    if isinstance(getattr(model, "head", None), nn.Identity):
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("head.")}
    load_state_dict_strictly(model, state_dict, str(path))


class VisionTower(TimmPreprocessing, nn.Module):
    """A timm ViT returning the pooled [CLS] feature and the patch tokens.

    Args:
        model_name: any timm model name of the ViT family (default ``"vit_base_patch16_224"``;
            ``"vit_tiny_patch16_224"`` with ``model_kwargs`` for CPU tests).
        pretrained: False (random init, default), True (timm downloads the hub weights; needs
            internet), or a local weight file/directory (``.safetensors``/``.pth``/``.bin``, or a
            directory with ``model.safetensors``/``pytorch_model.bin``), loaded strictly.
        image_size: square input size (default 224); position embeddings follow it.
        memory_tokens: number of learnable memory tokens (default 0 = off).
        drop_path_rate: stochastic depth rate (default 0.0).
        model_kwargs: extra ``timm.create_model`` arguments, e.g. ``{"depth": 4,
            "embed_dim": 192, "num_heads": 3, "patch_size": 8}`` for a tiny CPU profile.

    Attributes:
        model: the timm model (``num_classes=0``).
        width: D, size of the pooled feature and of each patch token.
        num_patches: N, number of patch tokens.
        num_prefix_tokens: [CLS] (+ registers) at the front of timm's sequence.
        data_config: timm's preprocessing config (``mean``, ``std``, ``input_size``, ...).

    Raises:
        ValueError: ``model_name`` is not a timm model, or memory tokens are asked of a model
            that is not a ViT.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_VISION_MODELS["vit"],
        pretrained: bool | str = VisionConfig.pretrained,
        image_size: int = VisionConfig.image_size,
        memory_tokens: int = VisionConfig.memory_tokens,
        drop_path_rate: float = VisionConfig.drop_path_rate,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not (timm.is_model(model_name) or model_name.startswith(("hf-hub:", "hf_hub:"))):
            raise ValueError(unknown_vision_model_message(model_name))
        self.model_name = model_name
        self.model = self._create(model_name, pretrained is True, image_size, drop_path_rate, model_kwargs or {})
        if isinstance(pretrained, (str, Path)):
            load_timm_weights(self.model, pretrained)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.width = int(self.model.num_features)
        self.patch_width = self.width  # patch tokens have the pooled feature's width in a ViT
        self.num_patches = int(self.model.patch_embed.num_patches)
        self.data_config = timm.data.resolve_model_data_config(self.model)
        self.num_memory_tokens = int(memory_tokens)
        self.memory_tokens: nn.Parameter | None = None
        if memory_tokens < 0:
            raise ValueError(f"memory_tokens must be >= 0, got {memory_tokens}.")
        if memory_tokens > 0:
            self._check_supports_memory()
            self.memory_tokens = nn.Parameter(torch.zeros(1, memory_tokens, self.width))  # (1, M, D)
            nn.init.trunc_normal_(self.memory_tokens, std=0.02)

    @staticmethod
    def _create(model_name: str, from_hub: bool, image_size: int, drop_path_rate: float,
                model_kwargs: dict[str, Any]) -> nn.Module:
        try:
            return timm.create_model(model_name, pretrained=from_hub, num_classes=0, img_size=image_size,
                                     drop_path_rate=drop_path_rate, **model_kwargs)
        except TypeError as error:
            raise ValueError(f"vision tower {model_name!r} rejected its arguments (img_size, "
                             f"drop_path_rate, model_kwargs={model_kwargs}): {error}. Only ViT-style "
                             "timm models are supported.") from error
        except (OSError, RuntimeError) as error:
            if not from_hub:
                raise
            raise FileNotFoundError(f"vision tower {model_name!r}: could not download the pretrained "
                                    "weights from the hub (offline?); pass pretrained='/path/to/"
                                    f"model.safetensors' instead. Original error: {error}") from error

    def _check_supports_memory(self) -> None:
        needed = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm")
        if not all(hasattr(self.model, name) for name in needed):
            raise ValueError(f"memory_tokens needs a timm VisionTransformer; {self.model_name!r} "
                             f"({type(self.model).__name__}) is not one.")

    def sequence(self, images: torch.Tensor) -> torch.Tensor:
        """The full final token sequence, memory tokens included.

        Args:
            images: ``(B, 3, H, W)``, normalised.

        Returns:
            ``(B, P + M + N, D)``: P prefix tokens, M memory tokens, N patches (M = 0 when off).
        """
        if self.memory_tokens is None:
            return self.model.forward_features(images)  # (B, P + N, D)
        model, prefix = self.model, self.num_prefix_tokens
        tokens = model.patch_drop(model._pos_embed(model.patch_embed(images)))  # (B, P + N, D)
        memory = self.memory_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)  # (B, M, D)
        tokens = torch.cat([tokens[:, :prefix], memory, tokens[:, prefix:]], dim=1)  # (B, P + M + N, D)
        return model.norm(model.blocks(model.norm_pre(tokens)))  # (B, P + M + N, D)

    def forward(self, images: torch.Tensor) -> TowerOutput:
        """Encode images.

        Args:
            images: ``(B, 3, H, W)``, normalised with :attr:`image_mean`/:attr:`image_std`.

        Returns:
            ``TowerOutput(pooled (B, D), patches (B, N, D))``; pooled is timm's pooled
            pre-logits feature ([CLS] for ViTs), patches exclude prefix and memory tokens.
        """
        tokens = self.sequence(images)  # (B, P + M + N, D)
        if self.num_memory_tokens:
            prefix, memory_end = self.num_prefix_tokens, self.num_prefix_tokens + self.num_memory_tokens
            tokens = torch.cat([tokens[:, :prefix], tokens[:, memory_end:]], dim=1)  # (B, P + N, D)
        pooled = self.model.forward_head(tokens, pre_logits=True)  # (B, D)
        return TowerOutput(pooled, tokens[:, self.num_prefix_tokens:])
