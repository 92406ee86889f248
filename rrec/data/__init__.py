"""Data layer: loaders into canonical tables, next-item samples, splits and prepared datasets.

Canonical tables (see :mod:`rrec.data.tables`): ``items`` (``item_id``, ``title``, text attributes)
and ``interactions`` (``user_id``, ``item_id``, ``rating``, ``timestamp``). Every loader error is a
:class:`DataError` naming the file.
"""

from __future__ import annotations

from rrec.data.amazon18 import load_amazon18_cds, load_amazon18_scientific
from rrec.data.amazon2023 import load_amazon2023
from rrec.data.default import ensure_default
from rrec.data.prepared import (
    PreparedData,
    format_stats,
    load_prepared,
    prepare,
    save_prepared,
    split_stats,
)
from rrec.data.recbole import load_movielens, load_recbole_atomic
from rrec.data.samples import build_samples, like_dislike_samples, rating_samples
from rrec.data.splits import leave_one_out_split, temporal_split
from rrec.data.tables import DataError
from rrec.data.text import clean_html, move_trailing_article

__all__ = [
    "DataError",
    "PreparedData",
    "build_samples",
    "clean_html",
    "ensure_default",
    "format_stats",
    "leave_one_out_split",
    "like_dislike_samples",
    "load_amazon18_cds",
    "load_amazon18_scientific",
    "load_amazon2023",
    "load_movielens",
    "load_prepared",
    "load_recbole_atomic",
    "move_trailing_article",
    "prepare",
    "rating_samples",
    "save_prepared",
    "split_stats",
    "temporal_split",
]
