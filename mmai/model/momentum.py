"""Momentum contrast: EMA twins of the encoders and queues of their past keys.

MoCo (He et al., CVPR 2020) keeps a queue of keys from recent batches, encoded by a slowly
moving (exponential moving average) copy of the encoder, as extra negatives; ALBEF (Li et al.,
NeurIPS 2021) does the same for image-text pairs with one queue per modality and the EMA twins
listed once in ``model_pairs``. MMAI's queue also stores each key's image id and class id, so
the loss can treat keys of the same image (or species) as positives instead of negatives.

Queue initialisation: keys start at zero and every slot carries a validity flag
(``{modality}_valid_queue``) and ids of -1, so an empty slot is never a positive and is masked
out of the negatives; ``filled`` counts the written slots (:meth:`MomentumQueue.fill_fraction`).
(MoCo fills its queue with random unit vectors instead; those act as meaningless negatives until
they are overwritten.)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from mmai.model.distributed import all_gather_no_grad

#: (online module, momentum twin) pairs, ALBEF's ``model_pairs``.
ModelPairs = Iterable[Sequence[nn.Module]]


def _matched_parameters(online: nn.Module, twin: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    online_params, twin_params = dict(online.named_parameters()), dict(twin.named_parameters())
    if online_params.keys() != twin_params.keys():
        raise ValueError(f"momentum twin of {type(online).__name__} has different parameters: "
                         f"{sorted(online_params.keys() ^ twin_params.keys())[:10]}")
    return [(online_params[name], twin_params[name]) for name in online_params]


@torch.no_grad()
def copy_params(model_pairs: ModelPairs) -> None:
    """Copy every online parameter into its twin and freeze the twin (``requires_grad=False``).

    Args:
        model_pairs: ``[(online, twin), ...]`` with identically named parameters.
    """
    for online, twin in model_pairs:
        for param, param_m in _matched_parameters(online, twin):
            param_m.data.copy_(param.data)
            param_m.requires_grad_(False)


@torch.no_grad()
def momentum_update(model_pairs: ModelPairs, momentum: float = 0.995) -> None:
    """EMA step of every twin: ``param_m = momentum * param_m + (1 - momentum) * param``.

    Only parameters move; buffers of a twin (e.g. BatchNorm statistics) are its own.

    Args:
        model_pairs: ``[(online, twin), ...]``.
        momentum: EMA coefficient in [0, 1] (default 0.995, ALBEF's); 0 copies the online weights.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
    for online, twin in model_pairs:
        for param, param_m in _matched_parameters(online, twin):
            param_m.data.mul_(momentum).add_(param.data, alpha=1.0 - momentum)


class MomentumQueue(nn.Module):
    """FIFO queues of past momentum keys, one per modality, with their image and class ids.

    All state is in buffers, so checkpoints carry it:

    * ``{modality}_queue``: ``(queue_size, embed_dim)`` keys, zeros until written;
    * ``{modality}_valid_queue``: ``(queue_size,)`` bool, True where the slot holds a key of that
      modality (False for empty slots, and for items that lack the modality, e.g. no audio);
    * ``image_id_queue``, ``class_id_queue``: ``(queue_size,)`` long, -1 when empty;
    * ``ptr``: next slot to write; ``filled``: number of written slots (at most ``queue_size``).

    Args:
        embed_dim: key size E (default 512).
        queue_size: number of slots (default 4096); 0 disables the queue (enqueue does nothing).
        modalities: one queue per name (default ``("image", "text", "audio")``).
    """

    def __init__(self, embed_dim: int = 512, queue_size: int = 4096,
                 modalities: Sequence[str] = ("image", "text", "audio")) -> None:
        super().__init__()
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}.")
        self.embed_dim, self.queue_size, self.modalities = embed_dim, queue_size, tuple(modalities)
        for modality in self.modalities:
            self.register_buffer(f"{modality}_queue", torch.zeros(queue_size, embed_dim))  # (Q, E)
            self.register_buffer(f"{modality}_valid_queue", torch.zeros(queue_size, dtype=torch.bool))  # (Q,)
        self.register_buffer("image_id_queue", torch.full((queue_size,), -1, dtype=torch.long))  # (Q,)
        self.register_buffer("class_id_queue", torch.full((queue_size,), -1, dtype=torch.long))  # (Q,)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise KeyError(f"MomentumQueue has no {modality!r} queue; its modalities are {self.modalities}.")

    def keys(self, modality: str) -> torch.Tensor:
        """The ``(queue_size, embed_dim)`` keys of ``modality`` (zeros where not valid)."""
        self._check_modality(modality)
        return getattr(self, f"{modality}_queue")

    def valid_mask(self, modality: str) -> torch.Tensor:
        """``(queue_size,)`` bool: slots holding a key of ``modality``."""
        self._check_modality(modality)
        return getattr(self, f"{modality}_valid_queue")

    def fill_fraction(self) -> float:
        """Written slots / ``queue_size`` (0.0 for a disabled queue)."""
        return float(self.filled) / self.queue_size if self.queue_size else 0.0

    @torch.no_grad()
    def enqueue(self, keys: dict[str, torch.Tensor], image_ids: torch.Tensor, class_ids: torch.Tensor,
                valid: dict[str, torch.Tensor] | None = None) -> None:
        """Gather a batch of keys from all ranks and write them at ``ptr``, wrapping around.

        Args:
            keys: modality -> ``(B, E)`` keys, rows aligned with ``image_ids``; a modality of the
                queue missing here is written as invalid.
            image_ids, class_ids: ``(B,)`` long.
            valid: modality -> ``(B,)`` bool, False for rows without that modality (default: all
                True for the modalities in ``keys``).

        Raises:
            ValueError: ``queue_size`` is not a multiple of the global batch (B x world size), or
                a modality is unknown, or shapes disagree.
        """
        if self.queue_size == 0:
            return
        unknown = set(keys) - set(self.modalities)
        if unknown:
            raise ValueError(f"enqueue got keys for {sorted(unknown)}; this queue holds {self.modalities}.")
        image_ids = all_gather_no_grad(image_ids)  # (G,)
        global_batch = image_ids.shape[0]
        if self.queue_size % global_batch != 0:
            raise ValueError(
                f"MomentumQueue: queue_size={self.queue_size} is not a multiple of the global batch "
                f"{global_batch} (per-rank batch x world size); pick a queue_size divisible by it "
                f"(e.g. {max(1, self.queue_size // global_batch) * global_batch}) and train with drop_last=True."
            )
        slots = slice(int(self.ptr), int(self.ptr) + global_batch)
        self.image_id_queue[slots] = image_ids
        self.class_id_queue[slots] = all_gather_no_grad(class_ids)
        for modality in self.modalities:
            self._write(modality, slots, keys.get(modality), (valid or {}).get(modality), global_batch)
        self.ptr.fill_((int(self.ptr) + global_batch) % self.queue_size)
        self.filled.fill_(min(int(self.filled) + global_batch, self.queue_size))

    def _write(self, modality: str, slots: slice, keys: torch.Tensor | None, valid: torch.Tensor | None,
               global_batch: int) -> None:
        queue, valid_queue = self.keys(modality), self.valid_mask(modality)
        if keys is None:
            queue[slots] = 0.0
            valid_queue[slots] = False
            return
        keys = all_gather_no_grad(keys)  # (G, E)
        if keys.shape != (global_batch, self.embed_dim):
            raise ValueError(f"enqueue: {modality} keys gather to {tuple(keys.shape)}, expected "
                             f"({global_batch}, {self.embed_dim}) (one row per image id).")
        if valid is None:
            valid = torch.ones(global_batch, dtype=torch.bool, device=keys.device)
        else:
            valid = all_gather_no_grad(valid)  # (G,)
        queue[slots] = keys.to(queue.dtype) * valid[:, None].to(queue.dtype)  # (G, E), zeros where invalid
        valid_queue[slots] = valid
