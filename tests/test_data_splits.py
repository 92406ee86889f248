"""temporal_split and leave_one_out_split boundaries, worked by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from rrec.data import leave_one_out_split, temporal_split


def samples_at(times: list[float], users: list[str] | None = None) -> pd.DataFrame:
    users = users or [f"u{i}" for i in range(len(times))]
    return pd.DataFrame(
        {
            "user_id": users,
            "position": [1] * len(times),
            "target": [f"i{i}" for i in range(len(times))],
            "timestamp": times,
        }
    )


def test_temporal_split_ten_samples():
    # Distinct times 9, 8, ..., 0 (reverse file order): 80/10/10 of 10 = 8 / 1 / 1, in time order.
    splits = temporal_split(samples_at([float(t) for t in range(9, -1, -1)]))
    assert splits["train"]["timestamp"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert splits["valid"]["timestamp"].tolist() == [8.0]
    assert splits["test"]["timestamp"].tolist() == [9.0]


def test_temporal_split_floor_gives_remainder_to_test():
    # n = 4: train = floor(3.2) = 3, valid ends at floor(3.6) = 3 -> valid empty, test = 1.
    splits = temporal_split(samples_at([1.0, 2.0, 3.0, 4.0]))
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [3, 0, 1]


def test_temporal_split_float_error():
    # 0.7 + 0.2 = 0.8999999999999999 in floats; 10 * that must still cut at 9, not 8.
    splits = temporal_split(samples_at([float(t) for t in range(10)]), fractions=(0.7, 0.2, 0.1))
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [7, 2, 1]


def test_temporal_split_ties_by_user_string_then_position():
    frame = pd.DataFrame(
        {
            "user_id": ["9", "10", "10", "2"],
            "position": [1, 2, 1, 1],
            "target": ["a", "b", "c", "d"],
            "timestamp": [5.0, 5.0, 5.0, 1.0],
        }
    )
    # Time 1 first (d); then time 5 by user as a string: "10" < "9", and user 10 by position (c, b).
    splits = temporal_split(frame, fractions=(1.0, 0.0, 0.0))
    assert splits["train"]["target"].tolist() == ["d", "c", "b", "a"]


def test_temporal_split_rejects_bad_input():
    with pytest.raises(ValueError, match="fractions"):
        temporal_split(samples_at([1.0]), fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="timestamp"):
        temporal_split(samples_at([1.0, float("nan")]))


def test_leave_one_out_split():
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b", "c", "c"],
            "position": [3, 1, 4, 2, 1, 1, 2],
            "target": ["a3", "a1", "a4", "a2", "b1", "c1", "c2"],
            "timestamp": [0.0] * 7,
        }
    )
    splits = leave_one_out_split(frame)
    # a: positions 1..4 -> train {1, 2}, valid 3, test 4; b has one sample -> test only;
    # c has two -> valid c1, test c2. Each split keeps the input row order.
    assert splits["train"]["target"].tolist() == ["a1", "a2"]
    assert splits["valid"]["target"].tolist() == ["a3", "c1"]
    assert splits["test"]["target"].tolist() == ["a4", "b1", "c2"]
