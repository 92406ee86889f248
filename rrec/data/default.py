"""The default prepared dataset (MovieLens-100K, R²ec's temporal 80/10/10 split, 20 history items),
prepared once into the cache and reused, and the prepare-or-reuse rule behind it and ``rrec prepare``.

A prepared folder records the options it was built with in ``prepare.json``. A folder holding the same
record is reused; one holding another record is an error, never a silent reuse (``force`` rebuilds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rrec import assets
from rrec.config import ConfigError
from rrec.data.prepared import PreparedData, format_stats, prepare, save_prepared, split_stats
from rrec.data.recbole import load_movielens

RECORD_FILE = "prepare.json"
DEFAULT_RECORD = {"dataset": "ml-100k", "split": "temporal", "max_history": 20}


class PreparedMismatchError(ConfigError):
    """A prepared folder was built with other options than the ones asked for."""


def prepare_once(out: Path, record: dict, build: Callable[[], PreparedData], force: bool = False) -> Path:
    """``out`` prepared by ``build()`` and stamped with ``record``, or reused when it already holds
    ``record``; prints the statistics table either way.

    Raises:
        PreparedMismatchError: ``out`` was prepared with another record (and ``force`` is False).
    """
    done = out / RECORD_FILE
    if done.exists() and not force:
        previous = json.loads(done.read_text())
        if previous != record:
            raise PreparedMismatchError(
                f"{out} was prepared with {previous}, not {record}; pass force=true to rebuild"
            )
        print(f"reusing {out} (force=true rebuilds it)")
        print(format_stats(json.loads((out / "stats.json").read_text())))
        return out
    print(f"preparing {record} -> {out}", flush=True)
    data = build()
    save_prepared(data, out)
    done.write_text(json.dumps(record, indent=2) + "\n")
    print(format_stats(split_stats(data)))
    return out


def default_prepared_dir() -> Path:
    """``<cache>/prepared/ml-100k-temporal``: where ``rrec prepare`` with no options writes too."""
    return assets.cache_dir() / "prepared" / "ml-100k-temporal"


def ensure_default() -> Path:
    """The default prepared dataset's folder, fetching MovieLens-100K and preparing it on first use."""

    def build() -> PreparedData:
        items, interactions = load_movielens(assets.fetch_dataset("ml-100k"), "ml-100k")
        return prepare(items, interactions, name="ml-100k", split="temporal", max_history=20)

    return prepare_once(default_prepared_dir(), DEFAULT_RECORD, build)
