"""Amazon Reviews 2023 on a synthetic category (tests/assets/amazon2023), worked by hand.

meta_Toys.jsonl: A1 "Rubber Duck", A2 "Kite &amp; String", A3 "<br/>" (HTML only), A4 "   "
(whitespace), A5 null title, A6 "Puzzle <i>1000</i> pieces", A7 "Yo-yo", A8 "Chess Set"; A9 has
reviews but no metadata. The title filter keeps A1, A2, A6, A7, A8.

Toys.jsonl, 13 reviews in shuffled file order (UTC):
    row  user item  time               row  user item  time
    0    u2   A1    2022-11-05 09:00   7    u2   A3    2023-04-20 (dropped: HTML title)
    1    u1   A2    2023-05-01         8    u1   A1    2023-03-01
    2    u3   A2    2023-01-15 12:00   9    u3   A6    2023-02-20
    3    u1   A8    2022-12-10         10   u3   A4    2023-06-01 (dropped: blank title)
    4    u2   A6    2023-03-20         11   u2   A1    2023-06-15 12:00 (latest)
    5    u3   A9    2023-05-10 (no meta) 12 u3   A5    2023-05-05 (dropped: null title)
    6    u1   A7    2023-02-01 10:00

Latest time of each kept item: A1 06-15, A2 05-01, A6 03-20, A7 02-01, A8 2022-12-10. With
min_items = 4 and a 2-month start, the window start rolls back from 2023-06-15 12:00:
    -2 months  2023-04-15 12:00: A1, A2             = 2
    -3 months  2023-03-15 12:00: + A6               = 3
    -4 months  2023-02-15 12:00: (A7 is 02-01)      = 3
    -5 months  2023-01-15 12:00: + A7               = 4  -> stop; row 2 at exactly 12:00 is kept.
Kept rows: 1, 2, 4, 6, 8, 9, 11 (A8's only review, 2022-12-10, is before the window).
"""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rrec.data import DataError, load_amazon2023, prepare

ASSETS = Path(__file__).parent / "assets" / "amazon2023"
REVIEWS, META = ASSETS / "Toys.jsonl", ASSETS / "meta_Toys.jsonl"


def t(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()


def test_window_rolls_back_and_titles_are_filtered():
    items, inter = load_amazon2023(REVIEWS, META, min_items=4, window_months_start=2)
    assert items.to_dict("records") == [
        {
            "item_id": "A1",
            "title": "Rubber Duck",
            "category": "Toys & Games > Baby Toys",
            "brand": "DuckCo",
            "description": "A yellow duck. Floats & squeaks.",
        },
        # No category path -> main_category.
        {
            "item_id": "A2",
            "title": "Kite & String",
            "category": "Toys & Games",
            "brand": "SkyFun",
            "description": "",
        },
        # store null -> "".
        {
            "item_id": "A6",
            "title": "Puzzle 1000 pieces",
            "category": "Toys & Games > Puzzles",
            "brand": "",
            "description": "Hard.",
        },
        {"item_id": "A7", "title": "Yo-yo", "category": "Toys & Games", "brand": "Spin", "description": ""},
    ]
    assert [tuple(r) for r in inter.itertuples(index=False)] == [
        ("u1", "A2", 3.0, t("2023-05-01T00:00")),
        ("u3", "A2", 5.0, t("2023-01-15T12:00")),
        ("u2", "A6", 5.0, t("2023-03-20T00:00")),
        ("u1", "A7", 4.0, t("2023-02-01T10:00")),
        ("u1", "A1", 5.0, t("2023-03-01T00:00")),
        ("u3", "A6", 4.0, t("2023-02-20T00:00")),
        ("u2", "A1", 5.0, t("2023-06-15T12:00")),
    ]


def test_resulting_temporal_split():
    data = prepare(*load_amazon2023(REVIEWS, META, min_items=4, window_months_start=2), name="toys")
    # Sequences: u1 A7, A1, A2; u2 A6, A1; u3 A2, A6 -> 4 samples, by time:
    #   u3 A6 (02-20), u1 A1 (03-01), u1 A2 (05-01), u2 A1 (06-15).
    # n = 4: train = floor(3.2) = 3, valid = floor(3.6) - 3 = 0, test = 1.
    assert data.splits["train"]["target"].tolist() == ["A6", "A1", "A2"]
    assert data.splits["train"]["history"].tolist() == [["A2"], ["A7"], ["A7", "A1"]]
    assert len(data.splits["valid"]) == 0
    assert data.splits["test"][["user_id", "target"]].values.tolist() == [["u2", "A1"]]
    assert data.splits["test"]["history"].tolist() == [["A6"]]


def test_window_stops_earlier_with_fewer_items():
    # min_items = 3 stops at -3 months (2023-03-15 12:00): rows 1, 4, 11.
    items, inter = load_amazon2023(REVIEWS, META, min_items=3, window_months_start=2)
    assert inter["item_id"].tolist() == ["A2", "A6", "A1"]
    assert items["item_id"].tolist() == ["A1", "A2", "A6"]


def test_window_covers_everything_when_data_runs_out():
    # 100 items are never reached: every review of a titled item is kept (rows 0-4, 6, 8, 9, 11).
    items, inter = load_amazon2023(REVIEWS, META, min_items=100, window_months_start=2)
    assert len(inter) == 9
    assert items["item_id"].tolist() == ["A1", "A2", "A6", "A7", "A8"]


def test_kcore():
    # From the 7 windowed rows, A7 has 1 interaction -> dropped; then u1 has 2, every item 2: stable.
    items, inter = load_amazon2023(REVIEWS, META, min_items=4, window_months_start=2, kcore=2)
    assert len(inter) == 6
    assert items["item_id"].tolist() == ["A1", "A2", "A6"]


def test_gzipped_files_match(tmp_path):
    for src in (REVIEWS, META):
        with src.open("rb") as f, gzip.open(tmp_path / f"{src.name}.gz", "wb") as g:
            shutil.copyfileobj(f, g)
    plain = load_amazon2023(REVIEWS, META, min_items=4, window_months_start=2)
    zipped = load_amazon2023(
        tmp_path / "Toys.jsonl.gz", tmp_path / "meta_Toys.jsonl.gz", min_items=4, window_months_start=2
    )
    for a, b in zip(plain, zipped, strict=True):
        assert a.equals(b)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"Nope\.jsonl: cannot read"):
        load_amazon2023(tmp_path / "Nope.jsonl", META)
    bad = tmp_path / "Bad.jsonl"
    bad.write_text('{"user_id": "u", "parent_asin": "A1", "rating": 5.0, "timestamp": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"Bad\.jsonl: line 2 is not JSON"):
        load_amazon2023(bad, META)
    bad.write_text('{"user_id": "u", "parent_asin": "A1", "rating": 5.0}\n')
    with pytest.raises(DataError, match=r"Bad\.jsonl: line 1: missing field 'timestamp'"):
        load_amazon2023(bad, META)
    bad.write_text("")
    with pytest.raises(DataError, match=r"Bad\.jsonl: no reviews"):
        load_amazon2023(bad, META)
    no_titles = tmp_path / "meta_Bad.jsonl"
    no_titles.write_text('{"parent_asin": "A1", "title": "<p></p>"}\n')
    with pytest.raises(DataError, match=r"meta_Bad\.jsonl: no item with a usable title"):
        load_amazon2023(REVIEWS, no_titles)
