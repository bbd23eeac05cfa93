"""Audio tower: CLAP's HTSAT audio encoder (``laion/clap-htsat-fused`` by default).

CLAP (Wu et al., ICASSP 2023) encodes audio with HTSAT, a Swin-style transformer over log-mel
spectrograms; the "fused" variant adds attentional feature fusion of a whole-clip view and three
local crops for clips longer than 10 s. The tower takes raw 48 kHz waveforms, featurises them in
torch (:mod:`mmai.model.towers.audio_features`), and returns the pooled HTSAT feature (the stage-1
retrieval feature, before CLAP's own projection, which MMAI replaces with its own) and the final
token grid flattened to a sequence.

``is_longer`` is the truth: clips no longer than ``max_length_s`` never take the fusion branch.
(CLAP's feature extractor marks one random clip "longer" when none is; its fusion attention
block then runs BatchNorm on a single sample and fails in training mode.) When no clip of a
training batch is longer, the fusion layers get an exact zero gradient so that DDP sees every
parameter used.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, ClapAudioConfig, ClapAudioModel, ClapAudioModelWithProjection, ClapFeatureExtractor

from mmai.config import AudioConfig
from mmai.model.towers.audio_features import ClapFusionFeatures
from mmai.model.towers.base import TowerOutput
from mmai.pretrained import describe_key_mismatch, load_or_explain, resolve_model_path

#: Architecture of ``laion/clap-htsat-fused`` beyond ``ClapAudioConfig``'s defaults.
FUSED_DEFAULTS: dict[str, Any] = {"enable_fusion": True}


def load_pretrained_clap_audio(path: str, config_overrides: dict[str, Any] | None = None,
                               **hub_kwargs: Any) -> ClapAudioModel:
    """The audio encoder of a CLAP checkpoint: a full ``ClapModel`` save or an audio-only one.

    Args:
        path: local directory or hub id.
        config_overrides: ``ClapAudioConfig`` fields to change (e.g. dropout).
        **hub_kwargs: ``from_pretrained`` options (``local_files_only``).

    Raises:
        ValueError: weights of the audio encoder are missing; the message lists them.
        FileNotFoundError: a hub id that cannot be fetched (offline).
    """
    config = load_or_explain(AutoConfig.from_pretrained, path, "audio", **hub_kwargs)
    if config.model_type == "clap_audio_model":  # saved from a ClapAudioModel
        model, info = ClapAudioModel.from_pretrained(path, output_loading_info=True, **hub_kwargs,
                                                     **(config_overrides or {}))
    else:  # a full CLAP checkpoint (laion/clap-htsat-fused): keep its audio encoder
        with_projection, info = ClapAudioModelWithProjection.from_pretrained(
            path, output_loading_info=True, **hub_kwargs, **(config_overrides or {}))
        model = with_projection.audio_model
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("audio_projection."))
    if missing:
        raise ValueError(describe_key_mismatch(path, missing, sorted(info["unexpected_keys"])))
    return model


class AudioTower(nn.Module):
    """CLAP HTSAT audio encoder over raw waveforms.

    Args:
        model_name: hub id or local directory of a CLAP checkpoint (default
            ``"laion/clap-htsat-fused"``).
        pretrained: load the weights (default True). With False and a name that is not a local
            directory nothing is read: a ``ClapAudioConfig`` in the fused layout is built from
            ``config_overrides`` (how tests and the tiny CPU profile build a small random tower).
        config_overrides: ``ClapAudioConfig`` fields, e.g. ``{"spec_size": 64, "depths": [1, 1],
            "num_attention_heads": [1, 2], "patch_embeds_hidden_size": 16, "window_size": 4}``.
        max_length_s: clip length in seconds before fusion kicks in (default: the extractor's,
            10 s). The log-mel of this length must fit the encoder: ``max_length_s * 100 + 1``
            frames at most ``spec_size * (spec_size // num_mel_bins)``.
        local_files_only: never contact the hub (default False).

    Attributes:
        model: the ``ClapAudioModel``.
        featurizer: :class:`~mmai.model.towers.audio_features.ClapFusionFeatures` (no parameters).
        feature_extractor: the ``ClapFeatureExtractor`` it follows.
        sampling_rate: expected waveform rate (48 kHz).
        width: D, the pooled feature size (768 for HTSAT-base).
    """

    def __init__(
        self,
        model_name: str = AudioConfig.model_name,
        pretrained: bool = AudioConfig.pretrained,
        config_overrides: dict[str, Any] | None = None,
        max_length_s: float | None = AudioConfig.max_length_s,
        local_files_only: bool = AudioConfig.local_files_only,
    ) -> None:
        super().__init__()
        path = resolve_model_path(model_name, tower="audio")
        hub_kwargs = {"local_files_only": local_files_only}
        overrides = dict(config_overrides or {})
        self.model_name = model_name
        if pretrained:
            self.model = load_pretrained_clap_audio(path, overrides, **hub_kwargs)
        elif os.path.isdir(path):
            self.model = ClapAudioModel(ClapAudioConfig.from_pretrained(path, **overrides))
        else:
            self.model = ClapAudioModel(ClapAudioConfig(**{**FUSED_DEFAULTS, **overrides}))
        if not self.model.config.enable_fusion:
            raise ValueError(f"audio tower {model_name!r} has enable_fusion=False; only the fused CLAP "
                             "layout (e.g. laion/clap-htsat-fused) is supported.")
        self.feature_extractor = self._feature_extractor(path, pretrained, hub_kwargs)
        max_length = None if max_length_s is None else int(round(max_length_s * self.feature_extractor.sampling_rate))
        self.featurizer = ClapFusionFeatures(self.feature_extractor, max_length)
        self.sampling_rate = self.featurizer.sampling_rate
        self.width = int(self.model.audio_encoder.num_features)
        self._check_fits_encoder()

    def _feature_extractor(self, path: str, pretrained: bool, hub_kwargs: dict[str, Any]) -> ClapFeatureExtractor:
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")) or (pretrained and not os.path.isdir(path)):
            return load_or_explain(ClapFeatureExtractor.from_pretrained, path, "audio", **hub_kwargs)
        config = self.model.config
        return ClapFeatureExtractor(feature_size=config.num_mel_bins, truncation="fusion", padding="repeatpad")

    def _check_fits_encoder(self) -> None:
        config = self.model.config
        max_frames = config.spec_size * (config.spec_size // config.num_mel_bins)
        if self.featurizer.chunk_frames > max_frames:
            raise ValueError(
                f"audio tower: clips of {self.featurizer.max_length} samples give "
                f"{self.featurizer.chunk_frames} mel frames but spec_size={config.spec_size} with "
                f"num_mel_bins={config.num_mel_bins} takes at most {max_frames}; lower max_length_s "
                "or raise spec_size."
            )

    def featurize(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(B, S)`` -> ``input_features (B, 4, T, M)``, ``is_longer (B, 1)`` bool."""
        return self.featurizer(waveforms)

    def _fusion_parameters(self) -> list[nn.Parameter]:
        patch_embed = self.model.audio_encoder.patch_embed
        modules = [getattr(patch_embed, name, None) for name in ("fusion_model", "mel_conv2d")]
        return [p for module in modules if module is not None for p in module.parameters() if p.requires_grad]

    def forward(self, waveforms: torch.Tensor) -> TowerOutput:
        """Encode mono clips.

        Args:
            waveforms: ``(B, S)`` float at :attr:`sampling_rate` (48 kHz).

        Returns:
            ``TowerOutput(pooled (B, D), tokens (B, N, D))``: HTSAT's average-pooled feature and
            its final token grid as a sequence.
        """
        features, is_longer = self.featurize(waveforms)  # (B, 4, T, M), (B, 1)
        features = features.to(next(self.model.parameters()).dtype)
        output = self.model(input_features=features, is_longer=is_longer)
        pooled = output.pooler_output  # (B, D)
        tokens = output.last_hidden_state.flatten(2).transpose(1, 2)  # (B, N, D)
        unused = [] if bool(is_longer.any()) else self._fusion_parameters()
        if unused and torch.is_grad_enabled() and self.training:
            pooled = pooled + 0.0 * sum(p.sum() for p in unused)  # exact zero gradient, for DDP
        return TowerOutput(pooled, tokens)
