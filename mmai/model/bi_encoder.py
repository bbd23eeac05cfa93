"""The stage-1 bi-encoder: towers + projections, momentum twins, key queues, contrastive loss.

ALBEF's image-text contrastive stage (Li et al., "Align before Fuse", NeurIPS 2021), itself
MoCo's momentum contrast (He et al., CVPR 2020) across modalities: online towers encode the
queries, their EMA twins (``_m`` suffix, listed once in :attr:`BiEncoder.model_pairs`) encode the
keys, and queues of past keys serve as extra negatives. MMAI adds image/class ids to the queue
(same-image keys are positives), hard-negative weighting, and an optional CLAP audio tower
contrasted with both images and captions.

One training step, in the order the caller runs it::

    output = model(batch)          # momentum update (training mode only), then keys, then loss
    output.loss.backward(); optimizer.step(); optimizer.zero_grad()
    model.enqueue(output)          # push this batch's keys into the queues (training only)

The enqueue is separate so that the current batch's keys are never in the queue while its own
loss is computed, and so that validation never touches the queue. It may also come right after
the forward, before the backward (as in a Lightning ``training_step``): the loss graph holds
copies of the queue, not the buffers themselves.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from mmai.config import BiEncoderConfig
from mmai.model.losses import info_nce, momentum_soft_targets, positive_mask_from_ids
from mmai.model.momentum import MomentumQueue, copy_params, momentum_update
from mmai.model.towers.projection import Projection


#: loss term -> (query modality, key modality).
LOSS_TERMS: dict[str, tuple[str, str]] = {
    "i2t": ("image", "text"), "t2i": ("text", "image"),
    "a2t": ("audio", "text"), "t2a": ("text", "audio"),
    "a2i": ("audio", "image"), "i2a": ("image", "audio"),
}


@dataclasses.dataclass
class BiEncoderOutput:
    """What :meth:`BiEncoder.forward` returns.

    Attributes:
        loss: the total loss (scalar), ``(i2t + t2i) / 2 + audio_loss_weight * mean(audio terms)``.
        losses: every term: ``"i2t"``, ``"t2i"``, and when some row of the batch has audio
            ``"a2t"``, ``"t2a"``, ``"a2i"``, ``"i2a"`` (``x2y``: queries of modality x against
            keys of modality y, see :data:`LOSS_TERMS`).
        image_embeddings: ``(B, E)`` online, unit norm.
        text_embeddings: ``(Bt, E)`` online, unit norm.
        audio_embeddings: ``(B, E)`` online, unit norm, or None.
        keys: modality -> ``(B, E)`` momentum keys to enqueue, one row per image (text: the first
            caption of each image).
        key_valid: modality -> ``(B,)`` bool, False for rows without that modality.
        image_ids, class_ids: ``(B,)`` long, the ids stored with the keys.
        temperature: the (clamped) temperature used, detached scalar.
        image_patches: ``(B, N, Dv)`` the vision tower's patch tokens (for a fusion re-ranker
            trained jointly, as ALBEF's ITM beside ITC).
        text_tokens: ``(Bt, L, Dt)`` the text tower's token states.
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    image_embeddings: torch.Tensor
    text_embeddings: torch.Tensor
    audio_embeddings: torch.Tensor | None
    keys: dict[str, torch.Tensor]
    key_valid: dict[str, torch.Tensor]
    image_ids: torch.Tensor
    class_ids: torch.Tensor
    temperature: torch.Tensor
    image_patches: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None


@dataclasses.dataclass
class _Side:
    """One modality of a batch: online embeddings, momentum keys, ids, and which rows exist."""

    modality: str
    embeddings: torch.Tensor  # (n, E)
    keys: torch.Tensor  # (n, E)
    image_ids: torch.Tensor  # (n,)
    class_ids: torch.Tensor  # (n,)
    present: torch.Tensor  # (n,) bool
    masks: torch.Tensor | None = None  # (n,) what each caption states (mmai.data.consistency); text only


def first_caption_index(caption_owner: torch.Tensor, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each image's first caption row, and whether the image has a caption at all.

    Args:
        caption_owner: ``(Bt,)`` image row of every caption.
        num_images: B.

    Returns:
        ``index (B,)`` long (0 where the image has no caption) and ``has_caption (B,)`` bool.
    """
    num_captions = caption_owner.shape[0]
    rows = torch.arange(num_captions, device=caption_owner.device)  # (Bt,)
    first = torch.full((num_images,), num_captions, dtype=torch.long, device=caption_owner.device)
    first = first.scatter_reduce(0, caption_owner, rows, reduce="amin")  # (B,)
    has_caption = first < num_captions
    return first.masked_fill(~has_caption, 0), has_caption


class BiEncoder(nn.Module):
    """Vision, text and optional audio towers in one space, trained by momentum contrast.

    Either pass ``vision`` and ``text`` towers (each gets a new :class:`Projection`), or
    ``clip=ClipTowers(...)``, whose vision/text towers come with CLIP's own projections (the
    zero-shot baseline; ``embed_dim`` must equal CLIP's projection size).

    Args:
        vision: a tower ``images -> (pooled (B, Dv), patches)`` with ``.width``
            (:class:`~mmai.model.towers.VisionTower`).
        text: a tower ``(input_ids, attention_mask) -> (pooled (Bt, Dt), tokens)`` with ``.width``
            (:class:`~mmai.model.towers.TextTower`).
        audio: optional tower ``waveforms -> (pooled (B, Da), tokens)``
            (:class:`~mmai.model.towers.AudioTower`); default None.
        clip: a :class:`~mmai.model.towers.ClipTowers`, instead of ``vision`` and ``text``.
        embed_dim: shared space size E (default 512).
        queue_size: keys kept per modality (default 4096); must be a multiple of the global batch;
            0 turns the queue off (in-batch momentum keys only).
        momentum: EMA coefficient of the twins (default 0.995).
        hard_negative_beta: hard-negative concentration beta (default 0.0 = plain InfoNCE).
        class_positives: keys of the same class count as positives too (default False).
        distill_alpha: weight of ALBEF's momentum-distillation targets (default 0.0 = off).
        temperature_init: initial learnable temperature (default 0.07).
        temperature_min, temperature_max: clamp applied in every forward (default 0.001, 0.5).
        projection_hidden_dim: None for linear projections (default), an int for MLP ones.
        projection_input_norm: LayerNorm the tower features entering the projections (default
            False; the LiT profile sets it for its locked features).
        audio_loss_weight: weight of the mean audio term in the total loss (default 1.0).

    Attributes:
        vision, vision_proj, text, text_proj, audio, audio_proj: online modules (audio ones None
            without audio), and their ``_m`` twins (frozen, EMA-updated).
        queue: :class:`~mmai.model.momentum.MomentumQueue` with one queue per modality.
        temperature: learnable scalar ``nn.Parameter``.
    """

    def __init__(
        self,
        vision: nn.Module | None = None,
        text: nn.Module | None = None,
        audio: nn.Module | None = None,
        clip: nn.Module | None = None,
        embed_dim: int = BiEncoderConfig.embed_dim,
        queue_size: int = BiEncoderConfig.queue_size,
        momentum: float = BiEncoderConfig.momentum,
        hard_negative_beta: float = BiEncoderConfig.hard_negative_beta,
        class_positives: bool = BiEncoderConfig.class_positives,
        hard_negatives: str = BiEncoderConfig.hard_negatives,
        hcl_tau_plus: float = BiEncoderConfig.hcl_tau_plus,
        true_negatives: bool = BiEncoderConfig.true_negatives,
        distill_alpha: float = BiEncoderConfig.distill_alpha,
        temperature_init: float = BiEncoderConfig.temperature_init,
        temperature_min: float = BiEncoderConfig.temperature_min,
        temperature_max: float = BiEncoderConfig.temperature_max,
        projection_hidden_dim: int | None = BiEncoderConfig.projection_hidden_dim,
        audio_loss_weight: float = BiEncoderConfig.audio_loss_weight,
        projection_input_norm: bool = BiEncoderConfig.projection_input_norm,
    ) -> None:
        super().__init__()
        if not temperature_min <= temperature_init <= temperature_max:
            raise ValueError(f"temperature_init={temperature_init} is outside "
                             f"[temperature_min={temperature_min}, temperature_max={temperature_max}].")
        if not 0.0 <= distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha}.")
        self.embed_dim, self.momentum = embed_dim, momentum
        self.hard_negative_beta, self.class_positives = hard_negative_beta, class_positives
        self.hard_negatives, self.hcl_tau_plus, self.true_negatives = hard_negatives, hcl_tau_plus, true_negatives
        #: which species each caption is true of (:class:`mmai.data.consistency.SpeciesTable`), set by
        #: the training module from the shards when ``true_negatives``; None: class labels only.
        self.consistency = None
        self.distill_alpha, self.audio_loss_weight = distill_alpha, audio_loss_weight
        self.temperature_min, self.temperature_max = temperature_min, temperature_max
        self.projection_input_norm = projection_input_norm
        self._build_online(vision, text, audio, clip, projection_hidden_dim)
        for name in self.online_names:
            setattr(self, f"{name}_m", copy.deepcopy(getattr(self, name)))
        copy_params(self.model_pairs)
        modalities = ("image", "text") + (("audio",) if self.audio is not None else ())
        self.queue = MomentumQueue(embed_dim, queue_size, modalities)
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)))

    @classmethod
    def from_config(cls, config: BiEncoderConfig, pretrained: bool = True) -> BiEncoder:
        """The bi-encoder a :class:`~mmai.config.BiEncoderConfig` describes (towers built by
        :func:`mmai.model.towers.build_towers`; ``pretrained=False`` skips their weights, for a checkpoint
        about to overwrite them)."""
        from mmai.model.towers import build_towers

        return cls(**build_towers(config, pretrained), **config.model_kwargs())

    def _build_online(self, vision: nn.Module | None, text: nn.Module | None, audio: nn.Module | None,
                      clip: nn.Module | None, hidden_dim: int | None) -> None:
        norm = {"input_norm": self.projection_input_norm}
        if clip is not None:
            if vision is not None or text is not None:
                raise ValueError("BiEncoder: pass either clip or vision and text towers, not both.")
            if clip.embed_dim != self.embed_dim:
                raise ValueError(f"BiEncoder: embed_dim={self.embed_dim} but the CLIP model "
                                 f"{getattr(clip, 'model_name', '')!r} projects to {clip.embed_dim}; "
                                 f"set embed_dim={clip.embed_dim}.")
            self.vision, self.vision_proj = clip.vision, clip.vision_projection
            self.text, self.text_proj = clip.text, clip.text_projection
        else:
            if vision is None or text is None:
                raise ValueError("BiEncoder needs a vision and a text tower (or clip=ClipTowers(...)).")
            self.vision, self.vision_proj = vision, Projection(vision.width, self.embed_dim, hidden_dim, **norm)
            self.text, self.text_proj = text, Projection(text.width, self.embed_dim, hidden_dim, **norm)
        self.audio = audio
        self.audio_proj = Projection(audio.width, self.embed_dim, hidden_dim, **norm) if audio is not None else None

    @property
    def online_names(self) -> list[str]:
        """Names of the online modules that have momentum twins.

        A fully locked tower (``fully_locked``, LiT-style) has none: its EMA would equal itself,
        so the momentum path runs the online tower and only its projection has a twin.
        """
        names = ["vision", "vision_proj", "text", "text_proj"]
        names += ["audio", "audio_proj"] if self.audio is not None else []
        return [name for name in names if not self.is_locked(name)]

    def is_locked(self, name: str) -> bool:
        """True when the module ``name`` (``vision``, ``text``, ``audio``) is a fully locked tower."""
        return bool(getattr(getattr(self, name, None), "fully_locked", False))

    @property
    def cacheable(self) -> bool:
        """Vision and text towers are both fully locked (and no audio): their pooled features can be
        computed once per sample and passed as ``image_features``/``text_features``."""
        return self.is_locked("vision") and self.is_locked("text") and self.audio is None

    def _twin(self, name: str) -> nn.Module:
        return getattr(self, name) if self.is_locked(name) else getattr(self, f"{name}_m")

    def _pooled(self, batch: dict[str, torch.Tensor], modality: str, momentum: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's pooled tower features and tokens: cached ones (``{modality}_features``,
        allowed only for a fully locked tower) or the tower's (its twin's with ``momentum``)."""
        name = {"image": "vision", "text": "text"}[modality]
        cached = batch.get(f"{modality}_features")
        if cached is not None:
            if not self.is_locked(name):
                raise ValueError(f"batch has cached {modality}_features but the {name} tower is not fully locked: "
                                 "cached features are only valid for a locked tower.")
            return cached, None
        tower = self._twin(name) if momentum else getattr(self, name)
        if modality == "image":
            return tower(batch["image"])
        return tower(batch["input_ids"], batch["attention_mask"])

    @property
    def model_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``[(online, twin), ...]``, the one list driving copy, freeze and EMA update."""
        return [(getattr(self, name), getattr(self, f"{name}_m")) for name in self.online_names]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should see (everything but the frozen twins)."""
        return [param for param in self.parameters() if param.requires_grad]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """One EMA step of every twin (called by :meth:`forward` in training mode)."""
        momentum_update(self.model_pairs, self.momentum)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Clamp the learnable temperature into ``[temperature_min, temperature_max]`` in place."""
        self.temperature.clamp_(self.temperature_min, self.temperature_max)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online image embedding.

        Args:
            image: ``(B, 3, H, W)`` normalised.

        Returns:
            ``embedding (B, E)`` unit norm, and the tower's ``patches (B, N, Dv)``.
        """
        pooled, patches = self.vision(image)  # (B, Dv), (B, N, Dv)
        return self.vision_proj(pooled), patches

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online caption embedding: ``embedding (Bt, E)`` unit norm and ``tokens (Bt, L, Dt)``."""
        pooled, tokens = self.text(input_ids, attention_mask)  # (Bt, Dt), (Bt, L, Dt)
        return self.text_proj(pooled), tokens

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Online audio embedding: waveforms ``(B, S)`` at 48 kHz -> ``(B, E)`` unit norm."""
        if self.audio is None:
            raise ValueError("this BiEncoder has no audio tower; build it with audio=AudioTower(...).")
        return self.audio_proj(self.audio(audio).pooled)

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Online ``image (B, E)`` and ``text (Bt, E)`` embeddings of a batch (cached features or pixels and tokens)."""
        return self.vision_proj(self._pooled(batch, "image")[0]), self.text_proj(self._pooled(batch, "text")[0])

    @torch.no_grad()
    def encode_momentum(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Momentum keys of a batch: ``image (B, E)``, ``text (Bt, E)`` and ``audio (B, E)`` if any."""
        keys = {
            "image": self.vision_proj_m(self._pooled(batch, "image", momentum=True)[0]),
            "text": self.text_proj_m(self._pooled(batch, "text", momentum=True)[0]),
        }
        if self._batch_has_audio(batch):
            keys["audio"] = self.audio_proj_m(self.audio_m(batch["audio"]).pooled)
        return keys

    def _batch_has_audio(self, batch: dict[str, torch.Tensor]) -> bool:
        return self.audio is not None and batch.get("audio") is not None

    def forward(self, batch: dict[str, torch.Tensor]) -> BiEncoderOutput:
        """Encode a batch, update the twins (training mode), and compute the contrastive loss.

        Args:
            batch: ``image (B, 3, H, W)``, ``input_ids``/``attention_mask (Bt, L)`` (or, for fully
                locked towers, their cached pooled features ``image_features (B, Dv)`` and
                ``text_features (Bt, Dt)``),
                ``caption_owner (Bt,)`` (default ``arange(B)``), ``image_id``/``class_id (B,)``;
                optionally ``audio (B, S)`` with ``has_audio (B,)`` bool, and ``is_pad (B,)`` bool
                (padding rows of evaluation batches, left out of the loss and the queue).

        Returns:
            :class:`BiEncoderOutput`; pass it to :meth:`enqueue` after the optimiser step.
        """
        self.clamp_temperature()
        image_pooled, image_patches = self._pooled(batch, "image")  # (B, Dv), (B, N, Dv) or None when cached
        text_pooled, text_tokens = self._pooled(batch, "text")  # (Bt, Dt), (Bt, L, Dt) or None when cached
        image_embeddings, text_embeddings = self.vision_proj(image_pooled), self.text_proj(text_pooled)  # (B, E), (Bt, E)
        audio_embeddings = self.encode_audio(batch["audio"]) if self._batch_has_audio(batch) else None  # (B, E)
        if self.training:
            self.momentum_update()
        pooled = {"vision": ("image_features", image_pooled), "text": ("text_features", text_pooled)}
        keys = self.encode_momentum({**batch, **{key: value.detach() for name, (key, value) in pooled.items()
                                                 if self.is_locked(name)}})  # locked: the online pass is its twin's
        embeddings = {"image": image_embeddings, "text": text_embeddings, "audio": audio_embeddings}
        sides = self._sides(batch, embeddings, keys)
        losses = self._losses([side for side in sides.values() if bool(side.present.any())])
        queue_keys, key_valid = self._queue_entries(batch, keys, sides)
        return BiEncoderOutput(
            loss=self._total(losses, [image_embeddings, text_embeddings, audio_embeddings]), losses=losses,
            image_embeddings=image_embeddings, text_embeddings=text_embeddings, audio_embeddings=audio_embeddings,
            keys=queue_keys, key_valid=key_valid, image_ids=batch["image_id"], class_ids=batch["class_id"],
            temperature=self.temperature.detach(), image_patches=image_patches, text_tokens=text_tokens,
        )

    @staticmethod
    def _caption_owner(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        owner = batch.get("caption_owner")
        image_ids = batch["image_id"]
        return torch.arange(image_ids.shape[0], device=image_ids.device) if owner is None else owner  # (Bt,)

    def _sides(self, batch: dict[str, torch.Tensor], embeddings: dict[str, torch.Tensor | None],
               keys: dict[str, torch.Tensor]) -> dict[str, _Side]:
        """Embeddings, keys, ids and presence per modality; captions take their image's ids."""
        image_ids, class_ids = batch["image_id"], batch["class_id"]  # (B,), (B,)
        owner = self._caption_owner(batch)  # (Bt,)
        is_pad = batch.get("is_pad")
        real = torch.ones_like(image_ids, dtype=torch.bool) if is_pad is None else ~is_pad.to(torch.bool)  # (B,)
        sides = {
            "image": _Side("image", embeddings["image"], keys["image"], image_ids, class_ids, real),
            "text": _Side("text", embeddings["text"], keys["text"], image_ids[owner], class_ids[owner], real[owner],
                          batch.get("caption_mask")),
        }
        if embeddings["audio"] is not None:
            has_audio = batch.get("has_audio", real).to(torch.bool) & real  # (B,)
            sides["audio"] = _Side("audio", embeddings["audio"], keys["audio"], image_ids, class_ids, has_audio)
        return sides

    def _queue_entries(self, batch: dict[str, torch.Tensor], keys: dict[str, torch.Tensor],
                       sides: dict[str, _Side]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One key per image and modality for the queue (text: each image's first caption)."""
        first, has_caption = first_caption_index(self._caption_owner(batch), batch["image_id"].shape[0])  # (B,), (B,)
        queue_keys = {"image": keys["image"], "text": keys["text"][first]}  # (B, E) each
        key_valid = {"image": sides["image"].present, "text": has_caption & sides["image"].present}
        if "audio" in sides:
            queue_keys["audio"], key_valid["audio"] = keys["audio"], sides["audio"].present
        return queue_keys, key_valid

    def _losses(self, sides: list[_Side]) -> dict[str, torch.Tensor]:
        """Every ``x2y`` term between the modalities present (image-text always first)."""
        by_modality = {side.modality: side for side in sides}
        losses = {}
        for name, (query, key) in LOSS_TERMS.items():
            if query in by_modality and key in by_modality:
                term = self._contrast(by_modality[query], by_modality[key])
                if term is not None:
                    losses[name] = term
        return losses

    def _total(self, losses: dict[str, torch.Tensor], embeddings: list[torch.Tensor | None]) -> torch.Tensor:
        """Mean image-text term plus ``audio_loss_weight`` times the mean audio term.

        Terms that could not be formed (no audio in the batch, only padding rows) add an exact
        zero that still reaches every tower, as DDP needs every parameter in the graph.
        """
        total = sum(0.0 * embedding.sum() for embedding in embeddings if embedding is not None)
        image_text = [losses[name] for name in ("i2t", "t2i") if name in losses]
        audio_terms = [losses[name] for name in ("a2t", "t2a", "a2i", "i2a") if name in losses]
        if image_text:
            total = total + torch.stack(image_text).mean()
        if audio_terms:
            total = total + self.audio_loss_weight * torch.stack(audio_terms).mean()
        return total

    def _contrast(self, query: _Side, key: _Side) -> torch.Tensor | None:
        """InfoNCE of ``query``'s online embeddings against ``key``'s momentum keys + its queue.

        Query rows without their modality, or without any valid positive key (a caption whose
        image has no audio, against audio keys), are left out; None when no row is left.
        """
        queue = self.queue
        all_keys = torch.cat([key.keys, queue.keys(key.modality).to(key.keys.dtype)])  # (n + Q, E)
        key_image_ids = torch.cat([key.image_ids, queue.image_id_queue])  # (n + Q,)
        key_class_ids = torch.cat([key.class_ids, queue.class_id_queue])  # (n + Q,)
        valid = torch.cat([key.present, queue.valid_mask(key.modality)])  # (n + Q,)
        positive = positive_mask_from_ids(query.image_ids, key_image_ids, query.class_ids, key_class_ids,
                                          self.class_positives)  # (m, n + Q)
        rows = query.present & (positive & valid).any(dim=1)  # (m,)
        if not bool(rows.any()):
            return None
        soft_targets = None
        if self.distill_alpha > 0.0:
            soft_targets = momentum_soft_targets(query.keys[rows], all_keys, self.temperature, valid)
        pair_valid = valid
        if self.true_negatives and self.consistency is not None:  # a key the caption is true of is no negative
            pair_valid = valid[None, :] & ~(self._also_true(query, key, key_class_ids) & ~positive)
        return info_nce(query.embeddings[rows], all_keys, positive[rows], self.temperature,
                        self.hard_negative_beta, pair_valid if pair_valid is valid else pair_valid[rows],
                        soft_targets, self.distill_alpha, self.hard_negatives, self.hcl_tau_plus)

    def _also_true(self, query: _Side, key: _Side, key_class_ids: torch.Tensor) -> torch.Tensor:
        """``(m, n + Q)`` bool: the caption of the pair (the query's, or the batch key's) is true of
        the other side's species. Queue keys of captions carry no statement: False there."""
        table, n = self.consistency, key.class_ids.shape[0]
        found = torch.zeros(query.class_ids.shape[0], key_class_ids.shape[0], dtype=torch.bool,
                            device=key_class_ids.device)
        if query.masks is not None:  # captions against images (or audio): every key has a class
            found |= table.consistent_torch(query.masks, query.class_ids, key_class_ids)
        elif key.masks is not None:  # images against captions: the batch's captions only
            found[:, :n] = table.consistent_torch(key.masks, key.class_ids, query.class_ids).T
        return found

    @torch.no_grad()
    def enqueue(self, output: BiEncoderOutput) -> None:
        """Push a training batch's momentum keys and ids into the queues (gathered across ranks).

        Call once per training step, after the forward that produced ``output`` (before or after
        its backward); never in validation.
        """
        self.queue.enqueue(output.keys, output.image_ids, output.class_ids, output.key_valid)

    def check_compatible(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Raise a clear error when a checkpoint's tensors do not fit this model's shapes.

        Args:
            state_dict: e.g. ``torch.load(path)["state_dict"]``.
            prefix: prefix of this model's keys in ``state_dict`` (e.g. ``"model."`` in a
                Lightning checkpoint).

        Raises:
            ValueError: names every parameter/buffer whose shape differs (expected vs found),
                and the checkpoint's embed_dim when that is the cause.
        """
        own = self.state_dict()
        mismatches = [
            f"{name!r}: expected {tuple(own[name].shape)}, found {tuple(tensor.shape)}"
            for key, tensor in state_dict.items()
            if key.startswith(prefix) and (name := key[len(prefix):]) in own and own[name].shape != tensor.shape
        ]
        if not mismatches:
            return
        message = "checkpoint does not fit this BiEncoder: " + "; ".join(mismatches[:10])
        queue_key = f"{prefix}queue.image_queue"
        if queue_key in state_dict and state_dict[queue_key].shape[-1] != self.embed_dim:
            found = state_dict[queue_key].shape[-1]
            message += (f". The checkpoint was trained with embed_dim={found}, this model has "
                        f"embed_dim={self.embed_dim}: set embed_dim={found} (or load a matching checkpoint).")
        raise ValueError(message)

    def load_checkpoint_state(self, state_dict: dict[str, torch.Tensor], prefix: str = "", strict: bool = True):
        """Load this model's weights, queues and temperature from a (possibly prefixed) state dict.

        Args:
            state_dict: the checkpoint's state dict.
            prefix: prefix to strip (``"model."`` for a Lightning module holding ``self.model``).
            strict: as in ``load_state_dict`` (default True).

        Returns:
            ``load_state_dict``'s ``(missing_keys, unexpected_keys)``.

        Raises:
            ValueError: shapes do not fit (see :meth:`check_compatible`).
        """
        self.check_compatible(state_dict, prefix)
        own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        return self.load_state_dict(own, strict=strict)
