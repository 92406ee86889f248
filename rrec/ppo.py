"""The token-level clipped policy-gradient objective (PPO's clip, GRPO's token-level form) with TRL's
``loss_type`` normalisations and an optional k3 KL: RecPO's reasoning-token term (``rrec.recpo``) and the
whole loss of the sibling GRPO systems (``rrec.grpo``).

Letters: B*G rows (rollouts), T completion tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def clipped_surrogate(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, epsilon: float, epsilon_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element PPO loss -min(r A, clip(r, 1-eps, 1+eps_high) A); shapes broadcast.

    Returns (loss, ratio, clipped flag), the flag marking elements where the clipped branch was taken
    (A > 0 and r > 1+eps_high, or A < 0 and r < 1-eps).
    """
    ratio = torch.exp(logps - old_logps)
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    is_clipped = ((ratio > 1 + epsilon_high) & (advantages > 0)) | ((ratio < 1 - epsilon) & (advantages < 0))
    return loss, ratio, is_clipped


class PolicyStats(NamedTuple):
    """Detached scalars of the token-level term."""

    clip_fraction: Tensor  # fraction of completion tokens where the clip engaged
    ratio_mean: Tensor  # mean token ratio over completion tokens
    kl: Tensor  # mean k3 KL per token (0 when beta_kl = 0)


def policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | None = None,
    beta_kl: float = 0.0,
    ref_logps: Tensor | None = None,
) -> tuple[Tensor, PolicyStats]:
    """The token-level clipped GRPO objective (TRL's ``loss_type`` normalisations), optional k3 KL.

    Shared by RecPO (its reasoning-token term, ``rrec.recpo``) and the sibling systems (``rrec.grpo``).

    Args:
        logps, old_logps: (B*G, T) current and behaviour log-probs of the taken tokens; old_logps
            carry no gradient.
        advantages: (B*G,) group-relative advantages.
        completion_mask: (B*G, T) 1 on the tokens the loss covers.
        loss_type: ``grpo`` (mean over each sequence's tokens, then over sequences), ``bnpo`` (mean over
            all tokens in the batch), ``dr_grpo`` (sum / (rows * max_completion_length)), ``dapo`` (sum /
            ``num_items_in_batch``, the token count of the global batch; defaults to this batch's).
        ref_logps: (B*G, T) reference log-probs, needed when ``beta_kl > 0``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = completion_mask.float()  # (B*G, T)
    adv = advantages.float()[:, None]  # (B*G, 1)
    per_token, ratio, clipped = clipped_surrogate(logps, old_logps.detach(), adv, epsilon, eps_high)
    kl = torch.zeros((), device=logps.device)
    if beta_kl > 0:
        if ref_logps is None:
            raise ValueError("beta_kl > 0 needs ref_logps")
        delta = ref_logps.detach() - logps  # (B*G, T)
        per_token_kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0
        per_token = per_token + beta_kl * per_token_kl
        kl = (per_token_kl * mask).sum() / mask.sum().clamp(min=1)
    n_tok = mask.sum().clamp(min=1)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / n_tok
    elif loss_type == "dr_grpo":
        width = max_completion_length or mask.shape[1]
        loss = (per_token * mask).sum() / (mask.shape[0] * width)
    else:  # dapo
        loss = (per_token * mask).sum() / (num_items_in_batch or n_tok)
    with torch.no_grad():
        stats = PolicyStats(
            clip_fraction=(clipped.float() * mask).sum() / n_tok,
            ratio_mean=(ratio * mask).sum() / n_tok,
            kl=kl.detach(),
        )
    return loss, stats
