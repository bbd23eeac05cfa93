"""``BiEncoderModule``: stage-1 training (momentum contrast with a key queue) and its validation.

A thin Lightning adapter over :class:`mmai.model.bi_encoder.BiEncoder`: it builds the towers from the
config, runs the ALBEF training step (forward → loss → enqueue), schedules the learning rates,
and at each validation epoch embeds the whole gallery on every rank, gathers it, and logs
full-gallery Recall@K under ``val/stage1/{t2i,i2t}/{instance,class}/R@{k}``.
"""

from __future__ import annotations

import copy
import math
import time
import lightning as L
import torch

from lightning_glue.eval_set import EvalSetCollector, Stage1Evaluation, expect_eval_mode_modules
from lightning_glue.feature_cache import attach_caption_masks, split_features, tower_fingerprints
from mmai.model.bi_encoder import BiEncoder
from mmai.checkpoint import read_checkpoint
from mmai.config import BiEncoderConfig, coerce
from mmai.data.feature_cache import SplitFeatures

#: ``model.bi_encoder``'s default: every field at its default (the module copies it).
DEFAULT_BI_ENCODER = BiEncoderConfig()


class BiEncoderModule(Stage1Evaluation, L.LightningModule):
    """Trains image, text (and audio) towers into one ``embed_dim`` space.

    Args:
        bi_encoder: the model, a :class:`~mmai.config.BiEncoderConfig` (towers, space, queue,
            loss); ``model.bi_encoder.*`` on the command line (``--model.bi_encoder.queue_size 0``,
            ``--model.bi_encoder.vision.model_name ...``). Default: its defaults. The data follow
            its ``vision.image_size``, tokenizer, ``text.max_length`` and ``audio.seconds`` (linked).
        lr: learning rate of the new parts: projections, temperature, memory tokens, and towers
            trained from scratch (default 1e-4).
        lr_pretrained: learning rate of pretrained towers (default 1e-5).
        weight_decay: AdamW decay, not applied to biases, norms and the temperature (default 0.02).
        warmup_steps: linear warm-up, then cosine decay to 0 at the last step (default 200).
        batch_size: per-rank batch; linked from ``data.batch_size`` (default 64).
        eval_ks: the K of Recall@K (default 1, 5, 10).
        init_from: a checkpoint whose model weights, queues and temperature start this run (a new
            run, fresh optimiser; to resume a run use ``--ckpt_path`` instead). Default None.
        feature_cache: when the vision and text towers are both fully locked (LiT), compute their
            pooled features once per sample and train and validate on them (default True; see
            :mod:`mmai.data.feature_cache`). Ignored for towers that train.
        feature_cache_dir: where cache files go (default: ``feature_cache/`` in the shard folder,
            or ``~/.cache/mmai/features`` when that is not writable).
        feature_cache_stage2: cache the stage-2 inputs (patch tokens, caption token states) in the
            same pass (default False), so a re-ranker trained on this run's checkpoint finds its
            cache ready instead of running the towers over the splits a second time; stage 1
            itself reads only the pooled features.

    Attributes:
        config: the :class:`~mmai.config.BiEncoderConfig` (saved as a plain dict under
            ``hparams.bi_encoder``, which is what the checkpoint loaders read).
        model: the :class:`~mmai.model.bi_encoder.BiEncoder`.
    """

    def __init__(self, bi_encoder: BiEncoderConfig = DEFAULT_BI_ENCODER, lr: float = 1e-4, lr_pretrained: float = 1e-5,
                 weight_decay: float = 0.02, warmup_steps: int = 200, batch_size: int = 64,
                 eval_ks: tuple[int, ...] = (1, 5, 10), init_from: str | None = None, feature_cache: bool = True,
                 feature_cache_dir: str | None = None, feature_cache_stage2: bool = False):
        super().__init__()
        self.config = copy.deepcopy(coerce(BiEncoderConfig, bi_encoder, "model.bi_encoder"))
        # plain data in the checkpoint (weights_only loading), not the dataclass
        self.save_hyperparameters({"bi_encoder": self.config.to_dict(), "lr": lr, "lr_pretrained": lr_pretrained,
                                   "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                                   "batch_size": batch_size, "eval_ks": tuple(eval_ks), "init_from": init_from,
                                   "feature_cache": feature_cache, "feature_cache_dir": feature_cache_dir,
                                   "feature_cache_stage2": feature_cache_stage2})
        self.model = BiEncoder.from_config(self.config)
        self._collector = EvalSetCollector()
        self._features: dict[str, SplitFeatures] = {}
        self._last_step_time: float | None = None
        if init_from is not None:
            state = read_checkpoint(init_from, "model.init_from", require_hyperparameters=False)["state_dict"]
            self.model.load_checkpoint_state(state, prefix="model.")
            from lightning.pytorch.utilities import rank_zero_info

            loaded = [key for key in state if key.startswith("model.")]
            rank_zero_info(f"model.init_from: loaded {len(loaded)} tensors "
                           f"({sum(state[k].numel() for k in loaded if hasattr(state[k], 'numel')):,} values: weights, "
                           f"queues, temperature) from {init_from}; optimizer, schedule and step start fresh")
        # transformers' from_pretrained returns modules in eval mode and Lightning keeps the modes
        # it finds: without this the pretrained text tower would train with dropout off.
        self.train()

    # ---------------------------------------------------------- feature cache
    def setup(self, stage: str) -> None:
        """With both towers fully locked, load (or compute once) the splits' cached features and
        let the DataModule serve training batches from them."""
        if any(self.model.is_locked(name) for name in ("vision", "text", "audio")):
            expect_eval_mode_modules()
        datamodule = getattr(self.trainer, "datamodule", None)
        if not (self.hparams.feature_cache and self.model.cacheable and hasattr(datamodule, "use_train_features")):
            if self.model.true_negatives and stage == "fit":
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn("model.bi_encoder.true_negatives reads what each caption states from the feature "
                               "cache's rows; without the cache (locked towers, model.feature_cache) the loss keeps "
                               "class labels")
            return
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        fingerprints = tower_fingerprints(self.model) if splits else None
        for split in splits:
            self._features[split] = self._split_features(datamodule, split, fingerprints)
        if "train" in self._features:
            train = self._features["train"].stage1()
            if self.model.true_negatives:
                self.model.consistency = attach_caption_masks(datamodule, train, "model.bi_encoder.true_negatives")
            datamodule.use_train_features(train)

    def _split_features(self, datamodule, split: str, fingerprints: tuple[str, str]) -> SplitFeatures:
        return split_features(self, self.model, datamodule, split, fingerprints, self.hparams.feature_cache_dir,
                              stage2=bool(self.hparams.feature_cache_stage2))

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        output = self.model(batch)
        self.model.enqueue(output)  # after the loss: this batch's keys never score against themselves
        images = batch["image_id"].shape[0]
        self.log("train/loss", output.loss, prog_bar=True, batch_size=images)
        self.log_dict({f"train/loss_{name}": value for name, value in output.losses.items()}, batch_size=images)
        self.log("train/temperature", output.temperature, batch_size=images)
        self.log("train/queue_fill", self.model.queue.fill_fraction(), batch_size=images)
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("train/samples_per_s", images * self.trainer.world_size / (now - self._last_step_time),
                     batch_size=images)
        self._last_step_time = now
        return output.loss

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def configure_optimizers(self):
        optimizer, scheduler = self.build_optimizer(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimizer(self, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW over the trainable parameters and its warm-up + cosine schedule over ``total_steps``."""
        hp = self.hparams
        groups = _param_groups(self.model, self._pretrained_prefixes(), hp.lr, hp.lr_pretrained, hp.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
        total = max(1, total_steps)
        warmup = min(hp.warmup_steps, max(0, total - 1))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def _pretrained_prefixes(self) -> tuple[str, ...]:
        config = self.config
        prefixes = []
        if config.clip is not None:
            prefixes += ["vision.", "text."] if config.clip.pretrained else []
        else:
            prefixes += ["vision."] if config.vision.pretrained else []
            prefixes += ["text."] if config.text.pretrained else []
        if config.audio is not None and config.audio.pretrained:
            prefixes.append("audio.")
        return tuple(prefixes)

    # -------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict) -> None:
        features = self._features.get("test" if self.trainer.testing else "val")
        if features is not None:
            found = features.lookup(batch)  # the locked towers' cached features (pooled only: stage 1)
            batch = {**batch, "image_features": found["image_features"], "text_features": found["text_features"]}
        image_embeddings, text_embeddings = self.model.embed_batch(batch)  # (B, E), (Bt, E)
        self._collector.add(batch, image_embeddings, text_embeddings)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    # -------------------------------------------------------------- prediction
    def on_predict_epoch_start(self) -> None:
        self._predictions = EvalSetCollector()

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        """``mmai predict``: embed a batch of ``data.predict_split``; the split's embeddings are written
        at the end of the epoch (:meth:`on_predict_epoch_end`), not returned."""
        image_embeddings, text_embeddings = self.model.embed_batch(batch)
        self._predictions.add(batch, image_embeddings, text_embeddings)

    def on_predict_epoch_end(self) -> None:
        """Write ``{run_dir}/embeddings-{split}.pt`` (``-rank{r}`` per rank under DDP): image and caption
        embeddings (L2-normalised) with their image, class and caption ids, and print where."""
        from pathlib import Path

        datamodule = getattr(self.trainer, "datamodule", None)
        split = getattr(getattr(datamodule, "hparams", None), "predict_split", "test")
        parts = self._predictions._parts
        if not parts:
            raise ValueError(f"mmai predict: split {split!r} has no images (set --data.predict_split to a split "
                             "with images)")
        keys = ("image_embeddings", "image_ids", "class_ids", "text_embeddings", "text_image_ids", "text_class_ids")
        saved = {key: torch.cat(parts[key]).cpu() for key in keys}
        for key in ("image_embeddings", "text_embeddings"):  # unit length: cosine = dot product
            saved[key] = torch.nn.functional.normalize(saved[key], dim=-1)
        saved.update(captions=list(parts["captions"]), places=list(parts["places"]), split=split,
                     normalised=True)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        path = Path(self.trainer.default_root_dir) / (f"embeddings-{split}.pt" if world == 1
                                                      else f"embeddings-{split}-rank{rank}.pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path)
        print(f"{split}: {len(saved['image_ids'])} image and {len(saved['text_image_ids'])} caption embeddings "
              f"written to {path} (torch.load(path): image_embeddings, image_ids, text_embeddings, "
              "text_image_ids, captions, ...)")
        self._predictions = EvalSetCollector()

    # ------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fail with the offending shapes (e.g. another embed_dim) before Lightning's own error."""
        self.model.check_compatible(checkpoint["state_dict"], prefix="model.")


def _param_groups(model: torch.nn.Module, pretrained_prefixes: tuple[str, ...], lr: float, lr_pretrained: float,
                  weight_decay: float) -> list[dict]:
    """AdamW groups: (pretrained | new) × (decay | no decay); frozen momentum twins are left out."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        pretrained = name.startswith(pretrained_prefixes) and "memory_tokens" not in name
        decay = param.ndim >= 2 and "memory_tokens" not in name
        groups.setdefault((pretrained, decay), []).append(param)
    return [{"params": params, "lr": lr_pretrained if pretrained else lr,
             "weight_decay": weight_decay if decay else 0.0,
             "name": f"{'pretrained' if pretrained else 'new'}{'' if decay else '_no_decay'}"}
            for (pretrained, decay), params in sorted(groups.items())]
