"""Train / valid / test splits of next-item samples.

- :func:`temporal_split` is R²ec's global temporal split: all samples of all users on one time line,
  cut by target time, so no test target happens before a training target.
- :func:`leave_one_out_split` is RecBole's per-user leave-one-out.

Both keep every sample in exactly one split and return frames with a fresh 0..n-1 index.
"""

from __future__ import annotations

import math

import pandas as pd

from rrec.data.tables import require_columns

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")


def _positions(samples: pd.DataFrame) -> pd.Series:
    """The ``position`` column, or each user's 0-based row order when samples have none."""
    if "position" in samples.columns:
        return samples["position"]
    return samples.groupby("user_id", sort=False).cumcount()


def temporal_split(
    samples: pd.DataFrame, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, pd.DataFrame]:
    """Split samples globally by target time (R²ec, 80/10/10).

    Samples are sorted by (``timestamp``, ``user_id`` as a string, ``position``), a total order, and
    cut at ``floor(n * f_train)`` and ``floor(n * (f_train + f_valid))`` (plus 1e-9 against float
    error), so the test split gets the rounding remainder.

    Args:
        samples: :func:`rrec.data.build_samples` output (needs ``user_id`` and ``timestamp``).
        fractions: (train, valid, test) shares, non-negative, summing to 1.

    Returns:
        ``{"train", "valid", "test"}`` -> samples in time order.

    Raises:
        ValueError: the fractions are invalid, or a sample has no timestamp.

    Example:
        n = 99,057 samples (ML-100K, H = 20): train = floor(79,245.6) = 79,245, valid ends at
        floor(89,151.3) = 89,151 (9,906 samples), test = 99,057 - 89,151 = 9,906.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    require_columns(samples, ["user_id", "timestamp"], "samples")
    if samples["timestamp"].isna().any():
        raise ValueError("temporal_split needs a timestamp on every sample; use leave_one_out_split")
    keyed = samples.assign(_position=_positions(samples).to_numpy(), _user=samples["user_id"].astype(str))
    ordered = keyed.sort_values(["timestamp", "_user", "_position"], kind="stable")
    ordered = ordered.drop(columns=["_position", "_user"]).reset_index(drop=True)
    n = len(ordered)
    cut_train = math.floor(n * fractions[0] + 1e-9)
    cut_valid = math.floor(n * (fractions[0] + fractions[1]) + 1e-9)
    return {
        "train": ordered.iloc[:cut_train].reset_index(drop=True),
        "valid": ordered.iloc[cut_train:cut_valid].reset_index(drop=True),
        "test": ordered.iloc[cut_valid:].reset_index(drop=True),
    }


def leave_one_out_split(samples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split each user's samples: last target -> test, second last -> valid, the rest -> train.

    "Last" is the largest ``position`` (row order within the user when there is no ``position``
    column). A user with a single sample contributes only a test sample; with two, a valid and a
    test sample (RecBole's ``LS`` split with ``valid_and_test``).

    Args:
        samples: :func:`rrec.data.build_samples` output.

    Returns:
        ``{"train", "valid", "test"}`` -> samples, each in the input's row order.

    Example:
        A user with samples at positions 1, 2, 3, 4 gives train = {1, 2}, valid = {3}, test = {4}.
    """
    require_columns(samples, ["user_id"], "samples")
    samples = samples.reset_index(drop=True)
    keyed = samples.assign(_position=_positions(samples).to_numpy())
    # Rank from the end within each user: 0 = last target, 1 = second last.
    from_end = (
        keyed.sort_values(["_position"], kind="stable")
        .groupby("user_id", sort=False)
        .cumcount(ascending=False)
        .reindex(keyed.index)
        .to_numpy()
    )
    masks = {"train": from_end >= 2, "valid": from_end == 1, "test": from_end == 0}
    return {name: samples[mask].reset_index(drop=True) for name, mask in masks.items()}
