"""The evaluation set of an epoch: gallery images and caption queries, embedded on every rank
and gathered so that each rank holds all of it (padding rows from the DataModule dropped)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch

from lightning.pytorch.utilities import rank_zero_warn

from mmai.evaluation.metrics import embedding_diversity, evaluate_retrieval


@dataclasses.dataclass
class EvalSet:
    """Gathered embeddings and labels; rows of the image fields align, as do the text ones."""

    image_embeddings: torch.Tensor  # (Ni, E)
    image_ids: torch.Tensor  # (Ni,)
    class_ids: torch.Tensor  # (Ni,)
    timestamps: torch.Tensor  # (Ni,) unix seconds, NaN if unknown
    latitudes: torch.Tensor  # (Ni,)
    longitudes: torch.Tensor  # (Ni,)
    places: list[str]  # (Ni,)
    text_embeddings: torch.Tensor  # (Nt, E)
    text_image_ids: torch.Tensor  # (Nt,)
    text_class_ids: torch.Tensor  # (Nt,)
    captions: list[str]  # (Nt,)
    #: the diary's burst of each image (-1 unknown) and its photo condition ("" unknown)
    sighting_ids: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (Ni,)
    conditions: list[str] = dataclasses.field(default_factory=list)  # (Ni,)
    #: stage-2 caches, gathered like the rest: ``image_patches (Ni, N, Dv)``, ``text_tokens
    #: (Nt, L, Dt)`` and ``attention_mask (Nt, L)`` (a re-ranker's validation adds them).
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class EvalSetCollector:
    """Accumulates per-batch embeddings; :meth:`gather` builds the :class:`EvalSet` once per epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list] = {}
        self._gathered: EvalSet | None = None
        self.checked = False  # Stage1Evaluation.eval_set's coverage check ran on this epoch's set

    def add(self, batch: dict, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
            image_extras: dict[str, torch.Tensor] | None = None,
            text_extras: dict[str, torch.Tensor] | None = None) -> None:
        """Keep one batch's non-padding rows; ``image_extras``/``text_extras`` are more per-image /
        per-caption tensors (e.g. patch tokens) that end up in :attr:`EvalSet.extras`."""
        keep = ~batch["is_pad"]  # (B,)
        owner = batch["caption_owner"]  # (Bt,)
        keep_text = keep[owner]  # (Bt,)
        rows = {
            "image_embeddings": image_embeddings[keep].float(), "image_ids": batch["image_id"][keep],
            "class_ids": batch["class_id"][keep], "timestamps": batch["timestamp"][keep],
            "latitudes": batch["latitude"][keep], "longitudes": batch["longitude"][keep],
            "sighting_ids": batch["sighting_id"][keep] if "sighting_id" in batch
            else torch.full((int(keep.sum()),), -1, dtype=torch.long),
            "text_embeddings": text_embeddings[keep_text].float(),
            "text_image_ids": batch["image_id"][owner][keep_text], "text_class_ids": batch["class_id"][owner][keep_text],
        }
        for key, value in rows.items():
            self._parts.setdefault(key, []).append(value.detach())
        for key, value in (image_extras or {}).items():
            self._parts.setdefault(f"extra:{key}", []).append(value[keep].detach())
        for key, value in (text_extras or {}).items():
            self._parts.setdefault(f"extra:{key}", []).append(value[keep_text].detach())
        self._parts.setdefault("places", []).extend(p for p, k in zip(batch["place"], keep.tolist()) if k)
        self._parts.setdefault("captions", []).extend(c for c, k in zip(batch["captions"], keep_text.tolist()) if k)
        conditions = batch.get("condition") or [""] * len(batch["place"])
        self._parts.setdefault("conditions", []).extend(c for c, k in zip(conditions, keep.tolist()) if k)

    def gather(self, module: L.LightningModule) -> EvalSet:
        if self._gathered is not None:
            return self._gathered
        if not self._parts:
            raise RuntimeError("no evaluation batches were seen this epoch: is the split empty?")
        fields: dict = {"extras": {}}
        for key, parts in self._parts.items():
            if key.startswith("extra:"):
                fields["extras"][key[len("extra:"):]] = gather_rows(torch.cat(parts), module)
            elif key in ("places", "captions", "conditions"):
                fields[key] = _gather_objects(parts, module)
            else:
                fields[key] = gather_rows(torch.cat(parts), module)
        self._gathered = EvalSet(**fields)
        return self._gathered


def gather_rows(local: torch.Tensor, module: L.LightningModule) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (ranks may hold different row counts)."""
    if module.trainer is None or module.trainer.world_size == 1:
        return local.cpu()
    device = module.trainer.strategy.root_device  # also before the module is moved there (setup)
    count = torch.tensor([local.shape[0]], device=device)
    counts = module.all_gather(count).view(-1).tolist()  # (W,)
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    everything = module.all_gather(padded)  # (W, max, ...)
    return torch.cat([everything[rank, :n] for rank, n in enumerate(counts)]).cpu()


def _gather_objects(local: list, module: L.LightningModule) -> list:
    if module.trainer is None or module.trainer.world_size == 1:
        return list(local)
    gathered: list = [None] * module.trainer.world_size
    torch.distributed.all_gather_object(gathered, local)
    return [item for part in gathered for item in part]


def log_global_values(module: L.LightningModule, values: dict[str, float]) -> None:
    """Log epoch-level ``values`` that are already the same on every rank: rank 0's numbers after
    ``strategy.broadcast``, or numbers every rank computed from the same all-gathered set.

    Every rank calls this with the same values (so any rank's callbacks, e.g. a ModelCheckpoint
    monitor, read them). ``sync_dist=True`` says the value is meant as the global one, which is
    what Lightning's "use sync_dist=True when logging on epoch level in distributed setting"
    warning asks; ``rank_zero_only=True`` makes that sync a no-op (Lightning skips the reduce of a
    rank-zero value), so there is no all-reduce per key: averaging copies of one number would only
    cost a collective each, and a sum reduction would multiply it by the world size."""
    module.log_dict(values, sync_dist=True, rank_zero_only=True)


def save_failed_epoch_weights(trainer: L.Trainer) -> Path:
    """Save a checkpoint of the current weights before an evaluation error ends the run (every
    rank takes part) and return its path: an evaluation failure never loses the epoch's training."""
    folder = Path(trainer.default_root_dir) / "checkpoints"
    path = folder / f"eval-failed-epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
    trainer.save_checkpoint(path)
    return path


def expect_eval_mode_modules() -> None:
    """Silence Lightning's "Found N module(s) in eval mode at the start of training": frozen and
    locked towers are in eval mode on purpose (fixed BatchNorm statistics, no dropout)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class Stage1Evaluation:
    """Mixin of the LightningModules that embed the gallery at evaluation (``self._collector``):
    full-gallery stage-1 Recall@K, logged as ``{split}/stage1/{direction}/{relevance}/R@k`` at the
    end of every validation and test epoch, after the callbacks have used :meth:`eval_set`."""

    def eval_set(self) -> EvalSet:
        """This epoch's gathered gallery and queries (every rank holds all of it); computed once,
        and checked to be exactly the split's samples before anything scores it."""
        data = self._collector.gather(self)
        if not self._collector.checked:
            self._collector.checked = True
            trainer = self._trainer
            if trainer is not None and not trainer.sanity_checking:
                try:
                    self.check_coverage("test" if trainer.testing else "val", data)
                except RuntimeError as error:
                    if trainer.state.fn != "fit":
                        raise
                    path = save_failed_epoch_weights(trainer)  # every rank sees the same gathered set
                    raise RuntimeError(f"{error} This epoch's weights are saved in {path}.") from None
        return data

    def check_coverage(self, split: str, data: EvalSet) -> None:
        """Fail when this epoch's gathered set is not exactly the split the manifest lists.

        Every evaluation must score every sample once: a count that differs (a loader cut short,
        a duplicated row, an unreadable sample) would make every number of the epoch wrong, and
        the best-checkpoint monitor reads them. Checked against the DataModule's manifest when
        the DataModule has one (``expected_counts``).
        """
        datamodule = getattr(self._trainer, "datamodule", None)
        expected = getattr(datamodule, "expected_counts", None)
        images, captions = len(data.image_ids), len(data.text_image_ids)
        distinct = len(set(data.image_ids.tolist()))
        if distinct != images:
            raise RuntimeError(f"{split} evaluation scored {images} gallery rows but only {distinct} distinct "
                               "images: some samples were scored twice. Every sample must be scored once.")
        if expected is None:
            return
        want_images, want_captions = expected(split)
        if (images, captions) != (want_images, want_captions):
            corrupt = getattr(datamodule, "corrupt_samples", 0)
            raise RuntimeError(
                f"{split} evaluation scored {images} images and {captions} captions, but the manifest of "
                f"{getattr(datamodule, 'shard_dir', 'the shards')} lists {want_images} and {want_captions}"
                f" ({corrupt} sample(s) failed to decode on this rank). Every number of this epoch would be "
                "computed on part of the split, so it is not logged: rewrite the damaged shards "
                "(`mmai data shards`), or report this as a bug if the shards are intact.")

    def _log_stage1(self, split: str) -> None:
        data = self.eval_set()
        metrics = evaluate_retrieval(data.image_embeddings, data.image_ids, data.class_ids, data.text_embeddings,
                                     data.text_image_ids, data.text_class_ids, ks=self.hparams.eval_ks)
        # every rank holds the same gathered set, so every rank computes the same numbers
        log_global_values(self, {f"{split}/stage1/{key}": value for key, value in metrics.items()})
        diversity = embedding_diversity(data.image_embeddings, data.text_embeddings)
        log_global_values(self, {f"{split}/stage1/diversity/{key}": value for key, value in diversity.items()})
        if diversity["collapsed"]:
            rank_zero_warn(
                f"{split}: the bi-encoder looks COLLAPSED: {diversity['distinct_top1']:.1%} of the gallery is some "
                f"caption's top-1 (distinct_top1), mean pairwise cosine text {diversity['text_mean_cosine']:.2f}, "
                f"image {diversity['image_mean_cosine']:.2f}. Its Recall@K is near chance; check the learning "
                "rate, temperature and towers (the locked LiT profile, configs/profiles/lit_cpu.yaml, avoids this).")
        log_global_values(self, {f"{split}/gallery_images": float(len(data.image_ids)),
                                 f"{split}/queries_captions": float(len(data.text_image_ids))})

    def on_validation_epoch_end(self) -> None:
        self._log_stage1("val")
        self._collector.reset()

    def on_test_epoch_end(self) -> None:
        self._log_stage1("test")
        self._collector.reset()
