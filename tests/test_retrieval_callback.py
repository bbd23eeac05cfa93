"""RetrievalEvalCallback.evaluate on hand-made evaluation sets."""

import numpy as np
import torch

from callbacks import RetrievalEvalCallback
from lightning_glue.eval_set import EvalSet
from mmai.evaluation.metrics import evaluate_retrieval


def _eval_set(num_images=40, captions_per_image=3, seed=0, times=True) -> EvalSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, 16, generator=generator), dim=1)
    owner = torch.arange(num_images).repeat_interleave(captions_per_image)
    texts = torch.nn.functional.normalize(images[owner] + 0.9 * torch.randn(len(owner), 16, generator=generator), dim=1)
    image_ids = torch.arange(1, num_images + 1)
    class_ids = image_ids % 5
    stamps = torch.arange(num_images, dtype=torch.float64) * 600 if times else torch.full((num_images,), float("nan"))
    return EvalSet(images, image_ids, class_ids, stamps, torch.zeros(num_images), torch.zeros(num_images),
                   ["lake"] * num_images, texts, image_ids[owner], class_ids[owner], ["c"] * len(owner))


def test_gar_with_alpha_one_reproduces_exact_stage1_recall():
    data = _eval_set()
    callback = RetrievalEvalCallback(candidates=20, index_kind="flat", gar_alpha=1.0)
    metrics = callback.evaluate(data)
    exact = evaluate_retrieval(data.image_embeddings, data.image_ids, data.class_ids, data.text_embeddings,
                               data.text_image_ids, data.text_class_ids, directions=("t2i",))
    for key, value in exact.items():
        assert metrics[f"gar/{key}"] == value, key
    assert metrics["graph/nodes"] == 40 and metrics["graph/temporal_edges"] > 0


def test_gallery_without_times_builds_a_semantic_only_graph():
    # semantic_edges=True: the default "burst" mode builds no semantic edges (issue 19), so ask for them
    metrics = RetrievalEvalCallback(candidates=10, index_kind="flat", semantic_edges=True).evaluate(
        _eval_set(times=False))
    assert metrics["graph/temporal_edges"] == 0 and metrics["graph/episodes"] == 40
    assert 0.0 <= metrics["gar/t2i/instance/R@10"] <= 1.0 and metrics["gar/latency_ms"] > 0


def test_default_gar_is_the_burst_mode_on_a_temporal_only_graph_and_legacy_stays_available():
    data = _eval_set()
    burst = RetrievalEvalCallback(candidates=20, index_kind="flat")
    assert burst.gar_mode == "burst" and burst.graph_options["semantic_edges"] is False
    metrics = burst.evaluate(data)
    assert metrics["graph/semantic_edges"] == 0 and metrics["graph/temporal_edges"] > 0
    legacy = RetrievalEvalCallback(candidates=20, index_kind="flat", gar_mode="legacy", gar_seeds=0)
    assert legacy.graph_options["semantic_edges"] is True
    assert 0.0 <= legacy.evaluate(data)["gar/t2i/instance/R@10"] <= 1.0
    with pytest.raises(ValueError, match="gar_mode must be one of"):
        RetrievalEvalCallback(gar_mode="hipporag")


def test_burst_rule_brings_a_hard_photo_of_the_captions_sighting_into_the_top_10():
    """Image 0 (clear) and 1 (hard, 30 s later) are one sighting; 1 has the worst cosine to 0's caption."""
    import dataclasses

    data = _eval_set(num_images=40, captions_per_image=1)
    times = torch.arange(40, dtype=torch.float64) * 5 * 3600  # no other two images within an hour
    times[1] = 30.0
    images = data.image_embeddings.clone()
    texts = data.text_embeddings.clone()
    texts[0] = images[0]
    images[1] = -images[0]
    data = dataclasses.replace(data, image_embeddings=images, text_embeddings=texts, timestamps=times,
                               sighting_ids=torch.tensor([0, 0, *range(1, 39)]),
                               conditions=["clear", "blur", *["clear"] * 38])
    metrics = RetrievalEvalCallback(candidates=20, index_kind="flat", per_query=False).evaluate(data)
    assert metrics["probe/burst/queries"] == 1
    assert metrics["probe/burst/stage1/R@10"] == 0.0 and metrics["probe/burst/gar/R@10"] == 1.0
    assert metrics["probe/burst/gar_control/R@10"] == 0.0


# ---------------------------------------------------------------------- small val galleries in `mmai fit`
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fit_helpers import tiny_args  # noqa: E402


def _tiny_shards(root: Path, images: int) -> Path:
    from mmai.data.shards import write_shards
    from mmai.data.synth import synthesize

    synthesize(root / "synth", classes=8, images=images, image_size=64, audio=False, workers=1, progress=False)
    write_shards(root / "synth", root / "shards", samples_per_shard=8, progress=False)
    return root / "shards"


def test_a_gallery_smaller_than_the_largest_k_is_refused_with_what_to_change():
    callback = RetrievalEvalCallback(candidates=20, index_kind="flat")
    expected = r"val gallery has 5 image\(s\).*ks=\(1, 5, 10\).*smaller ks.*bigger val split"
    with pytest.raises(ValueError, match=expected):
        callback.check_gallery(5)
    callback.check_gallery(10)


@pytest.mark.slow
def test_fit_with_a_small_val_split_stops_at_setup_before_training(tmp_path):
    from mmai_apps.lightning_cli import cli_main

    shards = _tiny_shards(tmp_path, images=24)  # val: 6 images
    with pytest.raises(ValueError, match=r"val gallery has 6 image\(s\)"):
        cli_main(["fit", *tiny_args(shards, tmp_path / "runs", "--trainer.max_epochs", "1",
                                    "--trainer.limit_train_batches", "2")])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # refused before any step: nothing to lose


def _blank_one_val_image(shards: Path) -> None:
    """Zero the bytes of one val JPEG (same size): it fails to decode and the gathered gallery shrinks."""
    shard = sorted(shards.glob("val-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    first_jpg = next(i for i, (member, _) in enumerate(members) if member.name.endswith(".jpg"))
    member, data = members[first_jpg]
    members[first_jpg] = (member, b"\0" * len(data))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.slow
def test_an_evaluation_error_at_epoch_end_saves_the_weights_first(tmp_path):
    import torch

    from mmai_apps.lightning_cli import cli_main

    shards = _tiny_shards(tmp_path, images=40)  # val: 10 images, exactly max(ks) ...
    _blank_one_val_image(shards)  # ... until one fails to decode at run time
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["splits"]["val"]["shards"]:  # as if written that way: the shard check passes
        data = (shards / shard["file"]).read_bytes()
        shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (shards / "manifest.json").write_text(json.dumps(manifest))
    expected = r"val evaluation scored 9 images .* lists 10 .* weights are saved in"
    with pytest.raises(RuntimeError, match=expected) as error:
        cli_main(["fit", *tiny_args(shards, tmp_path / "runs", "--trainer.max_epochs", "1",
                                    "--trainer.limit_train_batches", "2")])
    saved = sorted((tmp_path / "runs" / "checkpoints").glob("eval-failed-epoch=0-step=*.ckpt"))
    assert len(saved) == 1 and str(saved[0]) in str(error.value)
    state = torch.load(saved[0], weights_only=False)
    assert state["global_step"] == 2 and "model.queue.image_queue" in state["state_dict"]


def test_a_rerank_k_beyond_the_candidates_is_warned_about_once_with_both_numbers():
    """--retrieval.rerank_k 64 on a 30-image gallery re-ranks 30: say so, once, not silently."""
    import warnings

    seen = []

    class Stop(Exception):
        pass

    def two_stage(data, k, **kwargs):  # the re-ranker's two_stage: here only what K it is given
        seen.append(k)
        raise Stop

    callback = RetrievalEvalCallback(candidates=100, index_kind="flat", rerank_k=64)
    data = _eval_set(num_images=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises(Stop):
                callback._two_stage(data, two_stage, 30, {})
    assert seen == [30, 30]
    messages = [str(w.message) for w in caught if "rerank_k" in str(w.message)]
    assert len(messages) == 1 and "64" in messages[0] and "30" in messages[0]


def test_the_top_down_row_is_exact_at_mass_one_and_scores_less_below_it():
    data = _eval_set(num_images=120)
    exact = evaluate_retrieval(data.image_embeddings, data.image_ids, data.class_ids, data.text_embeddings,
                               data.text_image_ids, data.text_class_ids, directions=("t2i",))
    metrics = RetrievalEvalCallback(candidates=20, index_kind="flat", top_down=True, top_down_mass=1.0).evaluate(data)
    for key, value in exact.items():
        assert metrics[f"top_down/{key}"] == value, key
    assert metrics["top_down/fraction_scored"] == 1.0 and metrics["top_down/descended"] == 0.0
    callback = RetrievalEvalCallback(candidates=20, index_kind="flat", top_down=True, top_down_mass=0.5,
                                     top_down_entropy_stop=0.0)
    metrics = callback.evaluate(data)
    assert 0 < metrics["top_down/fraction_scored"] < 1 and metrics["top_down/descended"] == 1.0
    assert 0 <= metrics["top_down/entropy_auroc/stage1_miss@1"] <= 1 and metrics["top_down/latency_ms"] > 0
    assert callback.outcomes["top_down/t2i/class/hit@10"].shape == (360,)  # per query, paired with stage1's
    assert "top_down/t2i/instance/R@1" not in RetrievalEvalCallback(candidates=20, index_kind="flat").evaluate(data)
