"""RecPO math as pure functions: fused reward, group advantages, the token-level clipped objective on
reasoning tokens and the item action trained on the best trajectory of each group.

Letters: B users, G samples per user (``num_generations``), T completion tokens, N catalog items,
D hidden size. Rows are user-major: row ``b*G + g`` is sample g of user b.

Where we stand against the paper (R²ec, "Towards Large Recommender Models with Reasoning") and its
official code:

* Reward: R = (1-beta) R_d + beta R_c (``mode="convex"``, the official code) or R_d + beta R_c
  (``mode="additive"``, the paper's text); R_d = NDCG of the target's rank (cut at ``ndcg_k``),
  R_c = softmax over the catalog at the target. Ranks in float32 (the official code ranks in bf16).
* Advantages: GRPO (z-score within the group, unbiased std as TRL), RLOO (r_i minus the mean of the
  *other* G-1 rewards; the official code's RLOO formula is wrong), or none (mean-centred).
* Old log-probs are real: the ratio exp(logp - old_logp) moves away from 1 once ``num_iterations`` >= 2
  (the official code detaches the current log-probs, so its clip never engages).
* Item action: the in-batch softmax of each user state over the batch's target item states (other
  users' targets are the negatives) is an action with its own clipped ratio, trained only on the
  best-advantage trajectory of each group (ties: lowest index), with that trajectory's advantage.
* Loss normalisation follows TRL's ``loss_type`` names (grpo, bnpo, dr_grpo, dapo).
* KL: optional k3 estimator to a reference policy (``beta_kl``, default 0 as in recent GRPO practice).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rrec.metrics import rank_of_target

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def fused_reward(
    scores: Tensor, target_index: Tensor, *, beta: float = 0.05, ndcg_k: int = 1000, mode: str = "convex"
) -> Tensor:
    r"""Reward of each trajectory from its user state's scores over the catalog.

    Args:
        scores: (B*G, N) similarity logits (already divided by the temperature), history masked (-inf).
        target_index: (B*G,) column of the target.
        beta: weight of the similarity term (R²ec: 0.05).
        ndcg_k: ranks beyond this cut-off give R_d = 0 (official code: 1000).
        mode: ``"convex"`` (1-beta) R_d + beta R_c, or ``"additive"`` R_d + beta R_c.

    Returns:
        (B*G,) float32 rewards.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
        >>> fused_reward(s, torch.tensor([0, 0]), beta=0.0)  # ranks 1 and 2: 1/log2(2), 1/log2(3)
        tensor([1.0000, 0.6309])
    """
    if mode not in ("convex", "additive"):
        raise ValueError(f"mode must be 'convex' or 'additive', got {mode!r}")
    s = scores.float()  # (B*G, N)
    ranks = rank_of_target(s, target_index).float()  # (B*G,)
    r_d = torch.where(ranks <= ndcg_k, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    r_c = torch.softmax(s, dim=-1).gather(1, target_index.long()[:, None]).squeeze(1)  # (B*G,)
    return (1 - beta) * r_d + beta * r_c if mode == "convex" else r_d + beta * r_c


def group_advantages(rewards: Tensor, group_size: int, kind: str = "grpo", eps: float = 1e-4) -> Tensor:
    r"""Group-relative advantages; rewards are contiguous per user.

    * ``grpo``: (r - mean_g) / (std_g + eps), std unbiased (TRL);
    * ``rloo``: r_i - \frac{1}{G-1} \sum_{j \ne i} r_j  =  \frac{G}{G-1} (r_i - mean_g);
    * ``none``: r - mean_g.

    A zero-variance group gives exactly 0 for every kind; G = 1 gives 0.

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, "rloo")  # 1 - 0, 0 - 1/3
        tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (B, G)
    if group_size == 1:
        return torch.zeros_like(rewards, dtype=torch.float32)
    centred = r - r.mean(dim=1, keepdim=True)  # (B, G)
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)  # (B, 1) zero-variance groups
    if kind == "grpo":
        adv = centred / (r.std(dim=1, keepdim=True) + eps)
    elif kind == "rloo":
        adv = centred * group_size / (group_size - 1)
    elif kind == "none":
        adv = centred
    else:
        raise ValueError(f"kind must be 'grpo', 'rloo' or 'none', got {kind!r}")
    return torch.where(flat, torch.zeros_like(adv), adv).view(-1)  # (B*G,)


def best_in_group(advantages: Tensor, group_size: int) -> Tensor:
    """(B,) row index of each group's best-advantage trajectory; ties go to the lowest index."""
    a = advantages.view(-1, group_size)  # (B, G)
    # argmax returns the first maximal index on CPU and CUDA; make it explicit for safety
    best = (a == a.max(dim=1, keepdim=True).values).float().argmax(dim=1)  # (B,)
    return torch.arange(a.shape[0], device=a.device) * group_size + best


def in_batch_item_logps(
    user_states: Tensor, target_states: Tensor, group_size: int, temperature: float, cosine: bool = True
) -> Tensor:
    """Log-prob of each row's own target under a softmax over the batch's B target items.

    Args:
        user_states: (B*G, D) user states (row b*G+g belongs to user b).
        target_states: (B, D) item states of the B targets (user b's target is row b).

    Returns:
        (B*G,) log-probs.
    """
    u, t = user_states.float(), target_states.float()
    if cosine:
        u, t = torch.nn.functional.normalize(u, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    logits = u @ t.T / temperature  # (B*G, B)
    own = torch.arange(t.shape[0], device=u.device).repeat_interleave(group_size)  # (B*G,)
    return torch.log_softmax(logits, dim=-1).gather(1, own[:, None]).squeeze(1)


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

    Shared by RecPO (its reasoning-token term) and the sibling systems (``rrec.grpo``).

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


class RecPOStats(NamedTuple):
    """Detached scalars for logging."""

    policy_loss: Tensor  # reasoning-token term after normalisation
    item_loss: Tensor  # item-action term (best trajectories), before ``item_weight``
    clip_fraction: Tensor  # fraction of reasoning tokens where the clip engaged
    item_clip_fraction: Tensor
    ratio_mean: Tensor  # mean token ratio over reasoning tokens
    kl: Tensor  # mean k3 KL per token (0 when beta_kl = 0)
    item_loss_share: Tensor  # |item term| / (|policy term| + |item term|)


def recpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    item_logps: Tensor,
    old_item_logps: Tensor,
    *,
    group_size: int,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | None = None,
    beta_kl: float = 0.0,
    ref_logps: Tensor | None = None,
    item_weight: float = 1.0,
) -> tuple[Tensor, RecPOStats]:
    """The RecPO objective: token-level clipped loss on reasoning tokens + the best-trajectory item action.

    Args:
        logps, old_logps: (B*G, T) current and behaviour log-probs of the taken tokens (``<answer>``
            included). old_logps carry no gradient.
        advantages: (B*G,) group-relative advantages.
        completion_mask: (B*G, T) 1 on reasoning tokens.
        item_logps, old_item_logps: (B*G,) log-prob of the target under the in-batch softmax.
        loss_type, max_completion_length, num_items_in_batch, beta_kl, ref_logps: as in
            :func:`policy_loss`, which computes the reasoning-token term.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    policy, pst = policy_loss(
        logps, old_logps, advantages, completion_mask, epsilon=epsilon, epsilon_high=eps_high,
        loss_type=loss_type, max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch, beta_kl=beta_kl, ref_logps=ref_logps,
    )  # fmt: skip
    best = best_in_group(advantages.detach(), group_size)  # (B,)
    item_per, _, item_clipped = clipped_surrogate(
        item_logps[best], old_item_logps.detach()[best], advantages.float()[best], epsilon, eps_high
    )
    item = item_per.mean()
    loss = policy + item_weight * item
    with torch.no_grad():
        share = (item_weight * item).abs() / ((policy.abs() + (item_weight * item).abs()).clamp(min=1e-12))
        stats = RecPOStats(
            policy_loss=policy.detach(),
            item_loss=item.detach(),
            clip_fraction=pst.clip_fraction,
            item_clip_fraction=item_clipped.float().mean(),
            ratio_mean=pst.ratio_mean,
            kl=pst.kl,
            item_loss_share=share,
        )
    return loss, stats
