"""Saliency maps of the fusion re-ranker and their panels (mmai.reranker.saliency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_fusion import LENGTH, PATCHES, TEXT_WIDTH, VISION_WIDTH, planted_pairs, train_planted_reranker

from mmai.data.pipeline import normalize_images
from mmai.reranker.fusion import FusionReranker
from mmai.reranker.grounding import chance_level, pointing_game
from mmai.reranker.saliency import patch_relevance, saliency_maps
from mmai.viz.panels import colorize, denormalize_image, render_panel, save_panel, token_maps_for_panel
from mmai.model.towers import TextTower

torch.set_num_threads(1)

TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def trained():
    return train_planted_reranker()


def random_reranker(text_width: int = TEXT_WIDTH) -> FusionReranker:
    torch.manual_seed(0)
    return FusionReranker(text_width, VISION_WIDTH, hidden_dim=16, num_layers=2, num_heads=2).eval()


@pytest.mark.parametrize("method", ["gradcam", "attention"])
def test_maps_have_image_shape_lie_in_unit_interval_and_are_zero_on_padding(method):
    text, mask, patches, _, _ = planted_pairs(6, torch.Generator().manual_seed(0))  # rows 0 and 3 padded
    maps = saliency_maps(random_reranker(), text, mask, patches, image_size=(32, 24), method=method)
    assert maps.mean.shape == (6, 32, 24) and maps.tokens.shape == (6, LENGTH, 32, 24)
    assert maps.patch_scores.shape == (6, LENGTH, PATCHES) and maps.logits.shape == (6,)
    for values in (maps.mean, maps.tokens):
        assert torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert (maps.mean.flatten(1).max(dim=1).values == 1).all()  # every pair has a non-constant map
    assert (maps.tokens[0, -1] == 0).all() and (maps.tokens[3, -1] == 0).all()
    real = maps.tokens[mask.bool()].flatten(1).max(dim=1).values
    assert (real == 1).float().mean() > 0.9


def test_changing_a_padded_token_id_leaves_the_maps_unchanged():
    torch.manual_seed(0)
    tower = TextTower("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_BERT).eval()
    encoded = tower.tokenize(["a bird with a long curved bill", "red crown"])
    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    padded = (mask[1] == 0).nonzero()[0, 0]
    other_ids = input_ids.clone()
    other_ids[1, padded] = 2000  # a real word where there was [PAD]
    model = random_reranker(text_width=tower.width)
    patches = torch.randn(2, PATCHES, VISION_WIDTH)
    with torch.no_grad():
        tokens, other_tokens = tower(input_ids, mask).tokens, tower(other_ids, mask).tokens
    assert not torch.allclose(tokens[1, padded], other_tokens[1, padded])  # the padded state did change
    for method in ("gradcam", "attention"):
        before = saliency_maps(model, tokens, mask, patches, 32, method=method)
        after = saliency_maps(model, other_tokens, mask, patches, 32, method=method)
        torch.testing.assert_close(before.mean, after.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(before.tokens, after.tokens, atol=1e-5, rtol=1e-4)


def test_gradcam_is_non_negative_works_under_inference_mode_and_leaves_parameter_grads_alone():
    model = random_reranker().train()
    text, mask, patches, _, _ = planted_pairs(4, torch.Generator().manual_seed(1))
    scores, logits = patch_relevance(model, text, mask, patches, method="gradcam")
    assert (scores >= 0).all() and scores.sum() > 0
    with torch.inference_mode():
        inference_scores, _ = patch_relevance(model, text, mask, patches, method="gradcam")
    torch.testing.assert_close(scores, inference_scores)
    assert model.training  # restored
    assert all(parameter.grad is None for parameter in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(text, mask, patches).logits)


def test_last_layer_gradcam_reaches_only_the_cls_token():
    text, mask, patches, _, _ = planted_pairs(4, torch.Generator().manual_seed(2))
    scores, _ = patch_relevance(random_reranker(), text, mask, patches, method="gradcam", layers="last")
    assert scores[:, 0].sum() > 0 and (scores[:, 1:] == 0).all()


@pytest.mark.parametrize("method", ["gradcam", "attention"])
def test_trained_reranker_saliency_points_at_the_planted_patch(trained, method):
    text, mask, patches, labels, where = planted_pairs(256, torch.Generator().manual_seed(7))
    positive = labels == 1
    maps = saliency_maps(trained, text[positive], mask[positive], patches[positive], image_size=32, method=method)
    cell = 32 // 4  # a 4 x 4 patch grid on a 32 px image
    where = where[positive]
    boxes = torch.stack([(where % 4) * cell, (where // 4) * cell, torch.full_like(where, cell),
                         torch.full_like(where, cell)], dim=1).float()
    assert chance_level(boxes, 32) == pytest.approx(1 / 16)
    assert pointing_game(maps.mean, boxes) > 0.5


def test_per_caption_normalization_keeps_relative_token_strength():
    text, mask, patches, _, _ = planted_pairs(3, torch.Generator().manual_seed(5))  # row 0 padded
    model = random_reranker()
    per_token = saliency_maps(model, text, mask, patches, 16, method="attention")
    per_caption = saliency_maps(model, text, mask, patches, 16, method="attention", token_normalization="per_caption")
    peaks = per_caption.tokens.flatten(2).max(dim=2).values  # (3, L)
    assert (peaks[mask.bool()] <= 1).all() and (peaks.max(dim=1).values == 1).all()
    assert (peaks[mask.bool()] < 1).any()  # weaker tokens stay below the strongest
    assert (per_caption.tokens[0, -1] == 0).all()
    torch.testing.assert_close(per_caption.mean, per_token.mean)


def test_non_square_patch_count_needs_a_grid_size():
    model = FusionReranker(TEXT_WIDTH, VISION_WIDTH, hidden_dim=16, num_layers=1, num_heads=2).eval()
    text, mask = torch.randn(1, LENGTH, TEXT_WIDTH), torch.ones(1, LENGTH)
    patches = torch.randn(1, 12, VISION_WIDTH)
    with pytest.raises(ValueError, match="grid_size"):
        saliency_maps(model, text, mask, patches, 24)
    assert saliency_maps(model, text, mask, patches, (24, 32), grid_size=(3, 4)).mean.shape == (1, 24, 32)


def test_panel_is_wide_enough_and_saved_as_png(tmp_path):
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    heatmap = np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 50.0)
    panel = render_panel(image, heatmap, "a small bird with a long curved orange bill", score=3.25, rank=1)
    assert panel.width >= 600 and panel.mode == "RGB"
    title_strip = np.asarray(panel)[:40]
    assert (title_strip < 60).all(axis=2).sum() > 100  # dark title text was drawn
    tokens = ["[CLS]", "curved", "bill", "[SEP]", "[PAD]"]
    token_maps = token_maps_for_panel(torch.rand(5, 64, 64), tokens, torch.tensor([1, 1, 1, 1, 0]))
    assert [token for token, _ in token_maps] == ["curved", "bill"]
    with_tokens = render_panel(Image.fromarray(image), heatmap, "curved bill", score=0.5, rank=12,
                               token_maps=token_maps, colormap="inferno")
    assert with_tokens.width == panel.width and with_tokens.height > panel.height
    path = save_panel(with_tokens, tmp_path / "panels" / "probe_0.png")
    reopened = Image.open(path)
    assert reopened.format == "PNG" and reopened.size == with_tokens.size
    with pytest.raises(ValueError, match="match the image size"):
        render_panel(image, heatmap[:32], "q")


def test_colormap_and_denormalize():
    jet = colorize(np.array([[0.0, 0.5, 1.0]]))
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0  # low: blue
    assert jet[0, 2, 0] > 100 and jet[0, 2, 2] == 0  # high: red
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    restored = denormalize_image(normalize_images(images)[1])
    assert np.array_equal(restored, images[1].permute(1, 2, 0).numpy())


def _tar_samples(shard_dir, split: str) -> dict[int, tuple[bytes, dict]]:
    """``{image_id: (jpg bytes, meta)}`` of a split, read member by member with tarfile (the reference)."""
    import json
    import tarfile

    from mmai.data.shards import shard_urls

    samples: dict[str, dict[str, bytes]] = {}
    for url in shard_urls(shard_dir, split):
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(f"{url}/{key}", {})[ext] = tar.extractfile(member).read()
    return {json.loads(s["json"])["image_id"]: (s["jpg"], json.loads(s["json"])) for s in samples.values()}


def test_the_callback_reads_the_wanted_images_of_a_split_from_its_shards(synth_shards):
    """The saliency callback's shard reader (WebDataset, as the data pipeline reads) gives each wanted
    id's image and metadata exactly as stored, whichever shard it is in; an id in none is a KeyError."""
    import io

    from callbacks.saliency import read_split_samples

    reference = _tar_samples(synth_shards, "val")
    ids = list(reference)  # in shard order
    wanted = {ids[0], ids[len(ids) // 2], ids[-1]}  # from the first shard, a middle one and the last one
    found = read_split_samples(synth_shards, "val", wanted)
    assert set(found) == wanted
    for image_id, (image, meta) in found.items():
        jpg, expected_meta = reference[image_id]
        assert meta == expected_meta and image.mode == "RGB"
        assert image.tobytes() == Image.open(io.BytesIO(jpg)).convert("RGB").tobytes()
    assert read_split_samples(synth_shards, "val", set()) == {}
    with pytest.raises(KeyError, match=r"image ids \[999999\] not found in the 'val' shards"):
        read_split_samples(synth_shards, "val", {ids[0], 999999})
