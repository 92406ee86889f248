"""The canonical tables every loader returns, and the checks that guard them.

items
    ``item_id`` (str, unique), ``title`` (str), then optional text attributes (``year``, ``genres``,
    ``category``, ``brand``, ``description``, ...), all str.
interactions
    ``user_id`` (str), ``item_id`` (str), ``rating`` (float, NaN where unrated), ``timestamp`` (float
    seconds, NaN only where a dataset has none), one row per event, in file order.

Every loader error is a :class:`DataError` whose message starts with the file it concerns.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title")
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "timestamp")


class DataError(ValueError):
    """A dataset file is missing, unreadable, empty or inconsistent; the message names the file."""


def read_tsv(path: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """Read a tab-separated file into string columns, quoting disabled.

    Args:
        path: the file.
        names: the column names of a file without a header; ``None`` reads the header line.

    Returns:
        One str column per header field, in file order (missing cells are ``""``).

    Raises:
        DataError: the file does not exist, cannot be read or parsed, or has no header.
    """
    path = Path(path)
    try:
        return pd.read_csv(
            path,
            sep="\t",
            header=None if names else "infer",
            names=names,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            encoding="utf-8",
        )
    except FileNotFoundError as e:
        raise DataError(f"{path.name}: file not found ({path})") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path.name}: empty file (no header)") from e
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path.name}: cannot read ({e})") from e


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str], source: str) -> None:
    """Raise :class:`DataError` naming ``source`` and the first of ``columns`` absent from ``frame``."""
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{source}: missing column {column!r}")


def to_float(values: pd.Series, source: str, column: str) -> pd.Series:
    """Parse a str column as float (``""`` becomes NaN); a non-numeric cell is a :class:`DataError`."""
    parsed = pd.to_numeric(values.replace("", None), errors="coerce").astype(float)
    bad = parsed.isna() & values.notna() & (values != "")
    if bad.any():
        first = values[bad].iloc[0]
        raise DataError(f"{source}: column {column!r} has a non-numeric value {first!r}")
    return parsed


def check_tables(
    items: pd.DataFrame, interactions: pd.DataFrame, *, items_source: str, inter_source: str
) -> None:
    """Check the canonical invariants shared by all loaders.

    Args:
        items: the item table.
        interactions: the interaction table.
        items_source: the file name to quote in errors about items.
        inter_source: the file name to quote in errors about interactions.

    Raises:
        DataError: a column is missing, there are no interactions, an item id repeats, or an
            interaction refers to an item absent from the item table.
    """
    require_columns(items, ITEM_COLUMNS, items_source)
    require_columns(interactions, INTERACTION_COLUMNS, inter_source)
    if len(interactions) == 0:
        raise DataError(f"{inter_source}: no interactions (empty dataset)")
    duplicated = items["item_id"][items["item_id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{items_source}: item id {duplicated.iloc[0]!r} appears more than once")
    unknown = ~interactions["item_id"].isin(items["item_id"])
    if unknown.any():
        examples = sorted(set(interactions.loc[unknown, "item_id"]))[:3]
        raise DataError(
            f"{inter_source}: {int(unknown.sum())} interactions refer to item ids absent from "
            f"{items_source}, e.g. {examples}"
        )
