"""Checking what callers pass in: external ids, item vectors and query vectors.

External ids are either all ``int`` (non-negative, below 2**63, so ``-1`` can mark padding in an int64
result) or all ``str``; numpy scalars are turned into the matching Python type. Vectors become C-contiguous
float32 arrays of shape ``(n, dim)`` with every entry finite. Shapes: N items, D = ``dim``, Q queries.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from item_index.errors import ItemIndexError

Id = int | str
INT64_MAX = 2**63 - 1


def show(values: Iterable[Any], limit: int = 5) -> str:
    """``[a, b, c, ...]`` with at most ``limit`` entries, for error messages."""
    values = list(values)
    head = ", ".join(repr(v) for v in values[:limit])
    return f"[{head}{', ...' if len(values) > limit else ''}] ({len(values)} in all)"


def id_type_of(value: Any) -> str | None:
    """``"int"`` or ``"str"`` for a valid external id, else ``None`` (bool is not an int id here)."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return "int" if 0 <= int(value) <= INT64_MAX else None
    if isinstance(value, str):
        return "str"
    return None


def normalize_id(value: Any) -> Id:
    """A numpy scalar id as the matching Python ``int`` / ``str``; other values unchanged."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def as_ids(ids: Any, id_type: str | None, what: str) -> tuple[list[Id], str | None]:
    """Check a sequence of external ids and return them as Python values with their common type.

    Args:
        ids: a list, tuple, range or 1-D numpy array of ids (not a bare ``str``).
        id_type: the index's id type (``"int"``, ``"str"``) or ``None`` while it holds no ids yet.
        what: the calling method, for messages (``"add"``, ``"remove"``...).

    Returns:
        ``(ids, id_type)``: the ids as a list of ``int`` or ``str``, and their type (``id_type`` if given).

    Raises:
        ItemIndexError: a bare string, an id that is neither a non-negative int nor a str, mixed types,
            or a type other than the index's.
    """
    if isinstance(ids, str | bytes) or not hasattr(ids, "__len__"):
        raise ItemIndexError(f"{what}: ids must be a sequence (list, tuple, array), got {type(ids).__name__}")
    out = [normalize_id(v) for v in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
    types = {id_type_of(v) for v in out}
    if None in types:
        bad = [v for v in out if id_type_of(v) is None]
        raise ItemIndexError(f"{what}: ids must be non-negative ints (< 2**63) or strs; bad ids {show(bad)}")
    if len(types) > 1:
        raise ItemIndexError(f"{what}: mixed int and str ids are not allowed: {show(out)}")
    found = types.pop() if types else id_type
    if id_type is not None and found != id_type:
        bad = [v for v in out if id_type_of(v) != id_type]
        raise ItemIndexError(f"{what}: this index holds {id_type} ids; got {found} ids {show(bad)}")
    return out, found


def duplicates(ids: list[Id]) -> list[Id]:
    """The ids that occur more than once in ``ids``, each listed once, in first-seen order."""
    seen: set[Id] = set()
    dup: dict[Id, None] = {}
    for v in ids:
        if v in seen:
            dup[v] = None
        seen.add(v)
    return list(dup)


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as a numpy array on the CPU."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(x)


def as_vectors(
    vectors: Any, dim: int, rows: int | None, what: str, labels: list[Id] | None = None
) -> np.ndarray:
    """Check item or query vectors: float32, C-contiguous, shape ``(rows, dim)``, all finite.

    Args:
        vectors: numpy array, torch tensor or nested list of shape (N, D).
        dim: the index's D.
        rows: the required N (the number of ids), or ``None`` for any N >= 1.
        what: the calling method, for messages.
        labels: the ids of the rows, to name them when a row holds NaN or inf (row numbers otherwise).

    Returns:
        (N, D) float32 array (a copy when the input was not already float32 and contiguous).
    """
    try:
        arr = to_numpy(vectors)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ItemIndexError(f"{what}: vectors could not be read as a float32 array: {err}") from err
    want = f"({rows if rows is not None else 'n'}, {dim})"
    if arr.ndim != 2 or arr.shape[1] != dim or (rows is not None and arr.shape[0] != rows):
        raise ItemIndexError(f"{what}: vectors have shape {tuple(arr.shape)}; expected {want} (dim={dim})")
    if rows is None and arr.shape[0] == 0:
        raise ItemIndexError(f"{what}: got 0 query rows; expected shape {want}")
    finite = np.isfinite(arr).all(axis=1)  # (N,)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        named = [labels[i] for i in bad] if labels is not None else bad
        kind = "ids" if labels is not None else "rows"
        raise ItemIndexError(f"{what}: vectors for {kind} {show(named)} contain NaN or inf")
    return arr
