"""Searching a personal memory in words: stage 1, optional re-rank and GAR, saliency panels.

``search(query, k, filters, options)``:

1. **Embed** the sentence with the stage-1 text tower: one ``(E,)`` vector.
2. **Stage 1.** Without filters FAISS returns the first ``list_length`` memories, where by default
   ``list_length = max(k, rerank_k if re-ranking, 4k if GAR)``; with filters an exact scan of the
   memories the filter matches does, the filter being a mask over the in-memory metadata table
   (:class:`~mmai.memory.table.MemoryTable`; pre-filtering, so a filter never returns fewer results
   than exist; ``options.reference``, and a clause the table does not mirror, use Chroma's
   filtered HNSW, approximate at scale). Recency and
   importance bonuses (Generative Agents; off by default) are added exactly: the list grows
   until no memory outside it could win.
3. **Re-rank** (``options.rerank``). The image candidates among the first ``rerank_k`` are scored
   by the fusion re-ranker and re-ordered by the library's two-stage score
   (:func:`mmai.retrieval.two_stage.rerank_topk`: match logit + ``stage1_weight`` x stage-1 cosine); images
   move only among the image slots of that window, notes and songs keep theirs. ``rerank_k`` and
   ``stage1_weight`` default to the values the re-ranker was validated with
   (:attr:`~mmai.inference.Stage2Model.settings_source` says where they come from). Patch tokens
   of images scored before come from :class:`PatchCache` (bounded, least recently used dropped).
4. **GAR** (``options.gar``). The hits seed a personalised PageRank over the episodic graph
   (:class:`~mmai.retrieval.gar.GraphAugmentedRetriever`, ``gar_mode``, ``gar_weight``, ``damping``;
   by default the ``"burst"`` mode, whose top hits' burst-mates follow them, explained as "same
   outing"; ``ppr="local"`` computes the walk by forward push from the seeds); the results obey the
   filters again and the ``k`` returned carry an explanation and their related memories.
5. **Explain** (``options.explain_dir``). A saliency panel per image hit.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmai.memory.filters import Filters
from mmai.memory.index_sync import IndexSync, int_id
from mmai.memory.models import MemoryModels
from mmai.memory.records import NoMatch, Records, Related, SearchHit
from mmai.memory.store import MemoryStore
from mmai.retrieval import pipeline
from mmai.retrieval.gar import GAR_MODES, PPR_METHODS, GraphAugmentedRetriever
from mmai.retrieval.graph import EDGE_REASONS

__all__ = ["GIVEN", "MOMENT_S", "RerankSettings", "SearchOptions", "Searcher"]

GIVEN = "given"  #: the source of a re-rank setting passed in :class:`SearchOptions`
#: memories of another modality at most this many seconds apart at one place were recorded together
#: (a photo and the song recorded with it); :meth:`Searcher.related` lists them first.
MOMENT_S = 60.0
MOMENT_REASON = "recorded together"


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclasses.dataclass
class SearchOptions:
    """How a search ranks: the stages that run and their settings (defaults: stage 1 alone).

    Attributes:
        rerank: re-score the image candidates among the first ``rerank_k`` with the fusion re-ranker.
        rerank_k: candidates the re-ranker re-scores (default ``None``: the value the re-ranker was
            validated with, else its checkpoint's, 16).
        stage1_weight: lambda of the two-stage score ``match_logit + stage1_weight * stage-1 cosine``
            (default ``None``: as ``rerank_k``, else 1.0).
        list_length: stage-1 candidate list length, at least ``k`` (default ``None``: ``max(k,
            rerank_k`` when re-ranking, ``4k`` with GAR``)``).
        gar: re-rank by Graph-Augmented Retrieval over the episodic graph, with explanations and
            ``related`` memories.
        gar_weight: GAR's weight of the retrieval score against graph activation (default 0.5).
        damping: personalised PageRank damping: the walk's probability of following an edge (0.5).
        gar_mode: GAR's settings, a :data:`~mmai.retrieval.gar.GAR_MODES` name (default ``"burst"``:
            reciprocal-rank scores, the top 5 hits seed, temporal walk, and the top 3 hits'
            burst-mates — photos within 120 s — placed right after them; ``"legacy"``: before issue 19).
        gar_seeds: hits that seed the walk (default ``None``: the mode's; 0: every hit).
        semantic_edges: the walk follows the graph's semantic edges too (default ``None``: the
            mode's, off for ``"burst"``); the graph itself is built by the memory's ``GraphConfig``.
        related_k: related memories per hit with ``gar`` (default 5).
        explain_dir: write a saliency panel per image hit here (needs a re-ranker checkpoint).
        recency_weight: add ``recency_weight * 0.5 ** (age / half-life)`` (default 0: off); the age
            counts from the last access: the later of when the memory was made and when it was last
            opened (:meth:`PersonalMemory.open`).
        recency_half_life_days: half-life of recency (default 30).
        importance_weight: add ``importance_weight * importance`` (default 0: off).
        now: reference time for recency, unix seconds (default: the clock).
        following: the query describes an *anchor* memory ("the heron at the lake"): find it (the
            best match under the filters, with the other options), then return the memories that
            followed it in its outing, in time order (the graph's directed "follows" links). The
            hits' explanation says how long after the anchor; their ``related[0]`` is the anchor.
            Only the modality filter applies to the followers (time and place describe the anchor).
        burst_s: with ``following``, leave out memories at most this many seconds after the anchor
            (its own burst of photos, the recording made with it; default 120, GAR's burst window;
            0: every later memory).
        top_down: stage 1 by entropy-driven top-down retrieval (:mod:`mmai.retrieval.topdown`) over the
            episodic graph's schemas and episodes instead of scoring every memory: schema centroids
            first, schemas kept up to ``top_down_mass``, episode branches only when the schemas'
            entropy is at least ``top_down_entropy_stop``. :attr:`Searcher.last_top_down` says how
            many memories it scored. Exact search when ``top_down_mass`` is 1. Not with filters.
        top_down_mass: cumulative softmax probability kept per level (default ``None``:
            :class:`~mmai.retrieval.topdown.TopDownSettings`'s, chosen on validation queries).
        top_down_entropy_stop: normalised entropy below which the descent stops at the schemas
            (default ``None``: as ``top_down_mass``).
        top_down_temperature: softmax temperature over cosines (default ``None``: as ``top_down_mass``).
        ppr: how GAR computes its personalised PageRank: ``"local"`` (default: forward push from the
            seeds, which reads only their neighbourhood; its top 10 equalled global's on 100/100
            queries at 10k and 117,880 memories, ``mmai bench memory --check-queries``) or
            ``"global"`` (power iteration over the whole graph).
        reference: the search as it was before the in-memory table (for comparison, e.g. ``mmai
            bench memory --compare``): filters by Chroma's filtered HNSW instead of an exact scan of
            the memories that match, GAR explains every candidate before the filter, and the
            re-ranker encodes every image again (no patch-token cache).
    """

    rerank: bool = False
    rerank_k: int | None = None
    stage1_weight: float | None = None
    list_length: int | None = None
    gar: bool = False
    gar_weight: float = 0.5
    damping: float = 0.5
    gar_mode: str = "burst"
    gar_seeds: int | None = None
    semantic_edges: bool | None = None
    related_k: int = 5
    explain_dir: str | os.PathLike | None = None
    recency_weight: float = 0.0
    recency_half_life_days: float = 30.0
    importance_weight: float = 0.0
    now: float | None = None
    following: bool = False
    burst_s: float = 120.0
    top_down: bool = False
    top_down_mass: float | None = None
    top_down_entropy_stop: float | None = None
    top_down_temperature: float | None = None
    ppr: str = "local"
    reference: bool = False

    def __post_init__(self) -> None:
        if self.ppr not in PPR_METHODS:
            raise ValueError(f"search: ppr must be one of {PPR_METHODS}, got {self.ppr!r}")
        for name in ("rerank_k", "list_length"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"search: {name} must be >= 1, got {value}")
        if self.gar_mode not in GAR_MODES:
            raise ValueError(f"search: gar_mode must be one of {sorted(GAR_MODES)}, got {self.gar_mode!r}")
        self.top_down_settings()  # a bad mass / entropy stop / temperature fails here, in one line

    def top_down_settings(self):
        """The :class:`~mmai.retrieval.topdown.TopDownSettings` of these options (defaults where ``None``)."""
        from mmai.retrieval.topdown import TopDownSettings

        given = {"mass": self.top_down_mass, "entropy_stop": self.top_down_entropy_stop,
                 "temperature": self.top_down_temperature}
        return TopDownSettings(**{key: float(value) for key, value in given.items() if value is not None})


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """The ``rerank_k`` and ``stage1_weight`` a re-ranked search uses, and where each came from.

    Attributes:
        rerank_k: candidates re-scored.
        stage1_weight: lambda of ``match_logit + stage1_weight * stage-1 cosine``.
        rerank_k_from, stage1_weight_from: :data:`GIVEN` (set in the options) or the re-ranker's
            :attr:`~mmai.inference.Stage2Model.settings_source`.
    """

    rerank_k: int
    stage1_weight: float
    rerank_k_from: str
    stage1_weight_from: str

    def describe(self, given_as: dict[str, str] | None = None) -> str:
        """E.g. ``"rerank_k 7, stage1_weight 0.3 (from the checkpoint's validation record, epoch 2)"``;
        ``given_as`` names given values, e.g. ``{"rerank_k": "--rerank-k"}``."""
        names = given_as or {}
        sources = [names.get(name, GIVEN) if source == GIVEN else source
                   for name, source in (("rerank_k", self.rerank_k_from), ("stage1_weight", self.stage1_weight_from))]
        if sources[0] == sources[1]:
            return f"rerank_k {self.rerank_k}, stage1_weight {self.stage1_weight:g} (from {sources[0]})"
        return (f"rerank_k {self.rerank_k} (from {sources[0]}), stage1_weight {self.stage1_weight:g} "
                f"(from {sources[1]})")


class PatchCache:
    """The re-ranker's patch tokens of images already scored, least recently used dropped first.

    Keyed by the memory and its image file's path, size and modification time (a file changed on
    disk is encoded again; two memories never share an entry, as two photos of an archive do not);
    bounded by ``max_bytes`` of tensors (default 256 MiB: about 430 ViT-B/16 images at 224
    px, 65,000 of the benchmark's tiny model).
    """

    def __init__(self, load_image, max_bytes: int = 256 << 20) -> None:
        self._load_image, self.max_bytes = load_image, int(max_bytes)
        self._entries: "OrderedDict[tuple, Any]" = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def patches(self, window: list[SearchHit], stage2) -> list[tuple[int, SearchHit, Any]]:
        """``(slot, hit, patches (N, Dv))`` of the window's images that load, in window order."""
        keys: dict[int, tuple] = {}
        for slot, hit in enumerate(window):
            path = hit.metadata.get("media_path")
            if hit.metadata.get("modality") != "image" or path is None:
                continue
            try:
                stat = os.stat(path)
            except OSError:
                continue
            keys[slot] = (hit.id, str(path), stat.st_size, stat.st_mtime_ns)
        missing = [slot for slot, key in keys.items() if key not in self._entries]
        loaded = [(slot, self._load_image(window[slot])) for slot in missing]
        loaded = [(slot, image) for slot, image in loaded if image is not None]
        if loaded:
            encoded = stage2.image_patches([image for _, image in loaded]).detach().cpu()  # (n, N, Dv)
            for (slot, _), patches in zip(loaded, encoded):
                self._put(keys[slot], patches.clone())
        self.misses += len(missing)
        found = []
        for slot, key in keys.items():
            if key in self._entries:
                self._entries.move_to_end(key)
                found.append((slot, window[slot], self._entries[key]))
        self.hits += len(found) - len(loaded)
        return found

    def _put(self, key: tuple, patches) -> None:
        size = patches.numel() * patches.element_size()
        self._entries[key] = patches
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def _recency(timestamps: np.ndarray, now: float, half_life_s: float) -> np.ndarray:
    return np.nan_to_num(0.5 ** (np.maximum(now - timestamps, 0.0) / half_life_s), nan=0.0)


class Searcher:
    """The search stages over one memory's parts (see the module docstring).

    Args:
        store, sync, records, models: the memory's parts (the caller holds the memory's lock).
    """

    def __init__(self, store: MemoryStore, sync: IndexSync, records: Records, models: MemoryModels,
                 last_opened: Callable[[], dict[str, float]] = dict) -> None:
        self.store, self.sync, self.records, self.models = store, sync, records, models
        self.last_opened = last_opened  # memory id -> when the user last opened it (the access log)
        self._gar: GraphAugmentedRetriever | None = None
        self._gar_settings: tuple | None = None  # the options self._gar was built with
        self._top_down = None  # (graph, TopDownIndex) of the last top-down search
        self.last_top_down = None  # the TopDownResult of the last top-down search (None otherwise)
        self.patch_cache = PatchCache(self._load_image)

    # ------------------------------------------------------------------ the search
    def search(self, query: str, k: int = 10, filters: Filters | None = None,
               options: SearchOptions | None = None) -> list[SearchHit]:
        """See :meth:`PersonalMemory.search`."""
        if int(k) < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        options = options or SearchOptions()
        k = int(k)
        if self.sync.index is None:
            return []
        if options.following:
            return self._following(query, k, filters, options)
        try:
            where = self.records.where(filters)
        except NoMatch:
            return []
        self.last_top_down = None
        if options.top_down and where is not None:
            raise ValueError(f"search: top-down search does not combine with filters ({filters.active()}); "
                             "drop the filters (or, for words read as filters, --no-parse) or the top-down option")
        query_vector = self._embed_query(query)  # (E,)
        settings = self.rerank_settings(options) if options.rerank else None
        list_length = max(k, options.list_length or max(settings.rerank_k if settings else 0,
                                                        4 * k if options.gar else 0))
        candidates = self._weighted_candidates(query_vector, int(list_length), where, k, options)
        if settings is not None:
            self._rerank(query, candidates, settings, options.reference)
        if options.gar:
            candidates = self._gar_rerank(candidates, query_vector, k, where, options)
        hits = candidates[:k]
        for rank, hit in enumerate(hits):
            hit.rank = rank
        if options.explain_dir is not None:
            self._explain(query, hits, Path(options.explain_dir))
        return hits

    def rerank_settings(self, options: SearchOptions | None = None) -> RerankSettings:
        """The re-rank settings ``options`` lead to: given values win, else the re-ranker's own
        (its validation record, else its checkpoint's hyperparameters). Loads the re-ranker."""
        options = options or SearchOptions()
        stage2 = self.models.stage2
        source = str(getattr(stage2, "settings_source", None) or "the re-ranker's defaults")
        return RerankSettings(
            int(stage2.rerank_k if options.rerank_k is None else options.rerank_k),
            float(stage2.stage1_weight if options.stage1_weight is None else options.stage1_weight),
            source if options.rerank_k is None else GIVEN, source if options.stage1_weight is None else GIVEN)

    def _embed_query(self, query: str) -> np.ndarray:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"search: query must be a non-empty sentence, got {query!r}")
        vector = self.models.encoder.embed_texts([query])
        return np.asarray(vector.detach().cpu().numpy() if hasattr(vector, "detach") else vector, np.float32)[0]

    # ------------------------------------------------------------------ stage 1
    def _candidates(self, query_vector: np.ndarray, list_length: int, where: dict | None,
                    options: SearchOptions | None = None) -> list[SearchHit]:
        """Stage 1: FAISS without filters; with them an exact scan of the memories that match
        (the in-memory table's mask), or Chroma's filtered search (``options.reference``, or a clause
        the table does not evaluate); or the top-down descent (``options.top_down``, no filters)."""
        index = self.sync.index
        reference = options is not None and options.reference
        mask = None
        if where is not None and not reference:
            table = self.sync.table()
            mask = table.mask(where)
        if options is not None and options.top_down:
            numbers, scores = self._top_down_hits(query_vector, list_length, options)
            ids = [self.sync.str_ids[int(n)] for n in numbers]
            score_of = dict(zip(ids, scores.tolist()))
            records = self.store.get(ids, include_embeddings=False, missing="skip")
            rows = zip(records.ids, [score_of[i] for i in records.ids], records.metadatas, records.documents)
        elif where is None or mask is not None:
            if where is None:
                scores, numbers = index.search(query_vector[None], min(list_length, len(index)))  # (1, n)
                keep = numbers[0] >= 0
                ids = [self.sync.str_ids[int(n)] for n in numbers[0][keep]]
                scores = scores[0][keep]
            else:
                rows, scores = table.search(query_vector, list_length, mask)
                ids = [table.ids[int(row)] for row in rows]
            score_of = dict(zip(ids, scores.tolist()))
            # a memory forgotten by another process since the index was read is skipped
            records = self.store.get(ids, include_embeddings=False, missing="skip")
            rows = zip(records.ids, [score_of[i] for i in records.ids], records.metadatas, records.documents)
        else:
            found = self.store.query(query_vector, min(list_length, self.store.count()), where=where)
            rows = zip(found.ids[0], found.scores[0].tolist(), found.metadatas[0], found.documents[0])
        return [self.records.hit(memory_id, score, score, metadata, document)
                for memory_id, score, metadata, document in rows]

    def _top_down_hits(self, query_vector: np.ndarray, list_length: int,
                       options: SearchOptions) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 by top-down search (:mod:`mmai.retrieval.topdown`): ``(ids (n,), cosines (n,))``
        over the memory's episodic graph (built on first use, as GAR's). The index is cached with
        the graph it came from (a change of the memory drops the graph, so the next search rebuilds
        both); the result is left in :attr:`last_top_down`."""
        from mmai.retrieval.topdown import TopDownIndex

        graph = self.sync.graph()
        if self._top_down is None or self._top_down[0] is not graph:
            self._top_down = (graph, TopDownIndex.from_graph(graph))
        result = self._top_down[1].search(query_vector, int(list_length), options.top_down_settings())
        self.last_top_down = result
        return result.ids, result.scores

    def _weighted_candidates(self, query_vector: np.ndarray, list_length: int, where: dict | None, k: int,
                             options: SearchOptions) -> list[SearchHit]:
        """Stage-1 candidates with recency/importance added, exactly: a memory outside the list
        scores at most (the list's lowest cosine + the largest bonus), so the list grows (x4)
        until its k-th weighted score beats that bound or it holds every memory."""
        total = self.store.count() if options.reference else len(self.sync)  # equal: the reader synced
        recency_weight, importance_weight = options.recency_weight, options.importance_weight
        while True:
            hits = self._candidates(query_vector, list_length, where, options)
            if not (recency_weight or importance_weight):
                return hits
            lowest = min((hit.stage1_score for hit in hits), default=0.0)
            self._weigh(hits, options, self.last_opened() if recency_weight else {})
            bound = lowest + max(recency_weight, 0.0) + max(importance_weight, 0.0)
            if list_length >= total or len(hits) < list_length or (len(hits) >= k and hits[k - 1].score >= bound):
                return hits
            list_length = min(4 * list_length, total)

    @staticmethod
    def _weigh(hits: list[SearchHit], options: SearchOptions, opened: dict[str, float] | None = None) -> None:
        """Generative Agents' recency and importance added to the stage-1 score (both off by default).
        Recency counts from the memory's last access, as in Generative Agents: the later of when it
        was made and when the user last opened it (``opened``: id -> unix seconds)."""
        if not hits or (not options.recency_weight and not options.importance_weight):
            return
        opened = opened or {}
        times = np.array([np.fmax(hit.metadata.get("timestamp", np.nan), opened.get(hit.id, np.nan)) for hit in hits],
                         dtype=np.float64)
        now = time.time() if options.now is None else float(options.now)
        recency = _recency(times, now, options.recency_half_life_days * 86_400.0)
        for hit, fresh in zip(hits, recency.tolist()):
            hit.score += (options.recency_weight * fresh
                          + options.importance_weight * float(hit.metadata.get("importance", 0.0)))
        hits.sort(key=lambda hit: -hit.score)  # stable: ties keep stage-1 order

    # ------------------------------------------------------------------ re-rank
    @staticmethod
    def _load_image(hit: SearchHit):
        from PIL import Image

        path = hit.metadata.get("media_path")
        if hit.metadata.get("modality") != "image" or path is None:
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:
            return None

    def _rerank(self, query: str, hits: list[SearchHit], settings: RerankSettings, reference: bool = False) -> None:
        """Re-score the image candidates in the first ``rerank_k`` by the library's two-stage score;
        they move only among image slots. Images seen before are not decoded or encoded again: their
        patch tokens come from :attr:`patch_cache` (``reference``: every image encoded again)."""
        import torch

        window = hits[: settings.rerank_k]
        stage2 = self.models.stage2
        if reference or not hasattr(stage2, "rerank_patches"):
            images = [(slot, hit, self._load_image(hit)) for slot, hit in enumerate(window)]
            images = [(slot, hit, image) for slot, hit, image in images if image is not None]
            if not images:
                return
            logits = torch.as_tensor(stage2.rerank(query, [image for _, _, image in images]))  # (n,)
        else:
            images = [(slot, hit, patches) for slot, hit, patches in self.patch_cache.patches(window, stage2)]
            if not images:
                return
            logits = torch.as_tensor(stage2.rerank_patches(query, torch.stack([p for _, _, p in images])))  # (n,)
        stage1 = torch.tensor([[hit.stage1_score for _, hit, _ in images]], dtype=torch.float64)  # (1, n)
        positions = torch.arange(len(images))[None]  # (1, n): the images in stage-1 (window) order

        def computed(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            return logits[candidates]  # (1, n): the window's logits, scored above in one batch

        stage2 = pipeline.Rerank(computed, len(images), settings.stage1_weight)
        two_stage = pipeline.rank(pipeline.Ranking(positions, stage1), rerank=stage2).two_stage
        order, scores = two_stage.positions, two_stage.scores  # (1, n) each
        for (slot, _, _), position, score in zip(images, order[0].tolist(), scores[0].tolist()):
            hit = images[position][1]
            hit.match_logit, hit.score = float(logits[position]), float(score)
            hits[slot] = hit

    # ------------------------------------------------------------------ temporal order
    def _following(self, query: str, k: int, filters: Filters | None, options: SearchOptions) -> list[SearchHit]:
        """``options.following``: the anchor (best match), then what followed it in its outing."""
        anchors = self.search(query, 1, filters, dataclasses.replace(options, following=False, explain_dir=None))
        if not anchors:
            return []
        anchor = anchors[0]
        later = self.sync.graph().following(int_id(anchor.id), skip_s=max(float(options.burst_s), 0.0))
        ids = [self.sync.str_ids[int(number)] for number, _ in later]
        gaps = {memory_id: gap for memory_id, (_, gap) in zip(ids, later)}
        metadata = self.records.metadata_of(ids) if ids else {}
        wanted = None if filters is None or filters.modality is None else (
            {filters.modality} if isinstance(filters.modality, str) else set(filters.modality))
        chosen = [i for i in ids if i in metadata and (wanted is None or metadata[i].get("modality") in wanted)][:k]
        records = self.store.get(chosen, include_embeddings=False, missing="skip") if chosen else None
        documents = dict(zip(records.ids, records.documents)) if records else {}
        hits = []
        for rank, memory_id in enumerate(chosen):
            hit = SearchHit(memory_id, rank, anchor.score, anchor.stage1_score, metadata=metadata[memory_id],
                            document=documents.get(memory_id))
            hit.explanation = (f"{_duration(gaps[memory_id])} after the anchor {anchor.id[:8]} "
                               f"(the best match for the query), same outing")
            hit.related = [Related(anchor.id, anchor.score, "anchor (best match)", anchor.metadata)]
            hits.append(hit)
        return hits

    # ------------------------------------------------------------------ graph and GAR
    def related(self, memory_id: str, k: int = 10) -> list[Related]:
        """See :meth:`PersonalMemory.related`: the strongest graph links, but first the memories
        of another modality recorded at the same moment (at most :data:`MOMENT_S` apart, same place):
        a photo's song, a song's photo."""
        memory_id = self.sync.resolve_id(memory_id)
        links = self._links(memory_id, k)
        return self._related_from(memory_id, k, links, self.records.metadata_of(links[3] + [memory_id]))

    def _links(self, memory_id: str, k: int) -> tuple:
        """A memory's graph links for :meth:`related`: ``(neighbours, moment, edges, ids)``, ``ids``
        the memories whose metadata :meth:`_related_from` reads."""
        graph = self.sync.graph().graph
        number = int_id(memory_id)
        place = graph.nodes[number].get("place")
        neighbours = graph[number]
        # an unknown place is no evidence of the same place: files copied in one minute are not a moment
        moment = sorted(((other, data) for other, data in neighbours.items()
                         if place and "temporal" in data["types"] and data["time_gap_s"] <= MOMENT_S
                         and graph.nodes[other].get("place") == place), key=lambda item: item[1]["time_gap_s"])
        edges = sorted(neighbours.items(), key=lambda item: -item[1]["weight"])[: int(k)]
        numbers = list(dict.fromkeys([other for other, _ in moment] + [other for other, _ in edges]))
        return neighbours, moment, edges, [self.sync.str_ids[int(other)] for other in numbers]

    def _related_from(self, memory_id: str, k: int, links: tuple, metadata: dict[str, dict]) -> list[Related]:
        """:meth:`related` from its :meth:`_links` and the decoded metadata of (at least) their ids."""
        neighbours, moment, edges, _ = links
        modality = metadata.get(memory_id, {}).get("modality")
        together = [other for other, _ in moment
                    if self.sync.str_ids[int(other)] in metadata
                    and metadata[self.sync.str_ids[int(other)]].get("modality") != modality]
        order = together + [other for other, _ in edges if other not in set(together)]
        out = []
        for other in order[: int(k)]:
            other_id, data = self.sync.str_ids[int(other)], neighbours[other]
            if other_id not in metadata:
                continue
            reasons = [EDGE_REASONS[t] for t in data["types"]]
            if other in together:
                reasons = [MOMENT_REASON] + [r for r in reasons if r != EDGE_REASONS["temporal"]]
            out.append(Related(other_id, float(data["weight"]), " and ".join(reasons), metadata[other_id]))
        return out

    def _retriever(self, options: SearchOptions) -> GraphAugmentedRetriever:
        graph = self.sync.graph()
        settings = (options.gar_mode, options.gar_weight, options.damping, options.gar_seeds, options.semantic_edges,
                    options.ppr)
        if self._gar is None or self._gar.graph is not graph or self._gar_settings != settings:
            self._gar = GraphAugmentedRetriever.from_mode(
                graph, options.gar_mode, gar_weight=options.gar_weight, damping=options.damping,
                num_seeds=options.gar_seeds, semantic_edges=options.semantic_edges, ppr=options.ppr)
            self._gar_settings = settings
        return self._gar

    def _allowed(self, ids: list[str], numbers: np.ndarray, where: dict | None, reference: bool) -> set[str]:
        """Those of ``ids`` (int ids ``numbers``) that ``where`` matches: the table's mask, or Chroma."""
        if where is None:
            return set(ids)
        mask = None if reference else self.sync.table().mask(where)
        if mask is None:
            return set(self.store.collection.get(ids=ids, where=where, include=[])["ids"])
        positions = self.sync.table().positions(numbers)
        return {memory_id for memory_id, row in zip(ids, positions.tolist()) if row >= 0 and mask[row]}

    def _gar_rerank(self, hits: list[SearchHit], query_vector: np.ndarray, k: int, where: dict | None,
                    options: SearchOptions) -> list[SearchHit]:
        if not hits:
            return hits
        retriever = self._retriever(options)
        numbers = np.array([int_id(hit.id) for hit in hits], dtype=np.int64)
        scores = np.array([hit.score for hit in hits], dtype=np.float64)
        list_length = min(len(retriever.graph), max(4 * int(k), len(hits)))
        # the reference explains every candidate; otherwise only the k returned ones are explained
        result = pipeline.rank(pipeline.Ranking(numbers[None], scores[None]), gar=retriever,
                               gar_length=list_length, explain=options.reference).gar
        ids = [self.sync.str_ids[int(n)] for n in result.ids[0]]
        allowed = self._allowed(ids, result.ids[0], where, options.reference)
        chosen = [(i, memory_id) for i, memory_id in enumerate(ids) if memory_id in allowed][: int(k)]
        records = self.store.get([memory_id for _, memory_id in chosen], missing="skip")  # a concurrent forget
        stored = set(records.ids)
        chosen = [(i, memory_id) for i, memory_id in chosen if memory_id in stored]
        stage1 = (records.embeddings @ query_vector).tolist() if chosen else []  # (n,)
        slots = [i for i, _ in chosen]
        if options.reference:
            explained = [self._explained(result.explanations[0][i], memory_id, options.related_k)
                         for i, memory_id in chosen]
        else:
            explanations = retriever.explain(numbers, result.seed_weights[0], result.ids[0][slots],
                                             burst_of=result.burst_of[0][slots])
            explained = self._explained_all(explanations, [memory_id for _, memory_id in chosen], options.related_k)
        by_id = {hit.id: hit for hit in hits}
        out = []
        for (i, memory_id), metadata, document, cosine, (line, related) in zip(
                chosen, records.metadatas, records.documents, stage1, explained):
            hit = self.records.hit(memory_id, result.scores[0][i], cosine, metadata, document)
            hit.match_logit = by_id[memory_id].match_logit if memory_id in by_id else None
            hit.explanation, hit.related = line, related
            out.append(hit)
        return out

    def _explained(self, explanation, memory_id: str, related_k: int) -> tuple[str, list[Related]]:
        """One hit's explanation line and related memories (reads Chroma twice per hit: the reference)."""
        parts, related = self._contributions(explanation)
        for neighbour in self.related(memory_id, related_k):
            related.setdefault(neighbour.id, (neighbour.weight, neighbour.reason))
        ids = list(related)[:related_k]
        metadata = self.records.metadata_of(ids) if ids else {}
        return ("; ".join(parts) or "no graph path to a hit",
                [Related(i, related[i][0], related[i][1], metadata[i]) for i in ids if i in metadata])

    def _explained_all(self, explanations, memory_ids: list[str], related_k: int) -> list[tuple[str, list[Related]]]:
        """:meth:`_explained` of every returned hit with one read of Chroma for all their metadata."""
        links = [self._links(memory_id, related_k) for memory_id in memory_ids]
        contributions = [self._contributions(explanation) for explanation in explanations]
        wanted = set(memory_ids)
        for (_, related), link in zip(contributions, links):
            wanted.update(related)
            wanted.update(link[3])
        metadata = self.records.metadata_of(sorted(wanted)) if wanted else {}
        out = []
        for memory_id, (parts, related), link in zip(memory_ids, contributions, links):
            for neighbour in self._related_from(memory_id, related_k, link, metadata):
                related.setdefault(neighbour.id, (neighbour.weight, neighbour.reason))
            ids = list(related)[:related_k]
            out.append(("; ".join(parts) or "no graph path to a hit",
                        [Related(i, related[i][0], related[i][1], metadata[i]) for i in ids if i in metadata]))
        return out

    def _contributions(self, explanation) -> tuple[list[str], dict[str, tuple[float, str]]]:
        parts = [] if explanation.hit_rank is None else [f"direct hit (rank {explanation.hit_rank + 1})"]
        related: dict[str, tuple[float, str]] = {}
        for contribution in explanation.contributions:
            seed = self.sync.str_ids[int(contribution.seed_id)]
            via = "" if contribution.via is None else f", via {self.sync.str_ids[int(contribution.via)][:8]}"
            parts.append(f"{contribution.reason} (hit {seed[:8]}{via})")
            related.setdefault(seed, (float(contribution.strength), contribution.reason))
        return parts, related

    def _explain(self, query: str, hits: list[SearchHit], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for hit in hits:
            image = self._load_image(hit)
            if image is None:
                continue
            panel = self.models.stage2.explain(query, image, rank=hit.rank + 1, score=hit.score)
            hit.panel_path = folder / f"{hit.rank + 1:02d}_{hit.id[:12]}.png"
            panel.save(hit.panel_path)
