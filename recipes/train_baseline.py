"""Train and test one classic sequential baseline (most-popular, SASRec or GRU4Rec) on a prepared dataset.

    python recipes/train_baseline.py recipes/configs/baseline_sasrec.yaml \\
        prepared_dir=data/ml-100k output_dir=runs/sasrec-ml100k [key=value ...]

The YAML file is optional; ``key=value`` overrides are applied after it, and a key that is not a field
of :class:`Config` is an error. Model hyperparameters left at ``null`` take the model class's default,
so those defaults (and their sources) live in one place: ``rrec/baselines/{sasrec,gru4rec}.py``.

Writes to ``output_dir``: ``config.yaml`` (the resolved config), ``metrics.json`` (flat: test and valid
ranking reports, bootstrap 95% intervals of test NDCG@10 and Hit@10 over users, sample and user counts,
the training curve and the wall time) and ``model.pt`` (constructor kwargs, state dict, item ids).
The test ranking excludes each sample's history items except the target (``mask_history``), exactly as
the LLM models are evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from rrec.baselines import GRU4Rec, Popularity, SASRec, popularity_counts, score_split, train_sequential
from rrec.data import load_prepared
from rrec.metrics import bootstrap_ci, per_sample_ndcg, ranking_report

MODEL_FIELDS = ("max_len", "hidden_size", "num_layers", "num_heads", "inner_size", "dropout")


@dataclass
class Config:
    """Everything the run reads. ``None`` model fields mean "the model class's default"."""

    prepared_dir: str = ""  # a folder written by rrec.data.save_prepared
    output_dir: str = ""
    model: str = "sasrec"  # pop | sasrec | gru4rec
    # Model (None = class default). num_heads and inner_size are SASRec-only.
    max_len: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    inner_size: int | None = None
    dropout: float | None = None
    # Training (ignored by pop).
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 0
    # Evaluation and machine.
    mask_history: bool = True
    bootstrap_resamples: int = 1000
    device: str = "cpu"
    num_threads: int = 2


def _coerce(key: str, value: object, hint: object) -> object:
    """Cast a YAML or command-line value to the field's type (YAML reads ``1e-3`` as a string)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    try:
        return hint(value)  # int, float or str
    except (TypeError, ValueError) as e:
        raise ValueError(f"{key}: cannot read {value!r} as {hint.__name__}") from e


def load_config(argv: list[str]) -> Config:
    """Config from an optional YAML path (first argument) then ``key=value`` overrides."""
    values: dict[str, object] = {}
    if argv and not argv[0].partition("=")[1]:
        values.update(yaml.safe_load(Path(argv[0]).read_text()) or {})
        argv = argv[1:]
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            raise ValueError(f"expected key=value, got {arg!r}")
        values[key] = value
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(hints)}")
    cfg = Config(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    if not cfg.prepared_dir or not cfg.output_dir:
        raise ValueError("prepared_dir and output_dir are required")
    given = sorted(k for k in MODEL_FIELDS if getattr(cfg, k) is not None)
    if cfg.model == "pop" and given:
        raise ValueError(f"pop takes no model settings, got {given}")
    if cfg.model == "gru4rec" and {"num_heads", "inner_size"} & set(given):
        raise ValueError(f"{sorted({'num_heads', 'inner_size'} & set(given))} are SASRec settings")
    if cfg.model not in ("pop", "sasrec", "gru4rec"):
        raise ValueError(f"model must be pop, sasrec or gru4rec, got {cfg.model!r}")
    return cfg


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` within the block; the previous count restored after it
    (on return or error), so a caller in the same process (a test, a notebook) keeps its own setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(cfg: Config) -> dict[str, object]:
    """Train (unless pop), test, write the three files; returns the metrics dict.

    Runs with ``cfg.num_threads`` torch threads; the caller's thread count is restored afterwards.
    """
    with torch_threads(cfg.num_threads):
        return _run(cfg)


def _run(cfg: Config) -> dict[str, object]:
    """``main``'s body, run with the thread count set."""
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    data = load_prepared(cfg.prepared_dir)
    item_ids = data.items["item_id"].tolist()
    train, valid, test = data.splits["train"], data.splits["valid"], data.splits["test"]
    sizes = "/".join(f"{len(split):,}" for split in (train, valid, test))
    print(f"{data.name}: {len(item_ids):,} items; train/valid/test samples {sizes}")

    # ---- model ------------------------------------------------------------------------------------
    kwargs = {k: getattr(cfg, k) for k in MODEL_FIELDS if getattr(cfg, k) is not None}
    torch.manual_seed(cfg.seed)
    if cfg.model == "pop":
        model = Popularity(popularity_counts(train, item_ids)).to(cfg.device)
        history: dict = {}
    else:
        model = (SASRec if cfg.model == "sasrec" else GRU4Rec)(len(item_ids), **kwargs)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{cfg.model}: {n_params:,} parameters, max_len {model.max_len}")
        model, history = train_sequential(
            model,
            train,
            valid,
            item_ids,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            patience=cfg.patience,
            seed=cfg.seed,
            device=cfg.device,
            weight_decay=cfg.weight_decay,
            mask_history=cfg.mask_history,
            verbose=True,
        )
        print(f"best epoch {history['best_epoch']} of {history['epochs_run']}, {history['seconds']:.0f} s")

    # ---- evaluation -------------------------------------------------------------------------------
    metrics: dict[str, object] = {"model": cfg.model, "dataset": data.name, "mask_history": cfg.mask_history}
    valid_ranks = score_split(model, valid, item_ids, cfg.mask_history, device=cfg.device)
    test_ranks = score_split(model, test, item_ids, cfg.mask_history, device=cfg.device)
    metrics.update({f"valid/{k}": v for k, v in ranking_report(valid_ranks).items()})
    metrics.update({f"test/{k}": v for k, v in ranking_report(test_ranks).items()})
    users = test["user_id"].tolist()
    for name, per_sample in (
        ("ndcg@10", per_sample_ndcg(test_ranks, 10)),
        ("hit@10", (test_ranks <= 10).double()),
    ):
        low, high = bootstrap_ci(per_sample, users, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        metrics[f"test/{name}_ci95"] = [low, high]
    metrics["test/n_samples"] = len(test)
    metrics["test/n_users"] = len(set(users))
    if history:
        metrics["train/best_epoch"] = history["best_epoch"]
        metrics["train/epochs_run"] = history["epochs_run"]
        metrics["train/seconds"] = history["seconds"]
        metrics["train/loss"] = history["train_loss"]
        metrics["valid/ndcg@10_per_epoch"] = history["valid_ndcg@10"]
    metrics["wall_seconds"] = time.perf_counter() - start

    torch.save(
        {"model": cfg.model, "kwargs": kwargs, "state_dict": model.state_dict(), "item_ids": item_ids},
        out / "model.pt",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # per-sample test ranks in the per_user.jsonl format of `rrec evaluate`, for paired comparisons
    rows = zip(test["user_id"].astype(str), test["target"].astype(str), test_ranks.tolist(), strict=True)
    (out / "per_user_test.jsonl").write_text(
        "".join(json.dumps({"user_id": u, "target": t, "rank": int(r)}) + "\n" for u, t, r in rows)
    )
    summary = "  ".join(f"{k} {metrics[f'test/{k}']:.4f}" for k in ("hit@10", "ndcg@10", "mrr"))
    print(f"test: {summary}  ({metrics['wall_seconds']:.0f} s) -> {out}")
    return metrics


if __name__ == "__main__":
    main(load_config(sys.argv[1:]))
