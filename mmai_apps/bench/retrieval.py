"""Retrieval layer at CUB scale: HNSW vs exact, semantic edges, GAR vs NetworkX, Recall@K vs matmul.

Every comparison is measured side by side in one run on the same machine and synthetic data:

1. **HNSW vs flat** — recall@10 of HNSW against exact IndexFlatIP top-10, and the queries/s ratio
   (one batched ``search`` call each, after building both indexes).
2. **Semantic edges** — time and peak memory of :func:`mmai.retrieval.edges.semantic_pairs` over all
   memories, searching the stage-1 HNSW index (built once in 1) and an exact flat index; the
   HNSW edge set is compared to the exact one (edge recall).
3. **GAR vs NetworkX** — per-query latency of :class:`GraphAugmentedRetriever` re-ranking (batched
   PageRank + fusion) and of the batched PageRank alone, against ``networkx.pagerank`` with the
   same personalisation on the same graph (few queries: NetworkX is slow); top-10 agreement.
4. **Recall@K vs matmul floor** — :func:`mmai.evaluation.metrics.evaluate_retrieval` of 117,880 caption
   queries against 11,788 images (t2i) against the chunked matmul alone (no top-k), same chunks.

Synthetic embeddings are structured like a bird diary: ``--clusters`` species centres on the
sphere, sightings around them, photos (memories) around sightings, taken in bursts during outings
at a few places; captions are noisy copies of their image's embedding.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import tracemalloc
from contextlib import contextmanager

import numpy as np

from mmai_apps.bench import BenchResult

QUICK = {"n_memories": 20_000, "n_queries": 200, "gar_queries": 64, "nx_queries": 3, "n_images": 2_000}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-memories", type=int, default=117_880, help="memories in index and graph (default: CUB captions)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-queries", type=int, default=1_000, help="queries for HNSW vs flat")
    parser.add_argument("--clusters", type=int, default=200, help="species centres on the sphere")
    parser.add_argument("--gar-queries", type=int, default=128, help="queries re-ranked by GAR")
    parser.add_argument("--nx-queries", type=int, default=5, help="queries run through networkx.pagerank (slow)")
    parser.add_argument("--n-images", type=int, default=11_788, help="gallery of the Recall@K evaluation")
    parser.add_argument("--captions-per-image", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per matmul chunk in evaluation")
    parser.add_argument("--threads", type=int, default=None, help="FAISS/torch threads (default: all cores)")
    parser.add_argument("--skip-exact-edges", action="store_true", help="skip exact (flat) semantic edges")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"small sizes for a smoke run: {QUICK}")


# ---------------------------------------------------------------------- synthetic data
def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def _around(centres: np.ndarray, spread: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine ``1 / sqrt(1 + spread**2)`` from their centres (high-D noise)."""
    spread = np.broadcast_to(np.asarray(spread, dtype=np.float32), (len(centres),))[:, None]
    return _unit(centres + spread * _unit(rng.normal(size=centres.shape)))


def synthetic_diary(count: int, dim: int, clusters: int, seed: int):
    """Embeddings ``(N, D)``, class ids, timestamps and places of a simulated birdwatching diary.

    Species centres are random unit vectors; each sighting of a bird sits around its species
    (spread 0.2-0.8), each photo around its sighting (spread 0.25-0.6), so photos of one sighting
    have cosines of ~0.73-0.94. About 4 photos per sighting, 5 sightings per outing (2 hours, one
    of 30 places), an outing every 0.5-3 days.
    """
    rng = np.random.default_rng(seed)
    species = _unit(rng.normal(size=(clusters, dim)))
    sightings = max(1, count // 4)
    sighting_species = rng.integers(0, clusters, sightings)
    sighting_centres = _around(species[sighting_species], rng.uniform(0.2, 0.8, sightings), rng)
    of_sighting = np.sort(rng.integers(0, sightings, count))
    embeddings = _around(sighting_centres[of_sighting], rng.uniform(0.25, 0.6, count), rng)
    outing_of_sighting = np.arange(sightings) // 5
    outings = outing_of_sighting[-1] + 1
    outing_start = 1.6e9 + 86_400.0 * np.cumsum(rng.uniform(0.5, 3.0, outings))
    outing = outing_of_sighting[of_sighting]
    timestamps = outing_start[outing] + rng.uniform(0, 2 * 3600, count)
    places = np.array([f"place_{p:02d}" for p in rng.integers(0, 30, outings)])[outing]
    return embeddings, sighting_species[of_sighting], timestamps, places


def synthetic_captions(images: int, per_image: int, dim: int, clusters: int, seed: int):
    """Images around species centres (spread 0.8), captions around their image (spread 5.0)."""
    rng = np.random.default_rng(seed + 1)
    species = _unit(rng.normal(size=(clusters, dim)))
    image_class = rng.integers(0, clusters, images)
    image_emb = _around(species[image_class], 0.8, rng)
    text_emb = _around(np.repeat(image_emb, per_image, 0), 5.0, rng)
    image_ids = np.arange(images)
    return image_emb, image_ids, image_class, text_emb, np.repeat(image_ids, per_image), np.repeat(image_class, per_image)


# ---------------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(report: dict):
    """Peak resident memory above the start (sampled every 5 ms, sees C++ allocations) and
    tracemalloc's peak of Python/NumPy allocations, in MB, written into ``report``."""
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    try:
        yield report
    finally:
        done.set()
        sampler.join()
        report["rss_peak_mb"] = (max(peak[0], _rss_bytes()) - start) / 2**20
        report["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def _row(measurement: str, ours: str, baseline: str, unit: str, ours_value: float, baseline_value: float,
         ratio: float, ratio_means: str, quality: str, notes: str = "") -> dict:
    return {"measurement": measurement, "ours": ours, "baseline": baseline, "unit": unit,
            "ours_value": ours_value, "baseline_value": baseline_value, "ratio": ratio,
            "ratio_means": ratio_means, "quality": quality, "notes": notes}


SPEED_UP = "speed-up (baseline time / ours)"


# ---------------------------------------------------------------------- the four comparisons
def bench_index(embeddings: np.ndarray, queries: np.ndarray):
    from mmai.retrieval.index import VectorIndex

    ids = np.arange(len(embeddings))
    flat, flat_build_s = _timed(VectorIndex.build, embeddings, ids, kind="flat", progress=False)
    hnsw, hnsw_build_s = _timed(VectorIndex.build, embeddings, ids, kind="hnsw", progress=False)
    (_, exact), flat_s = _timed(flat.search, queries, 10)
    (_, approx), hnsw_s = _timed(hnsw.search, queries, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(approx, exact)])
    row = _row("search: HNSW vs exact flat", "HNSW M=32 efC=200 efS=128", "IndexFlatIP", "queries/s",
               len(queries) / hnsw_s, len(queries) / flat_s, flat_s / hnsw_s, SPEED_UP, f"recall@10 vs exact {recall:.4f}",
               f"{len(queries)} queries, one batch; build {hnsw_build_s:.1f} s HNSW / {flat_build_s:.1f} s flat")
    return row, hnsw


def bench_semantic_edges(embeddings: np.ndarray, hnsw, exact: bool):
    from mmai.retrieval.edges import semantic_pairs

    ids = np.arange(len(embeddings))
    hnsw_memory: dict = {}
    with peak_memory(hnsw_memory):
        (rows, cols, _), hnsw_s = _timed(semantic_pairs, embeddings, 0.85, 10, index=hnsw, ids=ids, progress=False)
    rows_out = []
    if exact:
        flat_memory: dict = {}
        with peak_memory(flat_memory):
            (f_rows, f_cols, _), flat_s = _timed(semantic_pairs, embeddings, 0.85, 10, index_kind="flat", progress=False)
        count = len(embeddings)
        edge_recall = np.isin(f_rows * count + f_cols, rows * count + cols).mean() if len(f_rows) else 1.0
        rows_out.append(_row(
            "semantic edges (cos>=0.85, <=10/node)", "search stage-1 HNSW", "exact flat kNN", "seconds",
            hnsw_s, flat_s, flat_s / hnsw_s, SPEED_UP,
            f"edges {len(rows):,} vs {len(f_rows):,} exact; edge recall {edge_recall:.4f}",
            f"peak RSS +{hnsw_memory['rss_peak_mb']:.0f} MB (HNSW, index prebuilt) / +{flat_memory['rss_peak_mb']:.0f} MB "
            f"(flat, incl. its index); tracemalloc peak {hnsw_memory['tracemalloc_peak_mb']:.0f} / {flat_memory['tracemalloc_peak_mb']:.0f} MB"))
    else:
        rows_out.append(_row("semantic edges (cos>=0.85, <=10/node)", "search stage-1 HNSW", "-", "seconds",
                             hnsw_s, float("nan"), float("nan"), "-", f"edges {len(rows):,}",
                             f"peak RSS +{hnsw_memory['rss_peak_mb']:.0f} MB"))
    return rows_out


def bench_gar(embeddings, timestamps, places, hnsw, queries, nx_queries: int):
    import networkx as nx

    from mmai.retrieval.gar import GraphAugmentedRetriever, personalized_pagerank
    from mmai.retrieval.graph import EpisodicGraph

    ids = np.arange(len(embeddings))
    graph, build_s = _timed(EpisodicGraph, ids, embeddings, timestamps, places, index=hnsw, progress=False)
    stats = graph.stats()
    retriever, setup_s = _timed(GraphAugmentedRetriever, graph)  # CSR from NetworkX + transition matrix
    hit_scores, hit_ids = hnsw.search(queries, 10)  # (Q, 10) stage-1 hits

    seeds = np.zeros((len(queries), len(graph)))  # (Q, N) raw hit scores as personalisation
    np.put_along_axis(seeds, graph.positions(hit_ids), np.clip(hit_scores, 0, None) + 1e-6, axis=1)
    ours, ppr_s = _timed(personalized_pagerank, retriever.transition, seeds, damping=0.5, tol=1e-10, max_iter=100)
    _, gar_s = _timed(retriever.rerank, hit_ids, hit_scores)
    nodes = graph.ids.tolist()
    reference_s, same_top10, max_diff = 0.0, 0, 0.0
    for q in range(nx_queries):
        personalization = {nodes[p]: seeds[q, p] for p in np.flatnonzero(seeds[q])}
        ranks, seconds = _timed(nx.pagerank, graph.graph, alpha=0.5, personalization=personalization,
                                tol=1e-10, max_iter=100)
        reference_s += seconds
        reference = np.array([ranks[n] for n in nodes])
        top_ours, top_reference = np.argsort(-ours[q], kind="stable")[:10], np.argsort(-reference, kind="stable")[:10]
        same_top10 += np.array_equal(top_ours, top_reference)
        max_diff = max(max_diff, float(np.abs(reference - ours[q]).max()))
    per_query = lambda seconds, count: 1e3 * seconds / count  # noqa: E731
    nx_ms, ppr_ms, gar_ms = per_query(reference_s, nx_queries), per_query(ppr_s, len(queries)), per_query(gar_s, len(queries))
    graph_note = (f"graph: {stats['nodes']:,} nodes, {stats['temporal_edges']:,} temporal + "
                  f"{stats['semantic_edges']:,} semantic edges, {stats['episodes']:,} episodes, "
                  f"{stats['schemas']} schemas; built in {build_s:.1f} s (HNSW reused), retriever setup {setup_s:.1f} s")
    quality = f"top-10 identical {same_top10}/{nx_queries}; max |diff| {max_diff:.1e}"
    return [
        _row("personalised PageRank per query", f"batched CSR power iteration ({len(queries)} q)",
             f"networkx.pagerank ({nx_queries} q)", "ms/query", ppr_ms, nx_ms, nx_ms / ppr_ms, SPEED_UP, quality, graph_note),
        _row("GAR re-rank per query (PPR + fusion + top-k)", f"GraphAugmentedRetriever ({len(queries)} q, K=10)",
             f"networkx.pagerank ({nx_queries} q)", "ms/query", gar_ms, nx_ms, nx_ms / gar_ms, SPEED_UP, "-",
             "baseline is PageRank alone; ours also fuses scores and takes the top-k"),
    ]


def bench_recall(args: argparse.Namespace):
    import torch

    from mmai.evaluation.metrics import evaluate_retrieval

    arrays = synthetic_captions(args.n_images, args.captions_per_image, args.dim, args.clusters, args.seed)
    image_emb, image_ids, image_class, text_emb, text_image_ids, text_class = map(torch.from_numpy, arrays)

    def matmul_floor() -> None:
        with torch.no_grad():
            for chunk in text_emb.split(args.chunk_size):
                chunk @ image_emb.T  # (c, Ni), discarded: the arithmetic alone

    def evaluate() -> dict:
        return evaluate_retrieval(image_emb, image_ids, image_class, text_emb, text_image_ids, text_class,
                                  chunk_size=args.chunk_size, directions=("t2i",))

    floor_s, eval_s = [], []
    for _ in range(2):  # alternate, keep the best of each: the machine is shared
        floor_s.append(_timed(matmul_floor)[1])
        results, seconds = _timed(evaluate)
        eval_s.append(seconds)
    quality = ", ".join(f"{key.split('/', 1)[1]}={value:.3f}" for key, value in results.items()
                        if key.endswith(("R@1", "R@10")))
    return [_row(f"Recall@1/5/10 t2i, {len(text_emb):,} x {len(image_emb):,}",
                 "evaluate_retrieval (matmul+topk+labels)", "chunked matmul only", "seconds",
                 min(eval_s), min(floor_s), min(eval_s) / min(floor_s), "overhead (ours / floor)", quality,
                 f"dim {args.dim}, chunk {args.chunk_size}, torch threads {torch.get_num_threads()}, best of 2 each; "
                 "synthetic captions, so the recall values say nothing about a model")]


def run(args: argparse.Namespace) -> BenchResult:
    import faiss
    import torch

    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    threads = args.threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    embeddings, _, timestamps, places = synthetic_diary(args.n_memories, args.dim, args.clusters, args.seed)
    rng = np.random.default_rng(args.seed + 7)
    picks = rng.choice(len(embeddings), args.n_queries, replace=False)
    queries = _around(embeddings[picks], 0.5, rng)  # cosine ~0.89 to a memory

    rows = []
    index_row, hnsw = bench_index(embeddings, queries)
    rows.append(index_row)
    rows += bench_semantic_edges(embeddings, hnsw, exact=not args.skip_exact_edges)
    rows += bench_gar(embeddings, timestamps, places, hnsw, queries[: args.gar_queries], args.nx_queries)
    rows += bench_recall(args)
    meta = {
        "n_memories": args.n_memories, "dim": args.dim, "clusters": args.clusters, "n_queries": args.n_queries,
        "gar_queries": args.gar_queries, "nx_queries": args.nx_queries, "n_images": args.n_images,
        "captions": args.n_images * args.captions_per_image, "threads": threads, "quick": args.quick,
        "faiss": faiss.__version__, "total_seconds": time.perf_counter() - started,
        "protocol": "each ratio measured side by side in one process on the same data; see ratio_means",
    }
    return BenchResult(rows, meta)
