"""``mmai demo``: the main job on a CPU machine, the whole pipeline end to end on synthetic data.

1. synthesise a CUB-format dataset (if missing) and write its shards (if missing);
2. stream a few validation batches through the DataModule;
3. ``mmai ablate`` on those shards over 3 seeds: the in-batch baseline, the bi-encoder with
   momentum queue and hard negatives, and the fusion re-ranker over it (the LiT CPU profiles:
   locked pretrained towers, their outputs cached once), evaluated into the reference table
   (stage 1 → + re-rank → + GAR → GAR control; mean ± std, paired 95% intervals; markdown, CSV, W&B);
4. a personal memory store (Chroma + FAISS + episodic graph) of the synthetic photos with the
   diary's times and places, embedded by the trained models;
5. four example queries (plain, filtered by year and place, with GAR associations, a swap-pair
   binding query), each hit marked ✓/✗ against its species' attributes and its saliency panel
   saved as a PNG, and the binding panels of a val swap pair;
6. the ablation table again, with the chance row and the paired differences.

W&B runs offline without credentials. Idempotent: a second run reuses the data, the finished
runs (by their arguments) and the memory store, and only re-runs the queries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import time
from pathlib import Path

from mmai_apps.resources import data_root

REPO = data_root()  # the installed package's folder: configs/ and sweeps/ are package data


#: (query, search options, the attributes the query names: what every hit should have). A fourth,
#: binding query is made from the data's first val swap pair (:func:`binding_query`).
DEMO_QUERIES = (
    ("a bird with a long orange beak and grey wings", {},
     {"bill_length": "long", "bill_colour": "orange", "wing_colour": "grey"}),
    ("a small bird with a yellow crown and white wing bars", {"year": None, "place": None},  # filled in
     {"crown_colour": "yellow", "wing_bars": True}),
    ("a bird with a hooked bill and a long tail", {"gar": True}, {"bill_shape": "hooked", "tail_length": "long"}),
)
#: The part noun a binding query uses for each colour attribute.
PART_WORDS = {"bill_colour": "bill", "crown_colour": "crown", "wing_colour": "wings", "belly_colour": "belly"}


def first_val_swap_pair(synth: Path, entries: list[dict]) -> tuple[dict, dict] | None:
    """The first swap pair (lower class id first) of the val split, or None."""
    val = set((synth / "cvpr2016_cub" / "valclasses.txt").read_text().split())
    return next(((a, b) for a in entries for b in entries if a["class_dir"] in val and b["class_id"] in
                 a.get("swap_partners", []) and a["class_id"] < b["class_id"]), None)


def binding_query(pair: tuple[dict, dict]) -> tuple[str, dict]:
    """The query true of the pair's first species that, as a bag of words, also fits its swap
    partner ("a white crown and a red belly" vs "a red crown and a white belly"), and the
    attributes it names."""
    from mmai.evaluation.probes import COLOUR_ATTRIBUTES

    first, second = pair
    swapped = [name for name in COLOUR_ATTRIBUTES if first["attributes"][name] != second["attributes"][name]]
    phrases = []
    for name in swapped:
        colour = first["attributes"][name]
        article = "" if PART_WORDS[name].endswith("s") else ("an " if colour[0] in "aeiou" else "a ")
        phrases.append(f"{article}{colour} {PART_WORDS[name]}")
    return "a bird with " + " and ".join(phrases), {name: first["attributes"][name] for name in swapped}


def _settings(args) -> dict:
    from mmai_apps.ablate import load_settings

    settings = load_settings(REPO / "configs/experiments/ablation.yaml")
    settings["bi_encoder"]["epochs"] = args.epochs
    settings["reranker"]["epochs"] = args.rerank_epochs
    settings["retrieval"] = {**settings["retrieval"], "rerank_k": args.rerank_k}
    settings["seeds"] = list(args.seeds)
    return settings


def _date(timestamp) -> str:
    if timestamp is None or (isinstance(timestamp, float) and math.isnan(timestamp)):
        return "unknown time"
    return dt.datetime.fromtimestamp(float(timestamp), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _species(metadata: dict) -> str:
    source = Path(str(metadata.get("source_path", "")))
    return source.parent.name.split(".", 1)[-1].replace("_", " ") if source.parent.name else "?"


def _class_id(metadata: dict) -> int | None:
    folder = Path(str(metadata.get("source_path", ""))).parent.name
    head = folder.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def attribute_check(named: dict, attributes: dict | None) -> str:
    """``✓`` when the species has every attribute the query names, else ``✗`` and what differs."""
    if attributes is None:
        return "? (species unknown)"
    wrong = [f"{name.replace('_', ' ')} {attributes.get(name)}" for name, value in named.items()
             if attributes.get(name) != value]
    return "✓" if not wrong else "✗ " + ", ".join(wrong)


def _print_hits(hits, show_related: bool, named: dict, species: dict[int, dict]) -> int:
    """Print the hits with their attribute check; returns how many have every named attribute."""
    good = 0
    for hit in hits:
        meta = hit.metadata
        logit = f", match {hit.match_logit:+.2f}" if hit.match_logit is not None else ""
        check = attribute_check(named, species.get(_class_id(meta)))
        good += check == "✓"
        print(f"  {hit.rank + 1}. {check:<3} {hit.id[:8]}  score {hit.score:.3f} (cosine {hit.stage1_score:.3f}{logit})  "
              f"{meta.get('modality', '?')} · {_species(meta)} · {meta.get('place', '?')} · {_date(meta.get('timestamp'))}")
        if hit.panel_path:
            print(f"     saliency panel: {hit.panel_path}")
        if show_related and hit.explanation:
            print(f"     why: {hit.explanation}")
        if show_related:
            for related in hit.related[:3]:
                print(f"     related {related.id[:8]} ({related.reason}, weight {related.weight:.2f}): "
                      f"{_species(related.metadata)} · {related.metadata.get('place', '?')} · "
                      f"{_date(related.metadata.get('timestamp'))}")
    return good


def _memory_demo(synth: Path, checkpoint: Path, root: Path, panels: Path) -> None:
    from mmai.memory.filters import Filters
    from mmai.memory.ingest import synthetic_collection
    from mmai.memory.personal import PersonalMemory
    from mmai.memory.search import SearchOptions

    memory = PersonalMemory(root, checkpoint)
    paths, overrides = synthetic_collection(synth, audio=False)
    print(f"[5/6] memory store {root}: ingesting {len(paths)} synthetic photos with the diary's time and place")
    report = memory.ingest(paths, overrides=overrides)
    print("  " + report.summary().replace("\n", "\n  "))
    stats = memory.stats()
    print("  store: " + ", ".join(f"{key} {value}" for key, value in stats.items() if not isinstance(value, dict)))
    entries = _species_entries(synth)
    species = {int(entry["class_id"]): entry["attributes"] for entry in entries}
    pair = first_val_swap_pair(synth, entries)
    queries = list(DEMO_QUERIES)
    if pair is not None:  # a binding query: its swap partner holds the same colour words on other parts
        text, named = binding_query(pair)
        queries.append((text, {}, named))
    print(f"[6/6] {len(queries)} example queries (top 3, re-ranked by the fusion model; panels of the hits). "
          "✓: the hit's species has every attribute the query names (species_attributes.json); ✗: what differs")
    total = good = 0
    for number, (query, options, named) in enumerate(queries, 1):
        options = dict(options)
        if "place" in options:  # narrow to the year and place of the query's own best unfiltered hit
            best = memory.search(query, k=1)[0].metadata
            options.update(place=best.get("place"), year=best.get("year"))
        filters = ", ".join(f"{key} {value}" for key, value in options.items() if key in ("year", "place"))
        gar = options.pop("gar", False)
        print(f'\n  query {number}: "{query}"' + (f"  [filters: {filters}]" if filters else "")
              + ("  [+ GAR associations]" if gar else ""))
        start = time.perf_counter()
        hits = memory.search(query, 3, Filters(**options),
                             SearchOptions(rerank=True, gar=gar, explain_dir=panels / f"query{number}"))
        print(f"  ({1000 * (time.perf_counter() - start):.0f} ms incl. encoding the query and the panels)")
        good += _print_hits(hits, gar, named, species)
        total += len(hits)
    print(f"\n  {good} of {total} hits have every attribute their query names")
    _binding_panels(memory, synth, pair, panels / "binding")
    memory.close()


def _species_entries(synth: Path) -> list[dict]:
    """The ``species`` of ``mmai_extras/species_attributes.json`` ([] without the file)."""
    import json

    path = synth / "mmai_extras" / "species_attributes.json"
    return json.loads(path.read_text()).get("species", []) if path.is_file() else []


def _binding_panels(memory, synth: Path, pair: tuple[dict, dict] | None, folder: Path) -> None:
    """For the first val swap pair: the binding query, its saliency on a photo of each species of
    the pair (the probe's question, made visible)."""
    import json

    from PIL import Image

    from mmai.evaluation.probes import probe_words

    stage2 = memory.stage2
    if stage2 is None or pair is None:
        return
    first, second = pair
    words = probe_words(first["attributes"], second["attributes"])
    query = binding_query(pair)[0]
    conditions = {}
    diary = synth / "mmai_extras" / "episodes.jsonl"
    for line in diary.read_text().splitlines() if diary.is_file() else []:
        entry = json.loads(line)
        conditions[int(entry["image_id"])] = entry.get("condition", "clear")
    images = {}  # the first clear photo of each species: a dark or blurred one would differ for other reasons
    for line in (synth / "CUB_200_2011" / "images.txt").read_text().splitlines():
        image_id, relpath = line.split()
        for entry in pair:
            if (relpath.startswith(entry["class_dir"] + "/") and entry["class_id"] not in images
                    and conditions.get(int(image_id), "clear") == "clear"):
                images[entry["class_id"]] = synth / "CUB_200_2011" / "images" / relpath
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n  binding: \"{query}\" is true of {first['name'].replace('_', ' ')} and, as a bag of words "
          f"({', '.join(words)}), also of its swap partner {second['name'].replace('_', ' ')}")
    for entry in pair:
        with Image.open(images[entry["class_id"]]) as image:
            image.load()
            logit = float(stage2.rerank(query, [image])[0])
            path = folder / f"{entry['class_id']:03d}.png"
            stage2.explain(query, image).save(path)
        print(f"    {entry['name'].replace('_', ' '):<32} match logit {logit:+.2f}  panel {path}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmai demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("data/demo"))
    parser.add_argument("--classes", type=int, default=240,
                        help="synthetic species (CUB has 200); the demo's 240 in families of 2-3 give val and test "
                             "24-25 swap pairs each, the binding probe's independent units")
    parser.add_argument("--images", type=int, default=1200, help="synthetic images (CUB has 11,788)")
    parser.add_argument("--swap-share", type=float, default=1.0, help="chance that a family has a swap pair")
    parser.add_argument("--variants", type=int, nargs=2, default=[0, 1], metavar=("LOW", "HIGH"),
                        help="one-attribute variants per family (default 0 1: small families, many of them)")
    parser.add_argument("--no-twins", dest="twins", action="store_false",
                        help="no counterfactual twins of the training photos (the re-ranker's binding negatives)")
    parser.add_argument("--epochs", type=int, default=60,
                        help="bi-encoder epochs (each of the two rows; LiT profile: ~4 cached steps an epoch)")
    parser.add_argument("--rerank-epochs", type=int, default=100,
                        help="re-ranker epochs (LiT profile: 18 cached steps an epoch)")
    parser.add_argument("--rerank-k", type=int, default=8, help="candidates the re-ranker re-scores per query")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the ablation (default 0 1 2: mean ± std and paired 95%% intervals)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from mmai_apps.ablate import run_ablation
    from mmai_apps.lightning_cli import inspect_main
    from mmai.data.shards import read_manifest, write_shards
    from mmai.data.synth import synthesize

    workdir = args.workdir.resolve()
    synth, shards = workdir / "synth", workdir / "shards"
    print(f"[1/6] synthetic CUB ({args.classes} species, {args.images} images) in {synth}")
    synthesize(synth, classes=args.classes, images=args.images, audio=False, swap_share=args.swap_share,
               variants=tuple(args.variants), twins=args.twins)
    if not (shards / "manifest.json").exists():
        print(f"      writing WebDataset shards to {shards}")
        # about 3/4 of the images are training images: keep at least 8 training shards for the workers
        write_shards(synth, shards, samples_per_shard=max(8, min(128, args.images // 16)))
    else:
        print(f"      shards exist: {shards}")
    manifest = read_manifest(shards)
    print("[2/6] a few validation batches through CUBWebDataModule")
    inspect_main(["--shards", str(shards), "--split", "val", "--batches", "2", "--num-workers", "2",
                  "--image-size", "224"])
    print(f"[3/6] + [4/6] the ablation (mmai ablate): in-batch baseline and queue + hard negatives "
          f"({args.epochs} epochs each), then the re-ranker ({args.rerank_epochs} epochs)")
    ablation = run_ablation(_settings(args), workdir / "ablation", shards)
    checkpoint = ablation.runs["rerank"].last_checkpoint
    _memory_demo(synth, checkpoint, workdir / "memory", workdir / "panels")
    print("\n" + ablation.markdown.split("\nProtocol:")[0])
    print(f"(protocol: {workdir / 'ablation' / 'ablation.md'})")
    print(f"\nablation table: {workdir / 'ablation' / 'ablation.md'} (and .csv); panels: {workdir / 'panels'}")
    print(f"re-ranker checkpoint: {checkpoint}; W&B (offline): {workdir / 'ablation' / 'runs'}/*/wandb")
    print(f"mmai demo finished in {time.perf_counter() - start:.0f} s")
    return 0
