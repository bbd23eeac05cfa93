"""Typed model configs: what a model is, with every default in one place.

Two configs describe MMAI's trained models, and each is what a checkpoint stores of its model:

* :class:`BiEncoderConfig` (stage 1): the towers (:class:`VisionConfig`, :class:`TextConfig`, and
  optionally :class:`AudioConfig` or a :class:`ClipConfig` backbone) and the contrastive
  settings (space size, queue, momentum, hard negatives, temperature, projections).
* :class:`RerankerConfig` (stage 2): the fusion re-ranker's architecture and the re-rank
  settings it is used with (``rerank_k``, ``stage1_weight``).

The LightningModules take them as one argument each (``model.bi_encoder``, ``model.reranker``;
LightningCLI fills them from YAML and flags such as ``--model.bi_encoder.queue_size 0``), save
them as plain dicts in the checkpoint's ``hyper_parameters`` (``weights_only`` loading reads
them back), and the loaders (:mod:`mmai.checkpoint`) rebuild the models from them alone.
Training-loop settings (learning rates, warm-up, batch size, caching) are not part of a model:
they stay arguments of the LightningModules.

This module imports nothing heavy, so a command line can be parsed without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

#: keys of a bi-encoder checkpoint written before the typed configs (flat hyperparameters), and
#: where each one lives now; the module's training settings among them are not model settings.
LEGACY_BI_ENCODER_KEYS = {"image_size": ("vision", "image_size"), "text_model": ("text", "model_name"),
                          "max_length": ("text", "max_length"), "audio_seconds": ("audio", "seconds")}
LEGACY_TRAINING_KEYS = frozenset({"lr", "lr_pretrained", "weight_decay", "warmup_steps", "batch_size", "eval_ks",
                                  "init_from", "feature_cache", "feature_cache_dir", "feature_cache_stage2"})


#: the vision model of each tower kind when ``model_name`` is not given.
DEFAULT_VISION_MODELS = {"vit": "vit_base_patch16_224", "cnn": "tf_efficientnet_lite0"}


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names it and says what to do."""


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {item.name: item for item in dataclasses.fields(cls)}


def _check_keys(cls, values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_fields(cls)))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"{cls.__name__} takes {', '.join(_fields(cls))}")


def _plain(values: Any) -> Any:
    """Plain data of a jsonargparse Namespace (as a link function receives it: an optional config
    comes wrapped as ``{class_path, init_args}``) or of a dataclass; anything else unchanged."""
    if hasattr(values, "as_dict") and not isinstance(values, Mapping):  # jsonargparse.Namespace
        values = values.as_dict()
    elif dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    if isinstance(values, Mapping):
        if "class_path" in values and "init_args" in values:
            return _plain(values["init_args"])
        return {key: _plain(value) for key, value in values.items() if key != "__subclasses_disabled__"}
    return values


def _build(cls, values: Any, where: str):
    """``cls`` from a dataclass, a mapping (unknown keys are an error) or a jsonargparse Namespace."""
    if values is None or isinstance(values, cls):
        return values
    values = _plain(values)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {type(values).__name__} "
                          f"{values!r}")
    _check_keys(cls, values, where)
    return cls(**dict(values))


@dataclass
class VisionConfig:
    """The image tower: a timm ViT (``tower: vit``, :class:`~mmai.model.towers.VisionTower`) or a timm CNN
    (``tower: cnn``, :class:`~mmai.model.towers.CNNTower`, the LiT CPU profile's locked EfficientNet).

    Attributes:
        tower: ``"vit"`` or ``"cnn"``.
        model_name: a timm model name (``hf-hub:`` ids too for a ViT); default
            ``vit_base_patch16_224`` for a ViT, ``tf_efficientnet_lite0`` for a CNN.
        pretrained: False (random init), True (timm's weights) or a path to a weights file or folder.
        image_size: input side in pixels; the DataModule resizes to it (``data.image_size`` is linked).
        memory_tokens: ViT only: learnable tokens appended to the patch sequence.
        drop_path_rate: ViT only: stochastic depth.
        patch_stride: CNN only: stride of the feature map used as patch tokens (16 -> 14 x 14 at 224 px).
        locked: CNN only: LiT-style frozen tower (no gradients, eval mode); with ``tune_last_n`` 0
            its outputs are cached once per sample.
        tune_last_n: CNN only: with ``locked``, the top stages that still train.
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``patch_size``, ``depth``).
    """

    tower: str = "vit"
    model_name: str | None = None
    pretrained: bool | str = False
    image_size: int = 224
    memory_tokens: int = 0
    drop_path_rate: float = 0.0
    patch_stride: int = 16
    locked: bool = False
    tune_last_n: int = 0
    model_kwargs: dict[str, Any] | None = None

    _VIT_ONLY = ("memory_tokens", "drop_path_rate")
    _CNN_ONLY = ("patch_stride", "locked", "tune_last_n")

    def __post_init__(self) -> None:
        if self.tower not in ("vit", "cnn"):
            raise ConfigError(f"model.bi_encoder.vision.tower must be 'vit' or 'cnn', got {self.tower!r}")
        if self.model_name is None:
            self.model_name = DEFAULT_VISION_MODELS[self.tower]
        if self.image_size <= 0:
            raise ConfigError(f"model.bi_encoder.vision.image_size must be positive, got {self.image_size}")
        defaults = VisionConfig.__dataclass_fields__
        other = self._CNN_ONLY if self.tower == "vit" else self._VIT_ONLY
        wrong = [name for name in other if getattr(self, name) != defaults[name].default]
        if wrong:
            kind = "cnn" if self.tower == "vit" else "vit"
            raise ConfigError(f"model.bi_encoder.vision.{wrong[0]} applies to tower: {kind} only, and this tower is "
                              f"{self.tower!r}: remove it or set model.bi_encoder.vision.tower {kind}")

    def tower_kwargs(self) -> dict[str, Any]:
        """The arguments of this tower's class."""
        shared = {"model_name": self.model_name, "pretrained": self.pretrained, "image_size": self.image_size,
                  "model_kwargs": self.model_kwargs}
        if self.tower == "vit":
            return {**shared, "memory_tokens": self.memory_tokens, "drop_path_rate": self.drop_path_rate}
        return {**shared, "patch_stride": self.patch_stride, "locked": self.locked, "tune_last_n": self.tune_last_n}


@dataclass
class TextConfig:
    """The text tower (:class:`~mmai.model.towers.TextTower`, a Hugging Face encoder).

    Attributes:
        model_name: Hugging Face id or local folder (default ``bert-base-uncased``; the offline
            MiniLM is ``sentence-transformers/all-MiniLM-L6-v2``). The DataModule tokenizes with it.
        pretrained: load its weights (default True) or only its config.
        max_length: caption token limit (default 64; ``data.max_length`` is linked). With a CLIP
            backbone it is CLIP's text limit.
        locked: LiT-style frozen tower (default False).
        tune_last_n: with ``locked``, the top layers that still train (default 0).
        config_overrides: changes to the model's config (e.g. ``num_hidden_layers``).
        local_files_only: never ask the hub (default False).
    """

    model_name: str = "bert-base-uncased"
    pretrained: bool = True
    max_length: int = 64
    locked: bool = False
    tune_last_n: int = 0
    config_overrides: dict[str, Any] | None = None
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.max_length <= 0:
            raise ConfigError(f"model.bi_encoder.text.max_length must be positive, got {self.max_length}")

    def tower_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AudioConfig:
    """The audio tower (:class:`~mmai.model.towers.AudioTower`, CLAP's HTSAT through transformers).

    Attributes:
        seconds: the song crop fed to the tower, in seconds (required; ``data.audio_seconds`` is
            linked, and memories' audio is cropped or padded to it).
        model_name: Hugging Face id or local folder (default ``laion/clap-htsat-fused``).
        pretrained: load its weights (default True).
        config_overrides: changes to the model's config.
        max_length_s: the feature extractor's longest input (default: CLAP's own).
        local_files_only: never ask the hub (default False).
    """

    seconds: float | None = None
    model_name: str = "laion/clap-htsat-fused"
    pretrained: bool = True
    config_overrides: dict[str, Any] | None = None
    max_length_s: float | None = None
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if not self.seconds or self.seconds <= 0:
            raise ConfigError("model.bi_encoder.audio is set but model.bi_encoder.audio.seconds is not: set the song "
                              "length fed to the audio tower, e.g. --model.bi_encoder.audio.seconds 1.0")

    def tower_kwargs(self) -> dict[str, Any]:
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "seconds"}


@dataclass
class ClipConfig:
    """A CLIP backbone (:class:`~mmai.model.towers.ClipTowers`) in place of the vision and text towers:
    the zero-shot baseline. Its projections come with it (``embed_dim`` must match), its
    tokenizer is CLIP's own, and ``text.max_length`` limits the captions.

    Attributes:
        model_name: Hugging Face id or local folder (default ``openai/clip-vit-base-patch16``).
        pretrained: load its weights (default True).
        config_overrides: changes to the model's config.
        local_files_only: never ask the hub (default False).
    """

    model_name: str = "openai/clip-vit-base-patch16"
    pretrained: bool = True
    config_overrides: dict[str, Any] | None = None
    local_files_only: bool = False

    def tower_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BiEncoderConfig:
    """The stage-1 bi-encoder (:class:`~mmai.model.bi_encoder.BiEncoder`): towers and contrastive settings.

    Attributes:
        vision, text: the towers (ignored, but for ``vision.image_size`` and ``text.max_length``,
            when ``clip`` is set).
        audio: an audio tower, or None (default: image-text only).
        clip: a CLIP backbone instead of ``vision`` and ``text``, or None (default).
        embed_dim: shared space size E (default 512).
        queue_size: momentum keys kept per modality (default 4096; a multiple of the global batch;
            0: in-batch momentum keys only).
        momentum: EMA coefficient of the key encoders (default 0.995).
        hard_negative_beta: hard-negative concentration beta (default 0.0: plain InfoNCE).
        hard_negatives: how ``hard_negative_beta`` weights negatives: ``"cosine"`` (default,
            weights ``exp(beta * s)``) or ``"hcl"`` (Robinson et al., ICLR 2021: weights
            ``exp(beta * s / tau)``, on the scale of the logits, with the false-negative correction
            of ``hcl_tau_plus``).
        hcl_tau_plus: HCL's class prior tau+: the expected share of false negatives among the
            negatives, subtracted from their weighted sum (default 0.0: no correction; ``"hcl"`` only).
        class_positives: same-class keys are positives too (default False).
        true_negatives: keys of another species that the query caption is also true of (it states
            nothing the species lacks; :mod:`mmai.data.consistency`) are left out of the loss, neither
            positives nor negatives (default False; needs the feature cache and shards that record
            what each caption states; otherwise class labels, and the run says so).
        distill_alpha: ALBEF momentum-distillation weight (default 0.0: off).
        temperature_init: initial learnable temperature (default 0.07), clamped to
            [``temperature_min``, ``temperature_max``] (default 0.001, 0.5).
        projection_hidden_dim: None for linear projections (default), an int for one-hidden-layer MLPs.
        projection_input_norm: LayerNorm the tower features entering the projections (default False).
        audio_loss_weight: weight of the mean audio term in the loss (default 1.0).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig | None = None
    clip: ClipConfig | None = None
    embed_dim: int = 512
    queue_size: int = 4096
    momentum: float = 0.995
    hard_negative_beta: float = 0.0
    hard_negatives: str = "cosine"
    hcl_tau_plus: float = 0.0
    class_positives: bool = False
    true_negatives: bool = False
    distill_alpha: float = 0.0
    temperature_init: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    projection_hidden_dim: int | None = None
    projection_input_norm: bool = False
    audio_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        # jsonargparse and Lightning's load_from_checkpoint may hand the parts over as mappings
        self.vision = _build(VisionConfig, self.vision, "model.bi_encoder.vision") or VisionConfig()
        self.text = _build(TextConfig, self.text, "model.bi_encoder.text") or TextConfig()
        self.audio = _build(AudioConfig, self.audio, "model.bi_encoder.audio")
        self.clip = _build(ClipConfig, self.clip, "model.bi_encoder.clip")
        if self.embed_dim <= 0:
            raise ConfigError(f"model.bi_encoder.embed_dim must be positive, got {self.embed_dim}")
        if self.queue_size < 0:
            raise ConfigError(f"model.bi_encoder.queue_size must be >= 0 (0: no queue), got {self.queue_size}")
        if self.hard_negatives not in ("cosine", "hcl"):
            raise ConfigError(f"model.bi_encoder.hard_negatives must be 'cosine' or 'hcl', got {self.hard_negatives!r}")
        if not 0.0 <= self.hcl_tau_plus < 1.0:
            raise ConfigError(f"model.bi_encoder.hcl_tau_plus must be in [0, 1), got {self.hcl_tau_plus}")

    # ------------------------------------------------------------ what the data must agree on
    @property
    def image_size(self) -> int:
        return int(self.vision.image_size)

    @property
    def max_length(self) -> int:
        return int(self.text.max_length)

    @property
    def tokenizer(self) -> str:
        """The tokenizer captions are read with: CLIP's own with ``clip``, else the text tower's."""
        return self.clip.model_name if self.clip is not None else self.text.model_name

    @property
    def audio_seconds(self) -> float | None:
        return None if self.audio is None else float(self.audio.seconds)

    def model_kwargs(self) -> dict[str, Any]:
        """The :class:`~mmai.model.bi_encoder.BiEncoder` arguments besides its towers."""
        return {name: getattr(self, name) for name in _fields(BiEncoderConfig)
                if name not in ("vision", "text", "audio", "clip")}

    # ------------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a checkpoint stores: ``weights_only`` loading reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | BiEncoderConfig, where: str = "bi-encoder config"
                  ) -> BiEncoderConfig:
        """A config from :meth:`to_dict`'s output, or from the flat hyperparameters of a checkpoint
        written before the typed configs (``image_size``, ``text_model``, ``max_length`` and
        ``audio_seconds`` move into the towers; its training settings are left out).

        Raises:
            ConfigError: a key no version of the config had, naming it (``where`` says whose).
        """
        if isinstance(values, cls):
            return values
        values = dict(_plain(values))
        if set(values) & (set(LEGACY_BI_ENCODER_KEYS) | LEGACY_TRAINING_KEYS):  # flat, before typed configs
            values = _migrate_flat(values)
        _check_keys(cls, values, where)
        return cls(**values)


def _migrate_flat(values: dict[str, Any]) -> dict[str, Any]:
    """Flat ``BiEncoderModule`` hyperparameters (before typed configs) -> :class:`BiEncoderConfig` keys."""
    values = {key: value for key, value in values.items()
              if key not in LEGACY_TRAINING_KEYS and not key.startswith("_")}
    parts = {name: values.pop(name, None) for name in ("vision", "text", "audio", "clip")}
    parts = {name: dict(part) if part is not None else None for name, part in parts.items()}
    parts["vision"], parts["text"] = parts["vision"] or {}, parts["text"] or {}
    for key, (part, name) in LEGACY_BI_ENCODER_KEYS.items():
        value = values.pop(key, None)
        if value is None or (part == "audio" and parts["audio"] is None):
            continue
        parts[part][name] = value
    if parts["clip"] is not None and "max_length" in parts["clip"]:
        parts["text"]["max_length"] = parts["clip"].pop("max_length")
    return {**values, **parts}


@dataclass
class RerankerConfig:
    """The stage-2 fusion re-ranker (:class:`~mmai.reranker.fusion.FusionReranker`) and how it re-ranks.

    Attributes:
        hidden_dim: fusion width (default 256).
        num_layers: fusion layers (text self-attention, cross-attention to patches, MLP; default 2;
            0 is allowed with the ``agreement`` head).
        num_heads: attention heads (default 4).
        dropout: default 0.1.
        mlp_ratio: feed-forward width over ``hidden_dim`` (default 4.0).
        head: ``"cls"`` (ALBEF's match head on the [CLS] state, default) or ``"agreement"``
            (word-region agreement, SCAN / FILIP-style).
        agreement_temperature: softmax temperature of the agreement head (default 0.1).
        agreement_attention: where each word of the agreement head looks: ``"cosine"`` (default:
            the patches it matches best, so a colour word finds that colour anywhere) or
            ``"keyed"`` (its own query/key projections, apart from the match: a word can learn
            *where* its part is and the match then checks *what* is there, which binding needs).
        patch_positions: add each patch's 2-D position (fixed sine-cosine code, learned projection)
            to the agreement head's attention keys (default False; CNN patch tokens carry none).
        rerank_k: stage-1 candidates re-scored per query (default 16), used where nothing else is
            given: a checkpoint records the ``rerank_k`` its validation used, and that wins.
        stage1_weight: lambda of ``match_logit + lambda * stage1_similarity`` (default 1.0), the same way.
    """

    hidden_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    mlp_ratio: float = 4.0
    head: str = "cls"
    agreement_temperature: float = 0.1
    agreement_attention: str = "cosine"
    patch_positions: bool = False
    rerank_k: int = 16
    stage1_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.head not in ("cls", "agreement"):
            raise ConfigError(f"model.reranker.head must be 'cls' or 'agreement', got {self.head!r}")
        if self.agreement_attention not in ("cosine", "keyed"):
            raise ConfigError(f"model.reranker.agreement_attention must be 'cosine' or 'keyed', got "
                              f"{self.agreement_attention!r}")
        if self.rerank_k <= 0:
            raise ConfigError(f"model.reranker.rerank_k must be positive, got {self.rerank_k}")

    def fusion_kwargs(self) -> dict[str, Any]:
        """The :class:`~mmai.reranker.fusion.FusionReranker` arguments (everything but the re-rank settings)."""
        return {name: value for name, value in dataclasses.asdict(self).items()
                if name not in ("rerank_k", "stage1_weight")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], where: str = "re-ranker checkpoint") -> RerankerConfig:
        """From a ``RerankerModule``'s hyperparameters: ``reranker`` (typed configs), or the older
        ``fusion`` dict with flat ``rerank_k`` / ``stage1_weight``."""
        if hparams.get("reranker") is not None:
            return _build(cls, hparams["reranker"], f"{where}: hyper_parameters['reranker']")
        values = dict(hparams.get("fusion") or {})
        for key in ("rerank_k", "stage1_weight"):
            if hparams.get(key) is not None:
                values[key] = hparams[key]
        return _build(cls, values, f"{where}: hyper_parameters['fusion']")


#: what the data must agree on with a bi-encoder: :class:`BiEncoderConfig` properties.
DATA_SETTINGS = ("image_size", "tokenizer", "max_length", "audio_seconds")


def data_settings(bi_encoder: Any) -> dict[str, Any]:
    """:data:`DATA_SETTINGS` of a bi-encoder config given as a config, a mapping or a parsed
    Namespace. A command-line link computes them before the config is built: an invalid config
    gives None here, and building it reports the bad value."""
    try:
        config = coerce(BiEncoderConfig, bi_encoder, "model.bi_encoder")
    except (ConfigError, TypeError):
        return dict.fromkeys(DATA_SETTINGS)
    return {name: getattr(config, name) for name in DATA_SETTINGS}


def coerce(cls, value: Any, where: str):
    """``value`` as a ``cls`` config: the dataclass itself, a mapping, a Namespace or None (defaults)."""
    if value is None:
        return cls()
    if cls is BiEncoderConfig:
        return BiEncoderConfig.from_dict(value, where)
    return _build(cls, value, where)
