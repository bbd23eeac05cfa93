"""Forgetting under a budget: future hit@10 of random, newest, LRU, LFU, retention, Generative Agents and an oracle (issue 22, seed 004).

Protocol: the simulated user of :mod:`mmai.memory.simulate` (400 days, 60 synthetic species of
Zipf popularity, exponent 1.1, reshuffled at day 200; ~3 searches a day: recent memories, re-visits
of favourites, species the user is into now; the user opens a memory when a search finds it in the
top 10), seeds 0-2.

* **Replay days 1-300**: the opens of days 1-300 are the usage the policies see (access counts,
  last access, the queries of the last 14 days for Generative Agents' relevance); at the end of
  day 300 each policy keeps ``--budgets`` 10/25/50% of the memories made so far (:func:`mmai.memory.forgetting.keep`).
* **Evaluate days 301-400**: every search of days 301-400 for a memory made by day 300 is run over
  what was kept plus the memories made since (exact cosine, the query's embedding); *future
  hit@10* = the target is in the top 10. Memories made after day 300 are never forgotten, so their
  searches are left out (the same for every policy).
* **No tuning on days 301-400**: Generative Agents' decay per hour is chosen per seed and budget
  from :data:`DECAY_GRID` by the same protocol *inside the replay* (usage of days 1-200, budget,
  evaluated on days 201-300). The retention has nothing to choose: with MemoryBank's strength
  ``S = S0 * (1 + recalls)`` the order of ``exp(-dt / S)`` is that of ``dt / (1 + recalls)`` for
  every ``S0``.
* **Ablation**: Generative Agents with the importance term off (its decay chosen the same way):
  what the derived importance (:func:`mmai.memory.forgetting.derived_importance`) adds.
* **Oracle**: keeps the memories searched for most often on days 301-400 (it knows the future):
  an upper bound, not a policy.

Cells: mean ± std over the seeds of the per-seed hit@10; paired: mean difference [95% paired
bootstrap over the searches, seeds pooled] (:func:`mmai.evaluation.stats.paired_bootstrap`). No model, CPU only.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from mmai_apps.bench import BenchResult

GA_NO_IMPORTANCE = "generative_agents, importance off"  #: the ablation: is the derived importance worth it?
POLICY_ROWS = ("random", "newest", "lru", "lfu", "retention", "generative_agents", GA_NO_IMPORTANCE, "oracle")
DECAY_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
RELEVANCE_DAYS = 14


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 25.0, 50.0],
                        help="%% of the memories kept (default 10 25 50)")
    parser.add_argument("--replay-days", type=int, default=300, help="days replayed (default 300)")
    parser.add_argument("--days", type=int, default=400, help="days simulated (default 400)")
    parser.add_argument("--k", type=int, default=10, help="K of hit@K (default 10)")


def policy_scores(sim, policy: str, cut: int, seed: int, strength_days: float, decay: float,
                  future: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(indices of the memories made by day cut, their keep scores)`` of one policy."""
    from mmai.memory.forgetting import Usage, derived_importance, scores

    made = sim.created_by(cut)
    counts, last = sim.accesses(cut)
    usage = Usage(sim.time[made], counts[made], last[made])
    if policy == "oracle":
        return made, np.bincount(future, minlength=len(sim))[made].astype(np.float64)
    importance = relevance = None
    if policy == GA_NO_IMPORTANCE:
        policy, importance = "generative_agents", np.zeros(len(made))
    elif policy == "generative_agents":
        importance = derived_importance(usage.counts, sim.embeddings[made])
    if policy == "generative_agents":
        recent = (sim.query_day <= cut) & (sim.query_day > cut - RELEVANCE_DAYS)
        relevance = (sim.embeddings[made] @ sim.query_embeddings[recent].T).max(axis=1) if recent.any() else None
    return made, scores(policy, usage, sim.end_of(cut), seed=seed, strength_days=strength_days,
                        decay_per_hour=decay, importance=importance, relevance=relevance)


def future_hits(sim, kept: np.ndarray, cut: int, until: int, k: int) -> np.ndarray:
    """hit@k (0/1) of every search of days ``cut+1..until`` for a memory made by day ``cut``."""
    chosen = np.flatnonzero((sim.query_day > cut) & (sim.query_day <= until) & (sim.day[sim.target] <= cut))
    alive = np.zeros(len(sim), bool)
    alive[kept] = True
    hits = np.zeros(len(chosen))
    for row, query in enumerate(chosen.tolist()):
        pool = alive | ((sim.day > cut) & (sim.time <= sim.query_time[query]))
        scored = np.where(pool, sim.embeddings @ sim.query_embeddings[query], -np.inf)
        top = np.argpartition(-scored, min(k, len(scored) - 1))[:k]
        hits[row] = float(sim.target[query] in top[np.isfinite(scored[top])])
    return hits


def _kept(sim, policy: str, cut: int, share: float, seed: int, strength: float, decay: float,
          future: np.ndarray | None = None) -> np.ndarray:
    from mmai.memory.forgetting import keep

    made, keep_scores = policy_scores(sim, policy, cut, seed, strength, decay, future)
    return made[keep(keep_scores, int(len(made) * share / 100.0), sim.time[made])]


def choose_parameters(sim, share: float, seed: int, cut: int, k: int) -> dict[str, float]:
    """Generative Agents' decay per hour, chosen inside the replay: usage of days 1..cut*2/3,
    evaluated on the rest of the replay (never on the days after ``cut``). The retention needs no
    choice: with ``S = strength * (1 + recalls)`` its order is that of ``dt / (1 + recalls)`` for
    every strength."""
    inner = int(round(cut * 2 / 3))
    best = {}
    for name, policy in (("decay_per_hour", "generative_agents"), ("decay_per_hour_no_importance", GA_NO_IMPORTANCE)):
        best[name] = max(DECAY_GRID, key=lambda d: (future_hits(
            sim, _kept(sim, policy, inner, share, seed, 7.0, d), inner, cut, k).mean(), d))
    return best


def run(args: argparse.Namespace) -> BenchResult:
    from mmai.memory.simulate import SimConfig, simulate
    from mmai.evaluation.stats import mean_std, paired_bootstrap

    cut = args.replay_days
    results: dict[tuple[float, str], list[np.ndarray]] = {}
    chosen: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for seed in args.seeds:
        sim = simulate(seed, SimConfig(days=args.days))
        later = (sim.query_day > cut) & (sim.day[sim.target] <= cut)
        future = sim.target[later]
        counts[str(seed)] = {"memories_by_replay_end": int(len(sim.created_by(cut))), "memories": len(sim),
                             "evaluated_searches": int(later.sum()), "replay_opens": int(
                                 (sim.opened & (sim.query_day <= cut)).sum())}
        everything = sim.created_by(cut)
        results.setdefault((100.0, "keep all"), []).append(future_hits(sim, everything, cut, args.days, args.k))
        for share in args.budgets:
            parameters = choose_parameters(sim, share, seed, cut, args.k)
            chosen[f"seed {seed}, {share:g}%"] = parameters
            for policy in POLICY_ROWS:
                decay = parameters["decay_per_hour_no_importance" if policy == GA_NO_IMPORTANCE else "decay_per_hour"]
                kept = _kept(sim, policy, cut, share, seed, 7.0, decay, future)
                results.setdefault((share, policy), []).append(future_hits(sim, kept, cut, args.days, args.k))
    rows = []
    for (share, policy), per_seed in results.items():
        mean, std = mean_std([hits.mean() for hits in per_seed])
        row: dict[str, Any] = {"budget": f"{share:g}%", "policy": policy, f"future hit@{args.k}": f"{mean:.3f} ± {std:.3f}"}
        pooled = np.concatenate(per_seed)[None, :]
        for baseline in ("lru", "lfu"):
            if policy in ("retention", "generative_agents", GA_NO_IMPORTANCE) and (share, baseline) in results:
                other = np.concatenate(results[(share, baseline)])[None, :]
                d = paired_bootstrap(other, pooled)
                row[f"vs {baseline}"] = f"{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {d.verdict}"
        if policy == "generative_agents" and (share, GA_NO_IMPORTANCE) in results:
            d = paired_bootstrap(np.concatenate(results[(share, GA_NO_IMPORTANCE)])[None, :], pooled)
            row["vs importance off"] = f"{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {d.verdict}"
        rows.append(row)
    meta = {"seeds": args.seeds, "replay_days": cut, "days": args.days, "budgets_percent": args.budgets,
            "k": args.k, "simulation": "mmai.memory.simulate.SimConfig defaults", "per_seed": counts,
            "parameters_chosen_inside_the_replay": chosen,
            "cells": "mean ± std over seeds; vs: paired difference [95% bootstrap over searches, seeds pooled]",
            "hardware": "CPU"}
    return BenchResult(rows=rows, meta=meta)
