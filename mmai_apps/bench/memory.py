"""Personal memory at scale: ingest throughput and search latency (p50/p95) at 10,000 and 117,880 memories.

Everything runs through :class:`~mmai.memory.personal.PersonalMemory` (Chroma + FAISS + episodic
graph) with a tiny *random* re-ranker checkpoint (``--checkpoint`` for a trained one). Protocol:

1. **Files.** ``--files`` synthetic photos (procedural birds, 64 px JPEGs, the diary's times and
   places) are ingested end to end by ``PersonalMemory.ingest``: hash, decode, embed with the
   tiny model, copy the media file, write Chroma, journal, FAISS. That is the honest
   *ingest (files)* rate; the encoder alone is timed on the same photos (*encoder only*).
2. **Fill.** Embedding 117,880 files this way would mostly time the synthetic-data writer, so
   the memory is grown to each size with *precomputed* embeddings: the photos' embeddings plus
   small noise (so every memory is distinct), times spread over 2021-2023 and the diary's places,
   each pointing at one of the ingested photos as its media file (so re-ranking reads real
   images). These go straight into the Chroma collection in batches (*store fill*); the FAISS
   files are then deleted and the memory reopened, which rebuilds the index from Chroma (HNSW
   from 20,000 memories; *FAISS index rebuilt*), and the episodic graph is built (*graph build*).
   The meta says so.
3. **Search.** ``--queries`` synthetic captions, each timed end to end (query encoding, FAISS or
   Chroma's filtered search, metadata reads, re-ranker, GAR), after ``--warmup`` untimed ones,
   in the modes of :data:`MODES`: stage 1 alone, with filters (``year`` and ``place``), with the
   fusion re-ranker (its ``rerank_k`` image candidates re-encoded and scored), with GAR
   (personalised PageRank over the graph, explanations and related memories), and all together.

4. **Compare** (``--compare``). Each mode is timed again on the same queries with
   ``SearchOptions(reference=True, ppr="global")``: the search before the in-memory table (Chroma's
   filtered HNSW, global power-iteration PageRank, every GAR candidate explained, every image
   re-encoded), in the same process, right after the fast path (``--ppr``, default ``"local"``).
5. **Check** (``--check-queries N``). On N further captions, per mode: are the top-k id sets of the
   fast and the reference path equal; for GAR, of local and global PageRank; for the filtered stage
   1, of each path and a brute-force NumPy scan of every record read from Chroma.

Every fill memory is its own entry in the re-ranker's patch cache (keyed by memory), so the cache
helps only when a memory comes back in a later query, as it would for distinct photos; its hit rate
is reported. The machine is shared (other processes may hold cores), so compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmai.config import BiEncoderConfig, RerankerConfig, TextConfig, VisionConfig
from mmai_apps.bench import BenchResult

#: search modes: name -> SearchOptions fields, and "filters": whether the run's Filters apply.
MODES: dict[str, dict[str, Any]] = {
    "stage 1": {},
    "stage 1 + filters": {"filters": True},
    "re-rank": {"rerank": True},
    "GAR": {"gar": True},
    "re-rank + GAR + filters": {"rerank": True, "gar": True, "filters": True},
}
#: a tiny random bi-encoder (32 px images, 16 patches, 64-D space) and fusion head.
TINY_BI_ENCODER = BiEncoderConfig(
    vision=VisionConfig(model_name="vit_tiny_patch16_224", pretrained=False, image_size=32,
                        model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}),
    text=TextConfig(model_name="sentence-transformers/all-MiniLM-L6-v2", pretrained=False, max_length=24,
                    config_overrides={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                      "intermediate_size": 64}),
    embed_dim=64, queue_size=64)
TINY_RERANKER = RerankerConfig(hidden_dim=32, num_layers=2, num_heads=2, dropout=0.0)
FIRST_TIME, LAST_TIME = 1609459200.0, 1704067200.0  # 2021-01-01 .. 2024-01-01 UTC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 117_880],
                        help="memories (default 10000 117880)")
    parser.add_argument("--files", type=int, default=1_000, help="photos ingested end to end per size (default 1,000)")
    parser.add_argument("--queries", type=int, default=20, help="timed queries per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed queries per mode first (default 2)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a re-ranker .ckpt (default: a tiny random one written to the work folder)")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the noise on fill embeddings (default 0.05)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppr", choices=("local", "global"), default="local",
                        help="GAR's PageRank in the timed searches (default local: push from the seeds)")
    parser.add_argument("--compare", action="store_true",
                        help="also time the reference path (SearchOptions(reference=True, ppr='global'): the search "
                             "before the in-memory table) in the same run, mode by mode")
    parser.add_argument("--check-queries", type=int, default=0,
                        help="queries (after the timed ones) whose top-k id sets are compared: fast vs reference, local "
                             "vs global PageRank, filtered stage 1 vs brute force (default 0: none)")


# ---------------------------------------------------------------------- inputs
def write_tiny_reranker(path: Path, seed: int = 0) -> Path:
    """A tiny random re-ranker checkpoint in Lightning's layout, written without Lightning."""
    from mmai.model.bi_encoder import BiEncoder
    from mmai.checkpoint import build_reranker

    torch.manual_seed(seed)
    bi_encoder = BiEncoder.from_config(TINY_BI_ENCODER, pretrained=False)
    reranker = build_reranker(TINY_RERANKER, bi_encoder)
    state = {f"bi_encoder.{key}": value for key, value in bi_encoder.state_dict().items()}
    state.update({f"reranker.{key}": value for key, value in reranker.state_dict().items()})
    hyper_parameters = {"bi_encoder": TINY_BI_ENCODER.to_dict(), "reranker": TINY_RERANKER.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters}, path)
    return path


def synthetic_photos(folder: Path, count: int, seed: int) -> tuple[list[Path], dict[str, dict], list[str]]:
    """``count`` synthetic photos, their diary overrides (time, place) and the captions."""
    from mmai.data.synth import synthesize

    synthesize(folder, classes=min(200, max(4, count // 10)), images=count, image_size=64, audio=False,
               seed=seed, progress=True)
    images = folder / "CUB_200_2011" / "images"
    relpaths = dict(line.split() for line in (folder / "CUB_200_2011" / "images.txt").read_text().splitlines())
    overrides, photos = {}, []
    for line in (folder / "mmai_extras" / "episodes.jsonl").read_text().splitlines():
        entry = json.loads(line)
        path = (images / relpaths[str(entry["image_id"])]).absolute()
        overrides[str(path)] = {"time": entry["timestamp"], "place": entry["place"]}
        photos.append(path)
    captions = [text.splitlines()[0] for text in
                (p.read_text() for p in sorted((folder / "cvpr2016_cub" / "text_c10").rglob("*.txt")))]
    return photos, overrides, captions


# ---------------------------------------------------------------------- measurements
def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_encoder(memory, photos: list[Path], batch_size: int = 64) -> float:
    """Images per second of the stage-1 image tower alone (decode excluded)."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in photos]
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        memory.encoder.embed_images(images[first:first + batch_size])
    return len(images) / (time.perf_counter() - start)


def fill_records(memory, target: int, rng: np.random.Generator, noise: float) -> int:
    """Grow ``memory`` to ``target`` memories with noisy copies of its photos' embeddings.

    Returns the number of records written (straight into the Chroma collection).
    """
    seeds = memory.store.all_embeddings(progress=False)
    places = sorted({m["place"] for m in seeds.metadatas if m.get("place")})
    missing = target - len(seeds.ids)
    batch = memory.store.max_batch_size
    for first in range(0, missing, batch):
        count = min(batch, missing - first)
        source = rng.integers(0, len(seeds.ids), count)
        vectors = seeds.embeddings[source] + noise * rng.normal(size=(count, seeds.embeddings.shape[1]))  # (n, E)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        times = rng.uniform(FIRST_TIME, LAST_TIME, count)
        ids = [f"{rng.integers(0, 2**63):016x}{first + i:016x}" for i in range(count)]
        metadatas = [{
            "timestamp": float(when), "year": time.gmtime(when).tm_year,
            "place": places[int(rng.integers(len(places)))],
            "modality": "image", "source_path": seeds.metadatas[s].get("source_path", ""),
            "media_file": seeds.metadatas[s]["media_file"], "time_source": "benchmark fill",
        } for when, s in zip(times, source.tolist())]
        memory.store.collection.upsert(ids=ids, embeddings=vectors, metadatas=metadatas)
    return max(missing, 0)


def reopen_without_index(memory, root: Path, checkpoint: Path):
    """Close ``memory``, drop its FAISS files and reopen it: the index is rebuilt from Chroma (timed).

    Returns the reopened memory and the row of the rebuild.
    """
    from mmai.memory.personal import PersonalMemory

    memory.close()
    for name in ("index.npz", "index.manifest.json"):
        (root / name).unlink(missing_ok=True)
    start = time.perf_counter()
    memory = PersonalMemory(root, checkpoint, progress=False)
    seconds = time.perf_counter() - start
    count = len(memory.index)
    return memory, {"stage": f"FAISS index rebuilt from Chroma ({memory.index.kind}) on open", "memories": count,
                    "per_second": count / seconds, "seconds": seconds}


def search_options(mode: dict[str, Any], **settings: Any):
    """The :class:`~mmai.memory.search.SearchOptions` of a mode, with ``settings`` (e.g. ``ppr``)."""
    from mmai.memory.search import SearchOptions

    return SearchOptions(**{key: value for key, value in mode.items() if key != "filters"}, **settings)


def time_searches(memory, queries: list[str], mode: dict[str, Any], filters, k: int, warmup: int,
                  **settings: Any) -> list[float]:
    """Milliseconds per query, end to end, for one search mode (``filters``: a
    :class:`~mmai.memory.filters.Filters`, used when the mode says so; ``settings``: more
    :class:`~mmai.memory.search.SearchOptions` fields)."""
    options = search_options(mode, **settings)
    chosen = filters if mode.get("filters") else None
    for query in queries[:warmup]:
        memory.search(query, k, chosen, options)
    latencies = []
    for query in queries[warmup:]:
        start = time.perf_counter()
        memory.search(query, k, chosen, options)
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def brute_force_filtered(memory, records, filters, query: str, k: int) -> set[str]:
    """The top-``k`` ids under ``filters`` (year and place) by an exact scan in plain NumPy over
    every record read from Chroma, independent of the search code."""
    places = set(memory.records.place_values(filters.place))
    keep = np.array([m.get("year") == filters.year and m.get("place") in places for m in records.metadatas])
    vector = memory.encoder.embed_texts([query])[0].numpy()
    rows = np.flatnonzero(keep)
    scores = records.embeddings[rows] @ vector
    return {records.ids[int(rows[i])] for i in np.argsort(-scores, kind="stable")[:k]}


def check_queries(memory, queries: list[str], filters, k: int, ppr: str) -> list[dict[str, Any]]:
    """Per mode, on how many queries two ways of searching return the same top-``k`` id set."""
    records = memory.store.all_embeddings(progress=False)
    brute = {query: brute_force_filtered(memory, records, filters, query, k) for query in queries}
    rows = []
    for name, mode in MODES.items():
        chosen = filters if mode.get("filters") else None
        ids = lambda query, **settings: {hit.id for hit in memory.search(query, k, chosen,  # noqa: E731
                                                                          search_options(mode, **settings))}
        counts = {"fast = reference": 0}
        if mode.get("gar"):
            counts["local = global PageRank"] = 0
        if mode.get("filters") and not mode.get("gar") and not mode.get("rerank"):
            counts.update({"fast = brute force": 0, "reference = brute force": 0})
        for query in queries:
            fast, reference = ids(query, ppr=ppr), ids(query, reference=True, ppr="global")
            counts["fast = reference"] += fast == reference
            if "local = global PageRank" in counts:
                counts["local = global PageRank"] += ids(query, ppr="local") == ids(query, ppr="global")
            if "fast = brute force" in counts:
                counts["fast = brute force"] += fast == brute[query]
                counts["reference = brute force"] += reference == brute[query]
        for check, equal in counts.items():
            rows.append({"stage": f"check: {name}: {check} (top-{k} sets)", "memories": len(records.ids),
                         "equal": f"{equal}/{len(queries)}"})
            print(f"check {name:<26} {check:<26} {equal}/{len(queries)}", flush=True)
    return rows


def bench_size(size: int, args: argparse.Namespace, work: Path, checkpoint: Path,
               photos: list[Path], overrides: dict, captions: list[str]) -> list[dict[str, Any]]:
    """All rows of one memory size."""
    from mmai.memory.filters import Filters
    from mmai.memory.personal import PersonalMemory

    rng = np.random.default_rng([args.seed, size])
    root = work / f"memory_{size}"
    memory = PersonalMemory(root, checkpoint, progress=False)
    files = photos[: min(args.files, size)]
    report = memory.ingest(files, overrides=overrides, progress=False)
    rows = [{"size": size, "stage": "ingest (files, end to end)", "memories": len(report.added),
             "per_second": len(report.added) / report.seconds, "seconds": report.seconds}]
    rows.append({"size": size, "stage": "encoder only (image tower)", "memories": len(files),
                 "per_second": measure_encoder(memory, files), "seconds": None})
    start = time.perf_counter()
    written = fill_records(memory, size, rng, args.noise)
    seconds = time.perf_counter() - start
    rows.append({"size": size, "stage": "store fill (precomputed embeddings -> Chroma)", "memories": written,
                 "per_second": written / seconds if written else None, "seconds": seconds})
    memory, index_row = reopen_without_index(memory, root, checkpoint)
    rows.append({"size": size, **index_row})
    start = time.perf_counter()
    graph = memory.graph()
    seconds = time.perf_counter() - start
    rows.append({"size": size, "stage": "episodic graph build", "memories": len(graph),
                 "per_second": len(graph) / seconds, "seconds": seconds})
    filters = Filters(year=2022, place=memory.known_places()[0])
    order = rng.permutation(len(captions))
    queries = [captions[i] for i in order[: args.queries + args.warmup]]
    for name, mode in MODES.items():
        settings = {"ppr": args.ppr}
        latencies = time_searches(memory, queries, mode, filters, args.k, args.warmup, **settings)
        row = {"size": size, "stage": f"search: {name}", "memories": memory.store.count(),
               "p50_ms": statistics.median(latencies), "p95_ms": _percentile(latencies, 95), "queries": len(latencies)}
        line = f"size {size:>7}: {name:<26} p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms"
        if args.compare:
            reference = time_searches(memory, queries, mode, filters, args.k, args.warmup, reference=True, ppr="global")
            row.update({"reference_p50_ms": statistics.median(reference),
                        "reference_p95_ms": _percentile(reference, 95)})
            line += f"   reference p50 {row['reference_p50_ms']:8.1f} ms  p95 {row['reference_p95_ms']:8.1f} ms"
        rows.append(row)
        print(line, flush=True)
    cache = memory.searcher.patch_cache
    rows.append({"size": size, "stage": "re-ranker patch cache (timed fast searches)", "memories": len(cache._entries),
                 "hit_rate": f"{cache.hits}/{cache.hits + cache.misses}"})
    if args.check_queries:
        start = args.queries + args.warmup
        checked = [captions[i] for i in order[start:start + args.check_queries]]
        if len(checked) < args.check_queries:
            raise ValueError(f"--check-queries {args.check_queries}: only {len(checked)} captions left after the "
                             "timed ones; lower it or raise --files")
        rows += [{"size": size, **row} for row in check_queries(memory, checked, filters, args.k, args.ppr)]
    memory.close()
    return rows


def run(args: argparse.Namespace) -> BenchResult:
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="mmai-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = args.checkpoint or write_tiny_reranker(work / "tiny_reranker.ckpt", args.seed)
        photos, overrides, captions = synthetic_photos(work / "synth", max(args.files, args.queries + args.warmup),
                                                       args.seed)
        rows = []
        for size in args.sizes:
            rows += bench_size(size, args, work, checkpoint, photos, overrides, captions)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else "tiny random re-ranker (32 px ViT, 1-layer text, "
                                                                    "64-D space, 2 fusion layers)",
        "files_ingested_end_to_end": args.files,
        "fill": ("memories beyond the ingested files are precomputed embeddings (ingested photos' vectors + "
                 f"N(0, {args.noise}) noise) written straight to Chroma; FAISS then rebuilt from Chroma on reopening; "
                 "they reuse the ingested photos as media files"),
        "filters": "year=2022 and place=<first known place>",
        "queries": f"{args.queries} synthetic captions per mode after {args.warmup} warm-up; latency is end to end "
                   "(query encoding included)",
        "k": args.k, "torch_threads": torch.get_num_threads(),
        "fast path": (f"SearchOptions defaults with ppr={args.ppr!r}: filters as an in-memory table mask + exact scan, "
                      "GAR explaining only the returned hits, re-ranker patch tokens cached per memory (LRU)"),
        "reference": ("SearchOptions(reference=True, ppr='global'), run in the same process: Chroma's filtered HNSW, "
                      "global power-iteration PageRank, every GAR candidate explained, every image re-encoded")
        if args.compare else "not run",
    }
    return BenchResult(rows=rows, meta=meta)
