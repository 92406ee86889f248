"""Full-catalog evaluation of a reasoning recommender (or the most-popular baseline) on a prepared split.

    rrec evaluate [config.yaml] [key=value ...]
    rrec evaluate recipes/configs/evaluate_zeroshot.yaml max_users=166 samples_per_user=1
    rrec evaluate method=pop

Steps: load the prepared dataset (the default, ML-100K temporal, is prepared on demand) -> pick the
samples with :func:`rrec.evaluation.select_samples` (``max_users`` users drawn with ``seed``, each with
its earliest ``samples_per_user`` samples; the same arguments give the same samples for every method) ->
load the model (a plain Hugging Face folder, wrapped, or an rrec folder) and build its item table from the
prepared catalog -> greedy reasoning (or ``<answer>`` at once with ``reasoning=false``) -> ranks of each
target among all catalog items, history masked -> ``metrics.json``, ``per_user.jsonl`` and a table.

``method=pop`` scores the most-popular baseline (train interactions counted by
:func:`rrec.baselines.popularity_counts`) through the very same selection, masking and rank code: it is
handed to :func:`rrec.evaluation.evaluate_samples` as a scorer whose scores ignore the user.

Departures and choices:

* ``dtype`` is the compute dtype of the LLM only; item and user states are cast to float32 and every score
  and rank is float32 (bf16 logits would tie much of the catalog).
* The item table is always rebuilt from the prepared catalog, so it matches the items being ranked even
  when an rrec folder carries a table of its own.
* 95% intervals are percentile bootstraps over users (:func:`rrec.metrics.bootstrap_ci`, 1,000 resamples,
  seed 0) for every reported metric, not only the two that :func:`rrec.evaluation.summarize` gives.
* ``reasoning/mean_tokens`` re-tokenizes the decoded reasoning text: a report, not a training quantity.
* Ranks break ties in the target's favour (:func:`rrec.metrics.rank_of_target`); ``tied_frac`` in
  ``metrics.json`` (and the printed summary) is the fraction of samples whose target was tied with another
  ranked item, so a model that scores everything alike cannot pass for a good one. Most-popular ties
  often: items with the same train count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from rrec import assets, backbone
from rrec.baselines import popularity_counts
from rrec.config import ConfigError, config_from_argv
from rrec.data import ensure_default, load_prepared
from rrec.evaluation import (
    EvalResult,
    evaluate_samples,
    histories_of,
    paired_ndcg,
    per_user_rows,
    rows_for_samples,
    select_samples,
    summarize,
)
from rrec.metrics import bootstrap_ci, per_sample_ndcg
from rrec.prompts import warn_truncated

KS = (5, 10, 20)


@dataclass
class Config:
    """What ``rrec evaluate`` reads."""

    method: str = "llm"  # llm (the model below) | pop (most popular on the train split)
    model: str = ""  # HF or rrec folder; "": the embedded default (SmolLM2-135M-Instruct)
    prepared: str = ""  # a save_prepared folder; "": ML-100K temporal, prepared on demand
    split: str = "test"
    reasoning: bool = True  # false: <answer> right after the prompt (R²ec's "w/o reasoning")
    mask_history: bool = True  # leave each sample's history items out of its ranking
    max_users: int | None = None  # None: every user of the split
    samples_per_user: int | None = None  # None: all of a user's samples; n: the earliest n
    seed: int = 0  # draws the users when max_users is set
    batch_size: int = 16
    max_new_tokens: int = 128  # reasoning budget, <answer> included (forced when it runs out)
    dtype: str = "auto"  # LLM compute dtype: auto (rrec.backbone.default_dtype) | bfloat16 | float32
    device: str = "auto"  # auto: cuda if available, else cpu
    rollout_engine: str = "auto"  # reasoning decoder: auto (static + CUDA graphs on GPU) | static | hf
    item_batch_size: int = 64
    top_k: int = 20  # ids kept per row of per_user.jsonl
    num_threads: int | None = None  # torch.set_num_threads; None: torch's default
    fast: bool = True  # reasoning=false: rrec.fast_eval (length-sorted batches; the same ranks, faster)
    paired_with: list[str] = dataclasses.field(default_factory=list)  # per_user.jsonl files: paired NDCG@10
    out_dir: str = ""  # "": runs/evaluate/<dataset>-<split>-<method>-<time>


class PopularityScorer:
    """The most-popular baseline shaped like the model for :func:`evaluate_samples`: same scores for all."""

    def __init__(self, counts: Tensor, item_ids: list[str]) -> None:
        self.counts = counts.float()  # (N,)
        self.item_ids = item_ids
        # it reads no history, so none is ever cut (masking still uses each sample's full history)
        self.config = SimpleNamespace(max_history=sys.maxsize)

    def reason(self, histories, target_times, reasoning, max_new_tokens):
        n = len(histories)
        return torch.zeros(n, 1), [""] * n, [False] * n

    def score(self, states: Tensor) -> Tensor:
        return self.counts[None, :].expand(states.shape[0], -1)  # (B, N)


def with_intervals(ranks: Tensor, user_ids: list[str], tied: Tensor | None = None) -> dict:
    """:func:`summarize` (with ``tied_frac`` when ``tied`` is given) plus a 95% bootstrap interval over
    users for every metric."""
    out = summarize(ranks, user_ids, KS, tied=tied)
    per_sample = {f"hit@{k}": (ranks <= k).double() for k in KS}
    per_sample |= {f"ndcg@{k}": per_sample_ndcg(ranks, k) for k in KS}
    per_sample["mrr"] = 1.0 / ranks.double()
    for name, values in per_sample.items():
        out[f"{name}_ci95"] = list(bootstrap_ci(values, user_ids))
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def format_table(m: dict) -> str:
    rows = [("metric", "value", "95% CI (users)")]
    for name in [*(f"hit@{k}" for k in KS), *(f"ndcg@{k}" for k in KS), "mrr"]:
        lo, hi = m[f"{name}_ci95"]
        rows.append((name, f"{m[name]:.4f}", f"[{lo:.4f}, {hi:.4f}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: Sequence[str] | None = None) -> dict:
    """``argv``: an optional YAML path, then ``key=value`` overrides. Returns the metrics dict."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(Config, args)
    if cfg.method not in ("llm", "pop"):
        raise ConfigError(f"method must be 'llm' or 'pop', got {cfg.method!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    try:
        dtype = backbone.parse_dtype(cfg.dtype, device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()

    # ---- data and the shared sample selection ----------------------------------------------------------
    prepared = Path(cfg.prepared) if cfg.prepared else ensure_default()
    data = load_prepared(prepared)
    if cfg.split not in data.splits:
        raise ConfigError(f"split {cfg.split!r} not in {prepared} (has {sorted(data.splits)})")
    samples = select_samples(data.splits[cfg.split], cfg.max_users, cfg.samples_per_user, cfg.seed)
    if len(samples) == 0:
        raise ConfigError(f"no samples selected from {prepared} split {cfg.split!r}")
    item_ids = data.items["item_id"].astype(str).tolist()
    key = "\n".join(f"{u}\t{t}\t{ts!r}" for u, t, ts in samples[["user_id", "target", "timestamp"]].values)
    samples_sha = hashlib.sha256(key.encode()).hexdigest()[:16]
    tag = "pop" if cfg.method == "pop" else ("reasoning" if cfg.reasoning else "noreason")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out_dir or f"runs/evaluate/{data.name}-{cfg.split}-{tag}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{data.name} {cfg.split}: {len(samples):,} samples from {samples['user_id'].nunique():,} users "
        f"(sample set {samples_sha}); {len(item_ids):,} items; method {tag} -> {out}",
        flush=True,
    )
    times: dict[str, float] = {}
    model_path: Path | None = None

    # ---- scorer: the LLM with its own item table, or most-popular counted on train ---------------------
    if cfg.method == "pop":
        t0 = time.perf_counter()
        scorer = PopularityScorer(popularity_counts(data.splits["train"], item_ids), item_ids)
        times["fit_s"] = time.perf_counter() - t0
    else:
        from rrec.model import ReasoningRecommender

        model_path = Path(cfg.model) if cfg.model else assets.model_dir()
        if not cfg.model and not (model_path / "config.json").exists():
            model_path = assets.fetch_model()
        t0 = time.perf_counter()
        scorer = ReasoningRecommender.from_pretrained(
            model_path, dtype=dtype, device=device, catalog=data.items, max_new_tokens=cfg.max_new_tokens,
            rollout_engine=cfg.rollout_engine,
        )  # fmt: skip
        times["load_s"] = time.perf_counter() - t0
        n_params = sum(p.numel() for p in scorer.lm.parameters())
        print(f"model {model_path} ({n_params / 1e6:.1f}M parameters, {dtype}, {device})", flush=True)
        t0 = time.perf_counter()
        scorer.build_item_table(batch_size=cfg.item_batch_size)
        times["item_table_s"] = time.perf_counter() - t0
        print(
            f"item table: {len(item_ids):,} items in {times['item_table_s']:.1f} s "
            f"({len(item_ids) / times['item_table_s']:.1f} items/s)",
            flush=True,
        )

    # ---- evaluate ----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if cfg.method == "llm" and not cfg.reasoning and cfg.fast and cfg.mask_history:
        res = fast_ranks(scorer, samples, cfg)
    else:
        res = evaluate_samples(
            scorer,
            samples,
            reasoning=cfg.reasoning and cfg.method == "llm",
            mask_history=cfg.mask_history,
            batch_size=cfg.batch_size if cfg.method == "llm" else 4096,
            max_new_tokens=cfg.max_new_tokens,
            top_k=cfg.top_k,
        )
    times["evaluate_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start
    if not (int(res.ranks.min()) >= 1 and int(res.ranks.max()) <= len(item_ids)):
        raise AssertionError(f"ranks outside [1, {len(item_ids)}]")

    # ---- write --------------------------------------------------------------------------------------------
    metrics = with_intervals(res.ranks, res.user_ids, res.tied)
    metrics |= {"method": tag, "dataset": data.name, "split": cfg.split, "n_items": len(item_ids)}
    metrics["samples_sha"] = samples_sha
    metrics["samples_per_s"] = len(samples) / times["evaluate_s"]
    if cfg.method == "llm" and cfg.reasoning:
        lengths = [len(scorer.tokenizer(t, add_special_tokens=False).input_ids) for t in res.reasonings]
        metrics["reasoning/forced_rate"] = sum(res.forced) / len(res.forced)
        metrics["reasoning/mean_tokens"] = sum(lengths) / len(lengths)
        metrics["reasoning/max_tokens"] = max(lengths)
    metrics["time"] = times
    resolved = {"prepared": str(prepared), "model": str(model_path) if model_path else ""}
    resolved |= {"dtype": str(dtype).removeprefix("torch."), "device": device}
    metrics["config"] = dataclasses.asdict(cfg) | resolved
    metrics["machine"] = machine_info()
    metrics["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metrics["command"] = " ".join(["rrec evaluate", *args])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    rows = per_user_rows(res)
    with open(out / "per_user.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    paired = paired_against(rows, cfg.paired_with)
    if paired:
        metrics["paired_ndcg@10"] = paired
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    print(format_table(metrics))
    extra = ""
    if "reasoning/forced_rate" in metrics:
        extra = (
            f"; reasoning {metrics['reasoning/mean_tokens']:.1f} tokens on average, <answer> forced "
            f"{100 * metrics['reasoning/forced_rate']:.0f}%"
        )
    print(
        f"{metrics['n_samples']:,} samples, {metrics['n_users']:,} users; target tied with another item in "
        f"{100 * metrics['tied_frac']:.1f}% of samples; evaluate "
        f"{times['evaluate_s']:.1f} s, total {times['total_s']:.1f} s{extra} -> {out}"
    )
    for name, d in paired.items():
        print(f"NDCG@10 minus {name}: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
              f"(paired bootstrap over users)")  # fmt: skip
    return metrics


def fast_ranks(model, samples, cfg: Config) -> EvalResult:
    """``evaluate_samples`` without reasoning, through ``rrec.fast_eval``: the same prompts, table and
    masking, so the same ranks (tested), with the prompts sorted by length into batches."""
    from rrec.fast_eval import rank_samples

    hist = histories_of(samples)
    n_cut = sum(len(h) > model.config.max_history for h in hist)
    if n_cut:
        warn_truncated(n_cut, len(hist), model.config.max_history)
    times = samples["timestamp"].astype(float).tolist() if "timestamp" in samples else None
    prompts = [ids for ids, _ in model.prompt_ids(hist, times, reasoning=False)]  # one prompter, lines cached
    res = rank_samples(
        model.lm, prompts, samples, model.item_table(),
        model.item_ids, pad_id=model.pad_id, batch_size=cfg.batch_size, top_k=cfg.top_k, bf16=False,
    )  # fmt: skip
    n = len(res["ranks"])
    return EvalResult(res["user_ids"], res["targets"], res["ranks"], res["top_ids"], [""] * n, [False] * n,
                      res["tied"])  # fmt: skip


def paired_against(rows: list[dict], files: Sequence[str], subset: bool = False) -> dict:
    """NDCG@10 of ``rows`` minus that of each ``per_user.jsonl``-format file, paired over the same samples
    (:func:`rrec.evaluation.paired_ndcg`); keyed by the file's parent folder name (or stem). ``subset``: the
    files may hold more samples; their rows of ``rows``' samples are used (``rows_for_samples``)."""
    out = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"paired_with: {f} is not a file (a per_user.jsonl of the same samples)")
        other = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        try:
            d = paired_ndcg(rows, rows_for_samples(rows, other) if subset else other)
        except ValueError as e:
            raise ConfigError(f"paired_with {f}: {e}") from None
        name = path.parent.name if path.stem == "per_user" else f"{path.parent.name}/{path.stem}"
        out[name] = {"mean": d.mean, "ci95": [d.low, d.high], "file": str(path)}
    return out


if __name__ == "__main__":
    main()
