"""Classic sequential baselines (most-popular, SASRec, GRU4Rec), scored with :mod:`rrec.metrics`.

Plain modules and functions; the loop that ties them to a prepared dataset is
``recipes/train_baseline.py``.
"""

from __future__ import annotations

from rrec.baselines.gru4rec import GRU4Rec
from rrec.baselines.popularity import Popularity, popularity_counts
from rrec.baselines.sasrec import SASRec
from rrec.baselines.train import EncodedSamples, encode_samples, rank_encoded, score_split, train_sequential

__all__ = [
    "EncodedSamples",
    "GRU4Rec",
    "Popularity",
    "SASRec",
    "encode_samples",
    "popularity_counts",
    "rank_encoded",
    "score_split",
    "train_sequential",
]
