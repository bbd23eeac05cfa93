"""``RerankerModule``: stage-2 training of the fusion re-ranker over a trained bi-encoder.

ALBEF's image-text matching (ITM) objective (Li et al., NeurIPS 2021) as its own stage: the
bi-encoder of a ``mmai fit`` checkpoint is loaded (towers frozen by default; ``finetune_towers``
trains them too, at ``lr_towers``), every caption of a batch is paired with its image and with
hard negative images drawn from the bi-encoder's similarities, every image with hard negative
captions (:func:`mmai.reranker.negatives.build_match_batch`; never the same image; same-species
candidates are the hard ones, ``same_class_weight`` scales them), and the
:class:`~mmai.reranker.fusion.FusionReranker` learns to tell them apart (binary cross-entropy).

Validation embeds the gallery like the bi-encoder does and also caches the gallery's patch tokens
and the captions' token states, so two-stage retrieval never re-encodes an image per query.
Logged: ``train/match_loss``, ``train/match_acc`` (and on positives / negatives),
``val/match_loss``/``val/match_acc`` on in-batch hard negatives, and ``val/stage1/...`` Recall@K;
the :class:`~callbacks.RetrievalEvalCallback` adds ``val/two_stage/...`` and GAR on top, and tells
the module which ``rerank_k`` and ``stage1_weight`` that validation used (:meth:`RerankerModule.record_validation`);
every checkpoint saved afterwards carries them under ``mmai_validated_with``
(:data:`mmai.checkpoint.VALIDATED_WITH`), and ``mmai memory search --rerank`` / ``mmai serve`` re-rank with them.
Run it with ``mmai rerank fit --config configs/reranker.yaml --model.bi_encoder_ckpt PATH``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lightning_glue.eval_set import EvalSet, EvalSetCollector, Stage1Evaluation, expect_eval_mode_modules
from lightning_glue.feature_cache import attach_caption_masks, split_features, tower_fingerprints
from mmai.model.bi_encoder import BiEncoder
from mmai.data.consistency import SpeciesTable
from mmai.checkpoint import VALIDATED_WITH, bi_encoder_config, build_reranker, is_reranker_checkpoint, read_checkpoint
from mmai.config import BiEncoderConfig, RerankerConfig, coerce
from mmai.reranker.fusion import match_loss
from mmai.data.feature_cache import SplitFeatures
from mmai.reranker.negatives import NEGATIVE_CAPTION, NEGATIVE_IMAGE, POSITIVE, MatchBatch, build_match_batch, sample_hard_negatives
from mmai.retrieval.two_stage import TwoStageResult, evaluate_two_stage

#: ``model.reranker``'s default: every field at its default (the module copies it).
DEFAULT_RERANKER = RerankerConfig()


class RerankerModule(Stage1Evaluation, L.LightningModule):
    """Trains the fusion re-ranker's match head on hard negatives of a trained bi-encoder.

    Args:
        bi_encoder_ckpt: a ``BiEncoderModule`` checkpoint (``mmai fit``); its
            :class:`~mmai.config.BiEncoderConfig` is copied into this module's hyperparameters
            (``bi_encoder``), so a re-ranker checkpoint stands alone.
        bi_encoder: the bi-encoder's config; filled from ``bi_encoder_ckpt`` (leave None).
        reranker: the re-ranker, a :class:`~mmai.config.RerankerConfig` (fusion architecture:
            ``hidden_dim`` 256, ``num_layers`` 2, ``num_heads`` 4, ``dropout`` 0.1, ``head`` cls;
            and the default ``rerank_k`` 16 and ``stage1_weight`` 1.0 of two-stage evaluation,
            which the retrieval callback's values override); ``model.reranker.*`` on the command line.
        finetune_towers: also train the bi-encoder's online towers (default False: frozen, eval mode).
        itc_weight: with ``finetune_towers``, weight of the bi-encoder's own contrastive loss
            (momentum queue included) trained beside the match loss, as ALBEF trains ITC with
            ITM, so that fine-tuning for matching does not pull the stage-1 space apart
            (default 1.0; 0 trains the towers on the match loss alone).
        lr: learning rate of the fusion layers (default 1e-4).
        lr_towers: learning rate of the towers when ``finetune_towers`` (default 1e-5).
        weight_decay: AdamW decay of weight matrices (default 0.02).
        warmup_steps: linear warm-up, then cosine to 0 (default 100).
        num_negatives: hard negatives per caption and per image (default 1, as ALBEF).
        negative_temperature: sampling temperature over similarities (default 0.07; lower = harder).
        same_class_weight: sampling weight multiplier of same-species candidates (default 1.0).
        batch_size: per-rank batch, linked from ``data.batch_size`` (default 64).
        eval_ks: the K of Recall@K (default 1, 5, 10).
        feature_cache: with the bi-encoder's towers fully locked and not fine-tuned, compute each
            split's tower outputs (pooled features, patch tokens, caption token states) once and
            train and validate on them (default True; :mod:`mmai.data.feature_cache`): an epoch then
            costs only the fusion layers.
        feature_cache_dir: where cache files go (default: ``feature_cache/`` in the shard folder).
        negatives: where hard negatives come from: ``"batch"`` (default, ALBEF: the other
            images and captions of the batch) or ``"split"`` (the whole cached training split,
            so the hardest confusers, e.g. a species with two part colours swapped, are found
            even when they are not in the batch; needs the feature cache).
        swap_negatives: also pair every training caption that names two colours with its own image
            after exchanging the two colour words ("an orange bill and a grey belly" -> "a grey bill
            and an orange belly"), as a non-match: NegCLIP's composition-aware negatives
            (Yuksekgonul et al., ICLR 2023), the only negatives that teach which part has which
            colour (default False; needs ``negatives="split"``, their token states are cached once).
        true_negatives: draw a caption's negative images, and an image's negative captions, only
            among pairs where the caption *contradicts* the image's species (it states an attribute
            the species does not have; :mod:`mmai.data.consistency`), so that a species the caption is
            also true of is never trained as a non-match (default False; needs ``negatives="split"``
            and shards that record what each caption states, the synthetic CUB's; without them the
            run falls back to class labels and says so).
        twin_negatives: also pair every training caption that states one of the two colours
            exchanged in its own photo's counterfactual twin (``mmai data synth --twins``: the same
            photo with two part colours swapped) with that twin, as a non-match: the one negative
            that only binding colour to part can tell apart (default False; needs
            ``negatives="split"`` and data with twins; TripletCLIP's hard image negatives).
        grounding_weight: weight of the attention supervision from part boxes
            (:func:`mmai.reranker.grounding.grounding_loss`: each token that names a part, or the colour of
            one, should attend inside that part's box in its own image) added to the match loss
            (default 0.0: off; needs the stage-2 cache, the agreement head and shards with part boxes).
    """

    def __init__(self, bi_encoder_ckpt: str | None = None, bi_encoder: BiEncoderConfig | None = None,
                 reranker: RerankerConfig = DEFAULT_RERANKER, finetune_towers: bool = False, itc_weight: float = 1.0,
                 lr: float = 1e-4, lr_towers: float = 1e-5, weight_decay: float = 0.02, warmup_steps: int = 100,
                 num_negatives: int = 1, negative_temperature: float = 0.07, same_class_weight: float = 1.0,
                 batch_size: int = 64, eval_ks: tuple[int, ...] = (1, 5, 10), feature_cache: bool = True,
                 feature_cache_dir: str | None = None, negatives: str = "batch", swap_negatives: bool = False,
                 true_negatives: bool = False, twin_negatives: bool = False, grounding_weight: float = 0.0):
        super().__init__()
        if negatives not in ("batch", "split"):
            raise ValueError(f"RerankerModule: negatives must be 'batch' or 'split', got {negatives!r}")
        if grounding_weight > 0 and coerce(RerankerConfig, reranker, "model.reranker").head != "agreement":
            raise ValueError("RerankerModule: grounding_weight supervises the agreement head's attention; set "
                             "model.reranker.head agreement (or grounding_weight 0)")
        if twin_negatives and negatives != "split":
            raise ValueError("RerankerModule: twin_negatives needs negatives='split' (the cached training split)")
        if true_negatives and negatives != "split":
            raise ValueError("RerankerModule: true_negatives needs negatives='split' (the labels of the cached "
                             "training split)")
        if swap_negatives and negatives != "split":
            raise ValueError("RerankerModule: swap_negatives needs negatives='split' (their token states live in "
                             "the cached training split)")
        checkpoint = None
        if bi_encoder is None:
            if bi_encoder_ckpt is None:
                raise ValueError("RerankerModule needs model.bi_encoder_ckpt: a checkpoint of `mmai fit` "
                                 "(runs/<run>/checkpoints/last.ckpt)")
            checkpoint = read_checkpoint(bi_encoder_ckpt, "model.bi_encoder_ckpt")
            if is_reranker_checkpoint(checkpoint):
                raise ValueError(f"model.bi_encoder_ckpt {bi_encoder_ckpt!r} is a re-ranker checkpoint; pass the "
                                 "bi-encoder's (`mmai fit`) checkpoint, or --ckpt_path to resume this run")
            self.bi_encoder_config = bi_encoder_config(checkpoint["hyper_parameters"],
                                                       f"model.bi_encoder_ckpt {bi_encoder_ckpt!r}")
        else:
            self.bi_encoder_config = coerce(BiEncoderConfig, bi_encoder, "model.bi_encoder")
        self.config = copy.deepcopy(coerce(RerankerConfig, reranker, "model.reranker"))
        # plain data in the checkpoint (weights_only loading), not the dataclasses
        self.save_hyperparameters({
            "bi_encoder_ckpt": bi_encoder_ckpt, "bi_encoder": self.bi_encoder_config.to_dict(),
            "reranker": self.config.to_dict(), "finetune_towers": finetune_towers, "itc_weight": itc_weight,
            "lr": lr, "lr_towers": lr_towers, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
            "num_negatives": num_negatives, "negative_temperature": negative_temperature,
            "same_class_weight": same_class_weight, "batch_size": batch_size, "eval_ks": tuple(eval_ks),
            "feature_cache": feature_cache, "feature_cache_dir": feature_cache_dir, "negatives": negatives,
            "swap_negatives": swap_negatives, "true_negatives": true_negatives, "twin_negatives": twin_negatives,
            "grounding_weight": grounding_weight})
        self.bi_encoder = BiEncoder.from_config(self.bi_encoder_config, pretrained=False)
        if checkpoint is not None:
            self.bi_encoder.load_checkpoint_state(checkpoint["state_dict"], prefix="model.")
        self.bi_encoder.requires_grad_(False)
        if finetune_towers:
            for name in ("vision", "vision_proj", "text", "text_proj"):
                getattr(self.bi_encoder, name).requires_grad_(True)
            if itc_weight > 0:
                self.bi_encoder.temperature.requires_grad_(True)
        self.reranker = build_reranker(self.config, self.bi_encoder)
        if not finetune_towers:
            expect_eval_mode_modules()  # the frozen towers stay in eval mode on purpose
        self._collector = EvalSetCollector()
        self._features: dict[str, SplitFeatures] = {}
        self._bank: tuple[torch.Tensor, ...] | None = None  # train-split embeddings, ids, classes (split negatives)
        self._species: SpeciesTable | None = None  # true_negatives: which species each caption contradicts
        self._twins = None  # twin_negatives: the training photos' counterfactual twins (TwinBank)
        self._val_match: list[torch.Tensor] = []
        #: the re-rank settings of the last two-stage validation (see :meth:`record_validation`).
        self.validated_with: dict[str, Any] | None = None
        self.train()

    # ---------------------------------------------------------------- properties
    @property
    def image_size(self) -> int:
        return self.bi_encoder_config.image_size

    @property
    def max_length(self) -> int:
        return self.bi_encoder_config.max_length

    def train(self, mode: bool = True):
        """Frozen towers stay in eval mode (no dropout, fixed statistics) while the head trains."""
        super().train(mode)
        if not self.hparams.finetune_towers:
            self.bi_encoder.eval()
        return self

    # ---------------------------------------------------------- feature cache
    @property
    def cached(self) -> bool:
        """Whether this run trains and validates on cached tower outputs."""
        return bool(self.hparams.feature_cache and not self.hparams.finetune_towers and self.bi_encoder.cacheable)

    def setup(self, stage: str) -> None:
        """With the towers locked, load (or compute once) each split's stage-2 cache and let the
        DataModule serve training batches from it."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.negatives == "split" and not self.cached:
            raise ValueError("RerankerModule: negatives='split' draws from the cached training split; it needs "
                             "model.feature_cache true, locked towers and finetune_towers false")
        if not (self.cached and hasattr(datamodule, "use_train_features")):
            return
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        fingerprints = tower_fingerprints(self.bi_encoder) if splits else None
        for split in splits:
            swapped = split == "train" and bool(self.hparams.swap_negatives)
            self._features[split] = split_features(self, self.bi_encoder, datamodule, split, fingerprints,
                                                   self.hparams.feature_cache_dir, stage2=True, swapped=swapped)
        if "train" in self._features:
            if self.hparams.true_negatives or self.hparams.twin_negatives:
                self._species = attach_caption_masks(datamodule, self._features["train"], "model.true_negatives")
            if self.hparams.twin_negatives:
                self._load_twins(datamodule)
            if self.hparams.grounding_weight > 0:
                self._attach_grounding(datamodule, self._features["train"])
            datamodule.use_train_features(self._features["train"])

    def _attach_grounding(self, datamodule, train: SplitFeatures) -> None:
        """Which part each training caption's tokens name and where each training photo's parts are
        on the patch grid (served with every batch as ``token_parts`` and ``part_patches``)."""
        from mmai.reranker.grounding import split_grounding_targets

        data = datamodule.hparams
        parts, masks = split_grounding_targets(
            datamodule.shard_dir, "train", train.text_image_ids, train.image_ids, datamodule._collator().tokenizer,
            int(data.max_length), int(data.image_size), int(train.extras["image_patches"].shape[1]))
        train.extras["token_parts"], train.extras["part_patches"] = parts, masks

    def _load_twins(self, datamodule) -> None:
        """The twins' patch tokens (computed once through the locked vision tower, cached)."""
        from lightning.pytorch.utilities import rank_zero_warn

        from mmai.data.feature_cache import twin_bank

        table = datamodule.manifest.get("twins")
        if not table or not Path(table).is_file() or "caption_mask" not in self._features["train"].extras:
            rank_zero_warn(f"model.twin_negatives: no twins to train with ({table or 'the shards list none'}; "
                           "synthesise with --twins and write the shards again); training without them")
            return
        data = datamodule.hparams
        folder = Path(self.hparams.feature_cache_dir) if self.hparams.feature_cache_dir else \
            Path(datamodule.shard_dir) / "feature_cache"
        self._twins = twin_bank(self.bi_encoder.vision, Path(table), data.image_size, data.mean, data.std, folder,
                                device=self.trainer.strategy.root_device, progress=self.trainer.is_global_zero)

    # ---------------------------------------------------------------- encoding
    def _encode(self, batch: dict) -> tuple[torch.Tensor, ...]:
        if "image_features" in batch:  # cached tower outputs: only the projections run
            with torch.no_grad():
                image_embeddings, text_embeddings = self.bi_encoder.embed_batch(batch)
            return (image_embeddings, batch["image_patches"].float(), text_embeddings,
                    batch["text_tokens"].float())
        with torch.set_grad_enabled(self.hparams.finetune_towers and self.training):
            image_embeddings, patches = self.bi_encoder.encode_image(batch["image"])  # (B, E), (B, N, Dv)
            text_embeddings, tokens = self.bi_encoder.encode_text(batch["input_ids"], batch["attention_mask"])
        return image_embeddings, patches, text_embeddings, tokens  # tokens (Bt, L, Dt)

    @property
    def _joint(self) -> bool:
        """Train the towers with their contrastive loss beside the match loss (ALBEF's ITC + ITM)."""
        return bool(self.hparams.finetune_towers and self.hparams.itc_weight > 0)

    def _match_step(self, batch: dict, stage: str) -> torch.Tensor:
        contrastive = None
        if stage == "train" and self._joint:
            contrastive = self.bi_encoder(batch)  # online embeddings with grad, momentum keys, ITC loss
            image_embeddings, patches = contrastive.image_embeddings, contrastive.image_patches
            text_embeddings, tokens = contrastive.text_embeddings, contrastive.text_tokens
        else:
            image_embeddings, patches, text_embeddings, tokens = self._encode(batch)
        keep = ~batch["is_pad"] if "is_pad" in batch else None
        owner = batch["caption_owner"]
        similarity = text_embeddings @ image_embeddings.T  # (Bt, B)
        if keep is not None and not bool(keep.all()):
            similarity = similarity.masked_fill(~keep[None, :], -torch.inf)
        hp = self.hparams
        if stage == "train" and hp.negatives == "split":
            text, mask, image, pairs = self._split_pairs(batch, text_embeddings, image_embeddings, tokens, patches)
        else:
            pairs = build_match_batch(similarity.detach(), owner, batch["image_id"], batch["class_id"],
                                      num_negatives=hp.num_negatives, temperature=hp.negative_temperature,
                                      same_class_weight=hp.same_class_weight)
            if keep is not None:  # padding rows never enter the loss
                valid = keep[owner[pairs.text_index]] & keep[pairs.image_index]
                pairs = type(pairs)(pairs.text_index[valid], pairs.image_index[valid], pairs.labels[valid],
                                    pairs.kind[valid])
            text, mask, image = pairs.gather(tokens, batch["attention_mask"], patches)
        text, mask = _trim_padding(text, mask)  # padding never changes a logit; it costs up to half the step
        output = self.reranker(text, mask, image)
        logits = output.logits  # (P,)
        loss = match_loss(logits, pairs.labels)
        if stage == "train" and hp.grounding_weight > 0 and "token_parts" in batch:
            loss = loss + hp.grounding_weight * self._grounding(output, batch, text.shape[1])
        if contrastive is not None:
            self.bi_encoder.enqueue(contrastive)  # after the loss, as in BiEncoderModule
            self.log("train/itc_loss", contrastive.loss, batch_size=int(batch["image_id"].shape[0]))
            total = loss + self.hparams.itc_weight * contrastive.loss
        else:
            total = loss
        correct = ((logits > 0).float() == pairs.labels).float()  # (P,)
        positive = pairs.kind == POSITIVE
        size = int(batch["image_id"].shape[0])
        on_step = stage == "train"
        self.log(f"{stage}/match_loss", loss, prog_bar=True, batch_size=size, on_step=on_step, on_epoch=True,
                 sync_dist=not on_step)
        self.log(f"{stage}/match_acc", correct.mean(), prog_bar=True, batch_size=size, on_step=on_step,
                 on_epoch=True, sync_dist=not on_step)
        if positive.any() and (~positive).any():
            self.log(f"{stage}/match_acc_positive", correct[positive].mean(), batch_size=size, on_step=on_step,
                     on_epoch=True, sync_dist=not on_step)
            self.log(f"{stage}/match_acc_negative", correct[~positive].mean(), batch_size=size, on_step=on_step,
                     on_epoch=True, sync_dist=not on_step)
        if stage != "train":
            self._collector.add(batch, image_embeddings, text_embeddings,
                                image_extras={"image_patches": patches.to(torch.float16)},
                                text_extras=self._padded_tokens(tokens, batch["attention_mask"]))
        return total

    def _grounding(self, output, batch: dict, length: int) -> torch.Tensor:
        """The grounding loss of the batch's positive pairs (the first rows of the split pairs: each
        caption with its own image), logged as ``train/grounding_loss``."""
        from mmai.reranker.grounding import grounding_loss

        owner = batch["caption_owner"]
        rows = owner.shape[0]
        weights = output.cross_attentions[-1][:rows, 0]  # (Bt, L, N): the agreement attention
        parts = batch["token_parts"][:, :length].long().to(weights.device)
        loss = grounding_loss(weights, parts, batch["part_patches"][owner].to(weights.device))
        self.log("train/grounding_loss", loss, batch_size=int(batch["image_id"].shape[0]))
        return loss

    @torch.no_grad()
    def _split_pairs(self, batch: dict, text_embeddings: torch.Tensor, image_embeddings: torch.Tensor,
                     tokens: torch.Tensor, patches: torch.Tensor):
        """Positives of the batch, with hard negatives drawn from the whole cached training split:
        for each caption ``num_negatives`` images, for each image ``num_negatives`` captions, with
        probability ``softmax(cosine / negative_temperature)`` (same-class candidates scaled by
        ``same_class_weight``; never the item's own image)."""
        hp, train = self.hparams, self._features["train"]
        device = text_embeddings.device
        if self._bank is None:  # the towers and projections are frozen: embed the split (and index it) once
            image_bank, text_bank = self.bi_encoder.embed_batch(
                {"image_features": train.image_features.to(device), "text_features": train.text_features.to(device)})
            train_ids, train_classes = train.image_ids.to(device), train.class_ids.to(device)
            caption_ids = train.text_image_ids.to(device)
            caption_classes = train_classes[torch.searchsorted(train_ids, caption_ids)]
            self._bank = (image_bank, text_bank, train_ids, train_classes, caption_ids, caption_classes)
        image_bank, text_bank, train_ids, train_classes, caption_ids, caption_classes = self._bank
        owner, image_ids, class_ids = batch["caption_owner"], batch["image_id"], batch["class_id"]
        options = dict(num_negatives=hp.num_negatives, temperature=hp.negative_temperature,
                       same_class_weight=hp.same_class_weight)
        allowed_images = allowed_captions = None
        if hp.true_negatives and self._species is not None and "caption_mask" in batch:  # pairs that contradict
            allowed_images = ~self._species.consistent_torch(batch["caption_mask"], class_ids[owner], train_classes)
            bank_masks = train.extras["caption_mask"]
            allowed_captions = ~self._species.consistent_torch(bank_masks, caption_classes.cpu(), class_ids.cpu()).T
            options["same_class_weight"] = 1.0  # a caption never contradicts its own species
        negative_images = sample_hard_negatives(
            text_embeddings @ image_bank.T, image_ids[owner], train_ids, query_class_ids=class_ids[owner],
            candidate_class_ids=train_classes, allowed=allowed_images, **options)  # (Bt, n) train rows
        negative_captions = sample_hard_negatives(
            image_embeddings @ text_bank.T, image_ids, caption_ids, query_class_ids=class_ids,
            candidate_class_ids=caption_classes, allowed=allowed_captions, **options)  # (B, n) train caption rows
        mask = batch["attention_mask"]
        n = hp.num_negatives
        captions = torch.arange(tokens.shape[0], device=device).repeat_interleave(n)
        images = torch.arange(patches.shape[0], device=device).repeat_interleave(n)
        keep_images, keep_captions = negative_images.flatten() >= 0, negative_captions.flatten() >= 0
        image_rows, caption_rows = negative_images.flatten()[keep_images], negative_captions.flatten()[keep_captions]
        bank_patches, bank_tokens = train.extras["image_patches"], train.extras["text_tokens"]
        bank_mask = train.extras["attention_mask"]
        text = torch.cat([tokens, tokens[captions[keep_images]], bank_tokens[caption_rows.cpu()].to(device).float()])
        masks = torch.cat([mask, mask[captions[keep_images]], bank_mask[caption_rows.cpu()].to(device).to(mask.dtype)])
        image = torch.cat([patches[owner], bank_patches[image_rows.cpu()].to(device).float(),
                           patches[images[keep_captions]]])
        kinds = [torch.full((tokens.shape[0],), POSITIVE, device=device),
                 torch.full((image_rows.shape[0],), NEGATIVE_IMAGE, device=device),
                 torch.full((caption_rows.shape[0],), NEGATIVE_CAPTION, device=device)]
        if hp.swap_negatives and "swapped_tokens" in batch:  # the caption with two colours exchanged, its own image
            has_swap = batch["swapped_mask"].any(dim=1)
            text = torch.cat([text, batch["swapped_tokens"][has_swap].float()])
            masks = torch.cat([masks, batch["swapped_mask"][has_swap].to(masks.dtype)])
            image = torch.cat([image, patches[owner][has_swap]])
            kinds.append(torch.full((int(has_swap.sum()),), NEGATIVE_CAPTION, device=device))
        if self._twins is not None and "caption_mask" in batch:  # the caption vs its own photo's twin
            twins = self._twins
            rows = twins.rows_of(image_ids[owner])  # (Bt,)
            stated = batch["caption_mask"].to(device)
            use = (rows >= 0) & (stated >= 0) & ((stated & twins.swapped_bits.to(device)[rows.clamp(min=0)]) != 0)
            text = torch.cat([text, tokens[use]])
            masks = torch.cat([masks, mask[use]])
            image = torch.cat([image, twins.patches[rows[use].cpu()].to(device).float()])
            kinds.append(torch.full((int(use.sum()),), NEGATIVE_IMAGE, device=device))
        kind = torch.cat(kinds)
        rows = torch.arange(kind.shape[0], device=device)
        return text, masks, image, MatchBatch(rows, rows, (kind == POSITIVE).float(), kind)

    def _padded_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token states padded to ``max_length`` so batches concatenate (fp16 to halve the cache)."""
        pad = self.max_length - tokens.shape[1]
        if pad > 0:
            tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        return {"text_tokens": tokens.to(torch.float16), "attention_mask": mask}

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._match_step(batch, "train")

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.reranker.parameters():
            (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay, "lr": hp.lr, "weight_decay": hp.weight_decay, "name": "fusion"},
                  {"params": no_decay, "lr": hp.lr, "weight_decay": 0.0, "name": "fusion_no_decay"}]
        towers = [p for p in self.bi_encoder.parameters() if p.requires_grad]
        if towers:
            groups.append({"params": [p for p in towers if p.ndim >= 2], "lr": hp.lr_towers,
                           "weight_decay": hp.weight_decay, "name": "towers"})
            groups.append({"params": [p for p in towers if p.ndim < 2], "lr": hp.lr_towers, "weight_decay": 0.0,
                           "name": "towers_no_decay"})
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98))
        warmup = max(int(hp.warmup_steps), 0)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------- evaluation
    def record_validation(self, rerank_k: int, stage1_weight: float, epoch: int | None = None,
                          step: int | None = None) -> None:
        """Remember the ``rerank_k`` and ``stage1_weight`` a two-stage validation used (the retrieval
        callback calls this); checkpoints saved from now on record them."""
        self.validated_with = {"rerank_k": int(rerank_k), "stage1_weight": float(stage1_weight),
                               "epoch": epoch, "step": step}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.validated_with is not None:
            checkpoint[VALIDATED_WITH] = dict(self.validated_with)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(VALIDATED_WITH)
        self.validated_with = dict(record) if isinstance(record, dict) else None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._match_step(self._with_cache(batch, "val"), "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._match_step(self._with_cache(batch, "test"), "test")

    def _with_cache(self, batch: dict, split: str) -> dict:
        features = self._features.get(split)
        return {**batch, **features.lookup(batch)} if features is not None else batch

    @torch.no_grad()
    def pair_logits(self, data: EvalSet, text_rows, image_rows, batch_size: int = 256):
        """Match logits ``(P,)`` (numpy) of caption rows ``text_rows`` with gallery rows
        ``image_rows`` of one gathered evaluation set (cached patches and token states): the
        re-ranker's own score of given pairs, for the direct binding probe."""
        extras = data.extras
        text_rows, image_rows = torch.as_tensor(text_rows).long(), torch.as_tensor(image_rows).long()
        logits = []
        for start in range(0, text_rows.shape[0], batch_size):
            t, i = text_rows[start:start + batch_size], image_rows[start:start + batch_size]
            tokens, mask = _trim_padding(extras["text_tokens"][t], extras["attention_mask"][t])
            output = self.reranker(tokens.to(self.device).float(), mask.to(self.device),
                                   extras["image_patches"][i].to(self.device).float())
            logits.append(output.logits.float().cpu())
        return torch.cat(logits).numpy() if logits else torch.zeros(0).numpy()

    @torch.no_grad()
    def two_stage(self, data: EvalSet, k: int | None = None, mode: str = "combined",
                  stage1_weight: float | None = None, length: int | None = None,
                  directions: tuple[str, ...] = ("t2i", "i2t"), also_modes: tuple[str, ...] = ()) -> TwoStageResult:
        """Two-stage Recall@K over one gathered evaluation set (cached patches and tokens)."""
        extras = data.extras
        return evaluate_two_stage(
            self.reranker, extras["image_patches"], extras["text_tokens"], extras["attention_mask"],
            data.image_embeddings, data.text_embeddings, data.image_ids, data.class_ids, data.text_image_ids,
            data.text_class_ids, k=int(k or self.config.rerank_k), mode=mode,
            stage1_weight=float(self.config.stage1_weight if stage1_weight is None else stage1_weight),
            ks=self.hparams.eval_ks, directions=directions, length=length, progress=False, also_modes=also_modes)



def _trim_padding(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states and mask cut to the longest real caption of the batch: padded positions are
    masked everywhere in the re-ranker, so the logits are unchanged."""
    length = max(int(mask.sum(dim=-1).max()), 1) if mask.numel() else mask.shape[-1]
    return tokens[..., :length, :], mask[..., :length]
