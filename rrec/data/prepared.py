"""A prepared dataset (catalog + split samples), its statistics, and its on-disk form.

On disk a prepared dataset is a folder with ``items.parquet``, one ``<split>.parquet`` per split and
``stats.json`` (the :func:`split_stats` dict, which also records the name and the split names).
:func:`save_prepared` writes the folder under a temporary name next to the target and renames it into
place, so a reader never sees half a dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rrec.data.samples import build_samples, cut_lists
from rrec.data.splits import leave_one_out_split, temporal_split
from rrec.data.tables import DataError, check_tables

STATS_FILE = "stats.json"
ITEMS_FILE = "items.parquet"


@dataclass
class PreparedData:
    """A catalog and its split samples.

    Attributes:
        name: the dataset's name, e.g. ``"ml-100k"``.
        items: the canonical item table; the catalog every model ranks.
        splits: split name (``train``, ``valid``, ``test``) -> samples as built by
            :func:`rrec.data.build_samples`.
    """

    name: str
    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]


def prepare(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    *,
    name: str,
    split: str = "temporal",
    max_history: int = 20,
) -> PreparedData:
    """Build samples from the canonical tables and split them.

    The catalog is restricted to the items with at least one interaction: an item nobody interacted
    with can never be a target (ML-1M: 3,883 listed, 3,706 kept).

    Args:
        items: the canonical item table.
        interactions: the canonical interaction table.
        name: the dataset's name.
        split: ``"temporal"`` (R²ec's global 80/10/10 split by time, the default) or ``"loo"``
            (RecBole's per-user leave-one-out).
        max_history: the most history items per sample (R²ec: 20).

    Returns:
        The prepared dataset.

    Raises:
        ValueError: ``split`` is unknown.
        DataError: the tables are inconsistent (see :func:`rrec.data.tables.check_tables`).
    """
    check_tables(items, interactions, items_source="items", inter_source="interactions")
    samples = build_samples(interactions, max_history=max_history)
    if split == "temporal":
        splits = temporal_split(samples)
    elif split == "loo":
        splits = leave_one_out_split(samples)
    else:
        raise ValueError(f"split must be 'temporal' or 'loo', got {split!r}")
    catalog = items[items["item_id"].isin(interactions["item_id"])].reset_index(drop=True)
    return PreparedData(name=name, items=catalog, splits=splits)


def _interaction_count(frames: list[pd.DataFrame]) -> int:
    """Per user: samples + the history length of the user's earliest sample, summed."""
    samples = pd.concat([f[["user_id", "position", "history"]] for f in frames], ignore_index=True)
    if len(samples) == 0:
        return 0
    earliest = samples.sort_values("position", kind="stable").drop_duplicates("user_id")
    return len(samples) + int(earliest["history"].map(len).sum())


def split_stats(data: PreparedData) -> dict[str, Any]:
    """Counts that describe a prepared dataset.

    Args:
        data: the prepared dataset.

    Returns:
        ``name``; ``catalog_items`` (rows of ``items``); ``users`` (distinct users over all splits);
        ``interactions`` (the events the splits show: per user, the number of samples plus the
        history length of the user's earliest sample; for :func:`build_samples` output this is the
        user's full sequence length); ``splits``: split -> ``samples``, ``users`` (distinct),
        ``items`` (distinct target items).
    """
    frames = list(data.splits.values())
    users = set().union(*(set(f["user_id"]) for f in frames)) if frames else set()
    return {
        "name": data.name,
        "catalog_items": len(data.items),
        "users": len(users),
        "interactions": _interaction_count(frames) if frames else 0,
        "splits": {
            split: {
                "samples": len(frame),
                "users": int(frame["user_id"].nunique()),
                "items": int(frame["target"].nunique()),
            }
            for split, frame in data.splits.items()
        },
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Render :func:`split_stats` output as a small aligned table.

    Example:
        ::

            ml-100k: 1,682 items, 943 users, 100,000 interactions
            split  samples  users  items
            train   79,245    750  1,616
    """
    header = (
        f"{stats['name']}: {stats['catalog_items']:,} items, {stats['users']:,} users, "
        f"{stats['interactions']:,} interactions"
    )
    rows = [["split", "samples", "users", "items"]]
    for split, counts in stats["splits"].items():
        rows.append([split, *(f"{counts[k]:,}" for k in ("samples", "users", "items"))])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join([header, *lines])


# Arrow types of the sample columns whose type cannot always be inferred (an empty split, a list of
# NaN ratings that Arrow reads as nulls).
_ARROW_TYPES: dict[str, pa.DataType] = {
    "history": pa.list_(pa.string()),
    "history_ratings": pa.list_(pa.float64()),
    "history_timestamps": pa.list_(pa.float64()),
    "rating": pa.float64(),
    "timestamp": pa.float64(),
}


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, kind in _ARROW_TYPES.items():
        if name in table.column_names and table.schema.field(name).type != kind:
            index = table.column_names.index(name)
            table = table.set_column(index, pa.field(name, kind), table.column(name).cast(kind))
    pq.write_table(table, path)


def save_prepared(data: PreparedData, directory: str | Path) -> Path:
    """Write a prepared dataset to ``directory`` atomically, replacing any previous one.

    Args:
        data: the prepared dataset.
        directory: the target folder (its parent is created if needed).

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        _write_parquet(data.items, tmp / ITEMS_FILE)
        for split, frame in data.splits.items():
            _write_parquet(frame, tmp / f"{split}.parquet")
        (tmp / STATS_FILE).write_text(json.dumps(split_stats(data), indent=2) + "\n")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _python_lists(column: pa.ChunkedArray) -> list[list]:
    """A list column as Python lists; float nulls (NaN written from pandas) come back as NaN."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    offsets = (offsets - offsets[0]).tolist()
    flat = array.flatten()
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        # Item ids repeat: build each distinct string once and share it (ML-1M: 3.7K, not 16M, objects).
        encoded = flat.dictionary_encode()
        distinct = np.asarray([*encoded.dictionary.to_pylist(), None], dtype=object)
        codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False)
        values = distinct[codes].tolist()
    else:
        values = flat.to_numpy(zero_copy_only=False).tolist()
    return cut_lists(values, offsets[:-1], offsets[1:])


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`save_prepared`, with list columns back as Python lists."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path.name}: cannot read ({e})") from e
    frame = table.drop_columns([f.name for f in table.schema if pa.types.is_list(f.type)]).to_pandas()
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            lists = pd.Series(_python_lists(table.column(field.name)), index=frame.index, dtype=object)
            frame.insert(index, field.name, lists)
    return frame


def load_prepared(directory: str | Path) -> PreparedData:
    """Read a dataset written by :func:`save_prepared`.

    Raises:
        DataError: the folder or one of its files is missing or unreadable.
    """
    directory = Path(directory)
    stats_path = directory / STATS_FILE
    if not stats_path.is_file():
        raise DataError(f"{stats_path}: not found; {directory} is not a prepared dataset")
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{stats_path.name}: cannot read ({e})") from e
    items = _read_parquet(directory / ITEMS_FILE)
    splits = {split: _read_parquet(directory / f"{split}.parquet") for split in stats["splits"]}
    return PreparedData(name=stats["name"], items=items, splits=splits)
