"""Fast exact evaluation of models without reasoning: every sample's prompt ends with ``<answer>``, so the
user state is the last token's state, and the prompts are encoded like the item table (``rrec.items``):
sorted by length (little padding), the common prefix (the chat template's system turn) run once and its KV
cache reused, under ``inference_mode``, bf16 autocast where the CPU or GPU has it natively.

Ranks follow the evaluator's rule (``rrec.metrics.rank_of_target``: 1 + #strictly greater, the sample's
history masked, the target never), so a subset agrees rank for rank with ``rrec.evaluation`` given the
same prompts (tested), only faster. Also returned: whether each target ties another non-excluded item.

Letters: S samples, N items, D hidden, K cut-off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrec.backbone import cpu_has_fast_bf16
from rrec.evaluation import histories_of
from rrec.items import encode_token_lists
from rrec.metrics import rank_of_target


def autocast_context(device: torch.device | str, enabled: bool | None = None):
    """bf16 autocast on a GPU or a CPU with native bf16 (AVX512-BF16/AMX); a no-op elsewhere."""
    dev = torch.device(device)
    if enabled is None:
        enabled = dev.type == "cuda" or (dev.type == "cpu" and cpu_has_fast_bf16())
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


@torch.no_grad()
def rank_samples(
    lm: nn.Module,
    prompt_ids: Callable[[list[dict], float | None], list[int]] | Sequence[list[int]],
    samples: pd.DataFrame,
    table: Tensor,
    item_ids: Sequence[str],
    *,
    pad_id: int,
    batch_size: int = 32,
    top_k: int = 20,
    progress: bool = True,
    bf16: bool | None = None,
) -> dict:
    """Full-catalog ranks of every sample's target.

    Args:
        prompt_ids: (history records, target time or None) -> prompt token ids ending with ``<answer>``;
            or those ids already built, one list per sample in sample order.
        table: (N, D) item table rows (normalised for cosine), in ``item_ids`` order.
        bf16: autocast the forward in bf16; None: where native (``autocast_context``). False gives the
            float32 states of ``rrec.evaluation`` (the rank-for-rank agreement holds at equal dtypes).

    Returns:
        dict with ``ranks`` (S,) int64, ``tied`` (S,) bool, ``top_ids`` (S lists of K ids), ``user_ids``,
        ``targets``.
    """
    if len(samples) == 0:
        raise ValueError("no samples to evaluate")
    columns = {iid: j for j, iid in enumerate(item_ids)}
    missing = sorted({str(t) for t in samples["target"] if str(t) not in columns})
    if missing:
        raise KeyError(f"{len(missing)} targets are not in the item table, e.g. {missing[:5]}")
    hist = histories_of(samples)
    times = samples["timestamp"].astype(float).tolist() if "timestamp" in samples else [None] * len(hist)
    if callable(prompt_ids):
        ids = [prompt_ids(h, t) for h, t in zip(hist, times, strict=True)]
    else:
        ids = [list(x) for x in prompt_ids]
        if len(ids) != len(hist):
            raise ValueError(f"{len(ids)} prompts for {len(hist)} samples")
    device = next(lm.parameters()).device
    with autocast_context(device, bf16):
        states = encode_token_lists(lm, ids, pad_id=pad_id, batch_size=batch_size, progress=progress,
                                    desc="evaluate")  # fmt: skip  # (S, D)
    t = table.float().to(device)
    ranks, tied, top_ids = [], [], []
    for s in range(0, len(hist), 256):
        u = F.normalize(states[s : s + 256].float(), dim=-1)
        scores = u @ t.T  # (b, N) cosine; the temperature does not change ranks
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        for b, h in enumerate(hist[s : s + 256]):
            exclude[b, [columns[r["item_id"]] for r in h if r["item_id"] in columns]] = True
        target = torch.tensor([columns[str(x)] for x in samples["target"].iloc[s : s + 256]], device=device)
        exclude[torch.arange(len(target)), target] = False
        ranks.append(rank_of_target(scores, target, exclude).cpu())
        own = scores.gather(1, target[:, None])
        same = (scores == own) & ~exclude
        same[torch.arange(len(target)), target] = False
        tied.append(same.any(1).cpu())
        top = scores.masked_fill(exclude, float("-inf")).topk(min(top_k, scores.shape[1]), dim=1)
        top_ids += [  # masked items left out, as rrec.evaluation does
            [item_ids[j] for j, v in zip(row.tolist(), vals.tolist(), strict=True) if v != float("-inf")]
            for row, vals in zip(top.indices, top.values, strict=True)
        ]
    return {
        "ranks": torch.cat(ranks),
        "tied": torch.cat(tied),
        "top_ids": top_ids,
        "user_ids": samples["user_id"].astype(str).tolist(),
        "targets": samples["target"].astype(str).tolist(),
    }


def sample_rows(res: dict) -> list[dict]:
    """Per-sample rows (``user_id``, ``target``, ``rank``, ``tied``) of a ``rank_samples`` result: the
    ``per_user.jsonl`` format that ``rrec.evaluation.paired_ndcg`` reads."""
    return [
        {"user_id": u, "target": t, "rank": int(r), "tied": bool(x)}
        for u, t, r, x in zip(
            res["user_ids"], res["targets"], res["ranks"].tolist(), res["tied"].tolist(), strict=True
        )
    ]
