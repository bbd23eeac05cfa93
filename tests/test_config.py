"""Typed model configs (mmai.config): what the modules, the checkpoints and the loaders share."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from mmai.model.bi_encoder import BiEncoder
from mmai.checkpoint import bi_encoder_config, read_checkpoint, rerank_settings
from mmai.inference import load_stage1, load_stage2
from mmai.config import (AudioConfig, BiEncoderConfig, ConfigError, RerankerConfig, TextConfig, VisionConfig,
                         coerce)
from mmai.reranker.fusion import FusionReranker
from tiny_checkpoints import TINY_BI_ENCODER, TINY_RERANKER, make_bi_encoder_ckpt, make_reranker_ckpt


def _flat_legacy_hparams(config: BiEncoderConfig) -> dict:
    """What a BiEncoderModule saved before the typed configs: one flat dict of its ~25 arguments."""
    values = config.to_dict()
    vision, text = values.pop("vision"), values.pop("text")
    legacy = {"image_size": vision.pop("image_size"), "text_model": text.pop("model_name"),
              "max_length": text.pop("max_length"), "audio_seconds": None, "vision": vision, "text": text,
              **values, "lr": 1e-4, "lr_pretrained": 1e-5, "weight_decay": 0.02, "warmup_steps": 2, "batch_size": 4,
              "eval_ks": (1, 5, 10), "init_from": None, "feature_cache": True, "feature_cache_dir": None}
    for key in ("temperature_min", "temperature_max", "audio_loss_weight"):
        legacy.pop(key)  # the old module never passed these
    return legacy


def test_a_config_survives_the_checkpoint_as_plain_data():
    config = BiEncoderConfig.from_dict(TINY_BI_ENCODER)
    assert BiEncoderConfig.from_dict(config.to_dict()) == config
    # plain data only: a weights_only torch.load reads it back
    assert all(type(value) in (int, float, str, bool, dict, type(None)) for value in config.to_dict().values())
    audio = dataclasses.replace(config, audio=AudioConfig(seconds=0.5, pretrained=False))
    assert BiEncoderConfig.from_dict(audio.to_dict()).audio == AudioConfig(seconds=0.5, pretrained=False)


def test_the_library_classes_take_their_defaults_from_the_configs():
    """One place for every default: the model classes' own keyword defaults are the configs'."""
    config, reranker = BiEncoderConfig(), RerankerConfig()
    signature = inspect.signature(BiEncoder).parameters
    for name, value in config.model_kwargs().items():
        assert signature[name].default == value, name
    fusion = inspect.signature(FusionReranker).parameters
    for name, value in reranker.fusion_kwargs().items():
        assert fusion[name].default == value, name


def test_bad_values_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'embed_dimm'.*takes vision, text"):
        BiEncoderConfig.from_dict({"embed_dimm": 64})
    with pytest.raises(ConfigError, match="vision.locked applies to tower: cnn only"):
        VisionConfig(tower="vit", locked=True)
    with pytest.raises(ConfigError, match="audio.seconds is not"):
        BiEncoderConfig.from_dict({"audio": {"pretrained": False}})
    with pytest.raises(ConfigError, match="model.reranker.head must be 'cls' or 'agreement'"):
        RerankerConfig(head="mean")
    with pytest.raises(ConfigError, match=r"model.bi_encoder.text: unknown key\(s\) 'model'"):
        BiEncoderConfig.from_dict({"text": {"model": "bert-base-uncased"}})
    assert VisionConfig(tower="cnn").model_name == "tf_efficientnet_lite0"  # each tower kind has its default


def test_the_data_settings_come_from_the_towers():
    config = BiEncoderConfig(vision=VisionConfig(image_size=96), text=TextConfig(model_name="m", max_length=12))
    assert (config.image_size, config.tokenizer, config.max_length, config.audio_seconds) == (96, "m", 12, None)
    clip = BiEncoderConfig.from_dict({"clip": {"model_name": "openai/clip-vit-base-patch16"}})
    assert clip.tokenizer == "openai/clip-vit-base-patch16"
    assert coerce(BiEncoderConfig, None, "x") == BiEncoderConfig()


def test_a_checkpoint_stores_the_typed_configs(tmp_path):
    bi_encoder = read_checkpoint(make_bi_encoder_ckpt(tmp_path))
    assert BiEncoderConfig.from_dict(bi_encoder["hyper_parameters"]["bi_encoder"]) == \
        BiEncoderConfig.from_dict(TINY_BI_ENCODER)
    assert bi_encoder["hyper_parameters"]["warmup_steps"] == 2  # training settings beside it, not inside
    reranker = read_checkpoint(make_reranker_ckpt(tmp_path / "rr"))
    assert RerankerConfig.from_hparams(reranker["hyper_parameters"]) == RerankerConfig(**TINY_RERANKER)
    assert bi_encoder_config(reranker["hyper_parameters"]) == BiEncoderConfig.from_dict(TINY_BI_ENCODER)


def test_checkpoints_written_before_the_typed_configs_still_load(tmp_path):
    """Flat hyperparameters (bi-encoder) and a ``fusion`` dict with flat ``rerank_k`` (re-ranker)
    load into the same models as the typed checkpoints, with the same outputs."""
    new_path = make_reranker_ckpt(tmp_path)
    new = read_checkpoint(new_path)
    config = BiEncoderConfig.from_dict(new["hyper_parameters"]["bi_encoder"])
    legacy_bi_encoder = read_checkpoint(tmp_path / "bi_encoder.ckpt")
    legacy_bi_encoder["hyper_parameters"] = _flat_legacy_hparams(config)
    torch.save(legacy_bi_encoder, tmp_path / "legacy_bi_encoder.ckpt")
    fusion = RerankerConfig(**TINY_RERANKER).fusion_kwargs()
    legacy_reranker = {"state_dict": new["state_dict"],
                       "hyper_parameters": {"bi_encoder": _flat_legacy_hparams(config), "fusion": fusion,
                                            "rerank_k": 12, "stage1_weight": 0.5, "lr": 1e-4}}
    torch.save(legacy_reranker, tmp_path / "legacy_reranker.ckpt")

    assert bi_encoder_config(legacy_bi_encoder["hyper_parameters"]) == config
    old, current = load_stage1(tmp_path / "legacy_bi_encoder.ckpt"), load_stage1(tmp_path / "bi_encoder.ckpt")
    texts = ["a small bird with a red crown", "a grey bird"]
    assert torch.equal(old.embed_texts(texts), current.embed_texts(texts))
    assert old.image_size == 32 and old.max_length == config.max_length

    stage2 = load_stage2(tmp_path / "legacy_reranker.ckpt")
    assert (stage2.rerank_k, stage2.stage1_weight) == (12, 0.5)
    assert rerank_settings(legacy_reranker)[2] == "the checkpoint's defaults: it records no validation"
    reference = load_stage2(new_path)
    for key, value in reference.reranker.state_dict().items():
        assert torch.equal(stage2.reranker.state_dict()[key], value), key


def test_an_unknown_key_in_a_checkpoint_names_the_file(tmp_path):
    path = make_bi_encoder_ckpt(tmp_path)
    checkpoint = read_checkpoint(path)
    checkpoint["hyper_parameters"]["bi_encoder"]["projection_width"] = 64
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ConfigError, match=r"edited.ckpt.*unknown key\(s\) 'projection_width'"):
        load_stage1(tmp_path / "edited.ckpt")


def test_the_cli_refuses_to_resume_an_untyped_checkpoint_and_says_what_works(synth_shards, tmp_path, capsys):
    from fit_helpers import tiny_args
    from mmai_apps.cli import main

    checkpoint = read_checkpoint(make_bi_encoder_ckpt(tmp_path))
    checkpoint["hyper_parameters"] = _flat_legacy_hparams(BiEncoderConfig.from_dict(TINY_BI_ENCODER))
    torch.save(checkpoint, tmp_path / "legacy.ckpt")
    assert main(["fit", *tiny_args(synth_shards, tmp_path / "runs"), "--ckpt_path", str(tmp_path / "legacy.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "was written before the typed model configs" in err and f"--model.init_from {tmp_path / 'legacy.ckpt'}" in err


def test_a_bad_model_value_on_the_command_line_is_one_clear_line(synth_shards, tmp_path, capsys):
    from fit_helpers import tiny_args
    from mmai_apps.cli import main

    assert main(["fit", *tiny_args(synth_shards, tmp_path / "runs"), "--model.bi_encoder.vision.locked", "true"]) == 2
    err = capsys.readouterr().err
    assert "mmai fit: error: model.bi_encoder.vision.locked applies to tower: cnn only" in err
    assert "Namespace(" not in err


def test_an_optional_tower_missing_a_required_value_is_one_clear_line(synth_shards, tmp_path, capsys):
    """``audio: AudioConfig | None``: jsonargparse lists both union members and dumps the value;
    the app says only the audio config's own reason."""
    from fit_helpers import tiny_args
    from mmai_apps.cli import main

    assert main(["fit", *tiny_args(synth_shards, tmp_path / "runs"), "--model.bi_encoder.audio.pretrained",
                 "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmai fit: error: model.bi_encoder.audio is set but model.bi_encoder.audio.seconds is not")
    assert "Union" not in err and "Namespace(" not in err and "NoneType" not in err
