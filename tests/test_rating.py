"""rrec.tasks.rating: the parser, the rewards, the metrics, the baselines and the data views."""

from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest
import torch

from rrec import grpo
from rrec.tasks import rating

U = "<analyze user>likes dramas, rates them 4-5</analyze user>"
I = "<analyze item>a drama</analyze item>"  # noqa: E741
M = "<match>a good fit</match>"


def _t(rate: str) -> str:
    return U + I + M + f"<rate>{rate}</rate>"


VALID_CASES = [
    # the canonical answer
    (_t("4"), 4.0),
    # a decimal rate, with spaces inside the rate block: stripped
    (_t(" 3.5 "), 3.5),
    # the bounds of the scale are inside it
    (_t("1"), 1.0),
    (_t("5.0"), 5.0),
    # whitespace and newlines around and between the blocks are allowed
    ("\n  " + U + "\n" + I + " \n" + M + "\n<rate>2</rate>\n", 2.0),
    # newlines inside a block are part of its text
    ("<analyze user>line one\nline two</analyze user>" + I + M + "<rate>3</rate>", 3.0),
]

INVALID_CASES = [
    # missing tag: no <match> block
    U + I + "<rate>4</rate>",
    # missing closing tag: the completion was cut before </rate>
    U + I + M + "<rate>4",
    # tags out of order: item analysed before user
    I + U + M + "<rate>4</rate>",
    # tags out of order: rate before match
    U + I + "<rate>4</rate>" + M,
    # duplicated tag: two rate blocks
    _t("4") + "<rate>5</rate>",
    # duplicated tag: the match text mentions <rate>, which counts as a second opening tag
    U + I + "<match>so <rate> high</match><rate>4</rate>",
    # empty tag: the match block holds only whitespace
    U + I + "<match>  \n</match><rate>4</rate>",
    # empty tag: the rate block is empty
    _t(""),
    # rate out of range: below 1 and above 5
    _t("0"),
    _t("5.5"),
    _t("-3"),
    # unparseable numbers: words, fractions, units, exponents, nan
    _t("four"),
    _t("4/5"),
    _t("4 stars"),
    _t("1e0"),
    _t("nan"),
    # extra text outside the tags is NOT allowed: before the first block ...
    "Sure! " + _t("4"),
    # ... after the last block ...
    _t("4") + " I hope this helps.",
    # ... and between blocks
    U + "Next, the item. " + I + M + "<rate>4</rate>",
    # no tags at all: a bare number
    "4",
]


@pytest.mark.parametrize(("text", "expected"), VALID_CASES)
def test_parse_rating_valid(text, expected):
    assert rating.parse_rating(text) == expected


@pytest.mark.parametrize("text", INVALID_CASES)
def test_parse_rating_invalid(text):
    assert rating.parse_rating(text) is None


def test_parse_rating_other_scale():
    # a 0-10 scale: 7 is inside it, 0 its lower bound, 11 outside
    assert rating.parse_rating(_t("7"), low=0, high=10) == 7.0
    assert rating.parse_rating(_t("0"), low=0, high=10) == 0.0
    assert rating.parse_rating(_t("11"), low=0, high=10) is None


def test_rewards_default_constants():
    fmt, ans = rating.make_rewards()  # format +-0.5, max_error 4
    texts = [
        _t("4"),  # valid, truth 3: answer 1 - |3 - 4| / 4 = 0.75, total 1.25
        _t("1"),  # valid, truth 5: answer 1 - 4 / 4 = 0, total 0.5
        _t("5"),  # valid, exact: answer 1, total 1.5
        "Sure! " + _t("5"),  # extra text: invalid, format -0.5, answer skipped (0), total -0.5
        _t("9"),  # out of range: invalid, total -0.5
    ]
    truth = [3.0, 5.0, 5.0, 5.0, 5.0]
    assert fmt(texts) == [0.5, 0.5, 0.5, -0.5, -0.5]
    assert ans(texts, rating=truth) == [0.75, 0.0, 1.0, 0.0, 0.0]
    total = grpo.reward_matrix([fmt, ans], texts, {"rating": truth}).sum(1)
    assert total.tolist() == [1.25, 0.5, 1.5, -0.5, -0.5]


def test_rewards_reimplementation_constants():
    # format +-1 and max_error 2: truth 5, prediction 1 -> answer 1 - 4 / 2 = -1, total 0;
    # prediction 4 -> 1 - 1/2 = 0.5, total 1.5; missing tag -> -1 + 0
    fmt, ans = rating.make_rewards(format_reward=1.0, max_error=2.0)
    texts = [_t("1"), _t("4"), U + I + "<rate>5</rate>"]
    r = grpo.reward_matrix([fmt, ans], texts, {"rating": [5.0, 5.0, 5.0]})
    assert r.tolist() == [[1.0, -1.0], [1.0, 0.5], [-1.0, 0.0]]
    with pytest.raises(ValueError, match="max_error"):
        rating.make_rewards(max_error=0)


def test_rewards_ignore_extra_columns_and_group_advantages():
    # TRL shape: extra columns are accepted; a group of G = 2 with totals 1.5 and -0.5 gets
    # z-scores +-(1 / std) with std = sqrt(2) (unbiased), i.e. +-0.7071
    funcs = rating.make_rewards()
    cols = grpo.repeat_columns({"rating": [5.0], "user_id": ["u"]}, 2)
    total = grpo.reward_matrix(funcs, [_t("5"), "x"], cols).sum(1)
    assert total.tolist() == [1.5, -0.5]
    from rrec.recpo import group_advantages

    adv = group_advantages(total, 2)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-3)


def test_rating_metrics_hand_worked():
    # truths 4, 2, 5, 3; predictions 5, None (-> fallback 3.5), 5, 1
    # errors 1, 1.5, 0, 2: MAE 4.5 / 4 = 1.125; MSE (1 + 2.25 + 0 + 4) / 4 = 1.8125
    # parsed only (rows 0, 2, 3): MAE 3 / 3 = 1, MSE (1 + 0 + 4) / 3 = 5/3
    m = rating.rating_metrics([5.0, None, 5.0, 1.0], [4, 2, 5, 3], ["a", "a", "b", "c"], fallback=3.5)
    assert m["n"] == 4 and m["parsed_n"] == 3
    assert m["parse_rate"] == 0.75
    assert m["mae"] == pytest.approx(1.125)
    assert m["rmse"] == pytest.approx(math.sqrt(1.8125))
    assert m["parsed_mae"] == pytest.approx(1.0)
    assert m["parsed_rmse"] == pytest.approx(math.sqrt(5 / 3))
    for k in ("parse_rate", "mae", "rmse", "parsed_mae", "parsed_rmse"):
        assert m[f"{k}_low"] <= m[k] + 1e-12 and m[k] <= m[f"{k}_high"] + 1e-12


def test_rating_metrics_one_user_interval_is_a_point_and_none_parsed():
    # one user: every bootstrap resample is that user, so the interval is the point estimate
    m = rating.rating_metrics([None, None], [1.0, 5.0], ["u", "u"], fallback=3.0)
    # errors 2, 2: MAE = RMSE = 2, nothing parsed
    assert (m["mae"], m["mae_low"], m["mae_high"]) == pytest.approx((2.0, 2.0, 2.0))
    assert m["rmse"] == pytest.approx(2.0) and m["parse_rate"] == 0.0
    assert m["parsed_mae"] is None and m["parsed_rmse"] is None
    with pytest.raises(ValueError):
        rating.rating_metrics([1.0], [1.0, 2.0], ["u"], fallback=3.0)


def test_baselines_hand_worked():
    train = pd.DataFrame({"user_id": ["u", "u", "v"], "rating": [4.0, 2.0, 5.0]})
    held = pd.DataFrame({"user_id": ["u", "w"], "history_ratings": [[4.0, 2.0, 3.0], []]})
    assert rating.global_mean(train) == pytest.approx(11 / 3)  # (4 + 2 + 5) / 3
    # u: (4 + 2) / 2 = 3; w unseen: the global mean 11/3
    assert rating.user_mean_predictions(train, held) == pytest.approx([3.0, 11 / 3])
    # history mean: (4 + 2 + 3) / 3 = 3; empty history: the fallback
    assert rating.history_mean_predictions(held, 2.5) == [3.0, 2.5]
    # global-mean baseline on truths 3, 5: errors 2/3 and 4/3 -> MAE 1
    m = rating.rating_metrics([11 / 3] * 2, [3.0, 5.0], ["u", "w"], fallback=0.0)
    assert m["mae"] == pytest.approx(1.0) and m["parse_rate"] == 1.0


def test_user_prompt_and_system_prompt():
    text = rating.user_prompt(["Heat (1995)", "Fargo (1996)"], [4.0, 3.5], "Casino (1995)")
    assert "1. Heat (1995): 4\n2. Fargo (1996): 3.5\nTarget item: Casino (1995)" in text
    assert "(none)" in rating.user_prompt([], [], "Casino (1995)")
    system = rating.system_prompt(1, 5)
    assert all(f"<{t}>" in system and f"</{t}>" in system for t in rating.TAGS)
    assert "from 1 to 5" in system
    with pytest.raises(ValueError):
        rating.user_prompt(["a"], [], "b")


def test_rating_view_truncates_drops_unrated_and_labels_with_year():
    items = pd.DataFrame(
        {"item_id": ["1", "2", "3", "4"], "title": ["A", "B", "C", "D"], "year": ["1995", "", "1990", "2000"]}
    )
    samples = pd.DataFrame(
        {
            "user_id": ["u", "v"],
            "history": [["1", "2", "3"], ["4"]],
            "history_ratings": [[4.0, float("nan"), 2.0], [5.0]],
            "target": ["4", "1"],
            "rating": [3.0, float("nan")],  # v's target is unrated: the row is dropped
            "timestamp": [10.0, 11.0],
        }
    )
    v = rating.rating_view(samples, items, history=2)
    assert len(v) == 1
    row = v.iloc[0]
    # item 2's rating is NaN: dropped; the last 2 rated items remain: 1 (4.0) and 3 (2.0)
    assert row["history"] == ["1", "3"] and row["history_ratings"] == [4.0, 2.0]
    assert row["history_titles"] == ["A (1995)", "C (1990)"]
    assert row["target_title"] == "D (2000)" and row["rating"] == 3.0
    assert rating.rating_view(samples, items, history=1).iloc[0]["history"] == ["3"]
    # an item without a year is shown by title only
    no_year = rating.rating_view(samples.assign(target=["2", "1"]), items, history=2)
    assert no_year.iloc[0]["target_title"] == "B"


def _write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_amazon2023_rating_view_from_tiny_files(tmp_path):
    meta = _write_jsonl(
        tmp_path / "meta_Tiny.jsonl",
        [
            {"parent_asin": "i1", "title": "Kettle &amp; Lid", "categories": ["Home", "Kitchen"]},
            {"parent_asin": "i2", "title": "Mug"},
            {"parent_asin": "i3", "title": "Spoon"},
            {"parent_asin": "i4", "title": ""},  # no title: dropped, and so is its review
        ],
    )
    reviews = _write_jsonl(
        tmp_path / "Tiny.jsonl.gz",
        [  # timestamps in ms
            {"user_id": "A", "parent_asin": "i1", "rating": 5.0, "timestamp": 1000},
            {"user_id": "A", "parent_asin": "i2", "rating": 3.0, "timestamp": 2000},
            {"user_id": "B", "parent_asin": "i2", "rating": 2.0, "timestamp": 1500},
            {"user_id": "B", "parent_asin": "i3", "rating": 1.0, "timestamp": 2500},
            {"user_id": "A", "parent_asin": "i3", "rating": 4.0, "timestamp": 3000},
            {"user_id": "B", "parent_asin": "i4", "rating": 5.0, "timestamp": 500},
        ],
        gz=True,
    )
    data = rating.load_amazon2023_rating(reviews, meta, min_items=1)
    assert data.name == "Tiny"
    # samples: A at 2 s (i1 -> i2, 3), B at 2.5 s (i2 -> i3, 1), A at 3 s (i1, i2 -> i3, 4);
    # temporal 80/10/10 of 3: train = floor(2.4) = 2, valid = floor(2.7) - 2 = 0, test = the last one
    train = rating.rating_view(data.splits["train"], data.items, history=5)
    test = rating.rating_view(data.splits["test"], data.items, history=5)
    assert train["target"].tolist() == ["i2", "i3"] and train["rating"].tolist() == [3.0, 1.0]
    assert len(data.splits["valid"]) == 0
    row = test.iloc[0]
    assert row["user_id"] == "A" and row["history"] == ["i1", "i2"]
    assert row["history_titles"] == ["Kettle & Lid", "Mug"]  # HTML unescaped
    assert row["history_ratings"] == [5.0, 3.0]
    assert row["target_title"] == "Spoon" and row["rating"] == 4.0


def test_rating_view_on_real_amazon18_cds(shared_data):
    from rrec.data import load_amazon18_cds

    data = load_amazon18_cds(shared_data / "amazon18-cds")
    test = rating.rating_view(data.splits["test"], data.items, history=10)
    assert len(test) == 6157  # the README's count of test.csv rows
    assert test["rating"].between(1, 5).all()
    assert test["history"].map(len).between(1, 10).all()
    assert (test["history"].map(len) == test["history_titles"].map(len)).all()
    mean = rating.global_mean(data.splits["train"])
    assert 1 <= mean <= 5
    # the README: 80% of test targets are 5, so the user-mean baseline has a small error
    preds = rating.user_mean_predictions(data.splits["train"], test)
    m = rating.rating_metrics(preds, test["rating"].tolist(), test["user_id"].tolist(), fallback=mean)
    assert m["parse_rate"] == 1.0 and 0 < m["mae"] < 1.5
    assert torch.isfinite(torch.tensor(m["rmse"]))
