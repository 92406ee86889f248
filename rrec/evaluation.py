"""Full-catalog evaluation of a ``ReasoningRecommender`` on a prepared split.

Every sample is scored against the whole item table (no sampled negatives); the sample's history items
are masked out of the ranking unless ``mask_history=False`` (the target is never masked). Reasoning is
greedy. Ranks use ``rrec.metrics.rank_of_target`` in float32, the same code as the ID baselines.

Bad inputs: missing sample columns, targets or history items absent from the item table, and NaN or
inf user states are errors raised before (or instead of) ranking; histories longer than the model's
``max_history`` are cut with one ``HistoryTruncatedWarning`` per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rrec.metrics import bootstrap_ci, per_sample_ndcg, rank_of_target, ranking_report
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
    ranks = []
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
    res.user_ids = samples["user_id"].astype(str).tolist()
    res.targets = samples["target"].astype(str).tolist()
    return res


def summarize(ranks: torch.Tensor, user_ids: Sequence[str], ks: tuple[int, ...] = (5, 10, 20)) -> dict:
    """Hit@K, NDCG@K, MRR, sample and user counts, and 95% bootstrap intervals (over users) of
    NDCG@10 and Hit@10."""
    out: dict = ranking_report(ranks, ks)
    out["n_samples"] = int(ranks.numel())
    out["n_users"] = len(set(user_ids))
    out["ndcg@10_ci95"] = list(bootstrap_ci(per_sample_ndcg(ranks, 10), list(user_ids)))
    out["hit@10_ci95"] = list(bootstrap_ci((ranks <= 10).double(), list(user_ids)))
    return out


def per_user_rows(res: EvalResult) -> list[dict]:
    """Rows for ``per_user.jsonl``: user, target, rank, top-k ids, reasoning."""
    return [
        {"user_id": u, "target": t, "rank": int(r), "top_k": top, "reasoning": txt, "forced_answer": f}
        for u, t, r, top, txt, f in zip(
            res.user_ids,
            res.targets,
            res.ranks.tolist(),
            res.top_ids,
            res.reasonings,
            res.forced,
            strict=True,
        )
    ]
