"""prepare, split_stats / format_stats and the atomic save / load round trip."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rrec.data import (
    DataError,
    PreparedData,
    format_stats,
    load_prepared,
    prepare,
    save_prepared,
    split_stats,
)


def toy_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "x", "y", "z"],
            "title": ["A", "B", "C", "D", "X", "Y", "Never seen"],
            "year": ["1990", "1991", "1992", "1993", "1994", "1995", "1996"],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u1", "u1", "u2"],
            "item_id": ["a", "x", "b", "c", "d", "y"],
            "rating": [4.0, 2.0, 5.0, 1.0, float("nan"), 5.0],
            "timestamp": [10.0, 5.0, 30.0, 20.0, 30.0, 5.0],
        }
    )
    return items, interactions


def test_prepare_loo_and_stats():
    data = prepare(*toy_tables(), name="toy", split="loo")
    # u1 = a, c, b, d -> samples c, b, d; u2 = x, y -> sample y. LOO: u1's d and u2's y are test,
    # u1's b is valid, u1's c is train. 'z' has no interaction and leaves the catalog.
    assert data.splits["train"]["target"].tolist() == ["c"]
    assert data.splits["valid"]["target"].tolist() == ["b"]
    assert data.splits["test"]["target"].tolist() == ["d", "y"]
    assert data.items["item_id"].tolist() == ["a", "b", "c", "d", "x", "y"]
    assert split_stats(data) == {
        "name": "toy",
        "catalog_items": 6,
        "users": 2,
        # 4 samples + each user's earliest history (1 item each) = the 6 interactions.
        "interactions": 6,
        "splits": {
            "train": {"samples": 1, "users": 1, "items": 1},
            "valid": {"samples": 1, "users": 1, "items": 1},
            "test": {"samples": 2, "users": 2, "items": 2},
        },
    }
    assert format_stats(split_stats(data)) == (
        "toy: 6 items, 2 users, 6 interactions\n"
        "split  samples  users  items\n"
        "train        1      1      1\n"
        "valid        1      1      1\n"
        "test         2      2      2"
    )


def test_prepare_temporal_and_bad_split():
    data = prepare(*toy_tables(), name="toy", split="temporal")
    # Samples by time: y(5), c(20), b(30, position 2), d(30, position 3): n = 4 -> 3 / 0 / 1.
    assert data.splits["train"]["target"].tolist() == ["y", "c", "b"]
    assert data.splits["test"]["target"].tolist() == ["d"]
    with pytest.raises(ValueError, match="split"):
        prepare(*toy_tables(), name="toy", split="random")


@pytest.mark.parametrize("split", ["loo", "temporal"])  # temporal leaves 'valid' empty
def test_save_load_round_trip(tmp_path, split):
    data = prepare(*toy_tables(), name="toy", split=split)
    target = save_prepared(data, tmp_path / "toy")
    assert sorted(p.name for p in target.iterdir()) == [
        "items.parquet",
        "stats.json",
        "test.parquet",
        "train.parquet",
        "valid.parquet",
    ]
    loaded = load_prepared(target)
    assert loaded.name == "toy"
    pd.testing.assert_frame_equal(loaded.items, data.items)
    for name, frame in data.splits.items():
        pd.testing.assert_frame_equal(loaded.splits[name], frame)
        assert all(isinstance(h, list) for h in loaded.splits[name]["history"])


def test_save_replaces_atomically(tmp_path):
    first = prepare(*toy_tables(), name="toy", split="loo")
    save_prepared(first, tmp_path / "out")
    second = PreparedData(name="toy2", items=first.items.head(2), splits={"test": first.splits["test"]})
    save_prepared(second, tmp_path / "out")
    loaded = load_prepared(tmp_path / "out")
    assert loaded.name == "toy2" and list(loaded.splits) == ["test"] and len(loaded.items) == 2
    # No temporary or old folder is left next to the target, and the old split files are gone.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_nan_lists_round_trip(tmp_path):
    split = pd.DataFrame(
        {
            "user_id": ["0"],
            "position": [1],
            "history": [["5"]],
            "history_ratings": [[float("nan")]],
            "history_timestamps": [[float("nan")]],
            "target": ["6"],
            "rating": [float("nan")],
            "timestamp": [float("nan")],
        }
    )
    items = pd.DataFrame({"item_id": ["5", "6"], "title": ["Five", "Six"]})
    save_prepared(PreparedData("nan", items, {"train": split}), tmp_path / "nan")
    loaded = load_prepared(tmp_path / "nan").splits["train"]
    assert loaded["history"].tolist() == [["5"]]
    assert math.isnan(loaded["history_ratings"].iloc[0][0])


def test_load_prepared_missing(tmp_path):
    with pytest.raises(DataError, match=r"stats\.json"):
        load_prepared(tmp_path / "absent")
    data = prepare(*toy_tables(), name="toy", split="loo")
    save_prepared(data, tmp_path / "toy")
    (tmp_path / "toy" / "valid.parquet").unlink()
    with pytest.raises(DataError, match=r"valid\.parquet"):
        load_prepared(tmp_path / "toy")
