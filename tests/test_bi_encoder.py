"""The stage-1 bi-encoder (mmai.model.bi_encoder) on tiny towers."""

from __future__ import annotations

import math

import pytest
import torch

from mmai.model.bi_encoder import BiEncoder, first_caption_index
from mmai.model.towers import AudioTower, ClipTowers, TextTower, VisionTower

from ddp_helpers import run_on_two_cpu_ranks
from tiny_configs import TINY_BERT, TINY_CLAP, TINY_CLIP, TINY_VIT

torch.set_num_threads(1)



def tiny_bi_encoder(audio: bool = False, embed_dim: int = 32, **kwargs) -> BiEncoder:
    torch.manual_seed(0)
    vision = VisionTower("vit_tiny_patch16_224", image_size=32, model_kwargs=TINY_VIT)
    text = TextTower("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_BERT)
    audio_tower = AudioTower(pretrained=False, config_overrides=TINY_CLAP, max_length_s=0.5) if audio else None
    kwargs.setdefault("queue_size", 8)
    return BiEncoder(vision, text, audio_tower, embed_dim=embed_dim, **kwargs)


def tiny_batch(batch_size: int = 4, captions_per_image: int = 1, audio: bool = False, vocab: tuple = (1000, 5000)):
    generator = torch.Generator().manual_seed(1)
    owner = torch.arange(batch_size).repeat_interleave(captions_per_image)  # (Bt,)
    batch = {
        "image": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "input_ids": torch.randint(*vocab, (len(owner), 8), generator=generator),
        "attention_mask": torch.ones(len(owner), 8, dtype=torch.long),
        "caption_owner": owner,
        "image_id": torch.arange(1, batch_size + 1) * 10,
        "class_id": torch.arange(batch_size) // 2 + 1,
    }
    if audio:
        batch["audio"] = torch.randn(batch_size, 20_000, generator=generator) * 0.1
        batch["has_audio"] = torch.tensor([True, False] + [True] * (batch_size - 2))
    return batch


def train(model: BiEncoder, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        output = model(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.enqueue(output)
        losses.append(output.loss.item())
    return losses


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    batch = tiny_batch()
    in_batch = train(tiny_bi_encoder(queue_size=0, momentum=0.5), batch, steps=8)
    assert in_batch[-1] < 0.5 * in_batch[0]
    with_queue = train(tiny_bi_encoder(momentum=0.5, hard_negative_beta=0.5), batch, steps=10)
    assert with_queue[-1] < 0.8 * with_queue[2], with_queue  # the queue is full from step 2 on


def test_momentum_twins_are_frozen_and_left_out_of_the_optimizer():
    model = tiny_bi_encoder(momentum=0.75)
    twins = {id(p) for name in model.online_names for p in getattr(model, f"{name}_m").parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert twins and not twins & {id(p) for p in trainable}
    assert len(model.trainable_parameters()) == len(trainable)
    online = {name: p.detach().clone() for name, p in model.vision_proj.named_parameters()}
    twin = {name: p.detach().clone() for name, p in model.vision_proj_m.named_parameters()}
    with torch.no_grad():
        for p in model.vision_proj.parameters():
            p.add_(0.5)  # make online and twin differ
    model.train()(tiny_batch())
    for name, p_m in model.vision_proj_m.named_parameters():
        torch.testing.assert_close(p_m, 0.75 * twin[name] + 0.25 * (online[name] + 0.5))
    frozen = {name: p.clone() for name, p in model.vision_proj_m.named_parameters()}
    with torch.no_grad():
        model.eval()(tiny_batch())  # evaluation never moves the twins
    assert all(torch.equal(frozen[name], p) for name, p in model.vision_proj_m.named_parameters())


def test_audio_batches_report_every_loss_term():
    model = tiny_bi_encoder(audio=True)
    output = model.train()(tiny_batch(audio=True))
    assert set(output.losses) == {"i2t", "t2i", "a2t", "t2a", "a2i", "i2a"}
    assert all(math.isfinite(value.item()) for value in output.losses.values())
    assert output.key_valid["audio"].tolist() == [True, False, True, True]
    model.enqueue(output)
    assert model.queue.valid_mask("audio")[:4].tolist() == [True, False, True, True]
    silent = tiny_batch(audio=True)
    silent["has_audio"][:] = False
    output = model(silent)
    assert set(output.losses) == {"i2t", "t2i"}
    output.loss.backward()  # the audio tower still takes part in the graph (DDP needs that)
    assert model.audio_proj.net.weight.grad is not None


def test_enqueue_between_forward_and_backward_is_safe():
    model = tiny_bi_encoder(audio=True, distill_alpha=0.4, hard_negative_beta=0.5, class_positives=True).train()
    batch = tiny_batch(audio=True)
    for _ in range(3):  # the Lightning order: forward, enqueue in training_step, then backward
        output = model(batch)
        model.enqueue(output)
        output.loss.backward()
    assert math.isfinite(output.loss.item()) and model.queue.fill_fraction() == 1.0


def test_several_captions_per_image_and_first_caption_keys():
    model = tiny_bi_encoder(class_positives=True, distill_alpha=0.4).eval()
    batch = tiny_batch(captions_per_image=3)
    with torch.no_grad():
        output = model(batch)
        text_keys = model.encode_momentum(batch)["text"]  # (12, E)
    assert output.text_embeddings.shape == (12, 32) and math.isfinite(output.loss.item())
    assert torch.equal(output.keys["text"], text_keys[[0, 3, 6, 9]])
    model.enqueue(output)
    assert model.queue.image_id_queue[:4].tolist() == [10, 20, 30, 40]
    index, has_caption = first_caption_index(torch.tensor([2, 0, 2]), num_images=3)
    assert index.tolist() == [1, 0, 0] and has_caption.tolist() == [True, False, True]


def test_padding_rows_are_left_out_of_the_loss_and_the_queue():
    model = tiny_bi_encoder().eval()
    batch = tiny_batch(batch_size=3)
    padded = {key: torch.cat([value, value[:1]]) for key, value in batch.items()}  # row 0 repeated ...
    padded["caption_owner"][-1] = 3  # ... as its own image row
    padded["is_pad"] = torch.tensor([False, False, False, True])
    with torch.no_grad():
        reference, output = model(batch), model(padded)
    for name in ("i2t", "t2i"):
        assert output.losses[name].item() == pytest.approx(reference.losses[name].item(), rel=1e-5)
    assert output.key_valid["image"].tolist() == [True, True, True, False]
    model.enqueue(output)
    assert model.queue.valid_mask("text")[:4].tolist() == [True, True, True, False]


def test_temperature_is_learnable_and_clamped():
    model = tiny_bi_encoder()
    assert model.temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        model.temperature.fill_(5.0)
    output = model.train()(tiny_batch())
    assert output.temperature.item() == pytest.approx(0.5)
    output.loss.backward()
    assert model.temperature.grad is not None and model.temperature.grad.item() != 0.0
    with pytest.raises(ValueError, match="temperature_init=0.9 is outside"):
        tiny_bi_encoder(temperature_init=0.9)


def test_embed_dim_mismatch_with_a_checkpoint_is_a_clear_error():
    checkpoint = {f"model.{key}": value for key, value in tiny_bi_encoder(embed_dim=32).state_dict().items()}
    model = tiny_bi_encoder(embed_dim=16)
    with pytest.raises(ValueError, match=r"'vision_proj.net.weight': expected \(16, 64\), found \(32, 64\)"):
        model.check_compatible(checkpoint, prefix="model.")
    with pytest.raises(ValueError, match="trained with embed_dim=32, this model has embed_dim=16"):
        model.load_checkpoint_state(checkpoint, prefix="model.")


def test_checkpoint_round_trip_restores_weights_queue_and_temperature():
    model = tiny_bi_encoder()
    train(model, tiny_batch(), steps=1)
    checkpoint = {f"model.{key}": value for key, value in model.state_dict().items()}
    restored = tiny_bi_encoder()
    restored.load_checkpoint_state(checkpoint, prefix="model.")
    assert restored.queue.fill_fraction() == 0.5
    assert torch.equal(restored.queue.text_queue, model.queue.text_queue)
    assert torch.equal(restored.vision_m.model.pos_embed, model.vision_m.model.pos_embed)
    assert restored.temperature.item() == model.temperature.item()


def test_clip_backbone_reproduces_clip_embeddings_and_trains():
    torch.manual_seed(0)
    clip = ClipTowers(pretrained=False, config_overrides=TINY_CLIP)
    model = BiEncoder(clip=clip, embed_dim=16, queue_size=8, temperature_init=clip.temperature).eval()
    batch = tiny_batch(vocab=(2, 97))
    batch["input_ids"][:, -1] = 98  # end of text
    with torch.no_grad():
        image_embedding, text_embedding = clip(batch["image"], batch["input_ids"], batch["attention_mask"])
        assert torch.equal(model.encode_image(batch["image"])[0], image_embedding)
        assert torch.equal(model.encode_text(batch["input_ids"], batch["attention_mask"])[0], text_embedding)
    losses = train(model, batch, steps=3)
    assert all(math.isfinite(loss) for loss in losses)
    with pytest.raises(ValueError, match="set embed_dim=16"):
        BiEncoder(clip=clip, embed_dim=32)
    with pytest.raises(ValueError, match="needs a vision and a text tower"):
        BiEncoder(vision=None, text=None)


def _ddp_training_steps(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_bi_encoder(audio=True, queue_size=16)
    ddp = DistributedDataParallel(model)  # find_unused_parameters=False: every parameter must get a gradient
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    batch = tiny_batch(audio=True)
    batch["image_id"] = batch["image_id"] + 100 * rank
    for step in range(3):
        if step == 1:
            batch["has_audio"][:] = False  # a batch without audio must not break DDP either
        output = ddp(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.enqueue(output)
    return model.queue.state_dict()


@pytest.mark.slow
def test_ddp_training_steps_on_two_cpu_ranks(tmp_path):
    queues = run_on_two_cpu_ranks(_ddp_training_steps, tmp_path)
    assert queues[0]["image_id_queue"].tolist()[:8] == [10, 20, 30, 40, 110, 120, 130, 140]
    for name in ("image_queue", "text_queue", "audio_queue", "audio_valid_queue", "ptr"):
        assert torch.equal(queues[0][name], queues[1][name]), name
