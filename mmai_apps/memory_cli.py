"""``mmai memory``: ingest a person's files, search them in words with filters, forget, maintain.

The command line of :class:`~mmai.memory.personal.PersonalMemory` (see its module for how the
store, the FAISS index and the episodic graph stay consistent)::

    mmai memory ingest ~/Pictures/2023 notes/ --meta places.csv --checkpoint runs/reranker/last.ckpt
    mmai memory ingest --from-synthetic data/synth_cub --limit 500      # the diary as an example collection
    mmai memory search "white bird with an orange beak" --year 2023 --place Mumbai --rerank --gar --explain panels/
    mmai memory search "a red bird at Powai Lake in spring 2023"      # time and place words become filters
    mmai memory search "what did I see after the heron at the lake"   # what followed it in its outing
    mmai memory search "a white bird" --top-down                   # schemas first: scores part of the memory
    mmai memory related 3fa9c2e1
    mmai memory open 3fa9c2e1           # show it; counts as opened (access_count, last_accessed)
    mmai memory forget --place Berlin --yes
    mmai memory forget --policy retention --budget 25% --dry-run   # what a budget would forget, by use
    mmai memory stats          # and likewise: check, rebuild, consolidate --threshold 0.97 [--yes]

Every subcommand takes ``--root`` (default ``runs/memory``), ``--checkpoint`` (remembered in
``ROOT/config.json`` after the first use), ``--chroma-host/--chroma-port`` (a Chroma server
instead of ``ROOT/chroma``) and ``--gpu-index`` (faiss-gpu). Exit status: 0 done, 1 ``check``
found problems, 2 a usage or input error (the message says what to fix), 3 another process kept
the store's write lock past ``--lock-timeout``, 4 an OS or database error (e.g. disk full: the
line names the path and what was confirmed before it), 130/143 an ingest stopped by
SIGINT/SIGTERM after its summary. The journal and the media copies are the store of record:
``check`` compares them with Chroma and the index, ``rebuild`` restores a lost or damaged Chroma
database from them (a damaged one is moved aside, kept). Only ``ingest`` creates a store: the other
commands refuse a ``--root`` that holds none (a mistyped root is an error, not an empty memory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

DEFAULT_ROOT = Path("runs/memory")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="memory folder (default runs/memory)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="bi-encoder or re-ranker .ckpt (remembered in ROOT/config.json after first use)")
    parser.add_argument("--chroma-host", default=None, help="a Chroma server's host (default: embedded in ROOT/chroma)")
    parser.add_argument("--chroma-port", type=int, default=8000, help="the Chroma server's port (default 8000)")
    parser.add_argument("--gpu-index", action="store_true", help="exact FAISS index on GPU 0 (faiss-gpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                        help="while another process writes ROOT, wait at most this long (default: wait; 0: refuse)")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--year", type=int, nargs="+", default=None, help="only these years (UTC)")
    parser.add_argument("--place", nargs="+", default=None,
                        help="only these places; a part of a name matches ('Mumbai' matches 'Powai Lake, Mumbai')")
    parser.add_argument("--modality", nargs="+", choices=("image", "text", "audio"), default=None)
    parser.add_argument("--after", default=None, help="from this time on (ISO-8601 like 2023-03-01, UTC)")
    parser.add_argument("--before", default=None, help="before this time (ISO-8601, UTC)")


def _filters_of(args: argparse.Namespace):
    """The :class:`~mmai.memory.filters.Filters` of the filter flags."""
    from mmai.memory.filters import Filters

    return Filters(year=args.year, place=args.place, modality=args.modality, after=args.after, before=args.before)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmai memory`` argument parser."""
    parser = argparse.ArgumentParser(prog="mmai memory", description=__doc__.split("\n\n")[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="add images, notes (.txt/.md) and audio (.wav/.flac)")
    _common(ingest)
    ingest.add_argument("paths", nargs="*", type=Path, help="files or folders (walked recursively)")
    ingest.add_argument("--meta", type=Path, default=None,
                        help="JSON or CSV of time/place/latitude/longitude per file name")
    ingest.add_argument("--require-time", action="store_true",
                        help="reject files without a time from a sidecar, --meta or EXIF (no mtime fallback)")
    ingest.add_argument("--batch-size", type=int, default=16, help="files per confirmed batch (default 16)")
    ingest.add_argument("--from-synthetic", type=Path, default=None, metavar="DIR",
                        help="also ingest a synthetic CUB's photos and songs with the diary's time and place")
    ingest.add_argument("--limit", type=int, default=None, help="with --from-synthetic: the first N photos")
    ingest.add_argument("--follow-links", action="store_true",
                        help="follow symbolic links inside the folders even when they point outside the given paths "
                             "(default: skip and list them)")
    ingest.add_argument("--policy", choices=["keep-all", "merge"], default="keep-all",
                        help="write-time decisions: keep-all stores every file (default); merge folds a near-identical "
                             "frame of a burst (same place, <= --burst-s apart, cosine >= --merge-threshold) into the "
                             "burst's kept memory (undo: consolidate --undo) and discards a copy that adds nothing "
                             "(cosine >= --discard-threshold: its path joins the kept memory's sources)")
    ingest.add_argument("--merge-threshold", type=float, default=None, help="with --policy merge (default 0.9)")
    ingest.add_argument("--discard-threshold", type=float, default=None, help="with --policy merge (default 0.99)")
    ingest.add_argument("--burst-s", type=float, default=None, help="with --policy merge: burst window (default 120)")

    search = sub.add_parser("search", help="find memories matching a sentence")
    _common(search)
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10, help="results (default 10)")
    _filters(search)
    search.add_argument("--rerank", action="store_true", help="re-score image candidates with the re-ranker")
    search.add_argument("--rerank-k", type=int, default=None,
                        help="candidates re-scored (default: the value the re-ranker was validated with)")
    search.add_argument("--stage1-weight", type=float, default=None, metavar="LAMBDA",
                        help="final = match logit + LAMBDA x stage-1 cosine (default: the validated value)")
    search.add_argument("--gar-weight", type=float, default=0.5,
                        help="GAR's weight of the retrieval score against graph activation (default 0.5)")
    search.add_argument("--damping", type=float, default=0.5, help="GAR's PageRank damping (default 0.5)")
    search.add_argument("--ppr", choices=("global", "local"), default="local",
                        help="GAR's PageRank: local push from the seeds (default; reads only their neighbourhood) "
                             "or global power iteration (`mmai bench memory --check-queries` compares the two)")
    search.add_argument("--gar", action="store_true", help="graph-augmented re-ranking with explanations")
    search.add_argument("--explain", type=Path, default=None, metavar="DIR", help="save saliency panels here")
    search.add_argument("--recency-weight", type=float, default=0.0, help="weight of recency (default 0: off)")
    search.add_argument("--no-parse", action="store_true",
                        help="embed the query as typed: do not read its time and place words ('at Powai Lake in "
                             "spring 2023', 'last December', 'near the lake') as filters")
    search.add_argument("--now", default=None, metavar="TIME",
                        help="reference time of relative words like 'yesterday' (ISO-8601, UTC; default: now)")
    search.add_argument("--following", action="store_true",
                        help="the query names an anchor memory: list what came after it in its outing "
                             "(also: 'what did I see after the heron at the lake')")
    search.add_argument("--burst-s", type=float, default=120.0, metavar="SECONDS",
                        help="with --following: skip memories this close after the anchor (its burst, its "
                             "recording; default 120, 0: none)")
    search.add_argument("--top-down", action="store_true",
                        help="entropy-driven top-down stage 1: schema centroids first, memories only in the kept "
                             "branches (prints how many it scored; not with filters)")
    search.add_argument("--top-down-mass", type=float, default=None, metavar="P",
                        help="cumulative probability of the branches kept (default 0.99; 1: exact)")
    search.add_argument("--top-down-entropy-stop", type=float, default=None, metavar="H",
                        help="descend to episode branches only from this normalised entropy over schemas on "
                             "(default 1.01: never, as chosen on validation; 0: always)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON lines")

    related = sub.add_parser("related", help="memories linked to one in the episodic graph")
    _common(related)
    related.add_argument("id", help="a memory id (or its first 8+ hex digits)")
    related.add_argument("-k", type=int, default=10)

    forget = sub.add_parser("forget", help="remove memories by id and/or filter from every store")
    _common(forget)
    forget.add_argument("ids", nargs="*", help="memory ids (or first 8+ hex digits)")
    _filters(forget)
    forget.add_argument("--policy", default=None, choices=("retention", "lru", "lfu", "newest", "random", "generative_agents"),
                        help="forget by use instead of by id/filter: keep the --budget memories this policy scores "
                             "most likely to be needed (retention: MemoryBank's exp(-dt/S), S growing with each open; "
                             "lru/lfu: least recently/frequently opened go first; "
                             "generative_agents: recency of the last open + importance derived from opens and "
                             "how unusual a memory is)")
    forget.add_argument("--budget", default=None, metavar="N|P%",
                        help="with --policy: memories to keep, a count (500) or a share (25%%)")
    forget.add_argument("--dry-run", action="store_true",
                        help="with --policy: list every memory that would go (nothing is forgotten)")
    forget.add_argument("--now", default=None, metavar="TIME",
                        help="with --policy: the time the policy scores at (ISO-8601, UTC; default now)")
    forget.add_argument("--seed", type=int, default=0, help="with --policy random: its seed (default 0)")
    forget.add_argument("--yes", action="store_true", help="really forget (otherwise: say what would go)")

    opened = sub.add_parser("open", help="show one memory and count it as opened (what the forgetting "
                                         "policies and access counts use)")
    _common(opened)
    opened.add_argument("id", help="a memory id (or its first 8+ hex digits), e.g. from a search")
    opened.add_argument("--json", action="store_true", help="print the memory as JSON")

    for name, text in (("stats", "counts by modality, year and place"),
                       ("check", "verify Chroma, FAISS and graph agree (exit 1 on problems)"),
                       ("rebuild", "restore Chroma from the journal, rebuild FAISS index and graph, drop orphan media")):
        _common(sub.add_parser(name, help=text))
    consolidate = sub.add_parser("consolidate", help="merge near-duplicates, keeping all sources")
    _common(consolidate)
    consolidate.add_argument("--threshold", type=float, default=0.97, help="cosine (default 0.97)")
    consolidate.add_argument("--yes", action="store_true", help="really merge (otherwise: say what would merge)")
    consolidate.add_argument("--undo", action="store_true",
                             help="undo the latest consolidate (the merged memories come back as they were)")
    return parser


def _open(args: argparse.Namespace):
    from mmai.memory.personal import PersonalMemory

    memory = PersonalMemory(args.root, args.checkpoint, chroma_host=args.chroma_host, chroma_port=args.chroma_port,
                            use_gpu_index=args.gpu_index, progress=not args.quiet,
                            create=args.command == "ingest", lock_timeout=args.lock_timeout,
                            repair=args.command == "rebuild")
    if memory.moved_aside is not None:
        print(f"note: the damaged Chroma database was moved aside to {memory.moved_aside} (kept); "
              "restoring the memories from the journal", file=sys.stderr)
    if memory.repaired.startswith("rebuilt"):
        print(f"note: {memory.root}: FAISS index {memory.repaired}", file=sys.stderr)
    return memory


def printable(text: Any) -> str:
    """``text`` safe for a terminal: control characters (ESC, BEL, ...) written as escapes, as ``stats``'s
    JSON does, so user text cannot clear the screen or retitle the terminal."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in str(text))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown time"
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _describe(metadata: dict[str, Any], document: str | None = None) -> str:
    what = metadata.get("media_path") or metadata.get("source_path") or ""
    if metadata.get("modality") == "text" and document:
        what = repr(document[:60] + ("..." if len(document) > 60 else ""))
    when, place = _when(metadata.get("timestamp")), metadata.get("place") or "-"
    return printable(f"{metadata.get('modality', '?'):5s} {when}  {place}  {what}")


def run_ingest(args: argparse.Namespace) -> int:
    """``mmai memory ingest``: files/folders (and/or the synthetic diary) -> memories, with a summary."""
    from mmai.memory.ingest import synthetic_collection

    from mmai.memory.personal import has_store

    if not args.paths and args.from_synthetic is None:
        raise ValueError("ingest: give files or folders, or --from-synthetic DIR")
    if args.checkpoint is None and args.chroma_host is None and not has_store(args.root):
        raise ValueError(f"ingest: no checkpoint yet: pass checkpoint=... (--checkpoint PATH) "
                         f"to create a memory store in {args.root} (a bi-encoder or re-ranker .ckpt)")
    with _open(args) as memory, _stop_on_signals(memory):
        paths, overrides = list(args.paths), {}
        if args.from_synthetic is not None:
            audio = bool(getattr(memory.encoder, "has_audio", False))
            found, overrides = synthetic_collection(args.from_synthetic, args.limit, audio=audio)
            paths += found
            if not audio:
                print("note: songs skipped: checkpoint has no audio tower (train with model.bi_encoder.audio)", file=sys.stderr)
        report = memory.ingest(paths, args.meta, progress=not args.quiet, require_time=args.require_time,
                               batch_size=args.batch_size, overrides=overrides, follow_links=args.follow_links,
                               policy=_write_policy(args))
        print(printable_lines(report.summary()))
        print(f"{memory.store.count()} memories in {memory.root}")
        if report.stopped:
            signal_name = memory.ingester.stop_requested
            if signal_name is None:
                print(f"mmai memory ingest: error: {printable(report.stopped)}", file=sys.stderr)
                return 4
            return 130 if signal_name == "SIGINT" else 143
    return 0


def _write_policy(args: argparse.Namespace):
    """``--policy`` and its thresholds -> a :class:`WritePolicy` (``None`` for keep-all)."""
    import dataclasses

    from mmai.memory.write_policy import POLICIES

    given = {name: value for name, value in (("merge_threshold", args.merge_threshold),
                                             ("discard_threshold", args.discard_threshold),
                                             ("burst_s", args.burst_s)) if value is not None}
    if args.policy == "keep-all":
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"ingest: {flags} apply to --policy merge only (the default keep-all stores every file)")
        return None
    return dataclasses.replace(POLICIES[args.policy], **given)  # WritePolicy validates the values


def printable_lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))


class _stop_on_signals:
    """While ingesting, SIGTERM/SIGINT stop after the current batch (the summary of what was
    confirmed is printed); a second signal stops at once."""

    def __init__(self, memory) -> None:
        self.memory, self.previous = memory, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        for number in (signal.SIGTERM, signal.SIGINT):
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        import signal

        name = signal.Signals(number).name
        if self.memory.ingester.stop_requested:
            raise KeyboardInterrupt(name)
        self.memory.ingester.stop_requested = name
        print(f"mmai memory ingest: {name}: stopping after the current batch (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _hit_json(hit) -> dict[str, Any]:
    metadata = {key: (str(value) if isinstance(value, Path) else value) for key, value in hit.metadata.items()}
    return {"rank": hit.rank + 1, "id": hit.id, "score": hit.score, "stage1_score": hit.stage1_score,
            "match_logit": hit.match_logit, "metadata": metadata, "document": hit.document,
            "panel_path": None if hit.panel_path is None else str(hit.panel_path), "explanation": hit.explanation,
            "related": [{"id": r.id, "weight": r.weight, "reason": r.reason} for r in hit.related]}


def run_search(args: argparse.Namespace) -> int:
    """``mmai memory search``: ranked memories, one line each (and GAR's reasons, panels)."""
    with _open(args) as memory:
        from mmai.memory.search import SearchOptions

        now = None
        if args.now is not None:
            from mmai.memory.ingest import parse_time

            now = parse_time(args.now, "--now")
        parsed = memory.understand(args.query, _filters_of(args), now, parse=not args.no_parse)
        options = SearchOptions(rerank=args.rerank, rerank_k=args.rerank_k, stage1_weight=args.stage1_weight,
                                gar=args.gar, gar_weight=args.gar_weight, damping=args.damping, ppr=args.ppr,
                                explain_dir=args.explain, recency_weight=args.recency_weight,
                                following=args.following or parsed.following, burst_s=args.burst_s,
                                top_down=args.top_down, top_down_mass=args.top_down_mass,
                                top_down_entropy_stop=args.top_down_entropy_stop)
        hits = memory.search(parsed.text, args.k, parsed.applied, options)
        if memory.searcher.last_top_down is not None:  # how much of the memory top-down scored
            print(memory.searcher.last_top_down.describe(len(memory.index)), file=sys.stderr if args.json else sys.stdout)
        if args.rerank and memory.index is not None:  # which rerank_k and lambda, and where they came from
            used = memory.rerank_settings(options).describe({"rerank_k": "--rerank-k",
                                                             "stage1_weight": "--stage1-weight"})
            print(f"re-rank: {used}", file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps({"understood": parsed.summary()}, default=str), file=sys.stderr)
        elif parsed.phrases or parsed.overridden or options.following:  # the words were read: say how
            for line in parsed.lines():
                print(printable(line))
            if options.following:
                from mmai.memory.words import after_anchor

                anchor = after_anchor(memory, parsed.text, parsed.applied, options, hits)
                if anchor is not None:
                    print(f"after: {anchor.id[:12]}  {_describe(anchor.metadata)}")
                    if not hits:
                        print("nothing came after it in its outing")
                        return 0
        if args.json:
            from mmai.memory.forgetting import usage_json

            opened = memory.access_log.read()
            for hit in hits:
                print(json.dumps({**_hit_json(hit), "filters": parsed.applied.active(),
                                  **usage_json(opened.get(hit.id))}, default=str))
            return 0
        if not hits:
            print("no memories match" + (" (stored places: " + printable(", ".join(memory.known_places())) + ")"
                                         if parsed.applied.place is not None else ""))
        for hit in hits:
            logit = "" if hit.match_logit is None else f" logit {hit.match_logit:+.3f}"
            print(f"{hit.rank + 1:2d}. {hit.score:+.3f}{logit}  {hit.id[:12]}  {_describe(hit.metadata, hit.document)}")
            if hit.explanation:
                print(f"      why: {printable(hit.explanation)}")
            for other in hit.related:
                print(f"      related {other.id[:12]} ({other.reason}, {other.weight:.2f}): "
                      f"{_describe(other.metadata)}")
            if hit.panel_path:
                print(f"      saliency: {printable(hit.panel_path)}")
    return 0


def run_related(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        for other in memory.related(args.id, args.k):
            print(f"{other.weight:.3f}  {other.id[:12]}  {other.reason:28s} {_describe(other.metadata)}")
    return 0


def run_open(args: argparse.Namespace) -> int:
    """``mmai memory open ID``: the memory's details; its access is recorded (count + 1, last now)."""
    from mmai.memory.forgetting import describe_usage, usage_json

    with _open(args) as memory:
        hit = memory.open(args.id, via="cli")
        stats = memory.access(hit.id)
        if args.json:
            print(json.dumps({**_hit_json(hit), **usage_json(stats)}, default=str))
            return 0
        print(f"{hit.id}  {_describe(hit.metadata, hit.document)}")
        if hit.metadata.get("modality") == "text" and hit.document:
            print(printable_lines(hit.document))
        print(describe_usage(stats))
    return 0


def _run_forget_policy(args: argparse.Namespace) -> int:
    """``forget --policy P --budget N``: keep the N memories P scores highest, forget the rest."""
    from mmai.memory.forgetting import describe_usage, parse_budget

    if args.ids or not _filters_of(args).empty:
        raise ValueError("forget: --policy forgets by use over the whole memory; give it no ids or filters")
    if args.budget is None:
        raise ValueError("forget: --policy needs --budget N (memories to keep) or --budget P% (a share)")
    now = None
    if args.now is not None:
        from mmai.memory.ingest import parse_time

        now = parse_time(args.now, "--now")
    with _open(args) as memory:
        total = memory.store.count()
        budget = parse_budget(args.budget, total)
        if args.yes and not args.dry_run:
            forgotten = memory.forget_budget(args.policy, budget, now, seed=args.seed)
            print(f"forgot {len(forgotten)} memories by {args.policy} (kept {memory.store.count()} of {total})")
            return 0
        kept, forgotten, score = memory.forget_plan(args.policy, budget, now, seed=args.seed)
        print(f"would keep {len(kept)} of {total} memories by {args.policy}; would forget {len(forgotten)}")
        if args.dry_run:
            stats = memory.access_log.read()
            metadata = memory.records.metadata_of(forgotten) if forgotten else {}
            for memory_id in sorted(forgotten, key=lambda i: score[i]):
                print(f"  {memory_id[:12]}  score {score[memory_id]:.4g}  {describe_usage(stats.get(memory_id))}  "
                      f"{_describe(metadata.get(memory_id, {}))}")
        elif forgotten:
            print("first to go: " + ", ".join(i[:12] for i in sorted(forgotten, key=lambda i: score[i])[:10])
                  + (" ..." if len(forgotten) > 10 else "") + "\n(--dry-run lists them all)")
        if forgotten:
            print("add --yes to forget them" if not args.dry_run else "nothing was forgotten (--dry-run)")
    return 0


def run_forget(args: argparse.Namespace) -> int:
    if args.policy is not None:
        return _run_forget_policy(args)
    if args.budget is not None or args.dry_run or args.now is not None:
        raise ValueError("forget: --budget, --dry-run and --now go with --policy")
    filters = _filters_of(args)
    if not args.ids and filters.empty:
        raise ValueError("forget: give ids or a filter (--year/--place/--modality/--after/--before)")
    with _open(args) as memory:
        if not args.yes:
            targets = memory.matching_ids(args.ids or None, filters)
            print(f"would forget {len(targets)} memories: {', '.join(t[:12] for t in targets[:10])}"
                  f"{' ...' if len(targets) > 10 else ''}\nadd --yes to forget them")
            return 0
        removed = memory.forget(args.ids or None, filters)
        print(f"forgot {removed} memories; {memory.store.count()} remain")
        if not removed:
            print("no memory matches those filters; nothing was forgotten", file=sys.stderr)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        print(json.dumps(memory.stats(), indent=1, default=str))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from mmai.memory.store import StoreDamagedError

    try:
        memory = _open(args)
    except StoreDamagedError as error:
        print(f"problem: {error}\n1 problem(s)")
        return 1
    with memory:
        problems = memory.check()
        print(f"{memory.store.count()} memories; index {memory.repaired} on open")
        for problem in problems:
            print(f"problem: {problem}")
        print("consistent" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def run_rebuild(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        print(json.dumps(memory.rebuild()))
    return 0


def run_consolidate(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        if args.undo:
            try:
                undone = memory.undo_consolidate()
            except FileNotFoundError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            skipped = (f"; {undone['skipped_groups']} group(s) stay merged (their keeper was forgotten since)"
                       if undone["skipped_groups"] else "")
            print(f"undid the consolidate of {undone['groups']} group(s): {undone['restored']} memories are back"
                  f"{skipped}; {memory.store.count()} memories (record kept as {undone['file']})")
            return 0
        if not args.yes:
            groups = memory.maintenance.duplicate_groups(args.threshold)
            merged = sum(len(group) - 1 for group in groups)
            print(f"would merge {merged} near-duplicate memories into {len(groups)} (cosine >= {args.threshold}); "
                  "only memories of one place and modality merge; the keeper lists every source's path, time and "
                  "media copy (copies are kept); `consolidate --undo` brings the merged memories back\n"
                  "add --yes to merge them")
            return 0
        merged = memory.consolidate(args.threshold)
        print(f"merged {merged} near-duplicate memories (cosine >= {args.threshold}); {memory.store.count()} remain")
    return 0


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what a closed pipe did not take
    does not print "Exception ignored ... BrokenPipeError" on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (captured): nothing to flush there
        pass


COMMANDS = {"ingest": run_ingest, "search": run_search, "related": run_related, "open": run_open, "forget": run_forget,
            "stats": run_stats, "check": run_check, "rebuild": run_rebuild, "consolidate": run_consolidate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mmai memory`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from mmai.memory.personal import StoreBusyError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at the interpreter's exit
        return status
    except StoreBusyError as error:
        print(f"mmai memory {args.command}: error: {error}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mmai memory {args.command}: error: {printable(message)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output stopped early (`... | head`): not a store error
        _stdout_to_devnull()
        return 141  # what a shell reports for a command stopped by SIGPIPE
    except OSError as error:  # disk full, permissions, I/O: one line naming the path
        import errno

        what = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or type(error).__name__)
        print(f"mmai memory {args.command}: error: {what} at {error.filename or args.root} ({error}); nothing "
              "stored was lost: fix it and run the command again", file=sys.stderr)
        return 4
    except Exception as error:  # noqa: BLE001 - a database error is one line, not chromadb's traceback
        import sqlite3

        if not (isinstance(error, sqlite3.Error) or type(error).__module__.startswith("chromadb")):
            raise
        text = str(error).splitlines()[0][:200] if str(error) else ""
        print(f"mmai memory {args.command}: error: the Chroma database under {args.root} failed "
              f"({type(error).__name__}: {text}); run `mmai memory check --root {args.root}`, and `mmai memory "
              "rebuild` to restore it from the journal", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
