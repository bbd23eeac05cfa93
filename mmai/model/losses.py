r"""Contrastive losses of the stage-1 bi-encoder: multi-positive InfoNCE with hard negatives.

InfoNCE (van den Oord et al., 2018) as used by CLIP, MoCo and ALBEF, extended in three ways:

* **Multi-positive targets** (ALBEF's ``sim_targets``; Khosla et al., "Supervised Contrastive
  Learning", 2020): every key with the query's image id (optionally its class id) is a positive,
  so the ten captions of one image are never each other's negatives.
* **Hard-negative up-weighting** (Robinson et al., "Contrastive Learning with Hard Negative
  Samples", ICLR 2021): negatives are weighted by :math:`w \propto e^{\beta s}`, normalised so
  their mean is 1; :math:`\beta = 0` is plain InfoNCE.
* **Momentum distillation** (ALBEF): the targets are mixed with the momentum model's own
  softmax over the same keys.

Notation for one query :math:`i`: similarities :math:`s_{ij} = q_i \cdot k_j` (unit vectors, so
cosine), temperature :math:`\tau`, positives :math:`P_i`, valid negatives :math:`N_i`, and the
invalid (empty queue) slots excluded from everything.
"""

from __future__ import annotations

import math

import torch


def positive_mask_from_ids(
    query_image_ids: torch.Tensor,
    key_image_ids: torch.Tensor,
    query_class_ids: torch.Tensor | None = None,
    key_class_ids: torch.Tensor | None = None,
    class_positives: bool = False,
) -> torch.Tensor:
    """Which keys are positives of which queries: same image id (or same class id, if asked).

    Ids below 0 (empty queue slots) are never positives.

    Args:
        query_image_ids: ``(N,)`` long.
        key_image_ids: ``(M,)`` long.
        query_class_ids, key_class_ids: ``(N,)``, ``(M,)`` long; needed when ``class_positives``.
        class_positives: also count keys of the same class (species) as positives (default False).

    Returns:
        ``(N, M)`` bool.
    """
    key_exists = key_image_ids[None, :] >= 0  # (1, M)
    positive = (query_image_ids[:, None] == key_image_ids[None, :]) & key_exists  # (N, M)
    if class_positives:
        if query_class_ids is None or key_class_ids is None:
            raise ValueError("class_positives=True needs query_class_ids and key_class_ids.")
        same_class = (query_class_ids[:, None] == key_class_ids[None, :]) & (key_class_ids[None, :] >= 0)  # (N, M)
        positive = positive | same_class
    return positive


def hard_negative_log_weights(similarity: torch.Tensor, negative_mask: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Log of the hard-negative weights, zero outside the negatives.

    .. math::
        w_{ij} = \frac{e^{\beta s_{ij}}}{\frac{1}{|N_i|} \sum_{k \in N_i} e^{\beta s_{ik}}},
        \qquad \log w_{ij} = \beta s_{ij} - \operatorname{logsumexp}_{k \in N_i}(\beta s_{ik}) + \log |N_i|

    so the mean weight over a row's negatives is exactly 1 and ``beta=0`` gives all ones.

    Args:
        similarity: ``(N, M)`` cosine similarities (pass them detached: the weights are
            importance weights, not trained through).
        negative_mask: ``(N, M)`` bool.
        beta: concentration; larger puts more weight on the most similar negatives.

    Returns:
        ``(N, M)`` log-weights, 0 where ``negative_mask`` is False.
    """
    scaled = (beta * similarity).masked_fill(~negative_mask, float("-inf"))  # (N, M)
    count = negative_mask.sum(dim=1, keepdim=True).clamp(min=1).to(similarity.dtype)  # (N, 1)
    log_norm = torch.logsumexp(scaled, dim=1, keepdim=True) - count.log()  # (N, 1)
    log_weights = scaled - log_norm  # (N, M)
    return log_weights.masked_fill(~negative_mask, 0.0)


def momentum_soft_targets(query_m: torch.Tensor, keys: torch.Tensor, temperature: float | torch.Tensor,
                          valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""ALBEF's pseudo-targets: the momentum model's softmax over the keys, no gradient.

    .. math:: \tilde y_{ij} = \operatorname{softmax}_j(q^m_i \cdot k_j / \tau) \text{ over valid } j

    Args:
        query_m: ``(N, E)`` momentum-encoded queries.
        keys: ``(M, E)`` the same keys the online query is scored against.
        temperature: :math:`\tau`.
        valid_mask: ``(M,)`` or ``(N, M)`` bool, False for empty slots.

    Returns:
        ``(N, M)`` rows summing to 1, zero on invalid keys.
    """
    with torch.no_grad(), torch.autocast(device_type=query_m.device.type, enabled=False):
        logits = query_m.float() @ keys.float().T / float(temperature)  # (N, M)
        if valid_mask is not None:
            logits = logits.masked_fill(~valid_mask.expand_as(logits), float("-inf"))
        return logits.softmax(dim=1)


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    positive_mask: torch.Tensor,
    temperature: float | torch.Tensor,
    hard_negative_beta: float = 0.0,
    valid_mask: torch.Tensor | None = None,
    soft_targets: torch.Tensor | None = None,
    alpha: float = 0.0,
    hard_negatives: str = "cosine",
    tau_plus: float = 0.0,
) -> torch.Tensor:
    r"""Multi-positive InfoNCE with hard-negative weights and optional momentum distillation.

    For each query :math:`i` (row) the logits over valid keys are

    .. math::
        \ell_{ij} = s_{ij} / \tau + [j \in N_i] \log w_{ij}

    (:func:`hard_negative_log_weights`, computed from detached similarities), the hard targets
    spread evenly over the positives, :math:`y_{ij} = [j \in P_i] / |P_i|`, mixed with the
    momentum model's soft targets as ALBEF does,
    :math:`t_{ij} = \alpha \tilde y_{ij} + (1 - \alpha) y_{ij}`, and

    .. math::
        L = -\frac{1}{N} \sum_i \sum_j t_{ij} \log \frac{e^{\ell_{ij}}}{\sum_{k\ valid} e^{\ell_{ik}}}

    With one positive per row, :math:`\beta = 0` and :math:`\alpha = 0` this is plain InfoNCE
    (cross-entropy of ``s / tau`` against the positive's index). The computation runs in float32
    with autocast off.

    Args:
        query: ``(N, E)`` unit-norm online embeddings.
        keys: ``(M, E)`` unit-norm keys (momentum batch keys, then queue keys).
        positive_mask: ``(N, M)`` bool; every row needs at least one valid positive.
        temperature: :math:`\tau` (float, or a learnable scalar tensor).
        hard_negative_beta: :math:`\beta \ge 0` (default 0.0 = plain InfoNCE).
        valid_mask: ``(M,)`` or ``(N, M)`` bool, False for empty queue slots (default all valid).
        soft_targets: ``(N, M)`` distributions from :func:`momentum_soft_targets` (default None).
        alpha: weight of ``soft_targets`` (default 0.0 = hard targets only).
        hard_negatives: ``"cosine"`` (default): the weights above, ``exp(beta * s)``; ``"hcl"``:
            Robinson et al.'s hard-negative contrastive loss (ICLR 2021), weights
            ``exp(beta * s / tau)`` on the logits' own scale, each positive scored against the
            weighted negatives alone, with the false-negative correction (see :func:`hcl_loss`).
        tau_plus: HCL's class prior (default 0.0: no correction).

    Returns:
        Scalar loss.

    Raises:
        ValueError: a query has no valid positive, or ``soft_targets`` is missing with ``alpha > 0``.
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        similarity = query.float() @ keys.float().T  # (N, M)
        valid = torch.ones_like(positive_mask) if valid_mask is None else valid_mask.expand_as(positive_mask)
        positive = positive_mask & valid  # (N, M)
        positives_per_row = positive.sum(dim=1, keepdim=True)  # (N, 1)
        if bool((positives_per_row == 0).any()):
            rows = torch.nonzero(positives_per_row[:, 0] == 0).flatten().tolist()
            raise ValueError(f"info_nce: queries {rows[:10]} have no valid positive key; drop them before the loss.")
        logits = similarity / temperature  # (N, M)
        if hard_negatives == "hcl":
            if alpha > 0.0:
                raise ValueError("info_nce: hard_negatives='hcl' does not take momentum distillation (alpha > 0)")
            return hcl_loss(logits, positive, valid & ~positive, hard_negative_beta, tau_plus,
                            float(torch.as_tensor(temperature).detach()))
        if hard_negatives != "cosine":
            raise ValueError(f"info_nce: hard_negatives must be 'cosine' or 'hcl', got {hard_negatives!r}")
        if hard_negative_beta != 0.0:
            logits = logits + hard_negative_log_weights(similarity.detach(), valid & ~positive, hard_negative_beta)
        log_prob = logits.masked_fill(~valid, float("-inf")).log_softmax(dim=1).masked_fill(~valid, 0.0)  # (N, M)
        targets = positive.float() / positives_per_row  # (N, M)
        if alpha > 0.0:
            if soft_targets is None:
                raise ValueError("info_nce: alpha > 0 needs soft_targets (see momentum_soft_targets).")
            targets = alpha * soft_targets.float() + (1.0 - alpha) * targets
        return -(targets * log_prob).sum(dim=1).mean()



def hcl_loss(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, beta: float, tau_plus: float,
             temperature: float) -> torch.Tensor:
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021), multi-positive form.

    With :math:`\ell = s / \tau` and the negatives' importance weights
    :math:`w_{ij} = e^{\beta \ell_{ij}} / \overline{e^{\beta \ell_i}}` (mean 1 over the row's
    :math:`N_i` negatives, detached), the weighted negative mass is
    :math:`g_i = \frac{1}{N_i}\sum_{k \in N_i} w_{ik} e^{\ell_{ik}}` and, with the class prior
    :math:`\tau^+` (the expected share of false negatives among them), its debiased estimate
    :math:`\hat g_i = \max\big(\frac{g_i - \tau^+ \overline{e^{\ell^+_i}}}{1 - \tau^+}, e^{-1/\tau}\big)`.
    Each positive :math:`j` is scored against the negatives alone:
    :math:`L = -\frac{1}{N}\sum_i \frac{1}{|P_i|}\sum_{j \in P_i} \log \frac{e^{\ell_{ij}}}{e^{\ell_{ij}} + N_i \hat g_i}`.
    With ``beta=0`` and ``tau_plus=0`` this is InfoNCE in which the other positives of a row are
    not in each other's denominators. Computed in log space (``s / tau`` reaches 1,000 at the
    temperature's floor).

    Args:
        logits: ``(N, M)`` similarities divided by the temperature.
        positive, negative: ``(N, M)`` bool; every row needs a positive (a row without negatives
            gets the floor mass).
        beta: the concentration :math:`\beta \ge 0` on the logits' scale.
        tau_plus: the class prior in [0, 1).
        temperature: :math:`\tau`, for the floor :math:`e^{-1/\tau}`.
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"hcl_loss: tau_plus must be in [0, 1), got {tau_plus}")
    minus_inf = float("-inf")
    count = negative.sum(dim=1).clamp(min=1).to(logits.dtype)  # (N,)
    log_weights = hard_negative_log_weights(logits.detach(), negative, beta)  # (N, M), mean weight 1
    log_mass = torch.logsumexp((logits + log_weights).masked_fill(~negative, minus_inf), dim=1) - count.log()  # log g
    floor = torch.full_like(log_mass, -1.0 / temperature)
    if tau_plus > 0.0:
        positives = positive.sum(dim=1).clamp(min=1).to(logits.dtype)
        log_positive = torch.logsumexp(logits.masked_fill(~positive, minus_inf), dim=1) - positives.log()
        gap = (math.log(tau_plus) + log_positive) - log_mass  # log(tau+ * mean e^l+ / g)
        corrected = log_mass + torch.log1p(-torch.exp(gap.clamp(max=-1e-6))) - math.log(1.0 - tau_plus)
        log_mass = torch.where(gap < 0, torch.maximum(corrected, floor), floor)
    log_mass = torch.where(negative.any(dim=1), torch.maximum(log_mass, floor), floor)
    log_denominator = torch.logaddexp(logits, (count.log() + log_mass)[:, None])  # (N, M)
    log_prob = (logits - log_denominator).masked_fill(~positive, 0.0)
    return -(log_prob.sum(dim=1) / positive.sum(dim=1).clamp(min=1)).mean()
