"""RetrievalEvalCallback.evaluate on hand-made evaluation sets."""

import numpy as np
import torch

from callbacks import RetrievalEvalCallback
from lightning_modules.eval_set import EvalSet
from mmai.metrics import evaluate_retrieval


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
    metrics = RetrievalEvalCallback(candidates=10, index_kind="flat").evaluate(_eval_set(times=False))
    assert metrics["graph/temporal_edges"] == 0 and metrics["graph/episodes"] == 40
    assert 0.0 <= metrics["gar/t2i/instance/R@10"] <= 1.0 and metrics["gar/latency_ms"] > 0
