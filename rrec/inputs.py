"""Checks on what callers of ``ReasoningRecommender`` pass in: counts, batches of histories, finite tensors.

Each bad input is a ``ValueError`` naming it (``docs/bad_inputs.md`` lists every case with its test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import Tensor, isfinite


def positive_int(name: str, value) -> int:
    """``value`` when it is an int (Python or numpy, not ``bool``) >= 1, else a ``ValueError``."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def history_list(histories) -> list:
    """A batch of histories as a list: a list or tuple, a pandas Series (``df["history"]``, its values in
    order, the index ignored) or a 1-D numpy array. A bare ``str`` is refused (it is one id, not a batch)."""
    if isinstance(histories, str | bytes):
        raise ValueError(f"histories must be a list of histories, got {histories!r:.60}")
    if isinstance(histories, pd.Series | np.ndarray):
        return list(histories)
    if not isinstance(histories, Sequence):
        raise ValueError(f"histories must be a list of histories, got {type(histories).__name__}")
    return list(histories)


def check_finite(x: Tensor, what: str, labels: list | None = None) -> None:
    """ValueError naming the rows (or their ``labels``) of a 2-D ``x`` that hold NaN or inf."""
    bad = (~isfinite(x).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        named = [labels[i] for i in bad] if labels is not None else bad
        kind = "items" if labels is not None else "rows"
        raise ValueError(
            f"{what} contain NaN or inf at {kind} {named[:10]} ({len(bad)} in all): refusing to rank"
        )
