"""Turning a backend's candidates into ranked results: exclusions, score sign, tie-break, padding.

Shapes: Q queries, F candidates fetched per query, K results kept (K <= F).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from item_index.errors import ItemIndexError
from item_index.inputs import Id, normalize_id


def excluded_keys(exclude: list[Any] | None, n_queries: int, key_of: dict[Id, int]) -> list[set[int]]:
    """The internal keys to leave out for each query; ids not in ``key_of`` are ignored.

    Args:
        exclude: ``None`` or Q iterables of external ids (``None`` entries allowed).
        n_queries: Q.
        key_of: external id -> key of the live items.
    """
    if exclude is None:
        return [set() for _ in range(n_queries)]
    if isinstance(exclude, str | bytes) or len(exclude) != n_queries:
        raise ItemIndexError(f"search: exclude needs one entry per query ({n_queries}), got {exclude!r}")
    out = []
    for q, entry in enumerate(exclude):
        if isinstance(entry, str | bytes):
            raise ItemIndexError(f"search: exclude[{q}] must be a list of ids, got the string {entry!r}")
        keys = (key_of.get(normalize_id(i)) for i in (entry if entry is not None else ()))
        out.append({key for key in keys if key is not None})
    return out


def rank_candidates(
    dist: np.ndarray,
    keys: np.ndarray,
    rows_of: Callable[[np.ndarray], np.ndarray],
    metric: str,
    k: int,
    excluded: list[set[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first scores and store rows of the top ``k`` candidates that are found and not excluded.

    Args:
        dist: (Q, F) float32 FAISS distances (inner products for ``"ip"``, squared L2 for ``"l2"``).
        keys: (Q, F) int64 keys, ``-1`` where FAISS found nothing.
        rows_of: maps an array of valid keys to their store rows (insertion order).
        metric: ``"ip"`` or ``"l2"``; scores are ``dist`` or ``-dist`` so that higher is better.
        k: K.
        excluded: Q sets of keys to drop.

    Returns:
        ``(scores, rows)``: (Q, K) float32, -inf for padding, and (Q, K) int64 rows, -1 for padding.
        Equal scores are ordered by row, i.e. by insertion order.
    """
    keys = keys.copy()
    for q, ex in enumerate(excluded):
        if ex:
            keys[q, np.isin(keys[q], list(ex))] = -1
    found = keys >= 0  # (Q, F)
    score = np.where(found, dist if metric == "ip" else -dist, -np.inf).astype(np.float32)  # (Q, F)
    rows = np.where(found, rows_of(np.maximum(keys, 0)), np.iinfo(np.int64).max)  # (Q, F), padding last
    order = np.lexsort((rows, -score), axis=-1)[:, :k]  # (Q, min(K, F)) best score, then earliest row
    score = np.take_along_axis(score, order, axis=-1)
    rows = np.take_along_axis(rows, order, axis=-1)
    rows[rows == np.iinfo(np.int64).max] = -1
    pad = k - order.shape[1]
    return (
        np.pad(score, ((0, 0), (0, pad)), constant_values=-np.inf),
        np.pad(rows, ((0, 0), (0, pad)), constant_values=-1),
    )
