"""Trained models for search, serving and panels, built from checkpoints (the inference API).

:func:`load_stage1` accepts a bi-encoder or a re-ranker checkpoint and returns a
:class:`Stage1Model` that embeds PIL images, strings and waveforms exactly as evaluation does
(resize + centre crop, ImageNet normalisation, the tower's tokenizer). :func:`load_stage2` needs a
re-ranker checkpoint and returns a :class:`Stage2Model` that scores (query, image) pairs and
renders saliency panels, with the ``rerank_k`` and ``stage1_weight`` its validation used
(:func:`mmai.checkpoint.rerank_settings`). Reading the files is :mod:`mmai.checkpoint`'s.

Example:
    >>> stage2 = load_stage2("runs/reranker/checkpoints/last.ckpt")
    >>> logits = stage2.rerank("a bird with an orange beak", [Image.open("bird.jpg")])
    >>> stage2.explain("a bird with an orange beak", Image.open("bird.jpg")).save("panel.png")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mmai.checkpoint import (_sub_state, bi_encoder_config, build_reranker, is_reranker_checkpoint, read_checkpoint,
                             rerank_settings)
from mmai.config import BiEncoderConfig, RerankerConfig
from mmai.model.bi_encoder import BiEncoder
from mmai.reranker.fusion import FusionReranker

def load_tokenizer(config: BiEncoderConfig):
    """The tokenizer a bi-encoder reads its captions with (:attr:`BiEncoderConfig.tokenizer`)."""
    from transformers import AutoTokenizer

    from mmai.pretrained import load_or_explain, resolve_model_path

    return load_or_explain(AutoTokenizer.from_pretrained, resolve_model_path(config.tokenizer, tower="text"), "text")


@dataclasses.dataclass
class Stage1Model:
    """A trained bi-encoder in eval mode, with the preprocessing evaluation uses.

    Attributes:
        model: the :class:`~mmai.model.bi_encoder.BiEncoder` (eval mode, no gradients needed).
        config: its :class:`~mmai.config.BiEncoderConfig`.
        tokenizer: its text tokenizer.
        checkpoint: the file it was read from.
    """

    model: BiEncoder
    config: BiEncoderConfig
    tokenizer: Any
    checkpoint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def has_audio(self) -> bool:
        return self.model.audio is not None

    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images → normalised ``(B, 3, S, S)`` on the model's device (evaluation transform)."""
        from mmai.data.pipeline import image_transform, normalize_images

        transform = image_transform(self.image_size, train=False)
        pixels = torch.stack([transform(image.convert("RGB")) for image in images])  # (B, 3, S, S) uint8
        return normalize_images(pixels.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` ``(B, L)`` on the model's device."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of strings, got one string: wrap it in a list")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"].to(self.device),
                "attention_mask": tokens["attention_mask"].to(self.device)}

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeddings (B, E)`` unit rows and ``patches (B, N, Dv)`` of PIL images."""
        return self.model.encode_image(self.image_tensor(images))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``embeddings (B, E)``, token states ``(B, L, Dt)`` and ``attention_mask (B, L)``."""
        tokens = self.tokenize(texts)
        embeddings, states = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        return embeddings, states, tokens["attention_mask"]

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(B, E)`` unit embeddings of PIL images, on the CPU."""
        return self.encode_images(images)[0].float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, E)`` unit embeddings of strings, on the CPU."""
        return self.encode_texts(texts)[0].float().cpu()

    @torch.no_grad()
    def embed_audio(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, E)`` unit embeddings of mono 48 kHz float waveforms, cropped or zero-padded to the
        training length (``audio_seconds``), on the CPU.

        Raises:
            ValueError: the checkpoint has no audio tower.
        """
        if not self.has_audio:
            raise ValueError(f"checkpoint {self.checkpoint!r} has no audio tower: train the bi-encoder with "
                             "model.bi_encoder.audio (with its seconds) to embed audio memories")
        from mmai.data.pipeline import AUDIO_SAMPLE_RATE

        length = int(round(float(self.config.audio_seconds) * AUDIO_SAMPLE_RATE))
        batch = np.zeros((len(waveforms), length), dtype=np.float32)
        for row, wave in enumerate(waveforms):
            wave = np.asarray(wave, dtype=np.float32).reshape(-1)[:length]
            batch[row, : len(wave)] = wave
        return self.model.encode_audio(torch.from_numpy(batch).to(self.device)).float().cpu()


@dataclasses.dataclass
class Stage2Model:
    """A trained fusion re-ranker over its bi-encoder.

    Attributes:
        stage1: the :class:`Stage1Model` whose token states and patches it reads.
        reranker: the :class:`~mmai.reranker.fusion.FusionReranker` (eval mode).
        rerank_k: candidates it was validated with (see :func:`rerank_settings`).
        stage1_weight: lambda of ``match_logit + lambda * stage1_similarity`` it was validated with.
        settings_source: where ``rerank_k`` and ``stage1_weight`` come from, in words.
    """

    stage1: Stage1Model
    reranker: FusionReranker
    rerank_k: int = 16
    stage1_weight: float = 1.0
    settings_source: str = "defaults"

    @torch.no_grad()
    def rerank(self, query: str, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Match logits ``(n,)`` of one query against ``n`` images (each encoded once)."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        _, tokens, mask = self.stage1.encode_texts([query])  # (1, L, Dt), (1, L)
        logits = []
        for start in range(0, len(images), batch_size):
            _, patches = self.stage1.encode_images(images[start:start + batch_size])  # (b, N, Dv)
            logits.append(self.reranker.score_candidates(tokens, mask, patches)[0])  # (b,)
        return torch.cat(logits).float().cpu().numpy()

    @torch.no_grad()
    def image_patches(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Patch tokens ``(n, N, Dv)`` of images, as :meth:`rerank` encodes them (to be cached)."""
        return self.stage1.encode_images(list(images))[1]

    @torch.no_grad()
    def rerank_patches(self, query: str, patches: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Match logits ``(n,)`` of one query against images given by their patch tokens ``(n, N, Dv)``
        (:meth:`image_patches`): :meth:`rerank` without encoding the images again."""
        if not len(patches):
            return np.zeros(0, dtype=np.float32)
        _, tokens, mask = self.stage1.encode_texts([query])  # (1, L, Dt), (1, L)
        logits = [self.reranker.score_candidates(tokens, mask, patches[start:start + batch_size].to(tokens.device))[0]
                  for start in range(0, len(patches), batch_size)]
        return torch.cat(logits).float().cpu().numpy()

    def saliency(self, query: str, image: Image.Image, method: str = "gradcam"):
        """:class:`~mmai.reranker.saliency.SaliencyMaps` of one (query, image) pair, content tokens averaged."""
        from mmai.reranker.saliency import saliency_maps

        _, tokens, mask = self.stage1.encode_texts([query])
        with torch.no_grad():
            _, patches = self.stage1.encode_images([image])
        content = mask.clone()
        content[:, 0] = 0  # [CLS]
        content[torch.arange(len(mask)), mask.sum(1) - 1] = 0  # [SEP]
        return saliency_maps(self.reranker, tokens, mask, patches, self.stage1.image_size, method=method,
                             token_mask=content)

    def explain(self, query: str, image: Image.Image, rank: int | None = None, score: float | None = None,
                method: str = "gradcam", token_maps: bool = True, note: str | None = None) -> Image.Image:
        """An "original | heatmap | overlay" panel (plus per-word overlays) for one pair; ``note``
        is appended to the facts line (e.g. which image this is)."""
        from mmai.viz.panels import render_panel, token_maps_for_panel

        maps = self.saliency(query, image, method)
        view = _model_view(image, self.stage1.image_size)
        words = None
        if token_maps:
            ids = self.stage1.tokenize([query])
            names = self.stage1.tokenizer.convert_ids_to_tokens(ids["input_ids"][0].tolist())
            words = token_maps_for_panel(maps.tokens[0], names, ids["attention_mask"][0])
        logit = float(maps.logits[0]) if score is None else score
        method_name = "grad x attention" if method == "gradcam" else "cross-attention"
        return render_panel(view, maps.mean[0], query, score=logit, rank=rank, token_maps=words,
                            subtitle=f"{method_name}, mean of fusion layers" + (f" · {note}" if note else ""))

    def overlay(self, query: str, image: Image.Image, method: str = "gradcam", alpha: float = 0.5) -> Image.Image:
        """The heatmap laid over the (model-view) image, as a PIL image."""
        from mmai.viz.panels import overlay

        maps = self.saliency(query, image, method)
        view = _model_view(image, self.stage1.image_size)
        return Image.fromarray(overlay(np.asarray(view), maps.mean[0].detach().cpu().numpy(), alpha=alpha))


def _model_view(image: Image.Image, image_size: int) -> Image.Image:
    """The image as the model saw it (resize + centre crop), so the heatmap lines up with it."""
    from mmai.data.pipeline import image_transform

    pixels = image_transform(image_size, train=False)(image.convert("RGB"))  # (3, S, S) uint8
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _stage1_from(checkpoint: dict[str, Any], path: str, device: torch.device) -> Stage1Model:
    hparams = checkpoint["hyper_parameters"]
    config = bi_encoder_config(hparams, f"checkpoint {path!r}")
    prefix = "bi_encoder." if is_reranker_checkpoint(checkpoint) else "model."
    model = BiEncoder.from_config(config, pretrained=False)
    model.load_checkpoint_state(checkpoint["state_dict"], prefix=prefix)
    model.to(device).eval()
    return Stage1Model(model, config, load_tokenizer(config), str(path))


def load_stage1(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Stage1Model:
    """The bi-encoder of a bi-encoder or re-ranker checkpoint, ready to embed.

    Args:
        path: a ``.ckpt`` from ``mmai fit`` (bi-encoder) or ``mmai rerank fit`` (re-ranker).
        device: ``"cpu"`` (default), ``"cuda"``, or ``"auto"``/None for CUDA when available.
    """
    checkpoint = read_checkpoint(path)
    return _stage1_from(checkpoint, str(path), _resolve_device(device))


def load_stage2(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Stage2Model:
    """The re-ranker (and its bi-encoder) of a ``RerankerModule`` checkpoint.

    Raises:
        ValueError: ``path`` is a bi-encoder checkpoint (train a re-ranker on it with ``mmai rerank fit``).
    """
    checkpoint = read_checkpoint(path)
    if not is_reranker_checkpoint(checkpoint):
        raise ValueError(f"{str(path)!r} is a bi-encoder checkpoint without a re-ranker: train one with "
                         f"`mmai rerank fit --config configs/reranker.yaml --model.bi_encoder_ckpt {path}`")
    device = _resolve_device(device)
    stage1 = _stage1_from(checkpoint, str(path), device)
    config = RerankerConfig.from_hparams(checkpoint["hyper_parameters"], f"re-ranker checkpoint {str(path)!r}")
    reranker = build_reranker(config, stage1.model)
    reranker.load_state_dict(_sub_state(checkpoint["state_dict"], "reranker."))
    reranker.to(device).eval()
    return Stage2Model(stage1, reranker, *rerank_settings(checkpoint))
