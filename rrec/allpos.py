r"""All-position training of a model without reasoning: one causal pass per chunk, a catalog softmax per
boundary (``rrec.stream`` writes the chunks).

Letters: C chunks, L tokens, M boundaries (targets), U unique targets in a batch, N items, D hidden.

The loss of a boundary with user state :math:`u` and target :math:`t` is the cross-entropy of

.. math::

    p(i \mid u) = \frac{\exp(\cos(u, v_i) / \tau)}
                        {\sum_{j \notin \mathcal{E}} \exp(\cos(u, v_j) / \tau)}

where :math:`\mathcal{E}` is the boundary's history (masked as the evaluator masks it; the target never is)
and :math:`v_i` the item's table row (text state, plus its ID vector in the hybrid table). Where the
negatives :math:`v_j` come from is ``item_side``:

* ``frozen``: the text rows are the *base* model's item states (the LoRA adapter disabled), computed once;
  only the user side (LoRA) and the ID vectors train. Every row is exact at every step, so there is no
  staleness (the table the model serves is the same base-model text table plus the ID vectors).
* ``cached``: the text rows come from the current model, detached, rebuilt every ``refresh_every`` steps;
  the batch's unique targets are re-encoded with gradient and replace their rows. Fresh target rows and
  stale negatives differ by drift, which the loss can exploit without learning preference: refresh often.
* ``in_batch``: only the batch's U unique targets, all freshly encoded with gradient, are candidates
  (no stale row at all, but only U - 1 negatives, and no popularity signal from the rest of the catalog).

A target shared by several boundaries is one column, so no target is ever a negative of itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrec.backbone import final_hidden
from rrec.rollout import left_pad

ITEM_SIDES = ("frozen", "cached", "in_batch")


def boundary_states(
    lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, cols: Tensor
) -> Tensor:
    """(M, D) float32 final hidden states at the boundaries ``(rows, cols)`` of right-padded chunks."""
    hidden, _ = final_hidden(lm, input_ids, attention_mask)  # (C, L, D)
    return hidden[rows, cols].float()


def encode_items_with_grad(lm: nn.Module, token_lists: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """(U, D) float32 states at the last token of item prompts, keeping the graph.

    The prompts' common prefix (the chat template's system turn) runs once, with gradient, and its cache is
    repeated for the suffixes: the same states as full prompts (positions continue after the prefix).
    """
    from rrec.items import common_prefix_len

    device = next(lm.parameters()).device
    n = common_prefix_len(token_lists) if len(token_lists) > 1 else 0
    if n < 4:
        ids, mask = left_pad(token_lists, pad_id, device=device)
        hidden, _ = final_hidden(lm, ids, mask)
        return hidden[:, -1].float()
    prefix = torch.tensor([list(token_lists[0][:n])], device=device)
    _, cache = final_hidden(lm, prefix, torch.ones_like(prefix), use_cache=True)
    ids, smask = left_pad([t[n:] for t in token_lists], pad_id, device=device)  # (U, S)
    cache.batch_repeat_interleave(ids.shape[0])
    mask = torch.cat([torch.ones(ids.shape[0], n, dtype=smask.dtype, device=device), smask], 1)
    pos = n + (smask.cumsum(1) - 1).clamp(min=0)
    hidden, _ = final_hidden(lm, ids, mask, position_ids=pos, cache=cache, use_cache=True)
    return hidden[:, -1].float()


def exclusion_mask(
    exclude: Sequence[Sequence[str]], columns: dict[str, int], n_cols: int, device: torch.device | str
) -> Tensor:
    """(M, n_cols) bool, True at each boundary's excluded items that are among the columns."""
    mask = torch.zeros(len(exclude), n_cols, dtype=torch.bool, device=device)
    for m, ids in enumerate(exclude):
        cols = [columns[i] for i in ids if i in columns]
        if cols:
            mask[m, cols] = True
    return mask


def catalog_loss(
    users: Tensor, table: Tensor, target_cols: Tensor, exclude: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of each user over the table's rows, excluded rows left out.

    Args:
        users: (M, D) user states (normalised here).
        table: (K, D) candidate rows, already normalised (cosine) as the model stores them.
        target_cols: (M,) row of each target in ``table``.
        exclude: (M, K) bool or None; the target's own column is never excluded.
        temperature: tau.

    Returns:
        (the loss, (M,) ranks of the targets among the candidates, ties against the target, no grad).

    Example:
        >>> u = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> loss, rank = catalog_loss(u, t, torch.tensor([0]), None, 1.0)  # -log(e / (e + 1))
        >>> round(loss.item(), 4), rank.tolist()
        (0.3133, [1])
    """
    logits = F.normalize(users.float(), dim=-1) @ table.float().T / temperature  # (M, K)
    if exclude is not None:
        keep_target = F.one_hot(target_cols, logits.shape[1]).bool()  # (M, K)
        logits = logits.masked_fill(exclude & ~keep_target, float("-inf"))
    loss = F.cross_entropy(logits, target_cols)
    with torch.no_grad():
        own = logits.gather(1, target_cols[:, None])  # (M, 1)
        ranks = 1 + ((logits >= own).sum(1) - 1)  # ties count against the target
    return loss, ranks
