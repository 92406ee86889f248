"""RecPO math as pure functions: fused reward, group advantages, the token-level clipped objective on
reasoning tokens and the item action trained on the best trajectory of each group.

Letters: B users, G samples per user (``num_generations``), T completion tokens, N catalog items,
D hidden size. Rows are user-major: row ``b*G + g`` is sample g of user b.

Departures from the paper (R²ec, "Towards Large Recommender Models with Reasoning") and its official code:

* Reward: R = (1-beta) R_d + beta R_c (``mode="convex"``, the official code) or R_d + beta R_c
  (``mode="additive"``, the paper's text); R_d = NDCG of the target's rank (cut at ``ndcg_k``),
  R_c = softmax over the catalog at the target. Ranks in float32 (the official code ranks in bf16).
* Ties count against the target in the reward's rank, 1 + #{j != t : s_j >= s_t, j not excluded}, so a
  collapsed user state scoring every item equally gets the worst rank, not the maximal reward; the
  evaluation keeps 1 + #strictly greater (``rrec.metrics.rank_of_target``'s ``ties``).
* The reward masks the history, never the target (a target also in the history is ranked, as in the
  evaluation: ``rrec.training.history_mask``).
* Advantages: GRPO (z-score within the group, unbiased std as TRL), RLOO (r_i minus the mean of the
  *other* G-1 rewards; the official code's RLOO formula is wrong), or none (mean-centred).
* Old log-probs are real: with ``num_iterations`` (mu) >= 2, the first iteration's log-probs, detached,
  for the tokens and the item action: the ratio is exactly 1 in iteration 1 and moves afterwards (the
  official code detaches the current log-probs at every iteration, so its clip never engages); one
  forward per iteration, none before. Dropout is 0 (backbones, ``lora_dropout`` default); with dropout
  the old log-probs would carry iteration 1's mask, as its current log-probs do.
* Forced ``<answer>`` tokens (an EOS replaced, or the length budget reached) were not sampled: they
  leave the token term by default (:func:`sampled_token_mask`); the row's item action stays.
* Item action: the in-batch softmax of each user state over the batch's target item states (other
  users' targets are negatives; a target two users share is a negative of neither, the contrastive
  baseline's rule), an action with its own clipped ratio, trained on each group's best-advantage row
  (ties: lowest index) with that row's own advantage. The official code multiplies an (n, 1) advantage
  by (n, 1, 1) log-probs, a broadcast that trains every row with the batch-mean best advantage.
* Scale: the item term is the plain mean over the B best rows of one surrogate each; the token term
  is normalised per ``loss_type`` (grpo: mean of per-row token means, O(|A|) per row like the item
  term; dr_grpo: further x mean length / ``max_completion_length``). The best row's advantage is its
  group's maximum (>= 0) while token advantages average 0 per group. ``item_weight`` (1) sets the
  ratio, ``item_loss_share`` logs it; the paper states no normalisation.
* Loss normalisation follows TRL's ``loss_type`` names (grpo, bnpo, dr_grpo, dapo).
* KL: optional k3 estimator (``beta_kl``, default 0 as in recent GRPO practice) to the starting policy:
  the adapter-disabled model with LoRA, a frozen copy with full fine-tuning (``training.reference_policy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rrec.metrics import rank_of_target
from rrec.ppo import clipped_surrogate, policy_loss


def fused_reward(
    scores: Tensor,
    target_index: Tensor,
    *,
    beta: float = 0.05,
    ndcg_k: int = 1000,
    mode: str = "convex",
    exclude_mask: Tensor | None = None,
) -> Tensor:
    r"""Reward of each trajectory from its user state's scores; ties count against the target.

    Args:
        scores: (B*G, N) similarity logits (already divided by the temperature).
        target_index: (B*G,) column of the target.
        beta: weight of the similarity term (R²ec: 0.05).
        ndcg_k: ranks beyond this cut-off give R_d = 0 (official code: 1000).
        mode: ``"convex"`` (1-beta) R_d + beta R_c, or ``"additive"`` R_d + beta R_c.
        exclude_mask: optional (B*G, N) bool, True at the history items: left out of the rank and of the
            softmax of R_c (the target never is, even if marked).

    Returns:
        (B*G,) float32 rewards.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 2.0], [1.0, 1.0, 1.0]])
        >>> fused_reward(s, torch.tensor([0, 0, 0]), beta=0.0)  # ranks 1, 2, 3 (ties count against t)
        tensor([1.0000, 0.6309, 0.5000])
    """
    if mode not in ("convex", "additive"):
        raise ValueError(f"mode must be 'convex' or 'additive', got {mode!r}")
    s = scores.float()  # (B*G, N)
    t = target_index.long()[:, None]  # (B*G, 1)
    if exclude_mask is not None:
        excluded = exclude_mask.to(device=s.device, dtype=torch.bool).scatter(1, t, False)  # (B*G, N)
        s = s.masked_fill(excluded, float("-inf"))
    ranks = rank_of_target(s, target_index, exclude_mask, ties="pessimistic").float()  # (B*G,)
    r_d = torch.where(ranks <= ndcg_k, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    r_c = torch.softmax(s, dim=-1).gather(1, t).squeeze(1)  # (B*G,)
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
    user_states: Tensor,
    target_states: Tensor,
    group_size: int,
    temperature: float,
    cosine: bool = True,
    targets: Sequence | None = None,
) -> Tensor:
    """Log-prob of each row's own target under a softmax over the batch's B target items.

    Args:
        user_states: (B*G, D) user states (row b*G+g belongs to user b).
        target_states: (B, D) item states of the B targets (user b's target is row b).
        targets: the B target ids; another column holding user b's own target is left out of user b's
            softmax (a positive, not a negative). None: every other column is a negative.

    Returns:
        (B*G,) log-probs.

    Example:
        >>> u = torch.eye(2).repeat_interleave(2, 0)  # (B*G, D), B = G = 2
        >>> in_batch_item_logps(u, torch.eye(2)[[0, 0]], 2, 1.0, targets=["a", "a"])  # one item twice
        tensor([0., 0., 0., 0.])
    """
    u, t = user_states.float(), target_states.float()
    if cosine:
        u, t = torch.nn.functional.normalize(u, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    B = t.shape[0]
    logits = u @ t.T / temperature  # (B*G, B)
    own = torch.arange(B, device=u.device).repeat_interleave(group_size)  # (B*G,)
    if targets is not None:
        if len(targets) != B:
            raise ValueError(f"{len(targets)} target ids for {B} target states")
        ids = [str(x) for x in targets]
        same = torch.tensor([[a == c for c in ids] for a in ids], device=u.device)  # (B, B)
        same.fill_diagonal_(False)  # the own column stays
        logits = logits.masked_fill(same.repeat_interleave(group_size, 0), float("-inf"))
    return torch.log_softmax(logits, dim=-1).gather(1, own[:, None]).squeeze(1)


def sampled_token_mask(completion_mask: Tensor, forced: Tensor, include_forced: bool = False) -> Tensor:
    """(B*G, T) the tokens the policy-gradient term covers: a forced row's last token (``<answer>``, not
    sampled) leaves ``completion_mask`` (right-padded) unless ``include_forced``; ``forced``: (B*G,) bool.

    Example:
        >>> sampled_token_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([True, False]))
        tensor([[1, 0, 0],
                [1, 1, 1]])
    """
    if include_forced:
        return completion_mask
    last = (completion_mask.sum(1) - 1).clamp(min=0).long()  # (B*G,) column of <answer>
    drop = torch.zeros_like(completion_mask, dtype=torch.bool)
    drop[torch.arange(drop.shape[0], device=drop.device), last] = forced.to(drop.device).bool()
    return completion_mask.masked_fill(drop, 0)


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

    loss = token term (per ``loss_type``) + ``item_weight`` * mean over the B groups of the clipped
    surrogate of the group's best row, with that row's own advantage.

    Args:
        logps, old_logps: (B*G, T) current and behaviour log-probs of the taken tokens (``<answer>``
            included). old_logps carry no gradient.
        advantages: (B*G,) group-relative advantages.
        completion_mask: (B*G, T) 1 on the tokens the token term covers (the sampled ones:
            :func:`sampled_token_mask`).
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
