"""Amazon Reviews 2023 (McAuley Lab) raw files -> canonical tables, with R²ec's preprocessing.

Inputs are one category's review file ``<Category>.jsonl[.gz]`` (fields used: ``user_id``,
``parent_asin``, ``rating``, ``timestamp`` in milliseconds) and its metadata file
``meta_<Category>.jsonl[.gz]`` (``parent_asin``, ``title``, ``main_category``, ``categories``,
``store``, ``description``).

Steps, in this order:

1. Items: id = ``parent_asin``; the title and each description paragraph are HTML-unescaped and
   stripped of tags (:func:`rrec.data.text.clean_html`); items whose cleaned title is empty (missing,
   null, whitespace or HTML only) are dropped, and so are reviews of items absent from the metadata.
2. Time window (R²ec): the window ends at the latest review; it starts ``window_months_start``
   calendar months earlier and moves back one month at a time until it holds at least
   ``min_items`` distinct items or covers all the data. The start is inclusive. Because step 1 comes
   first, ``min_items`` counts items that have a title.
3. Optional k-core (not in R²ec, hence off by default): repeatedly drop users and items with fewer
   than ``kcore`` interactions.

Departures and choices: reviews are not deduplicated (a user who reviewed two variants of one parent
item keeps both events); ``details``, ``features`` and prices are not kept; ``category`` is the
``categories`` path joined with " > " (``main_category`` when the path is empty), ``brand`` is
``store``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rrec.data.tables import DataError
from rrec.data.text import clean_html

REVIEW_FIELDS: tuple[str, ...] = ("user_id", "parent_asin", "rating", "timestamp")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a JSON-lines file, gzipped when its name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path.name}: line {number} is not JSON ({e.msg})") from e
                if not isinstance(record, dict):
                    raise DataError(f"{path.name}: line {number} is not a JSON object")
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path.name}: cannot read ({e})") from e


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(clean_html(str(v)) for v in value if v is not None).strip()
    return "" if value is None else clean_html(str(value))


def read_amazon2023_meta(meta_path: str | Path) -> pd.DataFrame:
    """Read item metadata, keeping items with a usable title.

    Returns:
        Columns ``item_id``, ``title``, ``category``, ``brand``, ``description`` (str), one row per
        ``parent_asin`` (the first record wins if one repeats).

    Raises:
        DataError: the file is unreadable, a record has no ``parent_asin``, or no item has a title.
    """
    path = Path(meta_path)
    rows: dict[str, dict[str, str]] = {}
    for number, record in _records(path):
        asin = record.get("parent_asin")
        if not asin:
            raise DataError(f"{path.name}: line {number}: missing field 'parent_asin'")
        title = _text(record.get("title"))
        if not title or asin in rows:
            continue
        path_ = [str(c) for c in record.get("categories") or []]
        rows[asin] = {
            "item_id": str(asin),
            "title": title,
            "category": " > ".join(path_) if path_ else _text(record.get("main_category")),
            "brand": _text(record.get("store")),
            "description": _text(record.get("description")),
        }
    if not rows:
        raise DataError(f"{path.name}: no item with a usable title (empty dataset)")
    return pd.DataFrame(list(rows.values())).astype(str)


def read_amazon2023_reviews(reviews_path: str | Path) -> pd.DataFrame:
    """Read reviews as canonical interactions (timestamps converted from ms to seconds).

    Raises:
        DataError: the file is unreadable, empty, or a record lacks one of ``REVIEW_FIELDS``.
    """
    path = Path(reviews_path)
    columns: dict[str, list[Any]] = {field: [] for field in REVIEW_FIELDS}
    for number, record in _records(path):
        for field in REVIEW_FIELDS:
            if record.get(field) is None:
                raise DataError(f"{path.name}: line {number}: missing field {field!r}")
            columns[field].append(record[field])
    if not columns["user_id"]:
        raise DataError(f"{path.name}: no reviews (empty dataset)")
    return pd.DataFrame(
        {
            "user_id": pd.Series(columns["user_id"], dtype=str),
            "item_id": pd.Series(columns["parent_asin"], dtype=str),
            "rating": np.asarray(columns["rating"], dtype=float),
            "timestamp": np.asarray(columns["timestamp"], dtype=float) / 1000.0,
        }
    )


def window_start(timestamps: pd.Series, item_ids: pd.Series, *, min_items: int, months: int) -> float:
    """The start (Unix seconds, inclusive) of R²ec's rolled-back time window.

    Args:
        timestamps: interaction times in seconds.
        item_ids: the interactions' items, aligned with ``timestamps``.
        min_items: the distinct items the window must hold.
        months: the initial window length in calendar months.

    Returns:
        ``end - k months`` for the smallest ``k >= months`` whose window holds ``>= min_items``
        distinct items, or the earliest timestamp when no window does.

    Example:
        Latest review 2023-06-15; months = 2 tries 2023-04-15, then 2023-03-15, ...
    """
    # The window always ends at the latest event, so an item is inside it iff its latest event is.
    last_seen = np.sort(timestamps.groupby(item_ids.to_numpy()).max().to_numpy())
    earliest, end = float(timestamps.min()), pd.Timestamp(float(timestamps.max()), unit="s")
    k = months
    while True:
        start = (end - pd.DateOffset(months=k)).timestamp()
        if start <= earliest:
            return earliest
        if len(last_seen) - np.searchsorted(last_seen, start, side="left") >= min_items:
            return start
        k += 1


def kcore_filter(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drop users and items with fewer than ``k`` interactions until none remain."""
    while True:
        user_counts = interactions["user_id"].map(interactions["user_id"].value_counts())
        item_counts = interactions["item_id"].map(interactions["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return interactions
        interactions = interactions[keep]


def load_amazon2023(
    reviews_path: str | Path,
    meta_path: str | Path,
    *,
    min_items: int = 10_000,
    window_months_start: int = 12,
    kcore: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load one Amazon Reviews 2023 category with R²ec's preprocessing (see the module docstring).

    Args:
        reviews_path: ``<Category>.jsonl`` or ``.jsonl.gz``.
        meta_path: ``meta_<Category>.jsonl`` or ``.jsonl.gz``.
        min_items: the distinct items the time window must reach (R²ec: 10,000).
        window_months_start: the initial window length in months (R²ec: 12).
        kcore: if set, apply a k-core filter after the window (off in R²ec).

    Returns:
        ``(items, interactions)``: the items with at least one interaction left, and the reviews in
        the window in file order (ratings 1-5, timestamps in seconds).

    Raises:
        DataError: a file is unreadable or malformed, or nothing is left after a step.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    items = read_amazon2023_meta(meta_path)
    interactions = read_amazon2023_reviews(reviews_path)
    interactions = interactions[interactions["item_id"].isin(items["item_id"])]
    if len(interactions) == 0:
        raise DataError(f"{reviews_path.name}: no review of an item with a title in {meta_path.name}")
    start = window_start(
        interactions["timestamp"], interactions["item_id"], min_items=min_items, months=window_months_start
    )
    interactions = interactions[interactions["timestamp"] >= start]
    if kcore is not None:
        interactions = kcore_filter(interactions, kcore)
        if len(interactions) == 0:
            raise DataError(f"{reviews_path.name}: nothing left after the {kcore}-core filter")
    items = items[items["item_id"].isin(interactions["item_id"])]
    return items.reset_index(drop=True), interactions.reset_index(drop=True)
