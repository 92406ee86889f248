"""Datasets in the D3/BIGRec file layout, found by format rather than by dataset name.

Two layouts of the same files:

nested (D3, BIGRec)
    ``<dir>/train/<name>.csv``, ``<dir>/valid/<name>.csv``, ``<dir>/test/<name>.csv`` and
    ``<dir>/info/<name>.txt``. ``name`` may be left out when ``info/`` holds one ``.txt``.
flat (the amazon18-cds folder)
    ``<dir>/items.txt``, ``<dir>/valid.csv``, ``<dir>/test.csv`` and optionally ``<dir>/train.csv``;
    the name is the folder's.

Each CSV row is one sample: ``user_id``, ``history_item_id`` (a Python list), ``item_id`` (the target),
``history_rating``, ``rating``, ``history_timestamp``, ``timestamp``, ``item_asin`` (and optionally
``item_asins``, the history's). The ``.txt`` holds ``title<TAB>item_id`` per item; titles are
HTML-cleaned and one that is only an HTML fragment becomes "Unknown title".

Where the train file exists, the three files are the three splits. Where it is absent (as in the published
amazon18-cds folder), the valid file is split by target time into train (the first ``1 - valid_fraction``)
and valid (the rest), and the notes say so. ``position`` counts from the user's first visible event (the
first row's history length, then +1 per later row, in file order train, valid, test).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rrec.data.prepared import PreparedData
from rrec.data.samples import SAMPLE_COLUMNS
from rrec.data.splits import temporal_split
from rrec.data.tables import DataError, read_tsv, require_columns
from rrec.data.text import clean_html

UNKNOWN_TITLE = "Unknown title"
SPLITS = ("train", "valid", "test")


@dataclass
class D3Files:
    """Where a D3 dataset's files are: ``splits`` maps train (when present), valid, test to CSV paths."""

    name: str
    items: Path
    splits: dict[str, Path]
    layout: str  # "nested" or "flat"


@dataclass
class D3Data:
    """A loaded D3 dataset and what the loader decided, in words."""

    data: PreparedData
    notes: list[str] = field(default_factory=list)


def find_d3_files(directory: str | Path, name: str | None = None) -> D3Files:
    """Locate a D3 dataset's files under ``directory`` (see the module docstring for both layouts).

    Raises:
        DataError: neither layout is there, ``name`` is ambiguous, or valid or test is missing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder")
    info = directory / "info"
    if info.is_dir():
        if name is None:
            names = sorted(p.stem for p in info.glob("*.txt"))
            if len(names) != 1:
                raise DataError(
                    f"{info}: {len(names)} .txt files {names[:5]}; pass the name (d3:<dir>:<name>)"
                )
            name = names[0]
        files = {s: directory / s / f"{name}.csv" for s in SPLITS}
        items, layout = info / f"{name}.txt", "nested"
    elif (directory / "items.txt").exists() or name is None:
        files = {s: directory / f"{s}.csv" for s in SPLITS}
        items, layout, name = directory / "items.txt", "flat", name or directory.name
    else:
        raise DataError(f"{directory}: no info/ folder (nested D3 layout) and no items.txt (flat layout)")
    for path in (items, files["valid"], files["test"]):
        if not path.exists():
            raise DataError(f"{path.name}: file not found ({path}; {layout} D3 layout)")
    splits = {s: p for s, p in files.items() if s != "train" or p.exists()}
    return D3Files(name=name, items=items, splits=splits, layout=layout)


def literal_lists(frame: pd.DataFrame, column: str, source: str) -> list[list]:
    """A column of Python-literal lists (``"[3, 0]"``) as lists."""
    try:
        return [list(ast.literal_eval(cell)) for cell in frame[column]]
    except (ValueError, SyntaxError, TypeError) as e:
        raise DataError(f"{source}: column {column!r} holds a value that is not a Python list ({e})") from e


def read_d3_csv(path: Path, max_history: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """One D3 CSV as samples (without ``position``), and the item id -> ASIN pairs it shows."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise DataError(f"{path.name}: file not found ({path})") from e
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path.name}: cannot read ({e})") from e
    columns = ["user_id", "history_item_id", "item_id", "history_rating", "rating", "history_timestamp"]
    require_columns(raw, [*columns, "timestamp", "item_asin"], path.name)
    if len(raw) == 0:
        raise DataError(f"{path.name}: no rows (empty dataset)")
    histories = [[str(i) for i in h][-max_history:] for h in literal_lists(raw, "history_item_id", path.name)]
    ratings = [[float(r) for r in h] for h in literal_lists(raw, "history_rating", path.name)]
    times = [[float(t) for t in h] for h in literal_lists(raw, "history_timestamp", path.name)]
    samples = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "history": histories,
            "history_ratings": [r[len(r) - len(h) :] for r, h in zip(ratings, histories, strict=True)],
            "history_timestamps": [t[len(t) - len(h) :] for t, h in zip(times, histories, strict=True)],
            "target": raw["item_id"].str.strip(),
            "rating": pd.to_numeric(raw["rating"]).astype(float),
            "timestamp": pd.to_numeric(raw["timestamp"]).astype(float),
        }
    )
    asins = dict(zip(samples["target"], raw["item_asin"], strict=True))
    if "item_asins" in raw.columns:
        for ids, codes in zip(histories, literal_lists(raw, "item_asins", path.name), strict=True):
            asins.update(zip(ids, codes[len(codes) - len(ids) :], strict=False))
    return samples, asins


def load_d3(
    directory: str | Path, name: str | None = None, *, max_history: int = 20, valid_fraction: float = 0.1
) -> D3Data:
    """Load a D3-layout dataset (see the module docstring).

    Args:
        directory: the folder holding either layout.
        name: the file stem of the nested layout (``None``: the only ``info/*.txt``).
        max_history: the most history items kept per sample.
        valid_fraction: without a train file, the share of the valid file (the latest targets) held out as
            valid; 0 keeps it all for training and leaves valid empty. Unused when train exists.

    Returns:
        ``D3Data``: ``PreparedData`` named after the files (train, valid, test) and notes.

    Raises:
        DataError: a file is missing or malformed, or a row names an item absent from the items file.
    """
    files = find_d3_files(directory, name)
    raw_items = read_tsv(files.items, names=["title", "item_id"])
    frames, asins = {}, {}
    for split, path in files.splits.items():
        frames[split], seen_asins = read_d3_csv(path, max_history)
        asins.update(seen_asins)
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"].str.strip(),
            "title": [clean_html(t) or UNKNOWN_TITLE for t in raw_items["title"]],
        }
    )
    items["asin"] = items["item_id"].map(asins).fillna("")
    items = items.astype(str)
    known = set(items["item_id"])
    for split, frame in frames.items():
        seen = set(frame["target"]).union(*frame["history"])
        if not seen <= known:
            absent = sorted(seen - known)[:3]
            raise DataError(f"{files.splits[split].name}: item ids absent from {files.items.name}: {absent}")
    order = [s for s in SPLITS if s in frames]
    both = pd.concat([frames[s].assign(_file=order.index(s)) for s in order], ignore_index=True)
    both = both.sort_values(["user_id", "_file", "timestamp"], kind="stable")
    first_history = both["history"].map(len).groupby(both["user_id"], sort=False).transform("first")
    both["position"] = (first_history + both.groupby("user_id", sort=False).cumcount()).astype(np.int64)
    both = both.sort_index()
    columns = list(SAMPLE_COLUMNS)
    rows = {s: both[both["_file"] == order.index(s)][columns].reset_index(drop=True) for s in order}
    shown = ", ".join(str(p.relative_to(p.parents[files.layout == "nested"])) for p in files.splits.values())
    notes = [f"{files.name}: {files.layout} D3 layout, {shown} + {files.items.name}"]
    if "train" in rows:
        splits = rows
    else:
        parts = temporal_split(rows["valid"], (1.0 - valid_fraction, valid_fraction, 0.0))
        splits = {"train": parts["train"], "valid": parts["valid"], "test": rows["test"]}
        notes.append(
            f"no train file: the valid file is split by target time into train (first "
            f"{1 - valid_fraction:.0%}) and valid (last {valid_fraction:.0%})"
        )
    return D3Data(PreparedData(name=files.name, items=items, splits=splits), notes)
