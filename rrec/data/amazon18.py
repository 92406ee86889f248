"""Loaders for the two Amazon Reviews 2018 benchmarks shipped as evaluation data (``shared/data``).

Both come already split, so they load straight into :class:`rrec.data.PreparedData` whose samples
have :func:`rrec.data.build_samples`'s columns.

amazon18-scientific (UniSRec processing, leave-one-out)
    Item and user ids are the files' integer indices as str; an item's ``title``, ``category`` and
    ``brand`` are parsed from ``Scientific.text`` ("title. category path. brand. "), ``asin`` is kept.
    The 24 titles that are the scraped breadcrumb "Industrial & Scientific />" become "Unknown
    title". Each ``.inter`` row is a sample; train holds every prefix of each training sequence. The
    files have no ratings or times: those columns are NaN. ``position`` is the length of the row's
    full history, i.e. the target's index in the user's sequence (exact up to the files' 50-item
    cap, which 3 users exceed: their sequences hold 43 more events than the test rows show).
amazon18-cds (D3/BIGRec processing, global temporal split)
    The original train file is not available: ``valid.csv`` is split by target time into train (the
    first ``1 - valid_fraction``) and valid (the last ``valid_fraction``), and ``test.csv`` is test.
    Item ids are the integer ``item_id`` as str; titles come from ``items.txt`` matched by id and are
    HTML-cleaned; the 29 titles that are only an HTML fragment become "Unknown title". ``asin`` is
    taken from the CSV rows where the item appears ("" otherwise). ``position`` counts from the
    user's first visible event (the first row's history length, then +1 per later row).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rrec.data.d3 import UNKNOWN_TITLE, load_d3
from rrec.data.prepared import PreparedData
from rrec.data.samples import SAMPLE_COLUMNS
from rrec.data.tables import DataError, read_tsv, require_columns
from rrec.data.text import clean_html

# 24 Scientific items have this scraped breadcrumb instead of a title.
_SCIENTIFIC_JUNK_TITLE = "Industrial & Scientific />"
_CATEGORY_ROOT = ". Industrial & Scientific"


def parse_scientific_text(text: str) -> tuple[str, str, str]:
    """Split a ``Scientific.text`` cell "title. category. brand. " into its three parts.

    The category path always starts with "Industrial & Scientific" when present, which anchors the
    split even when a title contains ". ".

    Example:
        >>> parse_scientific_text("Gorilla Glue, 8 ounce. Industrial & Scientific Tapes. Gorilla. ")
        ('Gorilla Glue, 8 ounce', 'Industrial & Scientific Tapes', 'Gorilla')
        >>> parse_scientific_text("Schwinn Tricycle, 12-Inch Wheel. . Schwinn. ")
        ('Schwinn Tricycle, 12-Inch Wheel', '', 'Schwinn')
    """
    body = text.strip().removesuffix(".")
    if _CATEGORY_ROOT in body:
        title, rest = body.split(_CATEGORY_ROOT, 1)
        category, _, brand = ("Industrial & Scientific" + rest).partition(". ")
        return title.strip(), category.strip(), brand.strip()
    title, _, brand = body.rpartition(". ")
    return title.removesuffix(". ").removesuffix(".").strip(), "", brand.strip()


def _scientific_title(raw: str) -> str:
    title = clean_html(raw)
    return UNKNOWN_TITLE if title in ("", _SCIENTIFIC_JUNK_TITLE) else title


def _samples(
    users: list[str], histories: list[list[str]], targets: list[str], positions: list[int], max_history: int
) -> pd.DataFrame:
    cut = [h[-max_history:] for h in histories]
    nan_lists = [[float("nan")] * len(h) for h in cut]
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=str),
            "position": np.asarray(positions, dtype=np.int64),
            "history": cut,
            "history_ratings": nan_lists,
            "history_timestamps": [list(h) for h in nan_lists],
            "target": pd.Series(targets, dtype=str),
            "rating": np.full(len(users), np.nan),
            "timestamp": np.full(len(users), np.nan),
        },
        columns=list(SAMPLE_COLUMNS),
    )


def load_amazon18_scientific(directory: str | Path, *, max_history: int = 20) -> PreparedData:
    """Load amazon18-scientific (see the module docstring).

    Args:
        directory: the folder with ``Scientific.{train,valid,test}.inter``, ``.text``, ``.item2index``.
        max_history: the most history items kept per sample (the files hold up to 50).

    Returns:
        ``PreparedData`` named ``"amazon18-scientific"``.

    Raises:
        DataError: a file is missing or malformed, or a row names an item without an index.
    """
    directory = Path(directory)
    index_path, text_path = directory / "Scientific.item2index", directory / "Scientific.text"
    index = read_tsv(index_path, names=["asin", "item_id"])
    text = read_tsv(text_path).set_axis(["asin", "text"], axis=1)
    texts = dict(zip(text["asin"], text["text"], strict=True))
    missing = sorted(set(index["asin"]) - set(texts))
    if missing:
        raise DataError(f"{text_path.name}: no text for {len(missing)} items, e.g. {missing[:3]}")
    parts = [parse_scientific_text(texts[asin]) for asin in index["asin"]]
    items = pd.DataFrame(
        {
            "item_id": index["item_id"].str.strip(),
            "title": [_scientific_title(p[0]) for p in parts],
            "category": [p[1] for p in parts],
            "brand": [clean_html(p[2]) for p in parts],
            "asin": index["asin"],
        }
    ).astype(str)
    known = set(items["item_id"])
    splits = {}
    for split in ("train", "valid", "test"):
        path = directory / f"Scientific.{split}.inter"
        raw = read_tsv(path)
        raw = raw.set_axis([c.partition(":")[0] for c in raw.columns], axis=1)
        require_columns(raw, ["user_id", "item_id_list", "item_id"], path.name)
        if len(raw) == 0:
            raise DataError(f"{path.name}: no rows (empty dataset)")
        histories = [h.split() for h in raw["item_id_list"]]
        targets = raw["item_id"].str.strip().tolist()
        unknown = {i for h in histories for i in h} | set(targets)
        if not unknown <= known:
            raise DataError(
                f"{path.name}: item ids absent from {index_path.name}: {sorted(unknown - known)[:3]}"
            )
        positions = [len(h) for h in histories]
        splits[split] = _samples(
            raw["user_id"].str.strip().tolist(), histories, targets, positions, max_history
        )
    return PreparedData(name="amazon18-scientific", items=items, splits=splits)


def load_amazon18_cds(
    directory: str | Path, *, max_history: int = 20, valid_fraction: float = 0.1
) -> PreparedData:
    """Load amazon18-cds: the flat D3 layout of :func:`rrec.data.d3.load_d3`, named ``"amazon18-cds"``.

    Args:
        directory: the folder with ``items.txt``, ``valid.csv``, ``test.csv``.
        max_history: the most history items kept per sample (the files hold up to 10).
        valid_fraction: the share of ``valid.csv`` (the latest targets) held out as valid; 0 keeps it
            all for training and leaves valid empty.

    Returns:
        ``PreparedData`` named ``"amazon18-cds"`` with train, valid and test.

    Raises:
        DataError: a file is missing or malformed, or a row names an item absent from ``items.txt``.
    """
    data = load_d3(directory, max_history=max_history, valid_fraction=valid_fraction).data
    data.name = "amazon18-cds"
    return data
