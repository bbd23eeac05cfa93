"""Lightning glue of the locked-tower feature cache (:mod:`mmai.data.feature_cache`): where a split's
file lives, and loading it, or computing it through the DataModule's evaluation stream on every
rank. Used by ``BiEncoderModule`` (pooled features) and ``RerankerModule`` (also the stage-2
patch tokens and caption token states)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tqdm import tqdm

from lightning_glue.eval_set import gather_rows
from mmai.data.feature_cache import (TENSOR_FIELDS, CorruptCache, SplitFeatures, StaleCache, cache_key, load_features,
                                module_fingerprint)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def tower_fingerprints(model) -> tuple[str, str]:
    """``(vision, text)`` fingerprints of a bi-encoder's locked towers (hash them once per setup)."""
    return module_fingerprint(model.vision), module_fingerprint(model.text)


def feature_cache_path(cache_dir: str | None, datamodule, split: str, fingerprints: tuple[str, str],
                       stage2: bool = False, swapped: bool = False) -> tuple[Path, str]:
    """``(file, key)`` of a split's cache for these tower fingerprints (:func:`tower_fingerprints`)
    and these shards; ``cache_dir`` None means ``feature_cache/`` in the shard folder (or
    ``~/.cache/mmai/features`` when that is not writable)."""
    data = datamodule.hparams
    shards = [shard["sha256"] for shard in datamodule.manifest["splits"][split]["shards"]]
    key = cache_key(vision=fingerprints[0], text=fingerprints[1],
                    image_size=data.image_size, max_length=data.max_length, tokenizer=str(data.tokenizer),
                    mean=tuple(data.mean), std=tuple(data.std), split=split, shard_sha256s=shards, stage2=stage2,
                    swapped=swapped)
    folder = Path(cache_dir) if cache_dir else Path(datamodule.shard_dir) / "feature_cache"
    if not cache_dir and not _writable(folder):
        folder = Path.home() / ".cache" / "mmai" / "features"
    kind = ("-stage2" if stage2 else "") + ("-swapped" if swapped else "")
    return folder / f"{split}{kind}-{key[:20]}.pt", key


@torch.no_grad()
def compute_split_features(module: L.LightningModule, model, datamodule, split: str,
                           stage2: bool = False, swapped: bool = False) -> SplitFeatures:
    """Every sample of ``split`` through the locked towers of ``model`` once (each rank its share
    of the evaluation stream), gathered so that every rank holds the whole split. ``stage2`` also
    keeps the patch tokens and caption token states (float16, captions padded to the
    DataModule's ``max_length``); ``swapped`` also the token states of each caption with two colour
    words exchanged (:func:`mmai.reranker.negatives.swap_colour_words`; an all-zero mask where a caption
    names fewer than two colours), the re-ranker's composition-aware negatives."""
    device = module.trainer.strategy.root_device
    towers = (model.vision, model.text)
    for tower in towers:
        tower.to(device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TENSOR_FIELDS}
    length = int(datamodule.hparams.max_length)
    loader = datamodule.eval_dataloader(split)
    bar = tqdm(loader, desc=f"caching locked features ({split}{', stage 2' if stage2 else ''})", unit="batch",
               disable=not module.trainer.is_global_zero)
    for batch in bar:
        keep = ~batch["is_pad"]
        owner = batch["caption_owner"]
        batch = datamodule.on_after_batch_transfer({**batch, "image": batch["image"].to(device)}, 0)
        image, patches = towers[0](batch["image"])  # (B, Dv), (B, N, Dp)
        mask = batch["attention_mask"].to(device)
        text, tokens = towers[1](batch["input_ids"].to(device), mask)  # (Bt, Dt), (Bt, L, Dt)
        keep_text = keep[owner].to(device)
        parts["image_ids"].append(batch["image_id"][keep])
        parts["class_ids"].append(batch["class_id"][keep])
        parts["image_features"].append(image[keep.to(device)].float().cpu())
        parts["text_image_ids"].append(batch["image_id"][owner][keep[owner]])
        parts["text_features"].append(text[keep_text].float().cpu())
        if stage2:
            pad = length - tokens.shape[1]
            tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))
            parts.setdefault("image_patches", []).append(patches[keep.to(device)].half().cpu())
            parts.setdefault("text_tokens", []).append(tokens[keep_text].half().cpu())
            parts.setdefault("attention_mask", []).append(mask[keep_text].bool().cpu())
        if stage2 and swapped:
            swapped_tokens, swapped_mask = _swapped_states(towers[1], datamodule, batch["captions"], length, device)
            parts.setdefault("swapped_tokens", []).append(swapped_tokens[keep_text.cpu()])
            parts.setdefault("swapped_mask", []).append(swapped_mask[keep_text.cpu()])
    gathered = {name: gather_rows(torch.cat(rows), module) for name, rows in parts.items()}
    return SplitFeatures.from_rows(**gathered)


def _swapped_states(text_tower, datamodule, captions: list[str], length: int, device) -> tuple[torch.Tensor, ...]:
    """Token states ``(Bt, L, Dt)`` float16 and mask ``(Bt, L)`` bool of the colour-swapped captions."""
    from mmai.reranker.negatives import swap_colour_words

    swapped = [swap_colour_words(caption) for caption in captions]
    rows = [row for row, caption in enumerate(swapped) if caption is not None]
    tokens = torch.zeros(len(captions), length, text_tower.width, dtype=torch.float16)
    mask = torch.zeros(len(captions), length, dtype=torch.bool)
    if rows:
        encoded = datamodule._collator().tokenizer([swapped[row] for row in rows], padding="max_length",
                                                   truncation=True, max_length=length, return_tensors="pt")
        states = text_tower(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))[1]
        tokens[rows] = states.half().cpu()
        mask[rows] = encoded["attention_mask"].bool()
    return tokens, mask


def split_features(module: L.LightningModule, model, datamodule, split: str, fingerprints: tuple[str, str],
                   cache_dir: str | None, stage2: bool = False, swapped: bool = False) -> SplitFeatures:
    """The split's cached features: loaded when a valid file exists on every rank, else computed
    (every rank), written by rank 0 (atomically) and waited for at a barrier."""
    path, key = feature_cache_path(cache_dir, datamodule, split, fingerprints, stage2, swapped)
    features, problem = None, None
    try:
        features = load_features(path, key)
    except FileNotFoundError:
        problem = "not cached yet"
    except (StaleCache, CorruptCache) as error:
        problem = f"rebuilding: {error}"
    if module.trainer.strategy.reduce_boolean_decision(features is not None, all=True):
        return features
    rank_zero_info(f"feature cache {path}: {problem}; computing the locked towers' features of the "
                   f"{split} split once")
    features = compute_split_features(module, model, datamodule, split, stage2, swapped)
    if module.trainer.is_global_zero:
        features.save(path, key)
    module.trainer.strategy.barrier("feature_cache")
    return features


def attach_caption_masks(datamodule, train: SplitFeatures, option: str):
    """What each cached training caption states (``caption_mask`` in ``train.extras``, one per
    caption row, so every cached batch carries it) and the species table that says which species
    a caption is true of (:mod:`mmai.data.consistency`); None, with a warning naming ``option``, where
    the shards record no statements (real CUB): the caller then keeps class labels."""
    from mmai.data.consistency import SpeciesTable, caption_masks, load_caption_table

    table = load_caption_table(getattr(datamodule, "shard_dir", None))
    species = SpeciesTable.from_species(datamodule.manifest.get("species") or [])
    masks = caption_masks(train.text_image_ids.numpy(), table)
    if table is None or species is None or not (masks >= 0).all():
        rank_zero_warn(f"{option}: these shards do not record what each caption states (real CUB does not); "
                       "training keeps class labels")
        return None
    train.extras["caption_mask"] = torch.from_numpy(masks)
    return species
