"""Prepare a dataset once: load it into the canonical tables, build next-item samples, split, save.

    rrec prepare [config.yaml] [key=value ...]
    rrec prepare dataset=ml-1m split=loo

``dataset`` is one of

* ``ml-100k`` / ``ml-1m``: MovieLens, fetched into the cache by ``rrec.assets`` when missing;
* ``recbole:<dir>:<name>``: RecBole atomic files ``<dir>/<name>.inter`` and ``<dir>/<name>.item``;
* ``amazon2023:<reviews.jsonl[.gz]>:<meta.jsonl[.gz]>``: one Amazon Reviews 2023 category (R²ec's window);
* ``table:<interactions>:<items>``: any two tables (CSV, TSV, Parquet, JSON lines, or a ``datasets``
  folder saved with ``save_to_disk``), with ``user_col``, ``item_col``, ``time_col``, ``rating_col``,
  ``text_cols`` and ``text_join`` (``None``: guessed and printed; :mod:`rrec.data.table`);
* ``d3:<dir>[:<name>]``: a dataset in the D3/BIGRec layout, nested (``train|valid|test/<name>.csv`` +
  ``info/<name>.txt``) or flat (``items.txt``, ``valid.csv``, ``test.csv``), named after its files
  (:mod:`rrec.data.d3`);
* ``amazon18-scientific:<dir>`` / ``amazon18-cds:<dir>``: the Amazon'18 sets as published with their own
  split files (``amazon18-cds`` is ``d3:<dir>`` named "amazon18-cds"). ``split`` does not apply to the
  datasets with their own split files (the folder name ends in ``-files``).

Writes ``<out_dir>`` (default ``<cache>/prepared/<name>-<split>``, plus ``-h<H>`` when ``max_history`` is
not 20) with :func:`rrec.data.save_prepared`, and a ``prepare.json`` recording the config. A folder that
already holds the same config is reused (``force=true`` rebuilds it); one prepared from a different config
is an error rather than a silent reuse. Prints the statistics table either way. The rule, and the default
dataset (``ensure_default``), live in :mod:`rrec.data.default`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rrec import assets
from rrec.config import ConfigError, config_from_argv
from rrec.data import (
    PreparedData,
    load_amazon18_cds,
    load_amazon18_scientific,
    load_amazon2023,
    load_movielens,
    load_recbole_atomic,
    prepare,
)
from rrec.data.d3 import find_d3_files, load_d3
from rrec.data.default import RECORD_FILE as RECORD_FILE  # re-exported (recipes/compare.py reads it)
from rrec.data.default import ensure_default as ensure_default  # moved to the library; kept for callers
from rrec.data.default import prepare_once
from rrec.data.table import Columns, load_table_dataset

FILE_SPLITS = ("amazon18-scientific", "amazon18-cds", "d3")  # datasets that come with their own split
TABLE_KEYS = ("user_col", "item_col", "time_col", "rating_col", "text_cols", "text_join")


@dataclass
class Config:
    """What ``rrec prepare`` reads (see the module docstring for the ``dataset`` forms)."""

    dataset: str = "ml-100k"
    split: str = "temporal"  # temporal (R²ec's global 80/10/10 by time) | loo (RecBole leave-one-out)
    max_history: int = 20  # R²ec: 20 history items per sample
    out_dir: str | None = None  # None: <cache>/prepared/<name>-<split>[-h<H>]
    force: bool = False
    # dataset=table:... only (None: guessed from the obvious names, and printed; rrec.data.table)
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None  # "" : no ratings
    text_cols: list[str] | None = None  # the item text: these columns' values joined by text_join
    text_join: str = " | "


def dataset_name(spec: str) -> str:
    """The short name of a ``dataset`` spec: ``recbole:/x:beauty`` -> ``beauty``."""
    kind, _, rest = spec.partition(":")
    if kind in ("ml-100k", "ml-1m", "amazon18-scientific", "amazon18-cds"):
        return kind
    if kind == "recbole":
        return rest.rpartition(":")[2]
    if kind == "amazon2023":
        stem = Path(rest.split(":")[0]).name.split(".")[0]
        return f"amazon2023-{stem}"
    if kind == "table":
        return Path(_table_paths(spec)[0]).name.split(".")[0]
    if kind == "d3":
        directory, _, name = rest.partition(":")
        return find_d3_files(directory, name or None).name
    raise ConfigError(
        f"dataset {spec!r}: expected ml-100k, ml-1m, recbole:<dir>:<name>, amazon2023:<reviews>:<meta>, "
        "table:<interactions>:<items>, d3:<dir>[:<name>], amazon18-scientific:<dir> or amazon18-cds:<dir>"
    )


def _table_paths(spec: str) -> list[str]:
    paths = spec.partition(":")[2].split(":")
    if len(paths) != 2 or not all(paths):
        raise ConfigError(f"dataset {spec!r}: expected table:<interactions>:<items>")
    return paths


def default_out_dir(cfg: Config) -> Path:
    kind = cfg.dataset.partition(":")[0]
    suffix = "files" if kind in FILE_SPLITS else cfg.split
    history = "" if cfg.max_history == 20 else f"-h{cfg.max_history}"
    return assets.cache_dir() / "prepared" / f"{dataset_name(cfg.dataset)}-{suffix}{history}"


def build(cfg: Config) -> PreparedData:
    """Load and split the dataset named by ``cfg.dataset`` (fetching MovieLens if needed)."""
    kind, _, rest = cfg.dataset.partition(":")
    name = dataset_name(cfg.dataset)
    if kind in ("ml-100k", "ml-1m"):
        items, interactions = load_movielens(assets.fetch_dataset(kind), kind)
    elif kind == "recbole":
        directory, _, _ = rest.rpartition(":")
        if not directory:
            raise ConfigError(f"dataset {cfg.dataset!r}: expected recbole:<dir>:<name>")
        items, interactions = load_recbole_atomic(directory, name)
    elif kind == "amazon2023":
        paths = rest.split(":")
        if len(paths) != 2:
            raise ConfigError(f"dataset {cfg.dataset!r}: expected amazon2023:<reviews>:<meta>")
        items, interactions = load_amazon2023(paths[0], paths[1])
    elif kind == "amazon18-scientific":
        return load_amazon18_scientific(rest, max_history=cfg.max_history)
    elif kind == "amazon18-cds":
        return load_amazon18_cds(rest, max_history=cfg.max_history)
    elif kind == "d3":
        directory, _, stem = rest.partition(":")
        loaded = load_d3(directory, stem or None, max_history=cfg.max_history)
        print("\n".join(loaded.notes))
        return loaded.data
    elif kind == "table":
        columns = Columns(**{k: getattr(cfg, k) for k in TABLE_KEYS})
        table = load_table_dataset(*_table_paths(cfg.dataset), columns)
        print("\n".join(table.notes))
        items, interactions = table.items, table.interactions
    else:
        raise ConfigError(f"unknown dataset kind {kind!r}")
    return prepare(items, interactions, name=name, split=cfg.split, max_history=cfg.max_history)


def run(cfg: Config) -> Path:
    """Prepare (or reuse) the dataset of ``cfg``; returns its folder."""
    if cfg.split not in ("temporal", "loo"):
        raise ConfigError(f"split must be 'temporal' or 'loo', got {cfg.split!r}")
    out = Path(cfg.out_dir).expanduser() if cfg.out_dir else default_out_dir(cfg)
    keys = ("dataset", "split", "max_history") + (TABLE_KEYS if cfg.dataset.startswith("table:") else ())
    record = {k: v for k, v in dataclasses.asdict(cfg).items() if k in keys}
    return prepare_once(out, record, lambda: build(cfg), force=cfg.force)


def main(argv: Sequence[str] | None = None) -> Path:
    """``argv``: an optional YAML path, then ``key=value`` overrides."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(Config, args)
    return run(cfg)


if __name__ == "__main__":
    main()
