"""What the re-ranker binds with: grounding targets from part boxes, the keyed agreement attention
with patch positions, and the padding trim, each on a case with a known answer."""

import math

import pytest
import torch

from mmai.reranker.fusion import FusionReranker, grid_positions
from mmai.reranker.grounding import PARTS, grounding_loss, part_patch_masks, token_parts


def test_token_parts_name_the_part_of_nouns_and_of_their_colours():
    tokens = ["[CLS]", "a", "bird", "with", "an", "orange", "beak", ",", "wings", "that", "are", "grey", "and",
              "a", "red", "crown", "[SEP]"]
    parts = token_parts(tokens)
    named = {tokens[i]: PARTS[p] for i, p in enumerate(parts) if p >= 0}
    assert named == {"orange": "bill", "beak": "bill", "wings": "wing", "grey": "wing", "red": "head",
                     "crown": "head"}
    assert parts[0] == parts[2] == -1
    # a colour with no part noun near it names nothing ("a grey bird")
    assert token_parts(["a", "grey", "bird", "with", "a", "long", "tail"]) == [-1, -1, -1, -1, -1, -1, 3]


def test_part_patch_masks_select_the_cells_under_the_box():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0],      # bill: the top-left quarter of a 32-px image
                          [16.0, 16.0, 16.0, 16.0],    # head: bottom-right quarter
                          [float("nan")] * 4,          # wing: missing
                          [8.0, 0.0, 16.0, 8.0]])      # tail: straddles the two top cells
    masks = part_patch_masks(boxes, original_size=32, image_size=32, patches=4)  # a 2 x 2 grid
    assert masks.tolist() == [[True, False, False, False], [False, False, False, True],
                              [False, False, False, False], [True, True, False, False]]
    # the image is resized before cropping: a 64-px original maps onto the same cells
    assert part_patch_masks(boxes * 2, original_size=64, image_size=32, patches=4).tolist() == masks.tolist()


def test_grounding_loss_is_minus_log_of_the_mass_inside_the_box():
    weights = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]])  # (1 pair, 2 tokens, 4 patches)
    parts = torch.tensor([[0, -1]])  # token 0 names the bill, token 1 nothing
    masks = torch.tensor([[[True, True, False, False], [False] * 4, [False] * 4, [False] * 4]])
    assert grounding_loss(weights, parts, masks).item() == pytest.approx(-math.log(0.75))
    none = torch.tensor([[-1, -1]])
    assert grounding_loss(weights, none, masks).item() == 0.0


def _reranker(**kwargs):
    torch.manual_seed(0)
    return FusionReranker(text_width=8, vision_width=6, hidden_dim=8, num_layers=0, num_heads=2, head="agreement",
                          **kwargs).eval()


def test_keyed_attention_with_positions_sees_where_a_feature_is():
    text = torch.randn(1, 3, 8)
    mask = torch.ones(1, 3, dtype=torch.long)
    patches = torch.randn(1, 4, 6)
    moved = patches[:, [3, 2, 1, 0]]  # the same features at other places
    cosine = _reranker()
    assert torch.allclose(cosine(text, mask, patches).logits, cosine(text, mask, moved).logits, atol=1e-6)
    keyed = _reranker(agreement_attention="keyed", patch_positions=True)
    assert not torch.allclose(keyed(text, mask, patches).logits, keyed(text, mask, moved).logits, atol=1e-4)
    assert grid_positions(4).shape == (4, 32) and not torch.equal(grid_positions(4)[0], grid_positions(4)[3])
    with pytest.raises(ValueError, match="keyed"):
        _reranker(patch_positions=True)


def test_trimming_padding_leaves_the_logits_unchanged():
    from lightning_modules.reranker import _trim_padding

    model = _reranker(agreement_attention="keyed", patch_positions=True)
    text, patches = torch.randn(2, 6, 8), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    short_text, short_mask = _trim_padding(text, mask)
    assert short_text.shape[1] == 3
    assert torch.allclose(model(text, mask, patches).logits, model(short_text, short_mask, patches).logits, atol=1e-6)


def test_hcl_reduces_to_infonce_and_weights_hard_negatives_on_the_logit_scale():
    from mmai.model.losses import hcl_loss, info_nce

    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    positive = torch.zeros(4, 6, dtype=torch.bool)
    positive[torch.arange(4), torch.arange(4)] = True
    plain = info_nce(query, keys, positive, 0.1)
    assert hcl_loss(query @ keys.T / 0.1, positive, ~positive, 0.0, 0.0, 0.1).item() == pytest.approx(plain.item(), rel=1e-5)
    # beta > 0 up-weights the most similar negatives: the loss grows
    assert hcl_loss(query @ keys.T / 0.1, positive, ~positive, 1.0, 0.0, 0.1) > plain
    # the false-negative correction subtracts tau+ times the positive's mass from the negatives'
    # (then rescales by 1 / (1 - tau+)): with positives that match well, the loss falls
    matched = torch.cat([query, keys[4:]])
    assert (hcl_loss(query @ matched.T / 0.1, positive, ~positive, 0.0, 0.1, 0.1)
            < hcl_loss(query @ matched.T / 0.1, positive, ~positive, 0.0, 0.0, 0.1))
    assert info_nce(query, keys, positive, 0.1, 0.5, hard_negatives="hcl", tau_plus=0.0).item() > 0
