"""build_samples and the task views on a toy log, expected rows worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rrec.data import DataError, build_samples, like_dislike_samples, rating_samples

NAN = float("nan")


def toy_log() -> pd.DataFrame:
    # File order is not time order; u1 has a tie at t=30 (b is the earlier row, so b comes before d)
    # and u2 a tie at t=5 (x before y).
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u1", "u1", "u2"],
            "item_id": ["a", "x", "b", "c", "d", "y"],
            "rating": [4.0, 2.0, 5.0, 1.0, NAN, 5.0],
            "timestamp": [10.0, 5.0, 30.0, 20.0, 30.0, 5.0],
        }
    )


def rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [tuple(r) for r in frame[columns].itertuples(index=False)]


def test_build_samples_order_ties_and_truncation():
    samples = build_samples(toy_log(), max_history=2)
    # u1 sorts to a(10), c(20), b(30), d(30); u2 to x(5), y(5). 6 interactions - 2 users = 4 samples.
    assert rows(samples, ["user_id", "position", "history", "target", "timestamp"]) == [
        ("u1", 1, ["a"], "c", 20.0),
        ("u1", 2, ["a", "c"], "b", 30.0),
        ("u1", 3, ["c", "b"], "d", 30.0),  # [a, c, b] truncated to the 2 most recent
        ("u2", 1, ["x"], "y", 5.0),
    ]
    assert samples["history_ratings"].tolist() == [[4.0], [4.0, 1.0], [1.0, 5.0], [2.0]]
    assert samples["history_timestamps"].tolist() == [[10.0], [10.0, 20.0], [20.0, 30.0], [5.0]]
    assert samples["rating"].tolist()[:2] == [1.0, 5.0] and math.isnan(samples["rating"].iloc[2])
    assert list(samples.columns) == [
        "user_id",
        "position",
        "history",
        "history_ratings",
        "history_timestamps",
        "target",
        "rating",
        "timestamp",
    ]


def test_build_samples_without_timestamps_keeps_file_order():
    log = toy_log().assign(timestamp=NAN)
    samples = build_samples(log, max_history=20)
    # u1 in file order: a, b, c, d.
    assert samples["history"].tolist()[:3] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert samples["target"].tolist() == ["b", "c", "d", "y"]


def test_build_samples_user_with_one_interaction_gives_none():
    log = pd.DataFrame({"user_id": ["solo"], "item_id": ["a"], "rating": [1.0], "timestamp": [1.0]})
    assert len(build_samples(log)) == 0


def test_build_samples_rejects_bad_input():
    with pytest.raises(ValueError, match="max_history"):
        build_samples(toy_log(), max_history=0)
    with pytest.raises(DataError, match="interactions: missing column 'timestamp'"):
        build_samples(toy_log().drop(columns="timestamp"))


def test_rating_samples_drop_unrated():
    samples = rating_samples(toy_log(), max_history=20)
    # d (unrated) is gone: u1 = a, c, b -> 2 samples; u2 -> 1.
    assert rows(samples, ["user_id", "history", "target", "rating"]) == [
        ("u1", ["a"], "c", 1.0),
        ("u1", ["a", "c"], "b", 5.0),
        ("u2", ["x"], "y", 5.0),
    ]


def test_like_dislike_samples():
    log = pd.DataFrame(
        {
            "user_id": ["u"] * 4,
            "item_id": ["m1", "m2", "m3", "m4"],
            "rating": [5.0, NAN, 2.0, 4.0],
            "timestamp": [1.0, 2.0, 3.0, 4.0],
        }
    )
    items = pd.DataFrame({"item_id": ["m1", "m2", "m3", "m4"], "title": ["One", "Two", "Three", "Four"]})
    samples = like_dislike_samples(log, items, history=10, like_threshold=4.0)
    # The unrated m2 is dropped: ratings 5, 2, 4 -> two samples.
    assert rows(
        samples, ["history", "history_titles", "history_liked", "target_title", "rating", "label"]
    ) == [
        (["m1"], ["One"], [True], "Three", 2.0, False),
        (["m1", "m3"], ["One", "Three"], [True, False], "Four", 4.0, True),  # 4 >= 4 is a like
    ]
    assert samples["history_ratings"].tolist() == [[5.0], [5.0, 2.0]]


def test_like_dislike_unknown_item():
    items = pd.DataFrame({"item_id": ["a"], "title": ["A"]})
    with pytest.raises(DataError, match="'x'"):
        like_dislike_samples(toy_log(), items)


logs = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from("abcdef"), st.integers(0, 5)),
    min_size=0,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(logs, st.integers(1, 4))
def test_build_samples_properties(events, max_history):
    log = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": float})
    log["rating"] = 1.0
    samples = build_samples(log, max_history=max_history)
    # One sample per interaction that is not a user's first.
    assert len(samples) == len(log) - log["user_id"].nunique()
    for user, group in log.groupby("user_id", sort=False):
        # The oracle: a stable sort of this user's rows by time.
        sequence = group.sort_values("timestamp", kind="stable")["item_id"].tolist()
        mine = samples[samples["user_id"] == user]
        assert mine["target"].tolist() == sequence[1:]
        for position, history in zip(mine["position"], mine["history"], strict=True):
            assert history == sequence[max(0, position - max_history) : position]
