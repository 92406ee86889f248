r"""Full-catalog ranking metrics with one relevant item per sample.

Letters: B samples, N catalog items, K cut-off.

For a sample with score vector :math:`s \in \mathbb{R}^N` and target index :math:`t`, the rank is

.. math:: r = 1 + \left|\{\, j : s_j > s_t,\ j \notin \mathcal{E} \,\}\right|

where :math:`\mathcal{E}` is the set of excluded items (the user's history, unless the target itself).
Ties are broken in the target's favour (an item with an equal score does not push it down); ranks are
computed in float32 whatever the dtype of the scores, because bf16 logits of size 30-50 have a
resolution of 0.25 and would tie half the catalog. A NaN score anywhere is an error (its rank would be
arbitrary); ``-inf`` and ``+inf`` are ordinary extreme scores (``-inf`` is a common way to mask).

With one relevant item,

.. math::

    \mathrm{Hit@K} = \mathbb{1}[r \le K], \qquad
    \mathrm{NDCG@K} = \frac{\mathbb{1}[r \le K]}{\log_2(r + 1)}, \qquad
    \mathrm{MRR} = \frac{1}{r},

(the ideal DCG is 1, so NDCG needs no normaliser), each averaged over the B samples.

Ties favour the target, so a model that gives every item the same score ranks every target first. Every
evaluation therefore also reports the *tied fraction*, the share of samples whose target shares its
score with at least one other non-excluded item (:func:`tied_with_target`): a high value says the metrics
above are flattered by ties.

Comparisons of two methods on the same samples use :func:`paired_bootstrap`: the per-sample differences
are resampled by user, the same users for both methods, which is tighter and more honest than asking
whether two separate intervals overlap.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


def rank_of_target(
    scores: Tensor, target_index: Tensor, exclude_mask: Tensor | None = None, ties: str = "optimistic"
) -> Tensor:
    """1-based rank of each target among the non-excluded items.

    Args:
        scores: (B, N) scores, higher is better; any float dtype (cast to float32).
        target_index: (B,) integer column of the target in ``scores``.
        exclude_mask: optional (B, N) bool, True for items to leave out of the ranking (the history).
            The target is never excluded, even if the mask marks it.
        ties: ``"optimistic"`` (the evaluation's rule, 1 + #strictly greater) or ``"pessimistic"``
            (1 + #{j != t : s_j >= s_t}: every tie counts against the target; RecPO's reward, so that a
            collapsed state scoring every item equally gets the worst rank, not the best).

    Returns:
        (B,) int64 ranks, 1 = best.

    Raises:
        ValueError: mismatched shapes, a target index outside ``[0, N)``, or a NaN score.

    Example:
        >>> rank_of_target(torch.tensor([[0.1, 0.9, 0.5]]), torch.tensor([2]))
        tensor([2])
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    B, N = scores.shape
    if tuple(target_index.shape) != (B,):
        raise ValueError(f"target_index must be ({B},) for scores {(B, N)}, got {tuple(target_index.shape)}")
    if exclude_mask is not None and exclude_mask.shape != scores.shape:
        raise ValueError(f"exclude_mask must be {(B, N)} like scores, got {tuple(exclude_mask.shape)}")
    s = scores.float()  # (B, N)
    target_index = target_index.to(device=s.device, dtype=torch.long)
    outside = (target_index < 0) | (target_index >= N)  # (B,)
    nan_rows = torch.isnan(s).any(dim=1)  # (B,)
    if bool((outside | nan_rows).any()):  # one host sync on the happy path
        if bool(outside.any()):
            raise ValueError(f"target_index outside [0, {N}) at rows {_rows(outside)}")
        raise ValueError(f"NaN scores at rows {_rows(nan_rows)}: the ranking is undefined")
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    target_score = s.gather(1, target_index[:, None])  # (B, 1)
    if ties == "optimistic":
        higher = s > target_score  # (B, N)
    else:  # >= counts the target itself: take it out
        higher = (s >= target_score).scatter(1, target_index[:, None], False)  # (B, N)
    if exclude_mask is not None:
        keep = ~exclude_mask.to(device=s.device, dtype=torch.bool)
        keep = keep.scatter(1, target_index[:, None], True)
        higher = higher & keep
    return 1 + higher.sum(dim=1)  # (B,)


def tied_with_target(scores: Tensor, target_index: Tensor, exclude_mask: Tensor | None = None) -> Tensor:
    """Whether each target's score equals that of at least one other non-excluded item (float32).

    The ranks of :func:`rank_of_target` count such items as below the target; this flag says when that
    rule decided the rank. Same arguments and checks as :func:`rank_of_target` (the target is never
    excluded, NaN is an error).

    Returns:
        (B,) bool.

    Example:
        >>> s = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1], [0.9, 0.5, 0.5]])
        >>> history = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
        >>> tied_with_target(s, torch.tensor([0, 0, 0]), history)  # row 1: tie masked; row 2: not at t
        tensor([ True, False, False])
    """
    rank_of_target(scores, target_index, exclude_mask)  # the same checks (shapes, range, NaN)
    s = scores.float()  # (B, N)
    t = target_index.to(device=s.device, dtype=torch.long)[:, None]  # (B, 1)
    equal = s == s.gather(1, t)  # (B, N), True at the target itself
    equal = equal.scatter(1, t, False)
    if exclude_mask is not None:
        equal = equal & ~exclude_mask.to(device=s.device, dtype=torch.bool)
    return equal.any(dim=1)  # (B,)


def _rows(flags: Tensor) -> str:
    rows = flags.nonzero().flatten().tolist()
    return f"{rows[:10]}{' ...' if len(rows) > 10 else ''} ({len(rows)} in all)"


def _as_float(ranks: Tensor) -> Tensor:
    if ranks.numel() == 0:
        raise ValueError("no ranks given: a metric over zero samples is undefined")
    r = ranks.to(torch.float64)
    if not bool((r >= 1).all()):  # NaN fails too
        raise ValueError(f"ranks are 1-based: got {r[~(r >= 1)][:5].tolist()}")
    return r


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not hasattr(k, "__index__") or k < 1:  # int or numpy int, not 10.0
        raise ValueError(f"the cut-off k must be a positive int, got {k!r}")


def hit_at_k(ranks: Tensor, k: int) -> float:
    r"""Mean of :math:`\mathbb{1}[r \le K]` over samples."""
    _check_k(k)
    return float((_as_float(ranks) <= k).double().mean())


def ndcg_at_k(ranks: Tensor, k: int) -> float:
    r"""Mean of :math:`\mathbb{1}[r \le K] / \log_2(r+1)` over samples.

    Example:
        >>> ndcg_at_k(torch.tensor([1, 3, 50]), 10)  # (1 + 1/log2(4) + 0) / 3 = 0.5
        0.5
    """
    return float(per_sample_ndcg(ranks, k).mean())


def mrr(ranks: Tensor) -> float:
    r"""Mean reciprocal rank :math:`1/r` (no cut-off)."""
    return float((1.0 / _as_float(ranks)).mean())


def per_sample_ndcg(ranks: Tensor, k: int) -> Tensor:
    """(B,) float64 NDCG@K of each sample (0 beyond the cut-off)."""
    _check_k(k)
    r = _as_float(ranks)
    gain = 1.0 / torch.log2(r + 1.0)
    return torch.where(r <= k, gain, torch.zeros_like(gain))


def ranking_report(ranks: Tensor, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """Hit@K and NDCG@K for each K, plus MRR, as one flat dict (``hit@10``, ``ndcg@10``, ``mrr``)."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = hit_at_k(ranks, k)
    for k in ks:
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    return out


def bootstrap_ci(
    values: Tensor, groups: list, *, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a per-sample metric's mean, resampling *users* (groups).

    MovieLens-100K's temporal test split holds ~10k samples from only ~166 users, so samples of one user
    are not independent: resampling users is the honest unit.

    Args:
        values: (B,) per-sample metric (e.g. ``per_sample_ndcg``).
        groups: length-B list of user ids.

    Returns:
        (low, high) bounds of the (1 - alpha) interval.
    """
    if len(groups) != values.numel():
        raise ValueError(f"{len(groups)} group labels for {values.numel()} values")
    v = values.double()
    uniq: dict = {}
    codes = torch.tensor([uniq.setdefault(g, len(uniq)) for g in groups])
    n_users = len(uniq)
    sums = torch.zeros(n_users, dtype=torch.float64).index_add_(0, codes, v)  # (U,)
    counts = torch.zeros(n_users, dtype=torch.float64).index_add_(0, codes, torch.ones_like(v))
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, n_users, (n_resamples, n_users), generator=gen)  # (R, U)
    means = sums[pick].sum(1) / counts[pick].sum(1)  # (R,)
    lo = torch.quantile(means, alpha / 2).item()
    hi = torch.quantile(means, 1 - alpha / 2).item()
    return (float(lo), float(hi))


class PairedDifference(NamedTuple):
    """Mean of a per-sample difference a - b with its paired bootstrap interval over users."""

    mean: float  # mean over samples of a - b
    low: float  # (1 - alpha) percentile interval of that mean, users resampled
    high: float
    frac_positive: float  # share of the resamples whose mean difference is > 0


def paired_bootstrap(
    values_a: Tensor,
    values_b: Tensor,
    groups: list,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedDifference:
    r"""Paired percentile bootstrap of :math:`\bar d`, :math:`d_i = a_i - b_i`, resampling users.

    Sample i must be the same (user, target) in ``values_a`` and ``values_b``: each resample draws U users
    with replacement and averages the differences of all their samples, so the two methods are always
    measured on the same draw. Same users, resampling and seed as :func:`bootstrap_ci`.

    Args:
        values_a, values_b: (B,) per-sample metric of methods a and b, on the same samples in the same
            order (e.g. ``per_sample_ndcg`` of each).
        groups: length-B list of user ids.

    Returns:
        :class:`PairedDifference`; identical inputs give exactly ``(0, 0, 0, 0)``.

    Raises:
        ValueError: shapes or lengths differ, no samples, or a NaN value.

    Example:
        >>> a, b = torch.tensor([0.5, 1.0, 0.25]), torch.tensor([0.25, 0.75, 0.0])  # d = 0.25 everywhere
        >>> paired_bootstrap(a, b, ["u", "u", "v"])
        PairedDifference(mean=0.25, low=0.25, high=0.25, frac_positive=1.0)
    """
    if values_a.ndim != 1 or values_a.shape != values_b.shape:
        raise ValueError(
            f"paired values must be two (B,) tensors of the same samples, got shapes "
            f"{tuple(values_a.shape)} and {tuple(values_b.shape)}"
        )
    if len(groups) != values_a.numel():
        raise ValueError(f"{len(groups)} group labels for {values_a.numel()} paired values")
    if values_a.numel() == 0:
        raise ValueError("no samples: a paired difference over zero samples is undefined")
    d = values_a.double() - values_b.double()  # (B,)
    if bool(torch.isnan(d).any()):
        raise ValueError("NaN in the paired values")
    uniq: dict = {}
    codes = torch.tensor([uniq.setdefault(g, len(uniq)) for g in groups])  # (B,)
    n_users = len(uniq)
    sums = torch.zeros(n_users, dtype=torch.float64).index_add_(0, codes, d)  # (U,)
    counts = torch.zeros(n_users, dtype=torch.float64).index_add_(0, codes, torch.ones_like(d))  # (U,)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, n_users, (n_resamples, n_users), generator=gen)  # (R, U)
    means = sums[pick].sum(1) / counts[pick].sum(1)  # (R,)
    lo = torch.quantile(means, alpha / 2).item()
    hi = torch.quantile(means, 1 - alpha / 2).item()
    mean = float(sums.sum() / counts.sum())
    return PairedDifference(mean, float(lo), float(hi), float((means > 0).double().mean()))


def ndcg_of_rank(rank: int, k: int) -> float:
    """Scalar NDCG@K of one rank (a convenience for rewards and reports)."""
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0
