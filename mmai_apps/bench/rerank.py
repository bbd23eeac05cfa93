"""Two-stage latency per query against K, with cached patch tokens and with re-encoding.

One process, random tensors shaped like the tiny CPU profile, every comparison side by side:

* **stage 1** — one caption embedding against the gallery's ``(G, E)`` unit embeddings: matmul +
  top-K (:func:`mmai.retrieval.two_stage.stage1_topk`), single query.
* **stage 2, cached** — gather the K candidates' cached patch tokens ``(K, N, Dv)`` and score them
  in one batch with :meth:`mmai.reranker.fusion.FusionReranker.score_candidates`, then re-order
  (:func:`mmai.retrieval.two_stage.rerank_topk`).
* **stage 2, re-encode** — the same, but the K candidate images ``(K, 3, S, S)`` are first
  re-encoded by a tiny ViT (timm ``vit_tiny_patch16_224``, ``img_size`` 64, ``patch_size`` 8,
  ``depth`` 6, random init) to get their patch tokens; ``encode`` is that ViT forward alone.

Per query and per K the cached and re-encoding paths run alternately on the same candidates;
medians over ``--queries`` queries after ``--warmup`` untimed ones, ``torch.inference_mode``,
wall clock ``time.perf_counter``. Encoding the query caption is not included anywhere (the
stage-1 text tower runs once per query for both paths). A last row runs
:func:`mmai.retrieval.two_stage.evaluate_two_stage` (t2i, K=16) over ``--eval-queries`` captions in batches,
the amortised per-query cost of a validation epoch.

On a shared machine run with ``--threads 1``: with 2 threads and other processes on the cores,
torch's worker threads wait for each other and a K=32 forward measured 10x its 1-thread time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from mmai_apps.bench import BenchResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", type=int, default=3_000, help="gallery images (default 3,000)")
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128], help="candidates re-ranked")
    parser.add_argument("--queries", type=int, default=20, help="timed queries per K (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed queries per K first (default 3)")
    parser.add_argument("--embed-dim", type=int, default=256, help="stage-1 embedding size (default 256)")
    parser.add_argument("--vision-width", type=int, default=192, help="Dv, ViT-tiny width (default 192)")
    parser.add_argument("--image-size", type=int, default=64, help="input side (default 64: 8x8 = 64 patches)")
    parser.add_argument("--text-width", type=int, default=384, help="Dt, MiniLM width (default 384)")
    parser.add_argument("--text-length", type=int, default=24, help="caption tokens L (default 24)")
    parser.add_argument("--hidden-dim", type=int, default=256, help="fusion width (default 256)")
    parser.add_argument("--num-layers", type=int, default=2, help="fusion layers (default 2)")
    parser.add_argument("--eval-queries", type=int, default=200, help="captions in the batched evaluation row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)


def _tiny_vit(image_size: int, width: int):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=image_size,
                             patch_size=8, depth=6, embed_dim=width, num_heads=3).eval()


def _timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, 1e3 * (time.perf_counter() - start)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _measure_k(k: int, args, data: dict, reranker, vit) -> dict:
    from mmai.retrieval.two_stage import rerank_topk, stage1_topk

    def stage2_cached(positions, scores, text, mask):
        candidates = data["patches"][positions[0]]  # (K, N, Dv) from the cache
        logits = reranker.score_candidates(text, mask, candidates)  # (1, K)
        return rerank_topk(positions, scores, k, lambda queries, top: logits)

    def encode(positions):
        images = data["images"][positions[0]].float() / 127.5 - 1.0  # (K, 3, S, S)
        return vit.forward_features(images)[:, vit.num_prefix_tokens:]  # (K, N, Dv)

    def stage2_reencode(positions, scores, text, mask):
        logits = reranker.score_candidates(text, mask, encode(positions))  # (1, K)
        return rerank_topk(positions, scores, k, lambda queries, top: logits)

    times: dict[str, list[float]] = {"stage1": [], "cached": [], "reencode": [], "encode": []}
    for query in range(args.warmup + args.queries):
        text, mask = data["text"][query % len(data["text"])][None], data["mask"][query % len(data["mask"])][None]
        (positions, scores), stage1_ms = _timed(stage1_topk, data["queries"][query][None], data["gallery"], k)
        cached, cached_ms = _timed(stage2_cached, positions, scores, text, mask)
        reencoded, reencode_ms = _timed(stage2_reencode, positions, scores, text, mask)
        _, encode_ms = _timed(encode, positions)
        if query >= args.warmup:
            for name, value in (("stage1", stage1_ms), ("cached", cached_ms), ("reencode", reencode_ms),
                                ("encode", encode_ms)):
                times[name].append(value)
        assert cached.shape == reencoded.shape == (1, k)
    stage1, cached, reencode = _median(times["stage1"]), _median(times["cached"]), _median(times["reencode"])
    return {"K": k, "stage1_ms": stage1, "stage2_cached_ms": cached, "stage2_reencode_ms": reencode,
            "encode_only_ms": _median(times["encode"]), "total_cached_ms": stage1 + cached,
            "total_reencode_ms": stage1 + reencode, "reencode_over_cached": reencode / cached}


def _evaluation_row(args, data: dict, reranker) -> dict:
    import torch

    from mmai.retrieval.two_stage import evaluate_two_stage

    count = min(args.eval_queries, args.gallery)
    image_ids, owners = torch.arange(args.gallery), torch.arange(count)  # caption q describes image q
    result = evaluate_two_stage(
        reranker, data["patches"], data["text"][:count], data["mask"][:count], data["gallery"],
        data["queries"][:count], image_ids, image_ids % 200, owners, owners % 200, k=16, directions=("t2i",),
        progress=False)
    return {"K": "16 (evaluate_two_stage, batched)", "stage1_ms": result.latency_ms["stage1"],
            "stage2_cached_ms": result.latency_ms["stage2"], "total_cached_ms": result.latency_ms["stage1"]
            + result.latency_ms["stage2"]}


def _data(args) -> dict:
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(args.seed)
    gallery = F.normalize(torch.randn(args.gallery, args.embed_dim, generator=generator), dim=1)  # (G, E)
    queries = F.normalize(gallery[: max(args.eval_queries, args.warmup + args.queries)]
                          + torch.randn(max(args.eval_queries, args.warmup + args.queries), args.embed_dim,
                                        generator=generator), dim=1)  # (Q, E)
    num_patches = (args.image_size // 8) ** 2
    count = len(queries)
    mask = torch.ones(count, args.text_length, dtype=torch.long)
    mask[:, args.text_length * 2 // 3:] = torch.rand(count, args.text_length - args.text_length * 2 // 3,
                                                     generator=generator).lt(0.5).long()
    return {
        "gallery": gallery, "queries": queries,
        "patches": torch.randn(args.gallery, num_patches, args.vision_width, generator=generator),  # (G, N, Dv)
        "images": torch.randint(0, 256, (args.gallery, 3, args.image_size, args.image_size), dtype=torch.uint8,
                                generator=generator),  # (G, 3, S, S) uint8, as the loader ships them
        "text": torch.randn(count, args.text_length, args.text_width, generator=generator),  # (Q, L, Dt)
        "mask": mask,
    }


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from mmai.reranker.fusion import FusionReranker

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = _data(args)
    reranker = FusionReranker(args.text_width, args.vision_width, hidden_dim=args.hidden_dim,
                              num_layers=args.num_layers, num_heads=4).eval()
    vit = _tiny_vit(args.image_size, args.vision_width)
    rows = []
    with torch.inference_mode():
        for k in args.ks:
            rows.append(_measure_k(k, args, data, reranker, vit))
    rows.append(_evaluation_row(args, data, reranker))
    meta = {
        "gallery": args.gallery, "ks": args.ks, "queries_per_k": args.queries, "warmup": args.warmup,
        "embed_dim": args.embed_dim, "patches": data["patches"].shape[1], "vision_width": args.vision_width,
        "text_length": args.text_length, "text_width": args.text_width, "hidden_dim": args.hidden_dim,
        "num_layers": args.num_layers, "num_heads": 4, "threads": threads,
        "fusion_parameters": sum(p.numel() for p in reranker.parameters()),
        "vit_parameters": sum(p.numel() for p in vit.parameters()),
        "eval_queries": min(args.eval_queries, args.gallery), "total_seconds": time.perf_counter() - started,
        "protocol": "single-query medians (ms) after warm-up, cached and re-encoding paths alternating on the "
                    "same candidates; query text encoding excluded; the last row is amortised over batches",
    }
    return BenchResult(rows, meta)
