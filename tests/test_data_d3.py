"""rrec.data.d3: the D3/BIGRec layout found by format, nested or flat, with or without a train file.

Built in tmp_path from the synthetic CDs files (tests/assets/amazon18/cds, described in
test_data_amazon18.py): valid.csv holds U1 [3]->0 @200, [3 0]->4 @300 and U2 [5 1]->2 @250,
[5 1 2]->3 @400; test.csv holds U1 [3 0 4]->5 @500 and U3 [1]->0 @600.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes import prepare as recipe
from rrec.data import DataError, load_amazon18_cds, load_prepared
from rrec.data.d3 import find_d3_files, load_d3

CDS = Path(__file__).parent / "assets" / "amazon18" / "cds"
NAME = "CDs_and_Vinyl_5_2015-10-2018-11"


def nested(root: Path, with_train: bool, name: str = NAME) -> Path:
    """The nested layout; with a train file, each user's first valid row moves to train."""
    (root / "info").mkdir(parents=True, exist_ok=True)
    (root / "info" / f"{name}.txt").write_text((CDS / "items.txt").read_text())
    header, *rows = (CDS / "valid.csv").read_text().splitlines()
    parts = {"valid": rows, "test": (CDS / "test.csv").read_text().splitlines()[1:]}
    if with_train:  # rows 0 and 2 are U1's and U2's first
        parts = {"train": [rows[0], rows[2]], "valid": [rows[1], rows[3]], "test": parts["test"]}
    for split, lines in parts.items():
        (root / split).mkdir(exist_ok=True)
        (root / split / f"{name}.csv").write_text("\n".join([header, *lines]) + "\n")
    return root


def targets(frame) -> list[tuple[str, list[str], str]]:
    return [(u, h, t) for u, h, t in frame[["user_id", "history", "target"]].itertuples(index=False)]


def test_nested_with_train_uses_the_three_files(tmp_path):
    loaded = load_d3(nested(tmp_path, with_train=True))
    data = loaded.data
    assert data.name == NAME  # from the files, the only info/*.txt
    assert targets(data.splits["train"]) == [("U1", ["3"], "0"), ("U2", ["5", "1"], "2")]
    assert targets(data.splits["valid"]) == [("U1", ["3", "0"], "4"), ("U2", ["5", "1", "2"], "3")]
    assert targets(data.splits["test"]) == [("U1", ["3", "0", "4"], "5"), ("U3", ["1"], "0")]
    # Positions from each user's first visible event, across train, valid, test: U1 1, 2, 3; U2 2, 3.
    assert data.splits["train"]["position"].tolist() == [1, 2]
    assert data.splits["valid"]["position"].tolist() == [2, 3]
    assert data.splits["test"]["position"].tolist() == [3, 1]
    assert loaded.notes == [
        f"{NAME}: nested D3 layout, train/{NAME}.csv, valid/{NAME}.csv, test/{NAME}.csv + {NAME}.txt"
    ]


def test_nested_without_train_splits_valid_and_says_so(tmp_path):
    loaded = load_d3(nested(tmp_path, with_train=False), max_history=2, valid_fraction=0.25)
    flat = load_amazon18_cds(CDS, max_history=2, valid_fraction=0.25)
    for split in ("train", "valid", "test"):  # the same rows as the flat folder of today
        assert loaded.data.splits[split].equals(flat.splits[split])
    assert (
        loaded.notes[1]
        == "no train file: the valid file is split by target time into train (first 75%) and valid (last 25%)"
    )


def test_flat_layout_is_named_after_its_folder_and_the_alias_keeps_its_name(tmp_path):
    assert find_d3_files(CDS).layout == "flat" and load_d3(CDS).data.name == "cds"
    assert load_amazon18_cds(CDS).name == "amazon18-cds"


def test_two_names_need_one_chosen(tmp_path):
    nested(tmp_path, with_train=False)
    nested(tmp_path, with_train=False, name="Books")
    with pytest.raises(
        DataError, match=r"2 \.txt files \['Books', 'CDs_and_Vinyl_5_2015-10-2018-11'\]; pass the name"
    ):
        find_d3_files(tmp_path)
    assert load_d3(tmp_path, "Books").data.name == "Books"


def test_missing_test_file_is_named(tmp_path):
    nested(tmp_path, with_train=True)
    (tmp_path / "test" / f"{NAME}.csv").unlink()
    with pytest.raises(
        DataError, match=rf"{NAME}\.csv: file not found \(.*test/{NAME}\.csv; nested D3 layout\)"
    ):
        load_d3(tmp_path)


def test_rrec_prepare_d3(tmp_path, capsys):
    root = nested(tmp_path / "raw", with_train=True)
    out = recipe.main([f"dataset=d3:{root}", f"out_dir={tmp_path / 'prepared'}"])
    assert load_prepared(out).name == NAME
    assert f"{NAME}: nested D3 layout" in capsys.readouterr().out
    assert recipe.dataset_name(f"d3:{root}") == NAME
