"""RecBole atomic files and MovieLens: synthetic files written per test, plus the real ML-100K (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rrec.data import (
    DataError,
    build_samples,
    load_movielens,
    load_recbole_atomic,
    prepare,
    split_stats,
    temporal_split,
)

ML100K_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "12\tUsual Suspects, The\t1995\tCrime Thriller\n"
    "267\tunkonwn\tunkonwn\tunknown\n"
    "50\tStar Wars\t1977\tAction Adventure Romance Sci-Fi War\n"
)
ML100K_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "7\t50\t5\t881250949\n"
    "7\t267\t3\t881250950\n"
    "8\t12\t4\t881250951\n"
)


def write(directory: Path, name: str, **tables: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, text in tables.items():
        (directory / f"{name}.{suffix}").write_text(text, encoding="utf-8")
    return directory


def test_recbole_header_mapping(tmp_path):
    d = write(
        tmp_path,
        "toy",
        item="item_id:token\ttitle:token_seq\tyear:float\tgenre:token\tdirector:token\n"
        "a\tAlpha\t1999.0\tDrama Film-Noir\tSmith\n"
        "b\tBeta\t\tComedy\t\n",
        inter="user_id:token\titem_id:token\ttimestamp:float\treview:token_seq\nu\ta\t10\tgood film\n",
    )
    items, inter = load_recbole_atomic(d, "toy")
    # Canonical names first; the unrecognised 'director' field is kept as a text attribute.
    assert list(items.columns) == ["item_id", "title", "genres", "year", "director"]
    assert items.to_dict("records") == [
        {"item_id": "a", "title": "Alpha", "genres": "Drama, Film-Noir", "year": "1999", "director": "Smith"},
        {"item_id": "b", "title": "Beta", "genres": "Comedy", "year": "", "director": ""},
    ]
    # No rating field -> NaN; other .inter fields ('review') are dropped.
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["user_id"].tolist() == ["u"] and inter["timestamp"].tolist() == [10.0]
    assert math.isnan(inter["rating"].iloc[0])


def test_load_movielens_100k_titles(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM, inter=ML100K_INTER)
    items, inter = load_movielens(d, "ml-100k")
    assert items["title"].tolist() == ["The Usual Suspects", "Unknown movie", "Star Wars"]
    assert items["year"].tolist() == ["1995", "", "1977"]
    assert items["genres"].iloc[2] == "Action, Adventure, Romance, Sci-Fi, War"
    # Item 267's rating is kept.
    assert inter["item_id"].tolist() == ["50", "267", "12"]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0]


def test_load_movielens_1m_user_prefix(tmp_path):
    d = write(
        tmp_path,
        "ml-1m",
        item="item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\n"
        "Mariachi, El (1992)\tMariachi, El\t1992\tAction Thriller\n",
        inter="user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1m_1\tToy Story (1995)\t5\t978300760\n"
        "1m_12\tMariachi, El (1992)\t3\t978302109\n",
    )
    items, inter = load_movielens(d, "ml-1m")
    assert items["item_id"].tolist() == ["Toy Story (1995)", "Mariachi, El (1992)"]
    assert items["title"].tolist() == ["Toy Story", "El Mariachi"]
    assert items["genres"].tolist() == ["Animation, Children's, Comedy", "Action, Thriller"]
    assert inter["user_id"].tolist() == ["1", "12"]


def test_load_movielens_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="ml-20m"):
        load_movielens(tmp_path, "ml-20m")


def test_missing_column_names_the_file(tmp_path):
    d = write(
        tmp_path, "ml-100k", item=ML100K_ITEM, inter="user_id:token\titem_id:token\trating:float\n7\t50\t5\n"
    )
    with pytest.raises(DataError, match=r"ml-100k\.inter: missing column 'timestamp'"):
        load_movielens(d, "ml-100k")


def test_missing_title_names_the_file(tmp_path):
    d = write(tmp_path, "toy", item="item_id:token\tprice:float\na\t1\n", inter=ML100K_INTER)
    with pytest.raises(DataError, match=r"toy\.item: missing column 'title'"):
        load_recbole_atomic(d, "toy")


def test_nonexistent_file(tmp_path):
    with pytest.raises(DataError, match=r"ml-100k\.inter: file not found"):
        load_movielens(tmp_path / "nowhere", "ml-100k")


def test_unreadable_file(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM)
    (d / "ml-100k.inter").write_bytes(b"user_id:token\titem_id:token\n\xff\xfe\x00bad\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter: cannot read"):
        load_movielens(d, "ml-100k")


def test_empty_dataset(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM, inter=ML100K_INTER.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter: no interactions"):
        load_movielens(d, "ml-100k")
    (d / "ml-100k.inter").write_text("")
    with pytest.raises(DataError, match=r"ml-100k\.inter: empty file"):
        load_movielens(d, "ml-100k")


def test_unknown_item_ids(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM, inter=ML100K_INTER + "8\t999\t1\t881250952\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter: 1 interactions refer to item ids absent .*'999'"):
        load_movielens(d, "ml-100k")


def test_non_numeric_rating(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM, inter=ML100K_INTER + "8\t12\tfive\t881250952\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter: column 'rating' has a non-numeric value 'five'"):
        load_movielens(d, "ml-100k")


def test_duplicate_item_id(tmp_path):
    d = write(tmp_path, "ml-100k", item=ML100K_ITEM + "12\tCopy\t1995\tDrama\n", inter=ML100K_INTER)
    with pytest.raises(DataError, match=r"ml-100k\.item: item id '12' appears more than once"):
        load_movielens(d, "ml-100k")


@pytest.fixture(scope="module")
def ml100k_dir() -> Path:
    assets = pytest.importorskip("rrec.assets")
    directory = assets.dataset_dir("ml-100k")
    if not (directory / "ml-100k.inter").exists():
        pytest.skip("MovieLens-100K not fetched (run `rrec fetch`)")
    return directory


@pytest.mark.slow
@pytest.mark.slow_ci
def test_real_ml100k(ml100k_dir):
    items, inter = load_movielens(ml100k_dir, "ml-100k")
    assert (len(items), len(inter), inter["user_id"].nunique()) == (1682, 100_000, 943)
    assert items.set_index("item_id").loc["12", "title"] == "The Usual Suspects"
    # 100,000 interactions of 943 users -> 100,000 - 943 = 99,057 samples (position 0 has no history).
    samples = build_samples(inter, max_history=20)
    assert len(samples) == 99_057
    assert samples["history"].map(len).max() == 20
    splits = temporal_split(samples)
    # floor(0.8 n) = 79,245; floor(0.9 n) = 89,151; measured by the team: test = 9,906 samples of 166 users.
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [79_245, 9_906, 9_906]
    assert splits["test"]["user_id"].nunique() == 166
    assert splits["train"]["timestamp"].max() <= splits["valid"]["timestamp"].min()
    stats = split_stats(prepare(items, inter, name="ml-100k"))
    assert (stats["catalog_items"], stats["users"], stats["interactions"]) == (1682, 943, 100_000)
