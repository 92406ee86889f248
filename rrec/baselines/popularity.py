"""Most-popular baseline: every user gets the same scores, the item's train interaction count.

What is counted: every train interaction once. A train sample is one (history -> target) step of a
user's sequence, so the train targets hold every train interaction except the items that precede a
user's first train target (they only ever appear inside histories). We therefore count

* every train target, plus
* the history of each user's earliest train sample (smallest ``position``, the target's index in the
  user's sequence, when that column exists; else smallest ``timestamp``; else first row),

which is the user's whole train sequence counted once (up to the data's history window for the items
before the first target). Valid and test interactions are never counted.

Letters: B samples, L history length, N catalog items.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn


def popularity_counts(train: pd.DataFrame, item_ids: Sequence[str]) -> Tensor:
    """Train interaction count of every catalog item, in item-table order.

    Args:
        train: train samples with columns ``user_id``, ``history`` (list of item ids, oldest first),
            ``target``, and optionally ``position`` or ``timestamp`` (to find each user's earliest
            sample).
        item_ids: the N catalog item ids; the output follows this order.

    Returns:
        (N,) float32 counts.

    Raises:
        KeyError: an item of ``train`` is not in ``item_ids``.

    Example:
        >>> train = pd.DataFrame({"user_id": ["u", "u"], "history": [["a"], ["a", "b"]],
        ...                       "target": ["b", "c"]})
        >>> popularity_counts(train, ["a", "b", "c", "d"])  # targets b, c + first history [a]
        tensor([1., 1., 1., 0.])
    """
    index = {item: i for i, item in enumerate(item_ids)}
    counts = torch.zeros(len(index), dtype=torch.float32)  # (N,)
    for target in train["target"]:
        counts[index[target]] += 1
    key = next((c for c in ("position", "timestamp") if c in train.columns), None)
    order = train.sort_values(key, kind="stable") if key else train
    first = order.drop_duplicates("user_id", keep="first")
    for history in first["history"]:
        for item in history:
            counts[index[item]] += 1
    return counts


class Popularity(nn.Module):
    """Scores every item by a fixed count vector, whatever the history.

    ``max_len`` is 1 because the input history is never read (the training and scoring functions cut
    histories to ``model.max_len`` columns); history masking at test time still uses the full history.

    Args:
        counts: (N,) scores in item-table order, e.g. from :func:`popularity_counts`.
    """

    max_len: int = 1

    def __init__(self, counts: Tensor) -> None:
        super().__init__()
        self.register_buffer("counts", counts.detach().float().clone())

    def forward(self, history: Tensor) -> Tensor:
        """(B, L) item ids (ignored) -> (B, N) scores, the count vector repeated per row."""
        return self.counts[None, :].expand(history.shape[0], -1)


def popularity_sample_rows(
    train: pd.DataFrame, item_ids: Sequence[str], samples: pd.DataFrame
) -> tuple[Tensor, Tensor, list[dict]]:
    """Most-popular scored on ``samples`` as the evaluator scores a model: each sample's history masked
    (never the target), ranks 1 + #strictly greater (``rrec.metrics``).

    Returns:
        ((B,) int64 ranks, (B,) bool "target tied with another item", per-sample rows with ``user_id``,
        ``target``, ``rank`` and ``tied``: the ``per_user.jsonl`` format that ``paired_ndcg`` reads).
    """
    from rrec.metrics import rank_of_target, tied_with_target

    ids = [str(i) for i in item_ids]
    col = {i: j for j, i in enumerate(ids)}
    scores = popularity_counts(train, ids).float().expand(len(samples), -1).clone()  # (B, N)
    excl = torch.zeros_like(scores, dtype=torch.bool)
    for b, h in enumerate(samples["history"]):
        excl[b, [col[str(i)] for i in h if str(i) in col]] = True
    target = torch.tensor([col[str(t)] for t in samples["target"]])  # (B,)
    ranks, tied = rank_of_target(scores, target, excl), tied_with_target(scores, target, excl)
    users, targets = samples["user_id"].astype(str).tolist(), samples["target"].astype(str).tolist()
    rows = [
        {"user_id": u, "target": t, "rank": int(r), "tied": bool(x)}
        for u, t, r, x in zip(users, targets, ranks.tolist(), tied.tolist(), strict=True)
    ]
    return ranks, tied, rows
