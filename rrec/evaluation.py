"""Full-catalog evaluation of a ``ReasoningRecommender`` on a prepared split.

Every sample is scored against the whole item table (no sampled negatives); the sample's history items
are masked out of the ranking unless ``mask_history=False`` (the target is never masked). Reasoning is
greedy. Ranks use ``rrec.metrics.rank_of_target`` in float32, the same code as the ID baselines (ties
in the target's favour); each sample also records whether its target was tied with another ranked item
(``rrec.metrics.tied_with_target``), and :func:`summarize` reports the fraction, ``tied_frac``.
Two methods evaluated on the same samples are compared with :func:`paired_ndcg` (a paired bootstrap of
the per-sample NDCG@10 difference, users resampled) and :func:`paired_verdict`.

Bad inputs: missing sample columns, targets or history items absent from the item table, and NaN or
inf user states are errors raised before (or instead of) ranking; histories longer than the model's
``max_history`` are cut with one ``HistoryTruncatedWarning`` per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rrec.metrics import (
    PairedDifference,
    bootstrap_ci,
    paired_bootstrap,
    per_sample_ndcg,
    rank_of_target,
    ranking_report,
    tied_with_target,
)
from rrec.prompts import HistoryTruncatedWarning, item_id_of, warn_truncated


@dataclass
class EvalResult:
    """Per-sample outcome of an evaluation, in sample order."""

    user_ids: list[str]
    targets: list[str]
    ranks: torch.Tensor  # (S,) int64
    top_ids: list[list[str]]
    reasonings: list[str]
    forced: list[bool]
    tied: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (S,) bool


def histories_of(samples: pd.DataFrame) -> list[list[dict]]:
    """History records (``item_id``, ``rating``, ``timestamp``) of each sample row."""
    out = []
    for row in samples.itertuples(index=False):
        ratings = getattr(row, "history_ratings", None)
        times = getattr(row, "history_timestamps", None)
        recs = []
        for j, iid in enumerate(row.history):
            r = {"item_id": item_id_of(iid)}
            if ratings is not None and len(ratings) > j:
                r["rating"] = float(ratings[j])
            if times is not None and len(times) > j:
                r["timestamp"] = float(times[j])
            recs.append(r)
        out.append(recs)
    return out


def select_samples(
    samples: pd.DataFrame, max_users: int | None = None, samples_per_user: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """A reproducible subset: ``max_users`` users drawn with ``seed``, each with its earliest
    ``samples_per_user`` samples (None: all). The same arguments give the same rows for every method."""
    df = samples
    if max_users is not None:
        users = np.array(sorted(df["user_id"].unique()))
        rng = np.random.default_rng(seed)
        keep = set(rng.choice(users, size=min(max_users, len(users)), replace=False).tolist())
        df = df[df["user_id"].isin(keep)]
    if samples_per_user is not None:
        df = df.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id").head(samples_per_user)
    return df.reset_index(drop=True)


def sample_set_hash(samples: pd.DataFrame) -> str:
    """First 16 hex digits of SHA-256 over the (user, target, time) rows: equal values, the same samples
    (the ``sample set`` of ``docs/results.md``)."""
    import hashlib

    key = "\n".join(f"{u}\t{t}\t{ts!r}" for u, t, ts in samples[["user_id", "target", "timestamp"]].values)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@torch.no_grad()
def evaluate_samples(
    model,
    samples: pd.DataFrame,
    *,
    reasoning: bool = True,
    mask_history: bool = True,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    top_k: int = 20,
    progress: bool = True,
) -> EvalResult:
    """Greedy reasoning (or none) -> user state -> full-catalog ranks of each sample's target.

    ``samples`` needs ``user_id``, ``history`` and ``target`` (``timestamp``, ``history_ratings``,
    ``history_timestamps`` optional). ``top_ids`` leave out masked items, so a row has fewer than
    ``top_k`` ids when fewer items are left.
    """
    if len(samples) == 0:
        raise ValueError("no samples to evaluate")
    missing_cols = [c for c in ("user_id", "history", "target") if c not in samples.columns]
    if missing_cols:
        raise ValueError(f"samples lack the columns {missing_cols} (have {list(samples.columns)})")
    for name, value in (("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:  # int or numpy int
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    columns = {iid: j for j, iid in enumerate(model.item_ids)}
    missing = sorted({t for t in samples["target"].astype(str) if t not in columns})
    if missing:
        raise KeyError(f"{len(missing)} targets are not in the item table, e.g. {missing[:5]}")
    hist = histories_of(samples)
    times = samples["timestamp"].astype(float).tolist() if "timestamp" in samples else [None] * len(samples)
    res = EvalResult([], [], torch.empty(0, dtype=torch.long), [], [], [])
    ranks, tied = [], []
    all_ids = model.item_ids
    n_cut = sum(len(h) > model.config.max_history for h in hist)
    if n_cut:
        warn_truncated(n_cut, len(hist), model.config.max_history, stacklevel=4)  # past no_grad
    bar = tqdm(total=len(samples), desc="evaluate", unit="sample", disable=not progress)
    for start in range(0, len(samples), batch_size):
        stop = min(start + batch_size, len(samples))
        with warnings.catch_warnings():  # warned once above, not once per batch
            warnings.simplefilter("ignore", HistoryTruncatedWarning)
            states, texts, forced = model.reason(
                hist[start:stop], times[start:stop], reasoning, max_new_tokens
            )
        scores = model.score(states)  # (b, N) float32
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        if mask_history:
            for b, h in enumerate(hist[start:stop]):
                exclude[b, [columns[r["item_id"]] for r in h if r["item_id"] in columns]] = True
        target = torch.tensor([columns[str(t)] for t in samples["target"].iloc[start:stop]])
        ranks.append(rank_of_target(scores, target, exclude).cpu())
        tied.append(tied_with_target(scores, target, exclude).cpu())
        top = scores.masked_fill(exclude, float("-inf")).topk(min(top_k, scores.shape[1]), dim=1)
        kept = top.values > float("-inf")  # (b, K) False at masked items; real scores are finite
        res.top_ids += [
            [all_ids[j] for j in row[keep].tolist()] for row, keep in zip(top.indices, kept, strict=True)
        ]
        res.reasonings += texts
        res.forced += forced
        bar.update(stop - start)
    bar.close()
    res.ranks = torch.cat(ranks)
    res.tied = torch.cat(tied)
    res.user_ids = samples["user_id"].astype(str).tolist()
    res.targets = samples["target"].astype(str).tolist()
    return res


def summarize(
    ranks: torch.Tensor,
    user_ids: Sequence[str],
    ks: tuple[int, ...] = (5, 10, 20),
    tied: torch.Tensor | Sequence[bool] | None = None,
) -> dict:
    """Hit@K, NDCG@K, MRR, sample and user counts, 95% bootstrap intervals (over users) of NDCG@10 and
    Hit@10, and ``tied_frac``, the fraction of samples whose target was tied with another ranked item
    (only when ``tied``, one flag per sample, is given: ranks alone cannot tell)."""
    out: dict = ranking_report(ranks, ks)
    out["n_samples"] = int(ranks.numel())
    out["n_users"] = len(set(user_ids))
    if tied is not None:
        flags = torch.as_tensor(tied, dtype=torch.bool).flatten()
        if flags.numel() != ranks.numel():
            raise ValueError(f"{flags.numel()} tie flags for {ranks.numel()} ranks")
        out["tied_frac"] = float(flags.double().mean())
    out["ndcg@10_ci95"] = list(bootstrap_ci(per_sample_ndcg(ranks, 10), list(user_ids)))
    out["hit@10_ci95"] = list(bootstrap_ci((ranks <= 10).double(), list(user_ids)))
    return out


def per_user_rows(res: EvalResult) -> list[dict]:
    """Rows for ``per_user.jsonl``: user, target, rank, whether the target was tied, top-k ids, reasoning."""
    tied = res.tied.tolist() if res.tied.numel() else [None] * len(res.user_ids)
    return [
        {"user_id": u, "target": t, "rank": int(r), "tied": tie, "top_k": top, "reasoning": txt,
         "forced_answer": f}
        for u, t, r, tie, top, txt, f in zip(
            res.user_ids, res.targets, res.ranks.tolist(), tied, res.top_ids, res.reasonings, res.forced,
            strict=True,
        )
    ]  # fmt: skip


def paired_ndcg(
    rows_a: Sequence[dict], rows_b: Sequence[dict], k: int = 10, *, n_resamples: int = 1000, seed: int = 0
) -> PairedDifference:
    """NDCG@k of method a minus method b on the same samples: :func:`rrec.metrics.paired_bootstrap`.

    Args:
        rows_a, rows_b: per-sample rows with ``user_id``, ``target`` and ``rank`` (the ``per_user.jsonl``
            format), the same samples in the same order.

    Raises:
        ValueError: the two lists are not the same (user, target) samples in the same order.
    """
    keys_a = [(str(r["user_id"]), str(r["target"])) for r in rows_a]
    keys_b = [(str(r["user_id"]), str(r["target"])) for r in rows_b]
    if keys_a != keys_b:
        where = next((i for i, (x, y) in enumerate(zip(keys_a, keys_b, strict=False)) if x != y), None)
        first = "" if where is None else f"; first difference at {where}: {keys_a[where]} vs {keys_b[where]}"
        raise ValueError(
            f"a paired comparison needs the same samples in the same order: {len(keys_a)} vs "
            f"{len(keys_b)} samples{first}"
        )
    ndcg_a = per_sample_ndcg(torch.tensor([int(r["rank"]) for r in rows_a]), k)  # (S,)
    ndcg_b = per_sample_ndcg(torch.tensor([int(r["rank"]) for r in rows_b]), k)  # (S,)
    return paired_bootstrap(ndcg_a, ndcg_b, [u for u, _ in keys_a], n_resamples=n_resamples, seed=seed)


def rows_for_samples(rows_a: Sequence[dict], rows_b: Sequence[dict]) -> list[dict]:
    """``rows_b``'s rows of ``rows_a``'s samples, in ``rows_a``'s order: a paired comparison of a subset run
    (e.g. 1,000 test users) against a run over more samples (a baseline's whole test split).

    A (user, target) pair that occurs several times (a re-consumed item) is matched occurrence by occurrence,
    in file order.

    Raises:
        ValueError: a sample of ``rows_a`` has no (or no further) row in ``rows_b``.
    """
    pool: dict[tuple[str, str], list[dict]] = {}
    for r in rows_b:
        pool.setdefault((str(r["user_id"]), str(r["target"])), []).append(r)
    out, used = [], dict.fromkeys(pool, 0)
    for r in rows_a:
        key = (str(r["user_id"]), str(r["target"]))
        if used.get(key, 0) >= len(pool.get(key, ())):
            raise ValueError(f"sample (user {key[0]}, target {key[1]}) is missing from the other file")
        out.append(pool[key][used[key]])
        used[key] += 1
    return out


def paired_verdict(diff: PairedDifference, above: str, below: str, what: str = "NDCG@10") -> str:
    """``"NDCG@10 +0.0123, paired 95% CI [-0.0040, +0.0290]: within the noise"``, or ``above`` when the
    interval lies above 0, ``below`` when it lies below 0."""
    word = above if diff.low > 0 else below if diff.high < 0 else "within the noise"
    return f"{what} {diff.mean:+.4f}, paired 95% CI [{diff.low:+.4f}, {diff.high:+.4f}]: {word}"
