"""Next-item samples from an interaction log, and the task views built on them.

A *sample* is one interaction of a user (the target) with the interactions before it (the history).
Letters: H the maximum history length.

Columns of :func:`build_samples` (one row per sample):

- ``user_id`` (str), ``position`` (int: the target's 0-based index in the user's sorted sequence);
- ``history``, ``history_ratings``, ``history_timestamps``: lists of the previous <= H items, their
  ratings and timestamps, oldest first;
- ``target`` (str), ``rating`` (float), ``timestamp`` (float): the target interaction.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from rrec.data.tables import INTERACTION_COLUMNS, DataError, require_columns

SAMPLE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "position",
    "history",
    "history_ratings",
    "history_timestamps",
    "target",
    "rating",
    "timestamp",
)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small objects.

    Each allocation burst otherwise triggers collections that walk every live object: building the
    3 x 1M history lists of ML-1M is 15x slower with the collector on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cut_lists(values: list, starts: Sequence[int], ends: Sequence[int]) -> list[list]:
    """``[values[a:b] for a, b in zip(starts, ends)]``, with the garbage collector paused."""
    with paused_gc():
        return [values[a:b] for a, b in zip(starts, ends, strict=True)]


def build_samples(interactions: pd.DataFrame, max_history: int = 20) -> pd.DataFrame:
    """Turn each user's interactions into next-item samples with truncated histories.

    Each user's interactions are sorted by (timestamp, row order in ``interactions``), so ties keep
    file order; NaN timestamps sort last (a dataset without timestamps keeps file order). Every
    position i >= 1 of that sequence is a sample whose history is positions max(0, i - H) .. i - 1.
    A user with n interactions gives n - 1 samples.

    Args:
        interactions: the canonical interaction table.
        max_history: H, the most history items kept (the most recent ones). R²ec uses 20.

    Returns:
        The samples (columns in ``SAMPLE_COLUMNS``), users in order of first appearance in
        ``interactions``, each user's samples by position.

    Example:
        User "u" with (item, timestamp) = (a, 3), (b, 1), (c, 3) and H = 1 sorts to b, a, c (a before
        c: same time, earlier row) and gives two samples: history [b] -> target a, history [a] ->
        target c.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    require_columns(interactions, INTERACTION_COLUMNS, "interactions")
    user_codes, _ = pd.factorize(interactions["user_id"])
    timestamps = interactions["timestamp"].to_numpy(dtype=float)
    # np.lexsort sorts by the last key first: user, then timestamp (NaN last), then row order.
    order = np.lexsort((np.arange(len(interactions)), timestamps, user_codes))
    users = interactions["user_id"].to_numpy(dtype=object)[order].tolist()
    items = interactions["item_id"].to_numpy(dtype=object)[order].tolist()
    ratings = interactions["rating"].to_numpy(dtype=float)[order].tolist()
    times = timestamps[order].tolist()

    codes = user_codes[order]
    is_start = np.ones(len(codes), dtype=bool)
    is_start[1:] = codes[1:] != codes[:-1]
    starts = np.maximum.accumulate(np.where(is_start, np.arange(len(codes)), 0))
    positions = np.arange(len(codes)) - starts
    rows = np.flatnonzero(positions >= 1).tolist()
    lows = np.maximum(starts, np.arange(len(codes)) - max_history)[rows].tolist()
    return pd.DataFrame(
        {
            "user_id": pd.Series([users[i] for i in rows], dtype=str),
            "position": positions[rows].astype(np.int64),
            "history": cut_lists(items, lows, rows),
            "history_ratings": cut_lists(ratings, lows, rows),
            "history_timestamps": cut_lists(times, lows, rows),
            "target": pd.Series([items[i] for i in rows], dtype=str),
            "rating": np.asarray([ratings[i] for i in rows], dtype=float),
            "timestamp": np.asarray([times[i] for i in rows], dtype=float),
        },
        columns=list(SAMPLE_COLUMNS),
    )


def rating_samples(interactions: pd.DataFrame, *, max_history: int = 20) -> pd.DataFrame:
    """Samples for rating prediction: the rated interactions only, as :func:`build_samples` rows.

    Unrated interactions (NaN rating) are dropped before the samples are built, so every history
    rating and every target ``rating`` is a number.

    Args:
        interactions: the canonical interaction table.
        max_history: H, the most history items kept.

    Returns:
        ``build_samples`` columns; ``rating`` is the value to predict.
    """
    rated = interactions[interactions["rating"].notna()]
    return build_samples(rated, max_history=max_history)


def like_dislike_samples(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    *,
    history: int = 10,
    like_threshold: float = 4.0,
) -> pd.DataFrame:
    """Samples for like/dislike prediction (the TALLRec / CoLLM task).

    Unrated interactions are dropped; every rated interaction with at least one earlier rated
    interaction of the same user is a sample. An item is liked when its rating >= ``like_threshold``
    (CoLLM's ML-1M convention: rating >= 4).

    Args:
        interactions: the canonical interaction table.
        items: the item table, for the titles.
        history: the most history items kept (TALLRec uses 10).
        like_threshold: the smallest rating that counts as a like.

    Returns:
        One row per sample: ``user_id``, ``position``, ``history``, ``history_titles``,
        ``history_ratings``, ``history_liked`` (list[bool]), ``target``, ``target_title``, ``rating``,
        ``label`` (bool: ``rating >= like_threshold``), ``timestamp``.

    Raises:
        DataError: an interaction refers to an item absent from ``items``.

    Example:
        Ratings 5, 2, 4 in time order with threshold 4 give two samples: history liked [True] with
        label False (the 2), then history liked [True, False] with label True (the 4).
    """
    titles = dict(zip(items["item_id"], items["title"], strict=True))
    unknown = ~interactions["item_id"].isin(titles.keys())
    if unknown.any():
        raise DataError(f"interactions: item {interactions['item_id'][unknown].iloc[0]!r} not in items")
    samples = rating_samples(interactions, max_history=history)
    return pd.DataFrame(
        {
            "user_id": samples["user_id"],
            "position": samples["position"],
            "history": samples["history"],
            "history_titles": [[titles[i] for i in h] for h in samples["history"]],
            "history_ratings": samples["history_ratings"],
            "history_liked": [[r >= like_threshold for r in h] for h in samples["history_ratings"]],
            "target": samples["target"],
            "target_title": samples["target"].map(titles).astype(str),
            "rating": samples["rating"],
            "label": samples["rating"] >= like_threshold,
            "timestamp": samples["timestamp"],
        }
    )
