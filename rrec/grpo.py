"""GRPO on plain text completions for the sibling systems (like/dislike GRPO, RecZero / RecOne rating
prediction, RecLLM-R1): rewards from the decoded text, the clipped update, the SFT loss.

They share RecPO's core: ``rrec.recpo.group_advantages`` and ``rrec.ppo.policy_loss`` (the
token-level clipped objective with TRL's ``loss_type`` normalisations and the optional k3 KL). The
completions come from ``rrec.text_rollout`` (RecPO's KV-cached sampler, ending at the end-of-turn token).
What differs from RecPO: the reward is computed from the decoded text by plain functions
``(completions, **columns) -> list[float]`` (TRL's shape), where every column holds one value per
completion.

Letters: B prompts, G completions per prompt, P prompt tokens, T completion tokens, F reward functions.
Rows are prompt-major: row ``b*G + g`` is completion g of prompt b.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rrec import distributed, ppo
from rrec.text_rollout import TextRollout
from rrec.training import ReferencePolicy, loss_normalisation, policy_forward

RewardFunc = Callable[..., list[float]]


def reward_matrix(
    funcs: Sequence[RewardFunc], completions: Sequence[str], columns: dict[str, Sequence]
) -> Tensor:
    """(B*G, F) float32: reward function f on every completion; each column holds B*G values.

    A reward function returning the wrong number of values or a non-finite value is an error (the group
    advantages would silently become NaN).
    """
    n = len(completions)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    out = torch.zeros(n, len(funcs), dtype=torch.float32)
    for j, f in enumerate(funcs):
        values = f(list(completions), **columns)
        name = getattr(f, "__name__", repr(f))
        if len(values) != n:
            raise ValueError(f"reward {name} returned {len(values)} values for {n} completions")
        out[:, j] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        if not torch.isfinite(out[:, j]).all():
            raise ValueError(f"reward {name} returned a non-finite value")
    return out


def repeat_columns(columns: dict[str, Sequence], group_size: int) -> dict[str, list]:
    """Each per-prompt column repeated G times, prompt-major, to match the rollout rows."""
    return {k: [v for v in values for _ in range(group_size)] for k, values in columns.items()}


class UpdateStats(NamedTuple):
    loss: float
    clip_fraction: float
    ratio_mean: float
    kl: float
    grad_norm: float


def grpo_update(
    lm: nn.Module,
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler,
    roll: TextRollout,
    advantages: Tensor,
    *,
    num_iterations: int = 1,
    temperature: float = 1.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    beta_kl: float = 0.0,
    reference: ReferencePolicy | None = None,
    max_grad_norm: float = 1.0,
) -> UpdateStats:
    """``num_iterations`` clipped policy-gradient steps over one rollout batch (TRL's mu).

    Old log-probs: the first iteration's log-probs, detached (the weights that sampled the batch), so
    the ratio is exactly 1 in iteration 1 and moves in the next ones; one forward per iteration.
    ``beta_kl`` > 0 needs ``reference``, built once before training by ``rrec.training.reference_policy``
    (the adapter-disabled model with LoRA, a frozen copy of the starting weights with full fine-tuning).
    Several processes (``accelerate launch``, each holding B/W prompts with their G completions, so
    groups and advantages stay local): the token count of ``dapo``/``bnpo`` is the global batch's
    (``rrec.training.loss_normalisation``) and gradients are averaged over processes before the step, so
    W processes take the step one process takes on the whole batch. On one process both are no-ops.
    Returns the statistics of the last iteration (``loss``, ``clip_fraction``, ``ratio_mean`` and ``kl``
    averaged over processes).
    """
    if beta_kl > 0 and reference is None:
        raise ValueError("beta_kl > 0 needs reference=rrec.training.reference_policy(lm, beta_kl)")
    _, world = distributed.rank_and_world()
    n_tok_local = roll.completion_mask.sum().float()
    n_tok = float(distributed.sum_over_processes(n_tok_local))
    loss_type, n_items = loss_normalisation(loss_type, n_tok, world)
    args = (roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask, temperature)
    adv = advantages.to(roll.completion_ids.device)
    ref = reference.logps(*args) if beta_kl > 0 else None
    old = None
    lm.train()
    for _ in range(num_iterations):
        logps, _ = policy_forward(lm, *args)  # (B*G, T)
        if old is None:  # iteration 1: the behaviour policy's log-probs, ratio exactly 1
            old = logps.detach()
        loss, st = ppo.policy_loss(
            logps, old, adv, roll.completion_mask, epsilon=epsilon, epsilon_high=epsilon_high,
            loss_type=loss_type, max_completion_length=max_completion_length, num_items_in_batch=n_items,
            beta_kl=beta_kl, ref_logps=ref,
        )  # fmt: skip
        if distributed.any_process(not bool(torch.isfinite(loss)), logps.device):
            raise FloatingPointError("non-finite GRPO loss (on some process)")
        loss.backward()
        distributed.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    lm.eval()
    with torch.no_grad():  # token-weighted statistics summed over processes; the loss averaged
        sums = distributed.sum_over_processes(
            torch.stack([loss.detach(), st.clip_fraction * n_tok_local, st.ratio_mean * n_tok_local,
                         st.kl * n_tok_local]).float()
        )  # fmt: skip
    n = max(n_tok, 1.0)
    return UpdateStats(
        float(sums[0]) / world, float(sums[1]) / n, float(sums[2]) / n, float(sums[3]) / n, float(grad_norm)
    )


def sft_loss(
    lm: nn.Module, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> Tensor:
    """Mean cross-entropy of the target tokens given their prompts (prompt tokens carry no loss).

    Each row is ``prompt + target`` (the target should end with the end-of-turn token); rows are
    right-padded. Returns a scalar with gradient.
    """
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(f"{len(prompts)} prompts for {len(targets)} targets")
    device = next(lm.parameters()).device
    rows = [list(p) + list(t) for p, t in zip(prompts, targets, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        if not t:
            raise ValueError(f"target {i} is empty")
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(rows[i])
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(list(t))
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, L-1, V)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)
