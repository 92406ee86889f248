"""Any pair of tables (interactions + item texts) into the canonical tables, with errors that point at a cell.

Formats, by the path: ``.csv``, ``.tsv`` / ``.tab``, ``.parquet`` / ``.pq``, ``.jsonl`` / ``.ndjson``
(JSON lines), or a folder written by ``datasets``' ``save_to_disk`` (one split, or a ``DatasetDict`` with
exactly one). CSV and TSV are read as text; every format then goes through the same conversion, so the
same data in any of them gives the same canonical tables (ids are ``str``: ``7`` and ``"7"`` agree, a float
column of whole numbers reads ``7.0`` as ``"7"``).

Column mapping (:class:`Columns`): ``user_col``, ``item_col`` (the item id, in both files), ``time_col``
(numbers: seconds or any increasing count), optional ``rating_col``, and ``text_cols``: the item text. The
canonical ``title`` is the non-empty values of ``text_cols``, stripped, in order, joined by ``text_join``
(default ``" | "``). A column left ``None`` is guessed from the obvious names (``GUESSES``); every choice is
reported in :attr:`TableData.notes`. Item columns named like the prompts' attributes (``year``,
``genres``, ``category``, ``brand``, ``description``) and not used as text are kept as attributes.

Errors (:class:`DataError`) name the file, the row and the column. Rows count data rows from 1 (the header
is not a row; in a CSV or TSV, row r is on line r + 1): a missing column, an empty id, a non-numeric time
or rating, a repeated item id, an interaction with an item absent from the items file, an item with no
text. Nothing is written here, so a failure leaves no trace.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rrec.data.tables import DataError

GUESSES: dict[str, tuple[str, ...]] = {
    "user_col": ("user_id", "userId", "user", "uid", "reviewerID", "customer_id"),
    "item_col": ("item_id", "itemId", "movieId", "item", "iid", "parent_asin", "asin", "product_id"),
    "time_col": ("timestamp", "time", "ts", "unixReviewTime", "unix_time", "date"),
    "rating_col": ("rating", "score", "stars", "overall"),
    "text_cols": ("title", "name", "text", "description"),
}
ATTRIBUTES: tuple[str, ...] = ("year", "genres", "category", "brand", "description")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
SUFFIXES |= {".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Columns:
    """Which columns hold what (``None``: guessed from ``GUESSES``; ``rating_col=""``: no ratings)."""

    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    text_cols: list[str] | None = None
    text_join: str = " | "


@dataclass
class TableData:
    """The canonical ``items`` and ``interactions`` (``rrec.data.tables``) and what was chosen, in words."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def table_format(path: str | Path) -> str:
    """``"csv"``, ``"tsv"``, ``"parquet"``, ``"jsonl"`` or ``"datasets"`` (a folder), from the path."""
    path = Path(path)
    if path.is_dir():
        return "datasets"
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path.name}: unknown table format {path.suffix!r}; expected .csv, .tsv, .parquet, .jsonl "
            "or a folder saved by datasets' save_to_disk"
        )
    return kind


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one table in any supported format; the index is 0..n-1 (row r + 1 in errors).

    Raises:
        DataError: the path does not exist, the format is unknown, or the file cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path.name}: file not found ({path})")
    kind = table_format(path)
    try:
        if kind in ("csv", "tsv"):
            sep = "," if kind == "csv" else "\t"
            quoting = csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=quoting)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = _read_saved_dataset(path)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path.name}: cannot read as {kind} ({e})") from e
    return frame.reset_index(drop=True)


def _read_saved_dataset(path: Path) -> pd.DataFrame:
    import datasets  # optional: only for folders saved by save_to_disk

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path.name}: not a folder saved by datasets' save_to_disk ({e})") from e
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(f"{path.name}: a DatasetDict with splits {list(loaded)}; save one split")
        loaded = next(iter(loaded.values()))
    return loaded.to_pandas()


def _pick(frame: pd.DataFrame, source: str, key: str, given: str | None, notes: list[str]) -> str:
    """The column for ``key``: ``given`` (which must exist) or the first of ``GUESSES[key]`` present."""
    if given is not None:
        _require(frame, source, given, key)
        return given
    for name in GUESSES[key]:
        if name in frame.columns:
            notes.append(f"{source}: {key}={name!r} (guessed)")
            return name
    raise DataError(
        f"{source}: no column for {key} (looked for {list(GUESSES[key])}); columns: {list(frame.columns)}; "
        f"pass {key}=<column>"
    )


def _require(frame: pd.DataFrame, source: str, column: str, key: str) -> None:
    if column not in frame.columns:
        raise DataError(f"{source}: missing column {column!r} ({key}); columns: {list(frame.columns)}")


def _text(values: pd.Series) -> pd.Series:
    """Cells as stripped str: missing cells are ``""``; whole-number floats lose their ``.0``."""
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")
    return values.map(lambda v: "" if _missing(v) else str(v).strip())


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _ids(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    ids = _text(frame[column])
    empty = ids.eq("")
    if empty.any():
        raise DataError(f"{source}: row {int(empty.idxmax()) + 1}, column {column!r}: empty id")
    return ids


def _numbers(frame: pd.DataFrame, column: str, source: str, required: bool) -> pd.Series:
    values = frame[column]
    cells = _text(values)
    parsed = pd.to_numeric(cells.where(cells != "", None), errors="coerce").astype(float)
    bad = parsed.isna() & (cells != "" if not required else True)
    if bad.any():
        row = int(bad.idxmax())
        what = "empty" if cells[row] == "" else f"not a number: {cells[row]!r}"
        raise DataError(f"{source}: row {row + 1}, column {column!r}: {what}")
    return parsed


def load_table_dataset(
    interactions_path: str | Path, items_path: str | Path, columns: Columns = Columns()
) -> TableData:
    """Read an interactions table and an items table into the canonical tables (see the module docstring).

    Args:
        interactions_path: one row per event: user, item, time (and rating).
        items_path: one row per item: its id and its text columns.
        columns: the column mapping; ``None`` fields are guessed.

    Returns:
        ``TableData``: items (``item_id``, ``title``, kept attributes), interactions in file order, notes.

    Raises:
        DataError: naming the file, the row and the column (see the module docstring).
    """
    inter_path, items_path = Path(interactions_path), Path(items_path)
    inter_src, items_src = inter_path.name, items_path.name
    inter, raw_items = read_table(inter_path), read_table(items_path)
    notes: list[str] = []
    user_col = _pick(inter, inter_src, "user_col", columns.user_col, notes)
    item_col = _pick(inter, inter_src, "item_col", columns.item_col, notes)
    time_col = _pick(inter, inter_src, "time_col", columns.time_col, notes)
    items_id_col = _pick(raw_items, items_src, "item_col", columns.item_col, notes)
    rating_col = columns.rating_col
    if rating_col is None:
        rating_col = next((c for c in GUESSES["rating_col"] if c in inter.columns), "")
        notes.append(f"{inter_src}: rating_col={rating_col!r} ({'guessed' if rating_col else 'none found'})")
    elif rating_col:
        _require(inter, inter_src, rating_col, "rating_col")
    text_cols = columns.text_cols
    if text_cols is None:
        text_cols = [_pick(raw_items, items_src, "text_cols", None, notes)]
    for column in text_cols:
        _require(raw_items, items_src, column, "text_cols")
    notes.append(f"{items_src}: item text = {text_cols} joined by {columns.text_join!r}")

    item_ids = _ids(raw_items, items_id_col, items_src)
    repeated = item_ids.duplicated()
    if repeated.any():
        row = int(repeated.idxmax())
        first = int(item_ids.eq(item_ids[row]).idxmax())
        raise DataError(
            f"{items_src}: row {row + 1}, column {items_id_col!r}: item id {item_ids[row]!r} repeats "
            f"row {first + 1}"
        )
    parts = pd.DataFrame({c: _text(raw_items[c]) for c in text_cols})
    titles = [columns.text_join.join(p for p in row if p) for row in parts.itertuples(index=False)]
    items = pd.DataFrame({"item_id": item_ids, "title": titles})
    empty = items["title"].eq("")
    if empty.any():
        row = int(empty.idxmax())
        raise DataError(
            f"{items_src}: row {row + 1}, columns {text_cols}: empty item text for {item_ids[row]!r}"
        )
    for name in ATTRIBUTES:
        if name in raw_items.columns and name not in text_cols:
            items[name] = _text(raw_items[name])

    events = pd.DataFrame(
        {
            "user_id": _ids(inter, user_col, inter_src),
            "item_id": _ids(inter, item_col, inter_src),
            "rating": _numbers(inter, rating_col, inter_src, False) if rating_col else float("nan"),
            "timestamp": _numbers(inter, time_col, inter_src, True),
        }
    )
    unknown = ~events["item_id"].isin(set(items["item_id"]))
    if unknown.any():
        row = int(unknown.idxmax())
        raise DataError(
            f"{inter_src}: row {row + 1}, column {item_col!r}: item id {events['item_id'][row]!r} is not in "
            f"{items_src} ({int(unknown.sum())} such rows)"
        )
    if len(events) == 0:
        raise DataError(f"{inter_src}: no rows (empty dataset)")
    return TableData(items=items, interactions=events, notes=notes)
