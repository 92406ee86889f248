"""Encoding samples, training with early stopping, and full-catalog scoring for the sequential baselines.

Letters: B samples, L history length, N catalog items.

A model here is any ``nn.Module`` with an int attribute ``max_len`` whose forward maps (B, L) 1-based
item ids, left-padded with 0 and L <= ``max_len``, to (B, N) scores in item-table order (SASRec,
GRU4Rec, Popularity). Ranks come from :func:`rrec.metrics.rank_of_target`, the same code that ranks the
LLM models. History masking, when on, excludes every item of the sample's **full** history (not only
the ``max_len`` most recent ones the model reads), except the target itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrec.metrics import ndcg_at_k, rank_of_target


class EncodedSamples(NamedTuple):
    """A split as tensors.

    Attributes:
        history: (B, L) int64 1-based item ids (item-table row + 1), left-padded with 0; L is the
            longest history of the split (at least 1).
        target: (B,) int64 0-based item-table row of the target, i.e. its column in the (B, N) scores.
    """

    history: Tensor
    target: Tensor


def encode_samples(df: pd.DataFrame, item_ids: Sequence[str]) -> EncodedSamples:
    """Map a sample DataFrame (``history`` list of item ids oldest first, ``target``) to tensors.

    Example:
        >>> df = pd.DataFrame({"history": [["b"], ["a", "b"]], "target": ["c", "a"]})
        >>> encode_samples(df, ["a", "b", "c"])
        EncodedSamples(history=tensor([[0, 2],
                [1, 2]]), target=tensor([2, 0]))

    Raises:
        KeyError: an item id is not in ``item_ids``.
    """
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    histories = [[index[item] for item in h] for h in df["history"]]
    length = max([1, *map(len, histories)])
    rows = [[0] * (length - len(h)) + h for h in histories]
    history = torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)  # (B, L)
    target = torch.tensor([index[t] - 1 for t in df["target"]], dtype=torch.long)  # (B,)
    return EncodedSamples(history, target)


@torch.no_grad()
def rank_encoded(
    model: nn.Module,
    samples: EncodedSamples,
    num_items: int,
    *,
    mask_history: bool = True,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> Tensor:
    """(B,) 1-based ranks of the targets among all N items, in batches, with the model in eval mode."""
    was_training = model.training
    model.eval()
    ranks = []
    for start in range(0, len(samples.target), batch_size):
        history = samples.history[start : start + batch_size].to(device)  # (b, L)
        target = samples.target[start : start + batch_size].to(device)  # (b,)
        scores = model(history[:, -model.max_len :])  # (b, N)
        exclude = None
        if mask_history:
            exclude = torch.zeros(len(target), num_items + 1, dtype=torch.bool, device=device)
            exclude = exclude.scatter(1, history, True)[:, 1:]  # (b, N); column 0 was padding
        ranks.append(rank_of_target(scores, target, exclude).cpu())
    model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def score_split(
    model: nn.Module,
    df: pd.DataFrame,
    item_ids: Sequence[str],
    mask_history: bool = True,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Rank each sample's target among all catalog items.

    Args:
        model: a baseline (see the module docstring), already on ``device``.
        df: samples with ``history`` and ``target`` columns.
        item_ids: the N catalog item ids, in the order of the model's score columns.
        mask_history: exclude the sample's history items (except the target) from the ranking.
        batch_size: samples scored at once.
        device: where the batches go.

    Returns:
        (B,) int64 ranks, 1 = best, in the row order of ``df``.
    """
    samples = encode_samples(df, item_ids)
    return rank_encoded(
        model, samples, len(item_ids), mask_history=mask_history, batch_size=batch_size, device=device
    )


def train_sequential(
    model: nn.Module,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    item_ids: Sequence[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    seed: int,
    device: str | torch.device = "cpu",
    weight_decay: float = 0.0,
    mask_history: bool = True,
    verbose: bool = False,
) -> tuple[nn.Module, dict[str, list[float] | int | float]]:
    """Train with Adam on full-catalog cross-entropy; early-stop on valid NDCG@10; restore the best.

    Each epoch visits every train sample once in an order drawn from a generator seeded with ``seed``
    and trains on its last position (see :mod:`rrec.baselines.sasrec` for why that is enough). After
    each epoch the valid split is ranked (with the same ``mask_history`` as at test time). Training
    stops once ``patience`` epochs in a row have not strictly beaten the best valid NDCG@10, and the
    best epoch's weights are loaded back into ``model``.

    Args:
        model: SASRec or GRU4Rec (anything trainable that follows the module docstring's contract).
        train_df: train samples (``history``, ``target``).
        valid_df: valid samples for early stopping.
        item_ids: the N catalog item ids, in the order of the model's score columns.
        epochs: at most this many passes.
        batch_size: samples per step.
        lr: Adam learning rate.
        patience: epochs without improvement before stopping.
        seed: seeds ``torch.manual_seed`` (dropout) and the shuffling generator.
        device: where the model and batches live.
        weight_decay: Adam's L2 penalty (0 by default, as in RecBole's SASRec).
        mask_history: exclude history items when ranking the valid split.
        verbose: print one line per epoch (loss, valid NDCG@10, seconds).

    Returns:
        ``(model, history)``: the model with its best weights, and a dict with per-epoch lists
        ``train_loss`` and ``valid_ndcg@10`` (index = epoch, 0-based), ``best_epoch``,
        ``best_valid_ndcg@10``, ``epochs_run`` and ``seconds``.
    """
    start_time = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    train = encode_samples(train_df, item_ids)
    valid = encode_samples(valid_df, item_ids)
    num_items = len(item_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    losses: list[float] = []
    valid_ndcg: list[float] = []
    best, best_epoch, best_state = -math.inf, -1, None
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train.target), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            history = train.history[pick][:, -model.max_len :].to(device)  # (b, L)
            target = train.target[pick].to(device)  # (b,)
            loss = F.cross_entropy(model(history), target)  # scores (b, N)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(pick)
            seen += len(pick)
        losses.append(total / max(seen, 1))
        ranks = rank_encoded(model, valid, num_items, mask_history=mask_history, device=device)
        valid_ndcg.append(ndcg_at_k(ranks, 10))
        if verbose:
            took = time.perf_counter() - start_time
            line = f"epoch {epoch:3d}  train/loss {losses[-1]:.4f}  valid/ndcg@10 {valid_ndcg[-1]:.4f}"
            print(f"{line}  {took:.0f} s", flush=True)
        if valid_ndcg[-1] > best:
            best, best_epoch = valid_ndcg[-1], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {
        "train_loss": losses,
        "valid_ndcg@10": valid_ndcg,
        "best_epoch": best_epoch,
        "best_valid_ndcg@10": best,
        "epochs_run": len(losses),
        "seconds": time.perf_counter() - start_time,
    }
