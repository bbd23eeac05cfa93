"""Small torch.distributed helpers (no Lightning): who am I, and gather along the batch.

MoCo (He et al., CVPR 2020) and ALBEF gather keys from every rank before enqueueing them, so all
ranks hold the same queue. Every helper is the identity when torch.distributed is not
initialised, so the same code runs on one CPU process and under DDP. Gathers need the same
shape on every rank (training batches use ``drop_last``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when a torch.distributed process group is up."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of ``tensor`` (bool sent as uint8, which every backend supports)."""
    payload = tensor.contiguous()
    if payload.dtype == torch.bool:
        payload = payload.to(torch.uint8)
    gathered = [torch.empty_like(payload) for _ in range(world_size())]
    dist.all_gather(gathered, payload)
    return [part.to(tensor.dtype) for part in gathered]


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0; the identity without a process group.

    Args:
        tensor: ``(B, ...)``, same shape on every rank.

    Returns:
        ``(world_size * B, ...)``, rank 0's rows first; no gradient.
    """
    if world_size() == 1:
        return tensor.detach()
    return torch.cat(_gather(tensor), dim=0)
