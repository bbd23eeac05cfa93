"""Entropy-driven top-down retrieval against flat exact search, at 10,000 and 117,880 memories.

Protocol (everything in one run, so the ratios compare like with like):

1. **Data with a known answer** (``--seeds``, each its own data set): a synthetic diary of bird
   sightings in a ``--dim``-D embedding space. ``--families`` family centres, ``--species``
   species prototypes around them (species of one family are alike), a Zipf popularity over
   species; outings at one of ``--places`` places over 2021-2023, each a run of photos 10 s to
   10 min apart of 2-4 species; a photo's embedding is its species' prototype plus Gaussian
   noise (``--photo-noise``). A query is a species' prototype plus more noise
   (``--query-noise``: the text-image gap), its species drawn as the photos' (what the user saw).
   This replaces ``mmai bench memory``'s fill (noisy copies of a tiny *random* model's
   embeddings), which has no species structure to find.
2. **Hierarchy**: :meth:`TopDownIndex.build <mmai.retrieval.topdown.TopDownIndex.build>`, the
   episodic graph's own k-means schemas (``round(sqrt(N/2))``, at most 256) and time/place
   episodes (gap 7,200 s), without the graph's edges; its build time is a row.
3. **Settings**: ``--val-queries`` validation queries choose, from the grid
   ``--masses x --entropy-stops x --temperatures``, the setting that scores the fewest vectors
   (schema and episode-branch centroids + memories: a branch centroid costs what a memory does) while its class R@1, class R@10 and instance R@10 stay within ``--tolerance`` of flat (else
   the best recall); ``--test-queries`` *other* queries report it, and the library defaults
   (:class:`~mmai.retrieval.topdown.TopDownSettings`) too. Nothing is chosen on the test queries.
4. **Relevance**: *class*: a hit of the query's species. *instance*: flat exact's top-1 memory is
   the reference answer (flat has instance R@1 = R@10 = 1 by definition); top-down's R@1 is the
   share of queries whose top-1 is that memory, R@10 whether it is in the top 10.
5. **Cost**: memories scored (cosines computed) per query, as a fraction of the store, and all
   vectors scored (centroids too) as a fraction of it; latency
   per query, flat (NumPy product over all memories + top-k) and top-down (centroids, then the
   kept blocks) timed alternately, one query at a time.
6. **Entropy as a predictor**: the AUROC of the schema-level normalised entropy for "flat stage 1
   misses" (class miss at 1 and at 10) on the test queries.

Differences are top-down minus flat with paired 95% bootstrap intervals over (seed, query)
(:func:`mmai.evaluation.stats.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import numpy as np

from mmai_apps.bench import BenchResult

FIRST_TIME, LAST_TIME = 1609459200.0, 1704067200.0  # 2021-01-01 .. 2024-01-01 UTC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 117_880], help="memories (default 10000 117880)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds (default 0 1 2)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64, the tiny model's)")
    parser.add_argument("--species", type=int, default=200, help="species (default 200)")
    parser.add_argument("--families", type=int, default=40, help="families of alike species (default 40)")
    parser.add_argument("--places", type=int, default=20, help="places (default 20)")
    parser.add_argument("--family-spread", type=float, default=0.4, help="species' noise around the family (0.4)")
    parser.add_argument("--photo-noise", type=float, default=1.2, help="photos' noise around the species (1.2)")
    parser.add_argument("--query-noise", type=float, default=2.0, help="queries' noise around the species (2.0; flat class R@1 ~60%%)")
    parser.add_argument("--val-queries", type=int, default=300, help="queries that choose the setting (default 300)")
    parser.add_argument("--test-queries", type=int, default=1000, help="queries reported (default 1000)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--masses", type=float, nargs="+", default=[0.9, 0.95, 0.99, 0.999])
    parser.add_argument("--entropy-stops", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.01])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--tolerance", type=float, default=0.01, help="recall drop allowed on val (default 0.01)")
    parser.add_argument("--also", nargs="*", default=["0.99,0.5,0.02", "0.99,0.0,0.05"], metavar="MASS,STOP,T",
                        help="more settings reported on the test queries (default: a sharper softmax that "
                             "descends by entropy, and one that always descends)")


# ---------------------------------------------------------------------- data
def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_diary(size: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Photos (embeddings, species, times, places) and a query maker; see the module docstring."""
    rng = np.random.default_rng([seed, 1])  # the world (prototypes, popularity) does not depend on the size
    dim = args.dim
    families = _unit(rng.normal(size=(args.families, dim)))
    family_of = rng.integers(0, args.families, args.species)
    prototypes = _unit(families[family_of] + args.family_spread * rng.normal(size=(args.species, dim)) / np.sqrt(dim))
    popularity = 1.0 / np.arange(1, args.species + 1)
    popularity = popularity[rng.permutation(args.species)]
    popularity /= popularity.sum()
    rng = np.random.default_rng([seed, 2, size])
    outing_sizes = 1 + rng.poisson(15, size)  # more than enough outings
    outing_sizes = outing_sizes[: int(np.searchsorted(np.cumsum(outing_sizes), size)) + 1]
    outing_sizes[-1] -= outing_sizes.sum() - size
    outings = len(outing_sizes)
    outing_of = np.repeat(np.arange(outings), outing_sizes)  # (N,)
    seen = rng.choice(args.species, size=(outings, 4), p=popularity)  # species an outing may see
    species_count = rng.integers(2, 5, outings)
    species = seen[outing_of, rng.integers(0, 1 << 30, size) % species_count[outing_of]]  # (N,)
    starts = np.sort(rng.uniform(FIRST_TIME, LAST_TIME - 86_400, outings))
    gaps = rng.uniform(10, 600, size)
    first = np.r_[0, np.cumsum(outing_sizes)[:-1]]
    gaps[first] = 0.0
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[first], outing_sizes)
    timestamps = starts[outing_of] + offsets
    place_names = np.array([f"place {i:02d}" for i in range(args.places)])
    places = place_names[rng.integers(0, args.places, outings)][outing_of]
    embeddings = _unit(prototypes[species] + args.photo_noise * rng.normal(size=(size, dim)) / np.sqrt(dim))

    def queries(count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        query_rng = np.random.default_rng([seed, 3, size, stream])
        wanted = species[query_rng.integers(0, size, count)]  # what the user saw
        return _unit(prototypes[wanted] + args.query_noise * query_rng.normal(size=(count, dim)) / np.sqrt(dim)), wanted

    return {"ids": np.arange(size, dtype=np.int64), "embeddings": embeddings, "species": species,
            "timestamps": timestamps, "places": places, "queries": queries}


# ---------------------------------------------------------------------- measurement
def _flat(embeddings: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = embeddings @ query
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def evaluate(index, queries: np.ndarray, wanted: np.ndarray, species_of_row: np.ndarray, settings, k: int,
             flat_lists: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query outcomes of flat exact and top-down search (rows of ``index.embeddings``).

    Without ``flat_lists`` flat search runs beside top-down, query by query, both timed; with
    them (``(Q, k)`` flat rows computed once, for the validation grid) only top-down runs."""
    row_of_id = np.empty(len(index), dtype=np.int64)
    row_of_id[index.ids] = np.arange(len(index))
    out = {name: np.zeros(len(queries)) for name in (
        "flat/class/hit@1", "flat/class/hit@10", "td/class/hit@1", "td/class/hit@10", "td/instance/hit@1",
        "td/instance/hit@10", "td/overlap@10", "td/fraction_scored", "td/vectors_scored", "entropy", "flat_ms",
        "td_ms", "descended")}
    for q, (query, species) in enumerate(zip(queries, wanted)):
        start = time.perf_counter()
        flat = _flat(index.embeddings, query, k) if flat_lists is None else flat_lists[q]
        middle = time.perf_counter()
        result = index.search(query, k, settings)
        end = time.perf_counter()
        rows = row_of_id[result.ids]
        out["flat_ms"][q], out["td_ms"][q] = 1e3 * (middle - start), 1e3 * (end - middle)
        out["flat/class/hit@1"][q] = species_of_row[flat[0]] == species
        out["flat/class/hit@10"][q] = (species_of_row[flat[:10]] == species).any()
        out["td/class/hit@1"][q] = species_of_row[rows[0]] == species
        out["td/class/hit@10"][q] = (species_of_row[rows[:10]] == species).any()
        out["td/instance/hit@1"][q] = rows[0] == flat[0]
        out["td/instance/hit@10"][q] = flat[0] in rows[:10]
        out["td/overlap@10"][q] = len(np.intersect1d(rows[:10], flat[:10])) / min(10, k)
        out["td/fraction_scored"][q] = result.memories_scored / len(index)
        out["td/vectors_scored"][q] = (result.memories_scored + result.schemas + result.branches_scored) / len(index)
        out["entropy"][q] = result.entropy
        out["descended"][q] = result.descended
    return out


def choose(index, data: dict, species_of_row: np.ndarray, args: argparse.Namespace, seed: int):
    """The grid setting that scores the fewest vectors (schema and branch centroids + memories) within
    ``tolerance`` of flat on the val queries."""
    from mmai.retrieval.topdown import TopDownSettings

    queries, wanted = data["queries"](args.val_queries, stream=0)  # stream 0: validation
    flat_lists = np.stack([_flat(index.embeddings, query, args.k) for query in queries])  # (Q, k), once
    candidates = []
    for mass, stop, temperature in itertools.product(args.masses, args.entropy_stops, args.temperatures):
        settings = TopDownSettings(mass=mass, entropy_stop=stop, temperature=temperature)
        out = evaluate(index, queries, wanted, species_of_row, settings, args.k, flat_lists)
        drop = max(out["flat/class/hit@1"].mean() - out["td/class/hit@1"].mean(),
                   out["flat/class/hit@10"].mean() - out["td/class/hit@10"].mean(),
                   1.0 - out["td/instance/hit@10"].mean())
        candidates.append((drop <= args.tolerance, float(out["td/vectors_scored"].mean()), drop, settings))
    within = [c for c in candidates if c[0]]
    best = min(within, key=lambda c: c[1]) if within else min(candidates, key=lambda c: c[2])
    return best[3], {"val_within_tolerance": bool(within), "val_vectors_scored": best[1], "val_drop": best[2],
                     "grid_within_tolerance": len(within), "grid": len(candidates)}


def run(args: argparse.Namespace) -> BenchResult:
    from mmai.retrieval.topdown import TopDownIndex, TopDownSettings, auroc
    from mmai.evaluation.stats import paired_bootstrap

    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        extra = {f"mass {m}, stop {e}, T {t}": TopDownSettings(mass=float(m), entropy_stop=float(e),
                                                               temperature=float(t))
                 for m, e, t in (item.split(",") for item in args.also)}
        outcomes: dict[str, list[dict[str, np.ndarray]]] = {"defaults": [], "val-chosen": [], **{n: [] for n in extra}}
        chosen_settings, builds = [], []
        for seed in args.seeds:
            data = synthetic_diary(size, seed, args)
            start = time.perf_counter()
            index = TopDownIndex.build(data["ids"], data["embeddings"], data["timestamps"], data["places"], seed=seed)
            builds.append(time.perf_counter() - start)
            species_of_row = data["species"][index.ids]
            picked, facts = choose(index, data, species_of_row, args, seed)
            chosen_settings.append((picked, facts))
            queries, wanted = data["queries"](args.test_queries, stream=1)  # stream 1: test
            for name, settings in (("defaults", TopDownSettings()), ("val-chosen", picked), *extra.items()):
                outcomes[name].append(evaluate(index, queries, wanted, species_of_row, settings, args.k))
            print(f"size {size:>7} seed {seed}: hierarchy {builds[-1]:.1f} s, {len(index.schemas)} schemas, "
                  f"{len(index.branch_start)} episode branches; val chose {picked}", flush=True)
        rows.append({"size": size, "row": "hierarchy build (k-means schemas + episodes, no edges)",
                     "seconds": float(np.mean(builds)), "schemas": int(len(index.schemas)),
                     "episode_branches": int(len(index.branch_start))})
        for name, runs in outcomes.items():
            stack = {key: np.stack([run[key] for run in runs]) for key in runs[0]}  # (seeds, queries)
            row: dict[str, Any] = {"size": size, "row": f"top-down ({name})"}
            if name == "defaults":
                row["settings"] = str(TopDownSettings())
            elif name in extra:
                row["settings"] = str(extra[name])
            else:
                row["settings"] = "; ".join(f"seed {s}: mass {p.mass}, stop {p.entropy_stop}, T {p.temperature}"
                                            f"{'' if f['val_within_tolerance'] else ' (none within tolerance on val)'}"
                                            for s, (p, f) in zip(args.seeds, chosen_settings))
            for level in ("1", "10"):
                flat, top = stack[f"flat/class/hit@{level}"], stack[f"td/class/hit@{level}"]
                diff = paired_bootstrap(flat, top)
                row[f"flat class R@{level}"] = float(flat.mean())
                row[f"td class R@{level}"] = float(top.mean())
                row[f"diff class R@{level} [95%]"] = f"{100 * diff.difference:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] pp"
            for level in ("1", "10"):
                instance = stack[f"td/instance/hit@{level}"]
                diff = paired_bootstrap(np.ones_like(instance), instance)
                row[f"td instance R@{level} [95%]"] = (f"{100 * instance.mean():.1f} [{100 * (1 + diff.low):.1f}, "
                                                       f"{100 * (1 + diff.high):.1f}] %")
            row["overlap@10"] = float(stack["td/overlap@10"].mean())
            row["fraction scored"] = float(stack["td/fraction_scored"].mean())
            row["fraction scored p95"] = float(np.percentile(stack["td/fraction_scored"], 95))
            row["vectors scored (centroids + memories)"] = float(stack["td/vectors_scored"].mean())
            row["descended"] = float(stack["descended"].mean())
            row["flat p50/p95 ms"] = f"{np.median(stack['flat_ms']):.2f} / {np.percentile(stack['flat_ms'], 95):.2f}"
            row["td p50/p95 ms"] = f"{np.median(stack['td_ms']):.2f} / {np.percentile(stack['td_ms'], 95):.2f}"
            for level in ("1", "10"):
                values = [auroc(e, 1 - m) for e, m in zip(stack["entropy"], stack[f"flat/class/hit@{level}"])]
                row[f"entropy AUROC miss@{level}"] = f"{np.nanmean(values):.3f} (seeds {', '.join(f'{v:.3f}' for v in values)})"
            meets = (row["fraction scored"] <= 0.2 and all(
                float(row[f"diff class R@{level} [95%]"].split()[0]) >= -1.0 for level in ("1", "10")))
            row["target (within 1 pp class R@1/R@10 at <= 20% scored)"] = "met" if meets else "missed"
            rows.append(row)
            print({key: value for key, value in row.items()}, flush=True)
    meta = {
        "data": (f"synthetic diary: {args.species} species in {args.families} families (spread {args.family_spread}), "
                 f"Zipf popularity, {args.places} places, outings of 1+Poisson(15) photos 10-600 s apart of 2-4 species, "
                 f"photo noise {args.photo_noise}, query noise {args.query_noise}, {args.dim}-D unit embeddings"),
        "seeds": args.seeds, "val_queries": args.val_queries, "test_queries": args.test_queries, "k": args.k,
        "grid": {"mass": args.masses, "entropy_stop": args.entropy_stops, "temperature": args.temperatures},
        "tolerance": args.tolerance,
        "relevance": "class: the query's species; instance: flat exact's top-1 memory (flat = 100% by definition)",
        "latency": "per query, one at a time, flat (NumPy product + top-k over all memories) and top-down alternately; "
                   "query embedding given (no text encoder)",
        "intervals": "paired bootstrap 95% over (seed, query), 2000 resamples (mmai.evaluation.stats.paired_bootstrap)",
    }
    return BenchResult(rows=rows, meta=meta)
