"""The pointing game, box rescaling and query-word -> part mapping (mmai.reranker.grounding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmai.data.pipeline import image_transform
from mmai.data.synth.captions import PART_ATTRIBUTES, image_captions
from mmai.data.synth.species import build_species
from mmai.reranker.grounding import (
    caption_part,
    chance_level,
    named_parts,
    part_boxes_tensor,
    point_hits,
    pointing_game,
    rescale_boxes,
    word_part,
)


def peaked(size: int, row: int, col: int) -> torch.Tensor:
    heatmap = torch.rand(size, size, generator=torch.Generator().manual_seed(row * size + col)) * 0.5
    heatmap[row, col] = 1.0
    return heatmap


def test_pointing_game_on_hand_made_heatmaps_with_known_maxima():
    heatmaps = torch.stack([peaked(16, 3, 4), peaked(16, 10, 10), peaked(16, 0, 15), peaked(16, 8, 8)])
    boxes = torch.tensor([
        [2.0, 1.0, 4.0, 4.0],  # (col 4.5, row 3.5) inside x 2..6, y 1..5: hit
        [0.0, 0.0, 8.0, 8.0],  # (10.5, 10.5) outside: miss
        [14.0, 0.0, 2.0, 2.0],  # (15.5, 0.5) inside the corner box: hit
        [float("nan")] * 4,  # part absent: skipped
    ])
    assert point_hits(heatmaps[:3], boxes[:3]).tolist() == [True, False, True]
    assert pointing_game(heatmaps, boxes) == pytest.approx(2 / 3)
    assert pointing_game(heatmaps[1:2], boxes[1:2], tolerance=3.0) == 1.0  # 10.5 <= 8 + 3
    assert math.isnan(pointing_game(heatmaps[3:], boxes[3:]))


def test_chance_level_is_the_mean_box_fraction_of_the_image():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 4.0, 2.0], [12.0, 12.0, 8.0, 8.0]])  # last: 4x4 inside
    assert chance_level(boxes, 16) == pytest.approx((64 + 8 + 16) / 256 / 3)


def bright_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()


@pytest.mark.parametrize("original_size, box", [
    ((128, 128), (22.0, 27.0, 14.0, 12.0)),  # the synthetic data: square 128 px
    ((160, 120), (100.0, 30.0, 40.0, 50.0)),  # landscape: resized to 85 x 64, cropped 10 px on the left
    ((120, 200), (10.0, 60.0, 50.0, 40.0)),  # portrait: resized to 64 x 106, cropped 21 px at the top
])
def test_rescaled_boxes_match_the_evaluation_transform(original_size, box):
    width, height = original_size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x, y, w, h = map(int, box)
    canvas[y:y + h, x:x + w] = 255
    transformed = image_transform(64, train=False)(Image.fromarray(canvas))  # (3, 64, 64) uint8
    expected = bright_box(transformed[0].numpy() > 127)
    torch.testing.assert_close(rescale_boxes(torch.tensor(box), original_size, 64),
                               torch.tensor(expected, dtype=torch.float32), atol=1.0, rtol=0.0)


def test_boxes_cut_by_the_centre_crop_are_clipped():
    boxes = rescale_boxes([[0.0, 10.0, 12.0, 20.0], [150.0, 0.0, 10.0, 10.0]], (200, 100), 50)  # crop drops x < 25
    assert boxes[0].tolist() == [0.0, 5.0, 0.0, 10.0]  # entirely cut off: zero width, skipped by pointing_game
    assert boxes[1].tolist() == pytest.approx([50.0, 0.0, 0.0, 5.0])


def test_query_words_map_to_parts():
    assert caption_part("this bird has a long curved beak and a red crown") == "bill"
    assert named_parts("this bird has a long curved beak and a red crown") == ["bill", "head"]
    assert caption_part("a small bird with a blue cap") == "head"
    assert caption_part("it has white wing bars and a white eyering") == "wing"
    assert caption_part("a bird with a long tail that is yellow") == "tail"
    assert caption_part("a bird with a bright yellow belly") is None
    assert word_part("Beak") == "bill" and word_part("wings") == "wing" and word_part("belly") is None


def test_synthetic_captions_name_only_parts_that_are_visible():
    rng = np.random.default_rng(0)
    for species in build_species(12, seed=0):
        for hidden in ({"bill"}, {"head", "wing"}, {"tail"}, set()):
            for caption in image_captions(species.attributes, rng, count=10, hidden_parts=hidden):
                assert not set(named_parts(caption)) & hidden, caption
    assert set(PART_ATTRIBUTES) == {"bill", "head", "wing", "tail"}


def test_part_boxes_from_shard_json():
    boxes = part_boxes_tensor({"bill": [22.5, 27.1, 14.3, 11.6], "wing": [53.2, 28.8, 48.0, 19.5]})
    assert boxes.shape == (4, 4)
    assert boxes[0].tolist() == pytest.approx([22.5, 27.1, 14.3, 11.6])
    assert torch.isnan(boxes[1]).all() and torch.isnan(boxes[3]).all()
