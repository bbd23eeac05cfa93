"""Towers of the stage-1 bi-encoder (mmai.model.towers), on tiny random configs and the offline MiniLM."""

from __future__ import annotations

import pytest
import timm
import torch

from mmai.model.towers import AudioTower, ClipTowers, Projection, TextTower, VisionTower, build_tower
from mmai.model.towers.audio_features import ClapFusionFeatures
from mmai.pretrained import resolve_model_path

from tiny_configs import TINY_BERT, TINY_CLAP, TINY_CLIP, TINY_VIT

torch.set_num_threads(1)



def tiny_vision(**kwargs) -> VisionTower:
    torch.manual_seed(0)
    return VisionTower("vit_tiny_patch16_224", image_size=32, model_kwargs=TINY_VIT, **kwargs)


def test_vision_tower_without_memory_equals_plain_timm():
    tower = tiny_vision().eval()
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **TINY_VIT).eval()
    plain.load_state_dict(tower.model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, patches = tower(images)
        assert torch.equal(pooled, plain(images))
        assert torch.equal(patches, plain.forward_features(images)[:, 1:])
    assert pooled.shape == (2, 64) and patches.shape == (2, tower.num_patches, tower.width) == (2, 16, 64)


def test_memory_tokens_lengthen_the_sequence_but_not_the_patches():
    plain, with_memory = tiny_vision().eval(), tiny_vision(memory_tokens=3).eval()
    with_memory.model.load_state_dict(plain.model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert with_memory.sequence(images).shape == (2, 1 + 3 + 16, 64)
        pooled, patches = with_memory(images)
        plain_pooled, _ = plain(images)
    assert patches.shape == (2, 16, 64)
    assert not torch.allclose(pooled, plain_pooled)
    assert "memory_tokens" in dict(with_memory.named_parameters())
    # A loss that depends on the pooled values: pooled ends in a LayerNorm, whose outputs sum to a
    # constant, so pooled.sum() would give the memory tokens a gradient of rounding noise only.
    target = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    (with_memory(images).pooled * target).sum().backward()
    assert with_memory.memory_tokens.grad.abs().sum() > 1e-4


def test_unknown_tower_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown vision tower 'vit_foo': not a timm model name; see timm.list"):
        VisionTower("vit_foo")
    with pytest.raises(ValueError, match=r"Did you mean 'vit_base_patch16_224'"):
        build_tower("vision", model_name="vit_base_patch16_22")
    with pytest.raises(ValueError, match=r"unknown tower kind 'video'; known kinds: vision, cnn, text, audio, clip"):
        build_tower("video")
    with pytest.raises(FileNotFoundError, match=r"model path '/no/such/dir/minilm' does not exist"):
        TextTower("/no/such/dir/minilm")


def test_uncached_hub_id_offline_names_it_and_the_offline_alternative():
    with pytest.raises(FileNotFoundError, match=r"'bert-base-uncased'.*local directory.*all-MiniLM-L6-v2"):
        TextTower("bert-base-uncased", local_files_only=True)


@pytest.mark.parametrize("file_name", ["vit.safetensors", "vit.pth", "weights_dir"])
def test_vision_tower_loads_local_weights(tmp_path, file_name):
    source = tiny_vision()
    state = {key: value.clone() for key, value in source.model.state_dict().items()}
    if file_name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, tmp_path / file_name)
    elif file_name.endswith(".pth"):
        torch.save({"state_dict": state}, tmp_path / file_name)
    else:
        (tmp_path / file_name).mkdir()
        torch.save(state, tmp_path / file_name / "pytorch_model.bin")
    torch.manual_seed(1)
    loaded = VisionTower("vit_tiny_patch16_224", pretrained=str(tmp_path / file_name), image_size=32,
                         model_kwargs=TINY_VIT)
    assert torch.equal(loaded.model.pos_embed, source.model.pos_embed)


def test_vision_weights_that_do_not_fit_list_the_keys(tmp_path):
    state = tiny_vision().model.state_dict()
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys \(1\): norm.weight.*unexpected keys \(1\): extra.weight"):
        VisionTower("vit_tiny_patch16_224", pretrained=str(tmp_path / "bad.pth"), image_size=32, model_kwargs=TINY_VIT)
    with pytest.raises(FileNotFoundError, match="none of model.safetensors"):
        VisionTower("vit_tiny_patch16_224", pretrained=str(tmp_path), image_size=32, model_kwargs=TINY_VIT)


def test_offline_minilm_loads_and_mean_pools_over_real_tokens():
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == resolve_model_path("all-MiniLM-L6-v2")
    tower = TextTower("sentence-transformers/all-MiniLM-L6-v2").eval()
    assert tower.width == 384 and tower.model.pooler is None
    batch = tower.tokenize(["a small bird with a bright red crown", "a bird"])
    with torch.no_grad():
        pooled, tokens = tower(**batch)
        alone, _ = tower(**tower.tokenize(["a bird"]))
    assert pooled.shape == (2, 384) and tokens.shape == (2, batch["input_ids"].shape[1], 384)
    torch.testing.assert_close(pooled[1], alone[0], rtol=1e-4, atol=1e-5)  # padding does not count
    similar = torch.cosine_similarity(pooled[1], tower(**tower.tokenize(["a small bird"]))[0][0], dim=0)
    assert similar > 0.5, "pretrained MiniLM weights should place related captions close"


def test_tiny_random_text_tower_keeps_the_real_tokenizer():
    tower = TextTower("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_BERT)
    assert tower.width == 32 and tower.tokenizer.vocab_size == 30522
    pooled, tokens = tower(**tower.tokenize(["a red bird", "a blue bird with a long tail"]))
    assert pooled.shape == (2, 32) and tokens.shape[::2] == (2, 32)


def tiny_audio(**kwargs) -> AudioTower:
    torch.manual_seed(0)
    return AudioTower(pretrained=False, config_overrides=TINY_CLAP, max_length_s=0.5, **kwargs)


def test_tiny_clap_audio_tower_runs_on_cpu():
    tower = tiny_audio()
    waveforms = torch.randn(3, 20_000) * 0.1  # shorter than max_length: repeat-padded
    pooled, tokens = tower(waveforms)
    assert pooled.shape == (3, tower.width) == (3, 32) and tokens.shape == (3, 64, 32)
    pooled.sum().backward()  # the unused fusion branch still gets a (zero) gradient, for DDP
    fusion = tower.model.audio_encoder.patch_embed.fusion_model
    assert all(p.grad is not None and not p.grad.any() for p in fusion.parameters())
    tower.eval()
    long_clips = torch.randn(2, 40_000) * 0.1  # longer than max_length: the fusion branch runs
    with torch.no_grad():
        long_pooled, _ = tower(long_clips)
        again, _ = tower(long_clips)
    assert long_pooled.shape == (2, 32)
    assert torch.equal(long_pooled, again), "evaluation crops must be deterministic"
    with pytest.raises(ValueError, match="lower max_length_s"):
        AudioTower(pretrained=False, config_overrides=TINY_CLAP)  # 10 s clips do not fit spec_size 64


def test_audio_features_match_clap_feature_extractor():
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor()
    torch.manual_seed(0)
    for length in (20_000, 48_000, 48_100):  # shorter (repeatpad), exact, a hop longer (whole clip)
        waveforms = torch.randn(2, length) * 0.1
        waveforms[0, length // 2:] = 0.0  # zero padded tail, as the data pipeline delivers
        features, is_longer = ClapFusionFeatures(extractor, max_length=48_000).eval()(waveforms)
        reference = extractor(list(waveforms.numpy()), sampling_rate=48_000, max_length=48_000, return_tensors="pt")
        torch.testing.assert_close(features, reference["input_features"].float(), atol=1e-3, rtol=1e-4)
        assert not is_longer.any()
    waveforms = torch.randn(2, 100_000) * 0.1
    features, is_longer = ClapFusionFeatures(extractor, max_length=48_000).eval()(waveforms)
    reference = extractor(list(waveforms.numpy()), sampling_rate=48_000, max_length=48_000, return_tensors="pt")
    assert features.shape == reference["input_features"].shape == (2, 4, 101, 64) and is_longer.all()
    torch.testing.assert_close(features[:, 0], reference["input_features"][:, 0].float(), atol=1e-3, rtol=1e-4)


def test_audio_tower_loads_the_audio_half_of_a_local_clap_checkpoint(tmp_path):
    from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

    text_config = ClapTextConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, projection_dim=16)
    audio_config = ClapAudioConfig(enable_fusion=True, projection_dim=16, **TINY_CLAP)
    clap = ClapModel(ClapConfig(audio_config=audio_config.to_dict(), text_config=text_config.to_dict(), projection_dim=16))
    clap.save_pretrained(tmp_path / "clap")
    tower = AudioTower(str(tmp_path / "clap"), max_length_s=0.5)
    assert torch.equal(tower.model.audio_encoder.patch_embed.proj.weight,
                       clap.audio_model.audio_encoder.patch_embed.proj.weight)


def test_tiny_clip_towers_have_the_tower_interface(tmp_path):
    torch.manual_seed(0)
    clip = ClipTowers(pretrained=False, config_overrides=TINY_CLIP)
    pooled, patches = clip.vision(torch.randn(2, 3, 32, 32))
    assert pooled.shape == (2, 32) and patches.shape == (2, clip.vision.num_patches, 32) == (2, 16, 32)
    input_ids = torch.randint(2, 97, (3, 7))
    input_ids[:, -1] = 98  # end of text
    pooled, tokens = clip.text(input_ids, torch.ones_like(input_ids))
    assert pooled.shape == (3, 32) and tokens.shape == (3, 7, 32)
    image_embedding, text_embedding = clip(torch.randn(2, 3, 32, 32), input_ids, torch.ones_like(input_ids))
    assert image_embedding.shape == (2, 16) and text_embedding.shape == (3, 16)
    torch.testing.assert_close(text_embedding.norm(dim=-1), torch.ones(3))
    assert clip.embed_dim == 16 and clip.temperature == pytest.approx(0.07, rel=1e-4)

    from transformers import CLIPConfig, CLIPModel

    saved = CLIPModel(CLIPConfig(**TINY_CLIP))
    saved.save_pretrained(tmp_path / "clip")
    loaded = ClipTowers(str(tmp_path / "clip"))
    assert torch.equal(loaded.vision_projection.linear.weight, saved.visual_projection.weight)


def test_projection_maps_to_the_unit_sphere():
    linear, mlp = Projection(64, 16), Projection(64, 16, hidden_dim=32)
    for projection in (linear, mlp):
        out = projection(torch.randn(5, 64))
        assert out.shape == (5, 16)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
