"""One command, one table: most-popular, SASRec, GRU4Rec and LLM recommenders on the same prepared split.

    .venv/bin/python -m recipes.compare [config.yaml] [key=value ...]
    .venv/bin/python -m recipes.compare recipes/configs/compare_ml100k.yaml
    .venv/bin/python -m recipes.compare methods=[pop,sasrec] llm_zero_shot=true
    .venv/bin/python -m recipes.compare "checkpoints={recpo: runs/recpo/final, sasrec: runs/sasrec-ml100k}"

Steps: load the prepared dataset (default: ML-100K temporal 80/10/10, prepared on demand) -> resolve every
row before any work (a typo fails in a second, not after an hour of training) -> for each ID baseline,
load its ``checkpoints`` run folder or train it on the train split with early stopping on valid NDCG@10
(:func:`rrec.baselines.train_sequential`), then rank the **full** test split -> for each LLM row, load the
model, build its item table from the prepared catalog and evaluate greedy reasoning (or none) on the
**subset** -> rank the subset with every ID baseline too -> one table (printed, written to ``out_dir``
and appended to ``results_md`` with the command, machine, torch version and date).

Rows and their samples (the ``eval set`` column):

* ``full``: every test sample. ID baselines (``pop``, ``sasrec``, ``gru4rec``, baseline checkpoints).
* ``subset``: :func:`rrec.evaluation.select_samples` with ``max_users`` / ``samples_per_user`` / ``seed``,
  the very rows ``rrec evaluate`` picks with the same arguments. LLM rows, plus every ID baseline again,
  so the LLM rows are compared with the baselines on the same samples. Only present when there is an
  LLM row (or a precomputed one on the subset).
* ``metrics`` entries (rows measured elsewhere) go to ``full`` or ``subset`` when their ``samples_sha``
  (``rrec evaluate``) or sample count (``recipes/train_baseline.py``) matches, else to ``other``.

Methods: ``pop``, ``sasrec``, ``gru4rec`` (trained here unless a checkpoint of that name is given),
``zeroshot`` / ``zeroshot-noreason`` (the embedded default SmolLM2-135M-Instruct with / without reasoning;
``llm_zero_shot=true`` adds both), and any name given in ``checkpoints`` or ``metrics`` (added to the
rows when not listed in ``methods``). A checkpoint is a path, or ``{path: ..., reasoning: false}`` for
an LLM without reasoning; a folder with ``model.pt`` is a ``recipes/train_baseline.py`` run (its
trained model is reused, not retrained), any other folder an LLM (an ``rrec`` saved model or a plain
Hugging Face folder).

Every rank comes from :func:`rrec.metrics.rank_of_target` with each sample's history masked (the target
never is); every interval is :func:`rrec.evaluation.summarize`'s percentile bootstrap over users (1,000
resamples, seed 0). Every row ranked here on the samples of a ``pop`` row (the same eval set) is
also compared with it sample by sample: ``NDCG@10 - pop`` is the mean per-sample difference with its
paired 95% bootstrap interval over users (:func:`rrec.evaluation.paired_ndcg`), and the printed verdict
says "above" / "below most-popular" only when that interval excludes 0. LLM rows also report
``tied_frac`` (targets tied with another item's score) in their JSON. ``wall s`` / ``CPU s`` are the
seconds a row took here (training included; for an LLM, its item table is counted in the first row that
uses it); ``CPU s`` is this process's user + sys time, which on a shared machine is the steadier number.

Choices: ``seed`` draws the subset users *and* seeds baseline training. Defaults for the baselines'
training (``epochs``, ``patience``) are set so that the three ML-100K baselines fit a 15-minute budget on
a 2-core CPU; see ``recipes/configs/compare_ml100k.yaml`` for the measurement. ``num_threads`` defaults to
1: on the shared 2-core machine a one-epoch SASRec + GRU4Rec comparison on ML-100K took 34 s with one
thread and had not ended after 10 minutes with two (OpenMP threads waiting on each other under load);
raise it on a quiet machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import nn

from recipes import prepare as prepare_recipe
from rrec import assets, backbone
from rrec.baselines import GRU4Rec, Popularity, SASRec, popularity_counts, score_split, train_sequential
from rrec.config import ConfigError, config_from_argv
from rrec.data import PreparedData, load_prepared
from rrec.evaluation import evaluate_samples, paired_ndcg, paired_verdict, select_samples, summarize
from rrec.machine import machine_info

KS = (5, 10, 20)
BASELINES = ("pop", "sasrec", "gru4rec")
ZERO_SHOT = {"zeroshot": True, "zeroshot-noreason": False}  # name -> reasoning
DATASET_TITLES = {
    "ml-100k": "MovieLens-100K",
    "ml-1m": "MovieLens-1M",
    "amazon18-scientific": "Amazon'18 Industrial & Scientific",
    "amazon18-cds": "Amazon'18 CDs & Vinyl",
}
MODEL_KWARGS = {
    "sasrec": ("max_len", "hidden_size", "num_layers", "num_heads", "inner_size", "dropout"),
    "gru4rec": ("max_len", "hidden_size", "num_layers", "dropout"),
}


@dataclass
class Config:
    """What ``recipes/compare.py`` reads (see the module docstring for rows and samples)."""

    prepared: str = ""  # a save_prepared folder; "": ML-100K temporal, prepared on demand
    methods: list[str] = field(default_factory=lambda: list(BASELINES))
    checkpoints: dict[str, Any] = field(default_factory=dict)  # name -> path | {path, reasoning}
    metrics: dict[str, str] = field(default_factory=dict)  # name -> metrics.json measured elsewhere
    llm_zero_shot: bool = False  # add zeroshot and zeroshot-noreason (SmolLM2-135M-Instruct)
    mask_history: bool = True
    # LLM subset (rrec.evaluation.select_samples); seed also seeds baseline training.
    max_users: int | None = None  # None: every test user
    samples_per_user: int | None = 1  # the earliest n samples of each user; None: all
    seed: int = 0
    # Baseline training (recipes/train_baseline.py's defaults except epochs and patience, see above).
    epochs: int = 30
    patience: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    sasrec: dict[str, Any] = field(default_factory=dict)  # SASRec kwargs, e.g. {dropout: 0.5}
    gru4rec: dict[str, Any] = field(default_factory=dict)  # GRU4Rec kwargs
    # LLM evaluation (as in recipes/evaluate.py).
    max_new_tokens: int = 128
    llm_batch_size: int = 16
    item_batch_size: int = 64
    dtype: str = "auto"
    # Machine and output.
    device: str = "auto"  # auto: cuda if available, else cpu
    num_threads: int | None = 1  # torch.set_num_threads; None: torch's default (see the module docstring)
    out_dir: str = ""  # "": runs/compare/<dataset>-<time>
    results_md: str = "docs/results.md"
    append: bool = True  # append the table to results_md


class Plan(NamedTuple):
    """How one row is produced.

    Attributes:
        name: the row's name.
        kind: ``train`` (an ID baseline trained here), ``baseline`` (a model.pt run folder), ``llm``
            or ``file`` (precomputed metrics).
        path: the checkpoint folder or metrics file ("" for ``train`` and for the embedded default).
        reasoning: LLM rows only: reason before answering.
    """

    name: str
    kind: str
    path: str
    reasoning: bool


class Row(NamedTuple):
    """One line of the table: ``metrics`` holds :func:`summarize`'s keys."""

    name: str
    eval_set: str  # full | subset | other
    metrics: dict
    wall_s: float | None
    cpu_s: float | None
    note: str


def plan_rows(cfg: Config) -> list[Plan]:
    """Resolve every row of the table, checking names and paths; raises ConfigError."""
    names = list(dict.fromkeys([*cfg.methods, *cfg.checkpoints, *cfg.metrics]))
    if cfg.llm_zero_shot:
        names += [n for n in ZERO_SHOT if n not in names]
    both = sorted(set(cfg.checkpoints) & set(cfg.metrics))
    if both:
        raise ConfigError(f"{both}: a name is either a checkpoint or precomputed metrics, not both")
    plans = []
    for name in names:
        if name in cfg.metrics:
            path = Path(cfg.metrics[name]).expanduser()
            if not path.is_file():
                raise ConfigError(f"metrics[{name}]: {path} is not a file")
            plans.append(Plan(name, "file", str(path), False))
        elif name in cfg.checkpoints:
            spec = cfg.checkpoints[name]
            spec = spec if isinstance(spec, dict) else {"path": spec}
            extra = sorted(set(spec) - {"path", "reasoning"})
            if extra or "path" not in spec:
                raise ConfigError(f"checkpoints[{name}]: expected a path or {{path, reasoning}}, got {spec}")
            path = Path(str(spec["path"])).expanduser()
            if not path.is_dir():
                raise ConfigError(f"checkpoints[{name}]: {path} is not a folder")
            kind = "baseline" if (path / "model.pt").exists() else "llm"
            if kind == "baseline" and "reasoning" in spec:
                raise ConfigError(f"checkpoints[{name}]: {path} is a baseline run; reasoning does not apply")
            if not isinstance(spec.get("reasoning", True), bool):
                raise ConfigError(f"checkpoints[{name}]: reasoning must be true or false")
            plans.append(Plan(name, kind, str(path), bool(spec.get("reasoning", True))))
        elif name in BASELINES:
            plans.append(Plan(name, "train", "", False))
        elif name in ZERO_SHOT:
            plans.append(Plan(name, "llm", "", ZERO_SHOT[name]))
        else:
            known = [*BASELINES, *ZERO_SHOT]
            raise ConfigError(f"method {name!r}: not one of {known} nor a checkpoints / metrics name")
    for kind in MODEL_KWARGS:
        unknown = sorted(set(getattr(cfg, kind)) - set(MODEL_KWARGS[kind]))
        if unknown:
            raise ConfigError(f"{kind}: unknown model settings {unknown}; known: {list(MODEL_KWARGS[kind])}")
    return plans


def samples_sha(samples: pd.DataFrame) -> str:
    """The sample-set fingerprint that ``recipes/evaluate.py`` writes as ``samples_sha``."""
    key = "\n".join(f"{u}\t{t}\t{ts!r}" for u, t, ts in samples[["user_id", "target", "timestamp"]].values)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_metrics(path: str | Path, dataset: str) -> tuple[dict, float | None, str]:
    """A metrics.json from ``rrec evaluate``, ``recipes/train_baseline.py`` or this recipe, flattened.

    Returns ``(metrics, seconds, command)``; raises ConfigError when keys are missing or the file is
    about another dataset.
    """
    raw = json.loads(Path(path).read_text())
    if "test/ndcg@10" in raw:  # recipes/train_baseline.py: test/<metric> keys
        m = {k.removeprefix("test/"): v for k, v in raw.items() if k.startswith("test/")}
        m["dataset"], seconds = raw.get("dataset"), raw.get("wall_seconds")
    else:
        m, seconds = dict(raw), (raw.get("time") or {}).get("total_s", raw.get("wall_s"))
    if m.get("dataset") not in (None, dataset):
        raise ConfigError(f"{path}: metrics of dataset {m['dataset']!r}, not {dataset!r}")
    need = [*(f"{n}@{k}" for n in ("hit", "ndcg") for k in KS), "mrr", "ndcg@10_ci95", "n_samples", "n_users"]
    missing = [k for k in need if k not in m]
    if missing:
        raise ConfigError(f"{path}: lacks {missing}")
    return m, seconds, str(raw.get("command", ""))


def build_baseline(kind: str, num_items: int, kwargs: dict) -> nn.Module:
    """An untrained SASRec or GRU4Rec (``kwargs``: constructor settings; the rest take class defaults)."""
    if kind == "sasrec":
        return SASRec(num_items, **kwargs)
    if kind == "gru4rec":
        return GRU4Rec(num_items, **kwargs)
    raise ValueError(f"no trainable baseline {kind!r}")


def load_baseline(folder: str | Path, item_ids: list[str], device: str) -> tuple[nn.Module, str]:
    """The model of a ``recipes/train_baseline.py`` run folder (``model.pt``) and its kind."""
    saved = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
    if list(saved["item_ids"]) != item_ids:
        raise ConfigError(f"{folder}: trained on another catalog ({len(saved['item_ids'])} items)")
    if saved["model"] == "pop":
        model = Popularity(saved["state_dict"]["counts"])
    else:
        model = build_baseline(saved["model"], len(item_ids), saved["kwargs"])
        model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved["model"]


def fit_baseline(
    plan: Plan, cfg: Config, data: PreparedData, device: str, out: Path
) -> tuple[nn.Module, str]:
    """The row's ID baseline: loaded from its run folder, counted (pop), or trained and saved to ``out``."""
    item_ids = data.items["item_id"].astype(str).tolist()
    train = data.splits["train"]
    if plan.kind == "baseline":
        model, kind = load_baseline(plan.path, item_ids, device)
        return model, f"{kind} from {plan.path} (not retrained)"
    if plan.name == "pop":
        return Popularity(popularity_counts(train, item_ids)).to(device), "train interactions counted once"
    kwargs = dict(getattr(cfg, plan.name))
    torch.manual_seed(cfg.seed)
    model = build_baseline(plan.name, len(item_ids), kwargs)
    print(f"training {plan.name} ({sum(p.numel() for p in model.parameters()):,} parameters)", flush=True)
    model, history = train_sequential(
        model, train, data.splits["valid"], item_ids, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, patience=cfg.patience, seed=cfg.seed, device=device, weight_decay=cfg.weight_decay,
        mask_history=cfg.mask_history, verbose=True,
    )  # fmt: skip
    state = {"model": plan.name, "kwargs": kwargs, "state_dict": model.state_dict(), "item_ids": item_ids}
    (out / plan.name).mkdir(exist_ok=True)
    torch.save(state, out / plan.name / "model.pt")  # reusable as checkpoints[name]
    return model, (
        f"{history['epochs_run']} epochs run, best valid NDCG@10 {history['best_valid_ndcg@10']:.4f} after "
        f"epoch {history['best_epoch'] + 1}; {kwargs or 'class defaults'}; saved to {out / plan.name}"
    )


def load_llm(path: str, cfg: Config, data: PreparedData, dtype: torch.dtype, device: str) -> Any:
    """A ``ReasoningRecommender`` from ``path`` ("": the embedded default) with its item table built."""
    from rrec.backbone import quiet_weight_loading
    from rrec.model import ReasoningRecommender  # transformers is imported only when an LLM row needs it

    folder = Path(path) if path else assets.model_dir()
    if not path and not (folder / "config.json").exists():
        folder = assets.fetch_model()
    with quiet_weight_loading():  # called in the loop over LLM rows
        model = ReasoningRecommender.from_pretrained(
            folder, dtype=dtype, device=device, catalog=data.items, max_new_tokens=cfg.max_new_tokens
        )
    model.build_item_table(batch_size=cfg.item_batch_size)
    return model


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A padded Markdown table; ``right[i]`` right-aligns column i.

    Example:
        >>> print(markdown_table(["a", "n"], [["x", "10"]], [False, True]))  # columns at least 3 wide
        | a   |   n |
        |-----|----:|
        | x   |  10 |
    """
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)
    )
    return "\n".join([line(header), rule + "|", *(line(r) for r in rows)])


def comparison_table(rows: Sequence[Row]) -> str:
    """The comparison as Markdown: one line per row, full-split rows first."""
    header = ["method", "eval set", *(f"Hit@{k}" for k in KS), *(f"NDCG@{k}" for k in KS), "MRR"]
    header += ["NDCG@10 95% CI", "NDCG@10 - pop (paired 95% CI)", "samples", "users", "wall s", "CPU s"]
    order = {"full": 0, "subset": 1, "other": 2}
    cells = []
    for row in sorted(rows, key=lambda r: order[r.eval_set]):  # stable: keeps the method order
        m = row.metrics
        low, high = m["ndcg@10_ci95"]
        values = [m[f"hit@{k}"] for k in KS] + [m[f"ndcg@{k}"] for k in KS] + [m["mrr"]]
        seconds = ["-" if s is None else f"{s:.{0 if s >= 10 else 1}f}" for s in (row.wall_s, row.cpu_s)]
        ci = f"[{low:.4f}, {high:.4f}]"
        vs = m.get("ndcg@10_vs_pop")
        vs_cell = "-" if vs is None else f"{vs['mean']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]"
        counts = [f"{m['n_samples']:,}", f"{m['n_users']:,}"]
        cells.append([row.name, row.eval_set, *(f"{v:.4f}" for v in values), ci, vs_cell, *counts, *seconds])
    return markdown_table(header, cells, [False, False, *[True] * (len(header) - 2)])


def command_line(args: Sequence[str]) -> str:
    """The command as typed: ``rrec compare ...`` under the CLI, else ``<python> -m recipes.compare ...``."""
    if Path(sys.argv[0]).name == "rrec":
        prog = ["rrec", "compare"]
    else:
        python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
        prog = [python, "-m", "recipes.compare"]
    return shlex.join([*prog, *args])


def dataset_heading(name: str, prepared: Path) -> str:
    """``## <dataset>, <split>`` for ``results_md``, e.g. ``## MovieLens-100K, temporal split``."""
    record_file = prepared / prepare_recipe.RECORD_FILE
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    split = {"temporal": "temporal split", "loo": "leave-one-out split"}.get(record.get("split"), "")
    if str(record.get("dataset", "")).partition(":")[0] in prepare_recipe.FILE_SPLITS:
        split = "published split files"
    return f"## {DATASET_TITLES.get(name, name)}" + (f", {split}" if split else "")


def markdown_block(data: PreparedData, prepared: Path, rows: list[Row], info: dict) -> str:
    """The subsection appended to ``results_md``: provenance, the table and per-row notes."""
    machine = info["machine"]
    threads = machine["torch_threads"]
    names = ", ".join(dict.fromkeys(row.name for row in rows))
    lines = [
        f"### Comparison: {names} ({info['date'][:16].replace('T', ' ')} UTC)",
        "",
        f"- Command: `{info['command']}`",
        f"- Data: `{prepared}`, {len(data.items):,} items; test split {info['full']['n_samples']:,} samples "
        f"from {info['full']['n_users']:,} users (sample set `{info['full']['samples_sha']}`).",
    ]
    if info.get("subset"):
        s = info["subset"]
        lines.append(
            f"- Subset (`eval set` = subset): {s['n_samples']:,} samples from {s['n_users']:,} users "
            f"(max_users={s['max_users']}, samples_per_user={s['samples_per_user']}, seed={s['seed']}; "
            f"sample set `{s['samples_sha']}`); the ID baselines are ranked on it too."
        )
    lines += [
        f"- Machine: `lscpu` model name {machine['cpu']}, {machine['cores']} cores"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU")
        + f"; torch {machine['torch']} ({threads} thread{'s' * (threads != 1)}), Python {machine['python']}; "
        f"load average {info['load_start']:.1f} at the start, {info['load_end']:.1f} at the end.",
        f"- Total: {info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} s CPU (user + sys of this process).",
        "",
        comparison_table(rows),
        "",
        *(f"- {row.name} ({row.eval_set}): {row.note}" for row in rows if row.note),
    ]
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, heading: str, block: str) -> None:
    """Append ``block`` to ``path`` under ``heading``, which is written first unless it is already the
    file's last ``## `` heading (the file is read just before; other sections are never rewritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    last = [line for line in text.splitlines() if line.startswith("## ")][-1:]
    parts = [] if text else ["# Results\n\nEvery measured number with the command that produced it.\n"]
    if text and not text.endswith("\n"):
        parts.append("\n")
    if last != [heading]:
        parts.append(f"\n{heading}\n")
    with open(path, "a") as f:
        f.write("".join([*parts, "\n", block]))


def main(argv: Sequence[str] | None = None) -> dict:
    """``argv``: an optional YAML path, then ``key=value`` overrides. Returns the results dict."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(Config, args)
    plans = plan_rows(cfg)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    try:
        dtype = backbone.parse_dtype(cfg.dtype, device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    t_start, c_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]

    # ---- data, the full test split and the LLM subset ------------------------------------------------------
    prepared = Path(cfg.prepared).expanduser() if cfg.prepared else prepare_recipe.ensure_default()
    data = load_prepared(prepared)
    item_ids = data.items["item_id"].astype(str).tolist()
    test = data.splits["test"]
    subset = select_samples(test, cfg.max_users, cfg.samples_per_user, cfg.seed)
    shas = {"full": samples_sha(test), "subset": samples_sha(subset)}
    files = {p.name: read_metrics(p.path, data.name) for p in plans if p.kind == "file"}

    def eval_set_of(m: dict) -> str:
        if "samples_sha" in m:
            return next((s for s, sha in shas.items() if sha == m["samples_sha"]), "other")
        return "full" if m["n_samples"] == len(test) else "other"

    on_subset = any(p.kind == "llm" for p in plans) or any(
        eval_set_of(f[0]) == "subset" for f in files.values()
    )
    out = Path(cfg.out_dir or f"runs/compare/{data.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    sizes = "/".join(f"{len(data.splits[s]):,}" for s in ("train", "valid", "test"))
    print(f"{data.name}: {len(item_ids):,} items; train/valid/test {sizes}; rows {[p.name for p in plans]}")
    if on_subset:
        print(f"subset: {len(subset):,} samples from {subset['user_id'].nunique():,} users")

    rows: list[Row] = []
    per_sample: dict[tuple[str, str], list[dict]] = {}  # (eval set, name) -> (user, target, rank) rows

    def add(name: str, eval_set: str, ranks: torch.Tensor, samples: pd.DataFrame, since: tuple, note: str,
            tied: torch.Tensor | None = None) -> None:  # fmt: skip
        wall, cpu = time.perf_counter() - since[0], time.process_time() - since[1]
        users = samples["user_id"].astype(str).tolist()
        m = summarize(ranks, users, KS, tied=tied)
        m |= {"dataset": data.name, "method": name, "samples_sha": shas.get(eval_set), "wall_s": wall}
        per_sample[eval_set, name] = [
            {"user_id": u, "target": t, "rank": r}
            for u, t, r in zip(users, samples["target"].astype(str), ranks.tolist(), strict=True)
        ]
        rows.append(Row(name, eval_set, m, wall, cpu, note))
        print(f"{name:>20} {eval_set:>6}: ndcg@10 {m['ndcg@10']:.4f}  hit@10 {m['hit@10']:.4f}  {wall:.0f} s")

    # ---- ID baselines: train (or load), rank the full split, and the subset when there is one -------------
    for plan in plans:
        if plan.kind in ("train", "baseline"):
            since = time.perf_counter(), time.process_time()
            model, note = fit_baseline(plan, cfg, data, device, out)
            ranks = score_split(model, test, item_ids, cfg.mask_history, device=device)
            add(plan.name, "full", ranks, test, since, note)
            if on_subset:
                since = time.perf_counter(), time.process_time()
                ranks = score_split(model, subset, item_ids, cfg.mask_history, device=device)
                add(plan.name, "subset", ranks, subset, since, "")

    # ---- LLM rows on the subset (one load and item table per model folder) --------------------------------
    loaded: dict[str, Any] = {}
    for plan in plans:
        if plan.kind != "llm":
            continue
        since = time.perf_counter(), time.process_time()
        note = ""
        if plan.path not in loaded:
            loaded[plan.path] = load_llm(plan.path, cfg, data, dtype, device)
            note = f"item table built in {time.perf_counter() - since[0]:.0f} s (counted in this row); "
        res = evaluate_samples(
            loaded[plan.path], subset, reasoning=plan.reasoning, mask_history=cfg.mask_history,
            batch_size=cfg.llm_batch_size, max_new_tokens=cfg.max_new_tokens, progress=True,
        )  # fmt: skip
        how = "<answer> right after the prompt"
        if plan.reasoning:
            forced = 100 * sum(res.forced) / len(res.forced)
            how = (
                f"greedy reasoning, at most {cfg.max_new_tokens} new tokens, <answer> forced in {forced:.0f}%"
            )
        note += f"{plan.path or 'SmolLM2-135M-Instruct (embedded default)'}; {how}"
        add(plan.name, "subset", res.ranks, subset, since, note, res.tied)

    # ---- precomputed rows --------------------------------------------------------------------------------
    for plan in plans:
        if plan.kind == "file":
            m, seconds, command = files[plan.name]
            where = eval_set_of(m)
            note = f"from {plan.path}" + (f" (`{command}`)" if command else "")
            if where == "other":
                note += (
                    f"; its samples are neither the full split nor the subset ({m['n_samples']:,} samples)"
                )
            rows.append(Row(plan.name, where, m, seconds, None, note))

    # ---- each row ranked here vs most-popular on the same samples (paired), then the per-row files -----
    for row in rows:
        pop, mine = per_sample.get((row.eval_set, "pop")), per_sample.get((row.eval_set, row.name))
        if pop is not None and mine is not None and row.name != "pop":
            d = paired_ndcg(mine, pop)
            vs = {"mean": d.mean, "ci95": [d.low, d.high], "frac_positive": d.frac_positive}
            row.metrics["ndcg@10_vs_pop"] = vs
            verdict = paired_verdict(d, "above most-popular", "below most-popular")
            print(f"{row.name} vs pop ({row.eval_set}): {verdict}")
        if (row.eval_set, row.name) in per_sample:
            (out / row.eval_set).mkdir(exist_ok=True)
            (out / row.eval_set / f"{row.name}.json").write_text(json.dumps(row.metrics, indent=2) + "\n")

    # ---- table, files, results_md ------------------------------------------------------------------------
    info = {
        "command": command_line(args),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - t_start,
        "cpu_s": time.process_time() - c_start,
        "full": {
            "n_samples": len(test),
            "n_users": int(test["user_id"].nunique()),
            "samples_sha": shas["full"],
        },
        "config": dataclasses.asdict(cfg) | {"prepared": str(prepared), "device": device},
    }
    if on_subset:
        info["subset"] = {
            "n_samples": len(subset), "n_users": int(subset["user_id"].nunique()),
            "samples_sha": shas["subset"], "max_users": cfg.max_users,
            "samples_per_user": cfg.samples_per_user, "seed": cfg.seed,
        }  # fmt: skip
    table = comparison_table(rows)
    heading, block = dataset_heading(data.name, prepared), markdown_block(data, prepared, rows, info)
    (out / "table.md").write_text(f"{heading}\n\n{block}")
    results = info | {"rows": [r._asdict() for r in rows], "table": table}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"total {info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} s CPU -> {out}")
    if cfg.append:
        append_markdown(Path(cfg.results_md), heading, block)
        print(f"appended to {cfg.results_md}")
    return results


if __name__ == "__main__":
    main()
