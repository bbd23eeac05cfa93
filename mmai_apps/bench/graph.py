"""Incremental episodic graph: a 16-memory ingest (and forget) against a full rebuild, at scale.

Side by side in one run, on the synthetic bird diary of :mod:`mmai_apps.bench.retrieval`:

1. **Full build** of the graph over ``N`` memories with the store's stage-1 index (flat below
   20,000 memories, HNSW from there, as ``index_kind="auto"``), without and with the NetworkX
   view (search reads the edge table; the view is built only when something asks for it).
2. **Ingest**: the ``--added`` newest memories join the index; :meth:`EpisodicGraph.updated`
   against a full build over ``N + added`` with the same schema centroids and the same index.
3. **Forget**: ``--added`` random memories leave; the same two.

Quality: the edge sets of update and rebuild are compared (equal on every edge with an exact
index; with HNSW the rebuild's own searches are approximate, so the agreement is reported).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mmai_apps.bench import BenchResult
from mmai_apps.bench.retrieval import _row, _timed, synthetic_diary

HNSW_FROM = 20_000  # as mmai.memory.index_sync.HNSW_FROM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-memories", type=int, nargs="+", default=[10_000, 117_880],
                        help="store sizes (default: 10k and CUB's 117,880)")
    parser.add_argument("--added", type=int, default=16, help="memories in the ingest and in the forget")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)


def _edges(graph) -> set[tuple[int, int]]:
    table = graph._table
    ids = graph.ids
    low, high = np.minimum(ids[table["rows"]], ids[table["cols"]]), np.maximum(ids[table["rows"]], ids[table["cols"]])
    return set(zip(low.tolist(), high.tolist()))


def _agreement(first, second) -> str:
    a, b = _edges(first), _edges(second)
    same = a == b
    jaccard = len(a & b) / max(len(a | b), 1)
    return f"edge sets {'equal' if same else 'differ'} ({len(a):,} vs {len(b):,}, Jaccard {jaccard:.5f})"


def bench_size(count: int, args: argparse.Namespace) -> list[dict]:
    from mmai.retrieval.graph import EpisodicGraph
    from mmai.retrieval.index import VectorIndex

    embeddings, _, timestamps, places = synthetic_diary(count + args.added, args.dim, args.clusters, args.seed)
    ids = np.arange(len(embeddings), dtype=np.int64) + 1_000
    old, new = slice(0, count), slice(count, count + args.added)  # the diary is in time order: new = newest
    kind = "flat" if count + args.added < HNSW_FROM else "hnsw"
    index, index_s = _timed(VectorIndex.build, embeddings[old], ids[old], kind=kind, progress=False)
    graph, build_s = _timed(EpisodicGraph, ids[old], embeddings[old], timestamps[old], places[old], index=index,
                            progress=False)
    _, view_s = _timed(lambda: graph.graph)
    rows = [_row(f"full graph build, {count:,} memories", "edge table only", "edge table + NetworkX view", "seconds",
                 build_s, build_s + view_s, (build_s + view_s) / build_s, "speed-up (baseline time / ours)",
                 f"{len(graph._table['rows']):,} edges, {graph.num_schemas} schemas",
                 f"{kind} stage-1 index (built in {index_s:.1f} s, not counted)")]
    index.add(embeddings[new], ids[new])
    grown, update_s = _timed(graph.updated, add_ids=ids[new], add_embeddings=embeddings[new],
                             add_timestamps=timestamps[new], add_places=places[new], index=index)
    every = slice(0, count + args.added)
    full, full_s = _timed(EpisodicGraph, ids[every], embeddings[every], timestamps[every], places[every], index=index,
                          schema_centroids=graph.schema_centroids, progress=False)
    rows.append(_row(f"ingest {args.added} into {count:,}", "EpisodicGraph.updated", "full rebuild (same schemas)",
                     "seconds", update_s, full_s, full_s / update_s, "speed-up (baseline time / ours)",
                     _agreement(grown, full), f"{kind} index"))
    gone = np.random.default_rng(args.seed + 1).choice(ids[every], args.added, replace=False)
    keep = ~np.isin(ids[every], gone)
    # forget rebuilds the store's index over what stays (not counted: both paths need it)
    index = VectorIndex.build(embeddings[every][keep], ids[every][keep], kind=kind, progress=False)
    shrunk, forget_s = _timed(grown.updated, remove_ids=gone, index=index)
    rebuilt, rebuilt_s = _timed(EpisodicGraph, ids[every][keep], embeddings[every][keep], timestamps[every][keep],
                                places[every][keep], index=index, schema_centroids=graph.schema_centroids,
                                progress=False)
    rows.append(_row(f"forget {args.added} of {count + args.added:,}", "EpisodicGraph.updated",
                     "full rebuild (same schemas)", "seconds", forget_s, rebuilt_s, rebuilt_s / forget_s,
                     "speed-up (baseline time / ours)", _agreement(shrunk, rebuilt), f"{kind} index"))
    return rows


def run(args: argparse.Namespace) -> BenchResult:
    import faiss

    threads = args.threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    rows = [row for count in args.n_memories for row in bench_size(count, args)]
    meta = {"n_memories": args.n_memories, "added": args.added, "dim": args.dim, "clusters": args.clusters,
            "threads": threads, "faiss": faiss.__version__, "total_seconds": time.perf_counter() - started,
            "protocol": "synthetic diary (time order); update and rebuild side by side in one process"}
    return BenchResult(rows, meta)
