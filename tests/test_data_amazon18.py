"""Amazon'18 Scientific and CDs: synthetic files (tests/assets/amazon18) and the real ones (skip if absent).

Scientific fixture: users 0 = items 0 1 2 3 4 and 1 = items 4 3 2 1, leave-one-out, train holding
every prefix (0: [0]->1, [0 1]->2; 1: [4]->3). CDs fixture: U1 = 3, 0, 4 | 5 (valid | test rows),
U2 = 5, 1, 2, 3 (valid), U3 = 1, 0 (test), with target times U1 200, 300 | 500; U2 250, 400; U3 600.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rrec.data import DataError, load_amazon18_cds, load_amazon18_scientific, split_stats
from rrec.data.amazon18 import parse_scientific_text

ASSETS = Path(__file__).parent / "assets" / "amazon18"


def targets(frame) -> list[tuple[str, list[str], str]]:
    return [(u, h, t) for u, h, t in frame[["user_id", "history", "target"]].itertuples(index=False)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Gorilla Glue. Industrial & Scientific Tapes. Gorilla. ",
            ("Gorilla Glue", "Industrial & Scientific Tapes", "Gorilla"),
        ),
        # ". " inside the title: the category root anchors the split.
        (
            "Glue No. 5. Industrial & Scientific Tapes. Gorilla. ",
            ("Glue No. 5", "Industrial & Scientific Tapes", "Gorilla"),
        ),
        ("Tricycle. . Schwinn. ", ("Tricycle", "", "Schwinn")),
        ("Beaker. Industrial & Scientific Lab. . ", ("Beaker", "Industrial & Scientific Lab", "")),
        (
            "Tape. Industrial & Scientific Tapes. J.V. Co. Inc.. ",
            ("Tape", "Industrial & Scientific Tapes", "J.V. Co. Inc."),
        ),
    ],
)
def test_parse_scientific_text(text, expected):
    assert parse_scientific_text(text) == expected


def test_scientific_synthetic():
    data = load_amazon18_scientific(ASSETS / "scientific", max_history=2)
    assert data.name == "amazon18-scientific"
    assert data.items.to_dict("records")[0] == {
        "item_id": "0",
        "title": "Glue No. 5. Strong",
        "category": "Industrial & Scientific Tapes, Adhesives & Sealants",
        "brand": "Gorilla",
        "asin": "B0A",
    }
    assert data.items["title"].tolist()[2:] == [
        "Schwinn Tricycle, 12-Inch Wheel",
        "Lab Beaker & Lid",  # &amp; unescaped
        "Yeast (11 grams)",
        "Unknown title",  # the scraped "Industrial & Scientific />"
    ]
    assert data.items["brand"].tolist()[2:] == ["Schwinn", "", "Lallemand Inc.", "E-Z LOK"]
    # Histories cut to the 2 most recent items; rows keep file order.
    assert targets(data.splits["train"]) == [("0", ["0", "1"], "2"), ("0", ["0"], "1"), ("1", ["4"], "3")]
    assert targets(data.splits["valid"]) == [("0", ["1", "2"], "3"), ("1", ["4", "3"], "2")]
    assert targets(data.splits["test"]) == [("0", ["2", "3"], "4"), ("1", ["3", "2"], "1")]
    assert data.splits["test"]["position"].tolist() == [4, 3]
    assert math.isnan(data.splits["test"]["timestamp"].iloc[0])
    assert all(math.isnan(r) for r in data.splits["test"]["history_ratings"].iloc[0])
    stats = split_stats(data)
    # 7 samples + a first item per user = 5 + 4 interactions.
    assert (stats["catalog_items"], stats["users"], stats["interactions"]) == (6, 2, 9)


def test_cds_synthetic():
    data = load_amazon18_cds(ASSETS / "cds", max_history=2, valid_fraction=0.25)
    assert data.items["title"].tolist() == [
        "Greatest Hits",
        "Folie à Deux",
        "Unknown title",  # an HTML fragment
        "Kansas",
        "Monolith",
        "Hot Rocks",
        "Unheard Album",
    ]
    assert data.items["asin"].tolist() == ["X0", "X1", "X2", "X3", "X4", "X5", ""]  # 6 never in a CSV
    # valid.csv by time: 200 (U1), 250 (U2), 300 (U1), 400 (U2); n = 4 -> train floor(3) = 3, valid 1.
    assert targets(data.splits["train"]) == [
        ("U1", ["3"], "0"),
        ("U2", ["5", "1"], "2"),
        ("U1", ["3", "0"], "4"),
    ]
    assert targets(data.splits["valid"]) == [("U2", ["1", "2"], "3")]  # [5, 1, 2] cut to 2
    assert targets(data.splits["test"]) == [("U1", ["0", "4"], "5"), ("U3", ["1"], "0")]
    test = data.splits["test"]
    assert test["history_ratings"].tolist() == [[5.0, 3.0], [1.0]]
    assert test["history_timestamps"].tolist() == [[200.0, 300.0], [450.0]]
    assert test["rating"].tolist() == [5.0, 5.0] and test["timestamp"].tolist() == [500.0, 600.0]
    # Positions count from the first visible event: U1's first row has 1 history item.
    assert data.splits["train"]["position"].tolist() == [1, 2, 2]
    assert test["position"].tolist() == [3, 1]
    # Events: U1 3, 0, 4, 5 + U2 5, 1, 2, 3 + U3 1, 0.
    assert split_stats(data)["interactions"] == 4 + 4 + 2


def test_cds_unknown_item(tmp_path):
    for name in ("valid.csv", "test.csv"):
        (tmp_path / name).write_text((ASSETS / "cds" / name).read_text())
    (tmp_path / "items.txt").write_text("Greatest Hits\t0\n")
    with pytest.raises(DataError, match=r"valid\.csv: item ids absent from items\.txt"):
        load_amazon18_cds(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"Scientific\.item2index: file not found"):
        load_amazon18_scientific(tmp_path)
    with pytest.raises(DataError, match=r"items\.txt: file not found"):
        load_amazon18_cds(tmp_path)


def test_real_scientific(shared_data):
    data = load_amazon18_scientific(shared_data / "amazon18-scientific")
    stats = split_stats(data)
    assert (stats["catalog_items"], stats["users"]) == (4385, 8442)
    assert [stats["splits"][k]["samples"] for k in ("train", "valid", "test")] == [34_101, 8442, 8442]
    # The README's 59,384 is the test rows' sequence lengths, capped at 50 + 1; 3 users have longer ones.
    assert stats["interactions"] == 59_427
    assert data.splits["test"]["history"].map(len).max() == 20
    assert (data.items["title"] == "Unknown title").sum() == 24


def test_real_cds(shared_data):
    data = load_amazon18_cds(shared_data / "amazon18-cds")
    stats = split_stats(data)
    assert stats["catalog_items"] == 5841
    assert stats["splits"]["train"]["samples"] + stats["splits"]["valid"]["samples"] == 6156
    assert stats["splits"]["test"]["samples"] == 6157 and stats["splits"]["test"]["users"] == 1723
    assert (data.items["title"] == "Unknown title").sum() == 29
    assert data.splits["train"]["timestamp"].max() <= data.splits["valid"]["timestamp"].min()
