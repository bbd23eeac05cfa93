"""Saliency panels for fixed probe queries, and the pointing-game grounding score, each val epoch.

For reviewers: at every validation epoch a re-ranker run (a module with ``bi_encoder``,
``reranker`` and the gathered :meth:`eval_set` holding cached patch tokens) renders, for each
probe query, the panel "original | heatmap | overlay" of its two-stage top-1 image (the match
head re-scores the stage-1 top ``rerank_k``), titled with the query, rank, score and whether the
image is the caption's own. Panels are saved as PNGs under ``out_dir/epochNNN/`` and logged to
W&B (``val/saliency``) when the logger is a ``WandbLogger``.

Grounding ("the model looks at the beak" as a number): up to ``grounding_pairs`` validation
captions that name exactly one bird part (:func:`mmai.reranker.grounding.named_parts`) are paired with
their own image; the pointing game (Zhang et al., ECCV 2016) counts how often the saliency peak
falls inside that part's box (the shards' ``parts``, synthetic data only). Logged:
``val/grounding/pointing_game`` (map averaged over the query's content words),
``val/grounding/pointing_game_word`` (map of the part's own word), ``val/grounding/chance``
(mean part area / image area) and ``val/grounding/pairs``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_glue.eval_set import log_global_values
from mmai.reranker.grounding import chance_level, named_parts, pointing_game, rescale_boxes, word_part


class SaliencyPanelCallback(L.Callback):
    """Panels for probe queries and the pointing game, every validation epoch (rank 0 computes).

    Args:
        probes: probe queries (default None: ``num_probes`` validation captions that name a part,
            spread over the gallery, fixed for the whole run).
        num_probes: how many default probes (default 4).
        out_dir: folder for the PNGs (default ``runs/panels``).
        method: ``"gradcam"`` (gradient x attention, default) or ``"attention"``.
        grounding_pairs: captions scored by the pointing game (default 64; 0 turns it off).
        rerank_k: candidates re-scored to find each probe's top-1 (default 16).
        split: the evaluation split the probes come from (default ``"val"``).
    """

    def __init__(self, probes: Sequence[str] | None = None, num_probes: int = 4, out_dir: str = "runs/panels",
                 method: str = "gradcam", grounding_pairs: int = 64, rerank_k: int = 16, split: str = "val"):
        super().__init__()
        if method not in ("gradcam", "attention"):
            raise ValueError(f"SaliencyPanelCallback: method must be 'gradcam' or 'attention', got {method!r}")
        self.probes = list(probes) if probes else None
        self.num_probes, self.out_dir, self.method = num_probes, Path(out_dir), method
        self.grounding_pairs, self.rerank_k, self.split = grounding_pairs, rerank_k, split
        self.last_paths: list[Path] = []

    # ------------------------------------------------------------------ hook
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(pl_module, "reranker"):
            return
        data = pl_module.eval_set()  # a collective: every rank calls it
        metrics, panels = ({}, []) if not trainer.is_global_zero else self.evaluate(trainer, pl_module, data)
        metrics = trainer.strategy.broadcast(metrics, src=0)
        if metrics:
            log_global_values(pl_module, {f"{self.split}/grounding/{key}": value for key, value in metrics.items()})
        if trainer.is_global_zero and panels:
            self._save_and_log(trainer, panels)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, data) -> tuple[dict, list]:
        """Panels ``[(caption, PIL)]`` for the probes and the grounding metrics (rank 0)."""
        stage2 = _stage2_view(pl_module)
        shard_dir = Path(trainer.datamodule.shard_dir)
        if self.probes is None:
            self.probes = self._default_probes(data)
        picks = [(query, *self._top1(stage2, data, query)) for query in self.probes]
        pairs = self._grounding_pairs(data) if self.grounding_pairs else []
        wanted = {int(data.image_ids[row]) for _, row, _ in picks} | {image_id for _, image_id, _ in pairs}
        samples = read_split_samples(shard_dir, self.split, wanted)  # one pass over the shards per epoch
        with torch.inference_mode(False), torch.enable_grad():
            panels = self._panels(stage2, data, picks, samples)
            metrics = self._grounding(stage2, pairs, samples)
        return metrics, panels

    # ---------------------------------------------------------------- panels
    def _default_probes(self, data) -> list[str]:
        step = max(1, len(data.captions) // max(self.num_probes * 4, 1))
        chosen: list[str] = []
        for caption in data.captions[::step]:
            if named_parts(caption) and caption not in chosen:
                chosen.append(caption)
            if len(chosen) == self.num_probes:
                break
        return chosen

    @torch.no_grad()
    def _top1(self, stage2, data, query: str) -> tuple[int, float]:
        """Gallery row of the probe's two-stage top-1 image and its match logit."""
        embedding, tokens, mask = stage2.stage1.encode_texts([query])  # (1, E), (1, L, Dt), (1, L)
        similarity = F.normalize(embedding.float().cpu(), dim=-1) @ data.image_embeddings.T  # (1, Ni)
        k = min(self.rerank_k, similarity.shape[1])
        stage1_scores, candidates = similarity.topk(k, dim=1)  # (1, k)
        device = tokens.device
        patches = data.extras["image_patches"][candidates[0]].to(device, torch.float32)  # (k, N, Dv)
        logits = stage2.reranker.score_candidates(tokens, mask, patches)[0].float().cpu()  # (k,)
        final = logits + stage2.stage1_weight * stage1_scores[0]
        best = int(final.argmax())
        return int(candidates[0, best]), float(logits[best])

    def _panels(self, stage2, data, picks: list[tuple[str, int, float]],
                samples: dict[int, tuple[Image.Image, dict]]) -> list[tuple[str, Image.Image]]:
        """A panel per probe ``(query, gallery row of its top-1, logit)``."""
        own_ids = {caption: int(image_id) for caption, image_id in zip(data.captions, data.text_image_ids.tolist())}
        panels = []
        for query, row, logit in picks:
            image_id = int(data.image_ids[row])
            image, meta = samples[image_id]
            verdict = ("the caption's own image" if own_ids.get(query) == image_id else
                       f"species {meta.get('class_name', meta.get('class_id'))}")
            panel = stage2.explain(query, image, rank=1, score=logit, method=self.method,
                                   note=f"image {image_id}: {verdict}")
            panels.append((f"{query} -> image {image_id} ({verdict})", panel))
        return panels

    # ------------------------------------------------------------- grounding
    def _grounding_pairs(self, data) -> list[tuple[str, int, str]]:
        """Up to ``grounding_pairs`` ``(caption, its image id, the one part it names)``, spread over the set."""
        pairs = []
        for caption, image_id in zip(data.captions, data.text_image_ids.tolist()):
            parts = named_parts(caption)
            if len(parts) == 1:
                pairs.append((caption, int(image_id), parts[0]))
        step = max(1, len(pairs) // self.grounding_pairs)
        return pairs[::step][: self.grounding_pairs]

    def _grounding(self, stage2, pairs: list[tuple[str, int, str]],
                   samples: dict[int, tuple[Image.Image, dict]]) -> dict[str, float]:
        pairs = [pair for pair in pairs if pair[2] in samples[pair[1]][1].get("parts", {})]
        if not pairs:
            return {}
        size = stage2.stage1.image_size
        images = [samples[image_id][0] for _, image_id, _ in pairs]
        boxes = torch.stack([
            rescale_boxes(torch.tensor(samples[image_id][1]["parts"][part], dtype=torch.float32),
                          samples[image_id][0].size, size)
            for _, image_id, part in pairs])  # (P, 4) in the model's input frame
        from mmai.reranker.saliency import saliency_maps

        query_maps, word_maps = [], []
        for start in range(0, len(pairs), 16):
            chunk = pairs[start:start + 16]
            tokens = stage2.stage1.tokenize([caption for caption, _, _ in chunk])
            with torch.no_grad():  # gradients are taken at the fusion's attention only
                _, states = stage2.stage1.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
                _, patches = stage2.stage1.encode_images(images[start:start + 16])
            mask = tokens["attention_mask"]
            content, word = _content_and_part_masks(stage2.stage1.tokenizer, tokens["input_ids"], mask,
                                                    [part for _, _, part in chunk])
            query_maps.append(saliency_maps(stage2.reranker, states, mask, patches, size, self.method,
                                            token_mask=content).mean.detach().cpu())
            word_maps.append(saliency_maps(stage2.reranker, states, mask, patches, size, self.method,
                                           token_mask=word).mean.detach().cpu())
        query_maps_t, word_maps_t = torch.cat(query_maps), torch.cat(word_maps)  # (P, S, S)
        return {"pointing_game": pointing_game(query_maps_t, boxes),
                "pointing_game_word": pointing_game(word_maps_t, boxes),
                "chance": chance_level(boxes, size), "pairs": float(len(pairs))}

    # ---------------------------------------------------------------- output
    def _save_and_log(self, trainer: L.Trainer, panels: list[tuple[str, Image.Image]]) -> None:
        folder = self.out_dir / f"epoch{trainer.current_epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        self.last_paths = []
        for number, (_, panel) in enumerate(panels):
            path = folder / f"probe{number}.png"
            panel.save(path)
            self.last_paths.append(path)
        # W&B shows one image size per key: pad the panels (titles wrap to different heights) alike
        width, height = max(p.width for _, p in panels), max(p.height for _, p in panels)
        padded = []
        for _, panel in panels:
            canvas = Image.new("RGB", (width, height), "white")
            canvas.paste(panel, (0, 0))
            padded.append(canvas)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"{self.split}/saliency", images=padded,
                                 caption=[caption for caption, _ in panels], step=trainer.global_step)


def _content_and_part_masks(tokenizer, input_ids: torch.Tensor, mask: torch.Tensor,
                            parts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L)`` masks: the caption's content tokens (no [CLS]/[SEP]) and the tokens naming ``parts``."""
    special = set(tokenizer.all_special_ids)
    content = mask.clone()
    word = torch.zeros_like(mask)
    for row, part in enumerate(parts):
        names = tokenizer.convert_ids_to_tokens(input_ids[row].tolist())
        for column, (token_id, name) in enumerate(zip(input_ids[row].tolist(), names)):
            if token_id in special:
                content[row, column] = 0
            elif bool(mask[row, column]) and word_part(name) == part:
                word[row, column] = 1
    word = torch.where(word.sum(1, keepdim=True) > 0, word, content)  # word split into pieces: fall back
    return content, word


def _stage2_view(pl_module):
    """A :class:`mmai.inference.Stage2Model` over the training module's own (live) weights."""
    from mmai.inference import Stage1Model, Stage2Model, load_tokenizer

    if getattr(pl_module, "_stage2_view", None) is None:
        config = pl_module.bi_encoder_config
        stage1 = Stage1Model(pl_module.bi_encoder, config, load_tokenizer(config), "<training run>")
        pl_module._stage2_view = Stage2Model(stage1, pl_module.reranker, pl_module.config.rerank_k,
                                             pl_module.config.stage1_weight)
    return pl_module._stage2_view


def read_split_samples(shard_dir: Path, split: str, image_ids: set[int]) -> dict[int, tuple[Image.Image, dict]]:
    """``{image_id: (PIL image, meta)}`` for the wanted ids of one split, read from its shards in
    manifest order with the data pipeline's WebDataset reader (:func:`mmai.data.pipeline.shard_samples`),
    stopping once every wanted id is found.

    Raises:
        KeyError: a wanted id is in none of the split's shards.
    """
    from mmai.data.pipeline import shard_samples
    from mmai.data.shards import shard_urls

    found: dict[int, tuple[Image.Image, dict]] = {}
    wanted = set(image_ids)
    urls = shard_urls(shard_dir, split)
    for sample in shard_samples(urls) if wanted else ():
        if "json" not in sample or "jpg" not in sample:
            continue
        meta = json.loads(sample["json"])
        if meta["image_id"] in wanted:
            found[meta["image_id"]] = (Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), meta)
            if len(found) == len(wanted):
                break
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"image ids {sorted(missing)[:5]} not found in the {split!r} shards of {shard_dir}")
    return found
