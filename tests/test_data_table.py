"""rrec.data.table and ``rrec prepare dataset=table:...``: formats, column guessing, every bad input.

The data: items i1..i5 with a title and a genre (i3 has none); users u1 = i1 i2 i3 i4 at times 10 20 30 40 and
u2 = i2 i3 i5 at 15 25 35, ratings 1..5 in row order (u1: 5 4 3 2, u2: 1 2 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from recipes import prepare as recipe
from rrec.data import DataError, load_prepared
from rrec.data.table import Columns, load_table_dataset, read_table

ITEMS = pd.DataFrame(
    {
        "item_id": ["i1", "i2", "i3", "i4", "i5"],
        "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
        "genres": ["Rock", "Jazz", "", "Pop", "Folk"],
    }
)
INTER = pd.DataFrame(
    {
        "user_id": ["u1"] * 4 + ["u2"] * 3,
        "item_id": ["i1", "i2", "i3", "i4", "i2", "i3", "i5"],
        "rating": [5, 4, 3, 2, 1, 2, 3],
        "timestamp": [10, 20, 30, 40, 15, 25, 35],
    }
)


def write(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` in the format of ``path``'s suffix (no suffix: a datasets save_to_disk folder)."""
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        import datasets

        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    return path


def pair(tmp_path: Path, suffix: str, items=ITEMS, inter=INTER) -> tuple[Path, Path]:
    return write(inter, tmp_path / f"events{suffix}"), write(items, tmp_path / f"items{suffix}")


def test_guessed_columns_and_joined_text(tmp_path):
    inter, items = pair(tmp_path, ".csv")
    table = load_table_dataset(inter, items, Columns(text_cols=["title", "genres"]))
    # Non-empty parts joined by " | ": i3 has no genre, so its text is its title alone.
    expected = ["Alpha | Rock", "Beta | Jazz", "Gamma", "Delta | Pop", "Epsilon | Folk"]
    assert table.items["title"].tolist() == expected
    assert table.interactions["user_id"].tolist() == ["u1"] * 4 + ["u2"] * 3
    assert table.interactions["timestamp"].tolist() == [10.0, 20.0, 30.0, 40.0, 15.0, 25.0, 35.0]
    assert table.interactions["rating"].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0]
    assert "events.csv: user_col='user_id' (guessed)" in table.notes
    assert "events.csv: time_col='timestamp' (guessed)" in table.notes
    assert "items.csv: item text = ['title', 'genres'] joined by ' | '" in table.notes


def test_renamed_columns_without_ratings(tmp_path):
    inter = INTER.rename(columns={"user_id": "customer", "item_id": "sku", "timestamp": "when"})
    items = ITEMS.rename(columns={"item_id": "sku", "title": "name"}).assign(name=list("ABCDE"))
    paths = pair(tmp_path, ".csv", items=items, inter=inter)
    cols = Columns(user_col="customer", item_col="sku", time_col="when", rating_col="")
    table = load_table_dataset(*paths, cols)
    assert table.items.to_dict("records")[0] == {"item_id": "i1", "title": "A", "genres": "Rock"}
    assert all(math.isnan(r) for r in table.interactions["rating"])


@pytest.mark.parametrize("suffix", [".tsv", ".parquet", ".jsonl", ""])
def test_every_format_prepares_the_same_splits_as_csv(tmp_path, suffix):
    pytest.importorskip("datasets")

    def run(sfx: str) -> dict[str, pd.DataFrame]:
        d = tmp_path / (sfx.strip(".") or "datasets")
        d.mkdir()
        inter, items = pair(d, sfx)
        out = recipe.main(
            [f"dataset=table:{inter}:{items}", f"out_dir={d / 'prepared'}", "text_cols=[title,genres]"]
        )
        data = load_prepared(out)
        return {"items": data.items, **data.splits}

    expected, got = run(".csv"), run(suffix)
    assert list(got) == ["items", "train", "valid", "test"]
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(got[name], frame)
    # 7 events -> 5 samples (each user's first event has no history); 80/10/10 by time: 4 / 0 / 1.
    assert [len(expected[s]) for s in ("train", "valid", "test")] == [4, 0, 1]


def test_integer_ids_in_parquet_match_text_ids_in_csv(tmp_path):
    inter = INTER.assign(item_id=[1, 2, 3, 4, 2, 3, 5], user_id=[7] * 4 + [8] * 3)
    items = ITEMS.assign(item_id=[1, 2, 3, 4, 5], title=list("ABCDE"))
    a = load_table_dataset(*pair(tmp_path, ".parquet", items=items, inter=inter))
    b = load_table_dataset(*pair(tmp_path, ".csv", items=items, inter=inter))
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert a.interactions["item_id"].tolist()[:2] == ["1", "2"]


BAD = {
    # (how the data is broken, the words the error must hold)
    "missing column": (
        lambda i, e: (i, e.drop(columns=["timestamp"])),
        ["events.csv", "time_col", "timestamp"],
    ),
    "unknown item": (
        lambda i, e: (i, e.assign(item_id=["i1", "i2", "i9", "i4", "i2", "i3", "i5"])),
        ["events.csv: row 3, column 'item_id': item id 'i9' is not in items.csv"],
    ),
    "duplicate item": (
        lambda i, e: (i.assign(item_id=["i1", "i2", "i3", "i2", "i5"]), e),
        ["items.csv: row 4, column 'item_id': item id 'i2' repeats row 2"],
    ),
    "non-numeric time": (
        lambda i, e: (i, e.assign(timestamp=["10", "20", "30", "40", "15", "soon", "35"])),
        ["events.csv: row 6, column 'timestamp': not a number: 'soon'"],
    ),
    "empty text": (
        lambda i, e: (i.assign(title=["Alpha", "Beta", "Gamma", "Delta", " "]), e),
        ["items.csv: row 5, columns ['title']: empty item text for 'i5'"],
    ),
    "empty time": (
        lambda i, e: (i, e.assign(timestamp=["10", "20", "", "40", "15", "25", "35"])),
        ["events.csv: row 3, column 'timestamp': empty"],
    ),
    "empty user": (
        lambda i, e: (i, e.assign(user_id=["u1", "", "u1", "u1", "u2", "u2", "u2"])),
        ["events.csv: row 2, column 'user_id': empty id"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_row_and_column_and_writes_nothing(tmp_path, capsys, case):
    breaks, words = BAD[case]
    items, inter = breaks(ITEMS, INTER)
    events_path, items_path = pair(tmp_path, ".csv", items=items, inter=inter)
    out = tmp_path / "prepared" / "x"
    with pytest.raises(DataError) as err:
        recipe.main([f"dataset=table:{events_path}:{items_path}", f"out_dir={out}"])
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "prepared").exists() or list((tmp_path / "prepared").iterdir()) == []


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"a.xlsx: unknown table format '.xlsx'"):
        read_table(tmp_path / "a.xlsx")
    with pytest.raises(DataError, match=r"nope.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_cli_reports_table_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from rrec.cli import app

    items, inter = BAD["unknown item"][0](ITEMS, INTER)
    events_path, items_path = pair(tmp_path, ".csv", items=items, inter=inter)
    result = CliRunner().invoke(
        app, ["prepare", f"dataset=table:{events_path}:{items_path}", f"out_dir={tmp_path}/o"]
    )
    assert result.exit_code == 1
    assert "data error: events.csv: row 3, column 'item_id'" in result.output
