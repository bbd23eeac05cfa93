"""Lightning glue of the locked-tower feature cache (:mod:`mmai.feature_cache`): where a split's
file lives, and computing it through the DataModule's evaluation stream on every rank."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from tqdm import tqdm

from lightning_glue.eval_set import gather_rows
from mmai.feature_cache import TENSOR_FIELDS, SplitFeatures, cache_key, module_fingerprint


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def tower_fingerprints(module: L.LightningModule) -> tuple[str, str]:
    """``(vision, text)`` fingerprints of the module's locked towers (hash them once per setup)."""
    return module_fingerprint(module.model.vision), module_fingerprint(module.model.text)


def feature_cache_path(module: L.LightningModule, datamodule, split: str,
                       fingerprints: tuple[str, str]) -> tuple[Path, str]:
    """``(file, key)`` of a split's cache for these tower fingerprints (:func:`tower_fingerprints`)
    and these shards."""
    hp, data = module.hparams, datamodule.hparams
    shards = [shard["sha256"] for shard in datamodule.manifest["splits"][split]["shards"]]
    key = cache_key(vision=fingerprints[0], text=fingerprints[1],
                    image_size=data.image_size, max_length=data.max_length, tokenizer=str(data.tokenizer),
                    mean=tuple(data.mean), std=tuple(data.std), split=split, shard_sha256s=shards)
    folder = Path(hp.feature_cache_dir) if hp.feature_cache_dir else Path(datamodule.shard_dir) / "feature_cache"
    if not hp.feature_cache_dir and not _writable(folder):
        folder = Path.home() / ".cache" / "mmai" / "features"
    return folder / f"{split}-{key[:20]}.pt", key


@torch.no_grad()
def compute_split_features(module: L.LightningModule, datamodule, split: str) -> SplitFeatures:
    """Every sample of ``split`` through the locked towers once (each rank its share of the
    evaluation stream), gathered so that every rank holds the whole split."""
    device = module.trainer.strategy.root_device
    towers = (module.model.vision, module.model.text)
    for tower in towers:
        tower.to(device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TENSOR_FIELDS}
    loader = datamodule.eval_dataloader(split)
    bar = tqdm(loader, desc=f"caching locked features ({split})", unit="batch",
               disable=not module.trainer.is_global_zero)
    for batch in bar:
        keep = ~batch["is_pad"]
        owner = batch["caption_owner"]
        batch = datamodule.on_after_batch_transfer({**batch, "image": batch["image"].to(device)}, 0)
        image = towers[0](batch["image"]).pooled  # (B, Dv)
        text = towers[1](batch["input_ids"].to(device), batch["attention_mask"].to(device)).pooled  # (Bt, Dt)
        parts["image_ids"].append(batch["image_id"][keep])
        parts["class_ids"].append(batch["class_id"][keep])
        parts["image_features"].append(image[keep.to(device)].float().cpu())
        parts["text_image_ids"].append(batch["image_id"][owner][keep[owner]])
        parts["text_features"].append(text[keep[owner].to(device)].float().cpu())
    gathered = {name: gather_rows(torch.cat(rows), module) for name, rows in parts.items()}
    return SplitFeatures.from_rows(**gathered)
