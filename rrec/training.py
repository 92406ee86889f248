"""Building blocks the training recipes share: batches of samples, teacher-forced policy passes, item
states for a batch's targets, history masks. The loops themselves live in ``recipes/``.

Letters: B users, G samples per user, P prompt tokens, T completion tokens, N items, D hidden, V vocab.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from rrec.backbone import final_hidden
from rrec.evaluation import histories_of
from rrec.items import encode_token_lists
from rrec.rollout import left_pad


def sample_batches(
    samples: pd.DataFrame, batch_size: int, seed: int, start: int = 0
) -> Iterator[pd.DataFrame]:
    """Endless shuffled batches of sample rows; epoch e is shuffled with ``seed + e``.

    ``start`` skips that many batches (resuming a run at a data position).
    """
    if len(samples) < batch_size:
        raise ValueError(f"{len(samples)} samples cannot fill a batch of {batch_size}")
    per_epoch = len(samples) // batch_size
    epoch, pos = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng(seed + epoch).permutation(len(samples))
        for b in range(pos, per_epoch):
            yield samples.iloc[order[b * batch_size : (b + 1) * batch_size]].reset_index(drop=True)
        epoch, pos = epoch + 1, 0


def prompt_batch(model, rows: pd.DataFrame, reasoning: bool = True) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded user-prompt ids and mask for sample rows."""
    prompts = [
        model.user_prompt(h, float(t), reasoning)
        for h, t in zip(histories_of(rows), rows["timestamp"].tolist(), strict=True)
    ]
    ids = model.tokenizer(prompts, add_special_tokens=False).input_ids
    return left_pad(ids, model.pad_id, device=model.device)


def target_columns(model, targets: Sequence) -> Tensor:
    """(B,) column of each target in the item table."""
    cols = {iid: j for j, iid in enumerate(model.item_ids)}
    missing = [t for t in targets if str(t) not in cols]
    if missing:
        raise KeyError(f"targets not in the item table: {missing[:5]}")
    return torch.tensor([cols[str(t)] for t in targets], device=model.device)


def history_mask(model, histories: Sequence[Sequence], n_items: int) -> Tensor:
    """(B, N) True at each row's history items (never the target: callers pass histories only)."""
    cols = {iid: j for j, iid in enumerate(model.item_ids)}
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool, device=model.device)
    for b, h in enumerate(histories):
        mask[b, [cols[str(i)] for i in h if str(i) in cols]] = True
    return mask


def encode_targets(model, targets: Sequence, grad: bool) -> Tensor:
    """(B, D) float32 item states of the batch's targets (with the graph when ``grad``)."""
    recs = [model.catalog[str(t)] for t in targets]
    ids = model.item_prompt_ids(recs)
    return encode_token_lists(
        model.lm, ids, pad_id=model.pad_id, batch_size=len(ids), progress=False, grad=grad
    )


def refresh_targets(model, targets: Sequence, states: Tensor) -> None:
    """Write fresh (B, D) target states into the item table (the per-step refresh of Algorithm 1)."""
    uniq: dict[str, int] = {}
    for j, t in enumerate(targets):
        uniq.setdefault(str(t), j)
    vecs = model._normalise(states.detach()[list(uniq.values())]).cpu().numpy()
    model.rec_head.replace(list(uniq), vecs)
    model.invalidate_table_cache()


def policy_forward(
    lm: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    chunk: int = 4,
) -> tuple[Tensor, Tensor]:
    """Teacher-forced pass over prompt + completion.

    Returns:
        ((B*G, T) float32 log-probs of the completion tokens under ``softmax(logits / temperature)``,
         (B*G, D) float32 final hidden state at each row's ``<answer>``, its last completion token).
    """
    ids = torch.cat([prompt_ids, completion_ids], 1)  # (B*G, P+T)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    hidden, _ = final_hidden(lm, ids, mask)  # (B*G, P+T, D)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    h = hidden[:, P - 1 : P + T - 1]  # (B*G, T, D): the state before each completion token
    head = lm.get_output_embeddings()
    logps = []
    for s in range(0, h.shape[0], chunk):  # bound the (rows, T, V) logits to ``chunk`` rows at a time
        logits = head(h[s : s + chunk]).float() / temperature  # (c, T, V)
        tok = completion_ids[s : s + chunk, :, None]
        logps.append(logits.gather(2, tok).squeeze(2) - torch.logsumexp(logits, dim=-1))
    answer_pos = P + completion_mask.sum(1) - 1  # (B*G,)
    states = hidden[torch.arange(ids.shape[0], device=ids.device), answer_pos].float()
    return torch.cat(logps) * completion_mask, states


def trainable_parameters(lm: nn.Module) -> list[nn.Parameter]:
    params = [p for p in lm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params
