"""Prepare a dataset once: load it into the canonical tables, build next-item samples, split, save.

    rrec prepare [config.yaml] [key=value ...]
    rrec prepare dataset=ml-1m split=loo

``dataset`` is one of

* ``ml-100k`` / ``ml-1m``: MovieLens, fetched into the cache by ``rrec.assets`` when missing;
* ``recbole:<dir>:<name>``: RecBole atomic files ``<dir>/<name>.inter`` and ``<dir>/<name>.item``;
* ``amazon2023:<reviews.jsonl[.gz]>:<meta.jsonl[.gz]>``: one Amazon Reviews 2023 category (R²ec's window);
* ``amazon18-scientific:<dir>`` / ``amazon18-cds:<dir>``: the Amazon'18 sets as published with their own
  split files; ``split`` does not apply to them (the folder name ends in ``-files``).

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
from rrec.data.default import RECORD_FILE as RECORD_FILE  # re-exported (recipes/compare.py reads it)
from rrec.data.default import ensure_default as ensure_default  # moved to the library; kept for callers
from rrec.data.default import prepare_once

FILE_SPLITS = ("amazon18-scientific", "amazon18-cds")  # datasets that come with their own split


@dataclass
class Config:
    """What ``rrec prepare`` reads (see the module docstring for the ``dataset`` forms)."""

    dataset: str = "ml-100k"
    split: str = "temporal"  # temporal (R²ec's global 80/10/10 by time) | loo (RecBole leave-one-out)
    max_history: int = 20  # R²ec: 20 history items per sample
    out_dir: str | None = None  # None: <cache>/prepared/<name>-<split>[-h<H>]
    force: bool = False


def dataset_name(spec: str) -> str:
    """The short name of a ``dataset`` spec: ``recbole:/x:beauty`` -> ``beauty``."""
    kind, _, rest = spec.partition(":")
    if kind in ("ml-100k", "ml-1m", *FILE_SPLITS):
        return kind
    if kind == "recbole":
        return rest.rpartition(":")[2]
    if kind == "amazon2023":
        stem = Path(rest.split(":")[0]).name.split(".")[0]
        return f"amazon2023-{stem}"
    raise ConfigError(
        f"dataset {spec!r}: expected ml-100k, ml-1m, recbole:<dir>:<name>, amazon2023:<reviews>:<meta>, "
        "amazon18-scientific:<dir> or amazon18-cds:<dir>"
    )


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
    else:
        raise ConfigError(f"unknown dataset kind {kind!r}")
    return prepare(items, interactions, name=name, split=cfg.split, max_history=cfg.max_history)


def run(cfg: Config) -> Path:
    """Prepare (or reuse) the dataset of ``cfg``; returns its folder."""
    if cfg.split not in ("temporal", "loo"):
        raise ConfigError(f"split must be 'temporal' or 'loo', got {cfg.split!r}")
    out = Path(cfg.out_dir).expanduser() if cfg.out_dir else default_out_dir(cfg)
    record = {k: v for k, v in dataclasses.asdict(cfg).items() if k in ("dataset", "split", "max_history")}
    return prepare_once(out, record, lambda: build(cfg), force=cfg.force)


def main(argv: Sequence[str] | None = None) -> Path:
    """``argv``: an optional YAML path, then ``key=value`` overrides."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(Config, args)
    return run(cfg)


if __name__ == "__main__":
    main()
