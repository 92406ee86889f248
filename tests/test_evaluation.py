"""Full-catalog evaluation on a tiny model: ranks agree with a direct computation; subsets are stable."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from rrec.evaluation import (
    evaluate_samples,
    paired_ndcg,
    paired_verdict,
    per_user_rows,
    select_samples,
    summarize,
)
from rrec.metrics import rank_of_target, tied_with_target
from rrec.model import ReasoningRecommender
from tests.conftest import make_tiny_lm
from tests.test_model import catalog


@pytest.fixture()
def rec(tokenizer):
    model = ReasoningRecommender(
        make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), catalog(), max_new_tokens=4
    )
    model.build_item_table(batch_size=16)
    return model


def samples():
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "history": [["1", "2"], ["1", "2", "3"], ["9"]],
            "history_ratings": [[5.0, 4.0], [5.0, 4.0, 3.0], [2.0]],
            "history_timestamps": [[0.0, 10.0], [0.0, 10.0, 20.0], [5.0]],
            "target": ["3", "4", "2"],
            "rating": [3.0, 5.0, 4.0],
            "timestamp": [20.0, 30.0, 6.0],
        }
    )


@pytest.mark.parametrize("reasoning", [True, False])
def test_ranks_match_direct_scoring(rec, reasoning):
    df = samples()
    res = evaluate_samples(rec, df, reasoning=reasoning, batch_size=2, progress=False)
    cols = {iid: j for j, iid in enumerate(rec.item_ids)}
    hist = [
        [{"item_id": i, "rating": r, "timestamp": t} for i, r, t in zip(h, rs, ts, strict=True)]
        for h, rs, ts in zip(df.history, df.history_ratings, df.history_timestamps, strict=True)
    ]
    states, _, _ = rec.reason(hist, df.timestamp.tolist(), reasoning)
    scores = rec.score(states)
    excl = torch.zeros_like(scores, dtype=torch.bool)
    for b, h in enumerate(df.history):
        excl[b, [cols[i] for i in h]] = True
    expected = rank_of_target(scores, torch.tensor([cols[t] for t in df.target]), excl)
    assert res.ranks.tolist() == expected.tolist()
    rows = per_user_rows(res)
    assert [r["user_id"] for r in rows] == ["u1", "u1", "u2"] and len(rows[0]["top_k"]) == 20
    assert not set(rows[0]["top_k"]) & {"1", "2"}  # history masked out of the top-k too
    s = summarize(res.ranks, res.user_ids)
    assert s["n_samples"] == 3 and s["n_users"] == 2
    assert s["ndcg@10_ci95"][0] <= s["ndcg@10"] <= s["ndcg@10_ci95"][1]


def test_select_samples_is_reproducible():
    df = pd.DataFrame({"user_id": list("aabbccdd"), "timestamp": [2, 1, 4, 3, 6, 5, 8, 7], "x": range(8)})
    a = select_samples(df, max_users=2, samples_per_user=1, seed=3)
    b = select_samples(df, max_users=2, samples_per_user=1, seed=3)
    assert a.equals(b) and len(a) == 2 and a.user_id.nunique() == 2
    # earliest sample of each chosen user: the odd rows of x have the smaller timestamps
    assert all(x % 2 == 1 for x in a.x)


def test_unknown_target_is_a_clear_error(rec):
    df = samples()
    df.loc[0, "target"] = "nope"
    with pytest.raises(KeyError, match="not in the item table"):
        evaluate_samples(rec, df, progress=False)


class FixedScorer:
    """A stand-in for the model in ``evaluate_samples``: sample i gets the score row ``rows[i]``."""

    def __init__(self, rows: list[list[float]], item_ids: list[str]) -> None:
        self.rows, self.item_ids = torch.tensor(rows), item_ids
        self.config = SimpleNamespace(max_history=100)
        self.seen = 0

    def reason(self, histories, target_times, reasoning, max_new_tokens):
        n = len(histories)
        states = torch.arange(self.seen, self.seen + n)[:, None]  # (b, 1) the sample indices
        self.seen += n
        return states, [""] * n, [False] * n

    def score(self, states):
        return self.rows[states[:, 0]]  # (b, N)


def test_tied_targets_are_flagged_and_summarized():
    """Hand-worked: ranks keep the ties-in-favour rule, and each sample says whether it was tied."""
    df = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "history": [["a"], ["c"], []],
            "target": ["b", "b", "d"],
            "timestamp": [1.0, 2.0, 3.0],
        }
    )
    scores = [
        [9.0, 1.0, 1.0, 0.0, 0.0],  # a masked; b ties c               -> rank 1, tied
        [0.0, 1.0, 1.0, 0.0, 2.0],  # c (b's twin) masked; e above b   -> rank 2, not tied
        [0.0, 0.0, 0.0, 0.0, 0.0],  # constant scores                  -> rank 1, tied
    ]
    res = evaluate_samples(FixedScorer(scores, list("abcde")), df, batch_size=2, progress=False)
    assert res.ranks.tolist() == [1, 2, 1]
    assert res.tied.tolist() == [True, False, True]
    assert [r["tied"] for r in per_user_rows(res)] == [True, False, True]
    s = summarize(res.ranks, res.user_ids, tied=res.tied)
    assert s["tied_frac"] == pytest.approx(2 / 3)
    assert s["hit@5"] == 1.0 and s["mrr"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert "tied_frac" not in summarize(res.ranks, res.user_ids)  # ranks alone cannot tell
    with pytest.raises(ValueError, match="tie flags"):
        summarize(res.ranks, res.user_ids, tied=[True])


def test_evaluate_recipe_reports_tied_fraction(tmp_path, capsys):
    """rrec evaluate method=pop writes tied_frac (most-popular ties: equal train counts) and prints it."""
    from recipes import evaluate
    from rrec.baselines import popularity_counts
    from rrec.data import load_prepared
    from tests.recipe_fixtures import tiny_prepared

    prepared = tiny_prepared(tmp_path / "data")
    metrics = evaluate.main([f"prepared={prepared}", "method=pop", f"out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "per_user.jsonl").read_text().splitlines()]
    data = load_prepared(prepared)
    ids = data.items["item_id"].tolist()
    test = data.splits["test"]
    counts = popularity_counts(data.splits["train"], ids)
    scores = counts.expand(len(test), -1)
    exclude = torch.tensor([[i in h for i in ids] for h in test["history"]])
    expected = tied_with_target(scores, torch.tensor([ids.index(t) for t in test["target"]]), exclude)
    assert [r["tied"] for r in rows] == expected.tolist()
    assert saved["tied_frac"] == metrics["tied_frac"] == pytest.approx(float(expected.double().mean()))
    assert f"target tied with another item in {100 * saved['tied_frac']:.1f}% of samples" in out


def test_paired_ndcg_needs_the_same_samples_in_order():
    a = [{"user_id": "u", "target": "x", "rank": 1}, {"user_id": "v", "target": "y", "rank": 3}]
    b = [{"user_id": "u", "target": "x", "rank": 2}, {"user_id": "v", "target": "y", "rank": 3}]
    d = paired_ndcg(a, b)
    # NDCG@10 differences: 1 - 1/log2(3) = 0.3691 for u, 0 for v
    assert d.mean == pytest.approx((1 - 1 / math.log2(3)) / 2)
    assert paired_verdict(d, "above", "below") == (
        f"NDCG@10 {d.mean:+.4f}, paired 95% CI [{d.low:+.4f}, {d.high:+.4f}]: "
        + ("above" if d.low > 0 else "within the noise")
    )
    with pytest.raises(ValueError, match="same samples in the same order"):
        paired_ndcg(a, b[::-1])
    with pytest.raises(ValueError, match="same samples in the same order"):
        paired_ndcg(a, b[:1])


def test_paired_verdict_words():
    from rrec.metrics import PairedDifference

    assert paired_verdict(PairedDifference(0.0123, -0.004, 0.029, 0.9), "improved", "got worse") == (
        "NDCG@10 +0.0123, paired 95% CI [-0.0040, +0.0290]: within the noise"
    )
    assert paired_verdict(PairedDifference(0.02, 0.001, 0.04, 1.0), "above", "below").endswith(": above")
    assert paired_verdict(PairedDifference(-0.02, -0.04, -0.001, 0.0), "above", "below").endswith(": below")
    assert paired_verdict(PairedDifference(0.0, 0.0, 0.0, 0.0), "above", "below").endswith(
        ": within the noise"
    )
