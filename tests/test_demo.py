"""The demo's whole flow (table, paired verdicts, examples, plots) on the tiny model and a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recipes import demo
from rrec.metrics import paired_bootstrap, per_sample_ndcg
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared


def expected_line(a: list[dict], b: list[dict], above: str, below: str) -> tuple[str, dict]:
    """The verdict recomputed here from saved per-sample rows: NDCG@10 of a minus b, users resampled."""
    assert [(r["user_id"], r["target"]) for r in a] == [(r["user_id"], r["target"]) for r in b]
    ndcg_a = per_sample_ndcg(torch.tensor([r["rank"] for r in a]), 10)
    ndcg_b = per_sample_ndcg(torch.tensor([r["rank"] for r in b]), 10)
    d = paired_bootstrap(ndcg_a, ndcg_b, [r["user_id"] for r in a])
    assert abs(d.mean - float((ndcg_a - ndcg_b).mean())) <= 1e-12  # the point estimate is the plain mean
    word = above if d.low > 0 else (below if d.high < 0 else "within the noise")
    return f"NDCG@10 {d.mean:+.4f}, paired 95% CI [{d.low:+.4f}, {d.high:+.4f}]: {word}", d._asdict()


def test_demo_flow(tmp_path, tokenizer, capsys):
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "max_history": 5, "steps": 2, "users_per_step": 2, "num_generations": 2,
        "max_completion_length": 4, "eval_users": 3, "eval_max_new_tokens": 4, "dtype": "float32",
    }  # fmt: skip
    summary = demo.main([str(demo.DEFAULT_CONFIG), *[f"{k}={v}" for k, v in args.items()]])
    out = capsys.readouterr().out
    assert "most-popular" in out and "RecPO (after)" in out and "ndcg@10 95% CI" in out
    assert "tied_frac" in out
    run = tmp_path / "run"
    rows = {
        name: [json.loads(line) for line in (run / f"per_user_{name}.jsonl").read_text().splitlines()]
        for name in ("before", "after", "pop")
    }
    lines = out.splitlines()
    vs_zero = next(line for line in lines if line.startswith("RecPO vs zero-shot"))
    vs_pop = next(line for line in lines if line.startswith("RecPO vs most-popular"))
    line, zero_diff = expected_line(rows["after"], rows["before"], "improved", "got worse")
    assert vs_zero == "RecPO vs zero-shot after 2 steps: " + line
    line, pop_diff = expected_line(rows["after"], rows["pop"], "above most-popular", "below most-popular")
    assert vs_pop == "RecPO vs most-popular: " + line
    assert out.count("actual next:") == 3
    for p in summary["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "demo.json").read_text())
    assert saved["pop"]["n_samples"] == saved["before"]["n_samples"] == saved["after"]["n_samples"] == 3
    for name in ("pop", "before", "after"):  # the tied fraction reported is that of the saved rows
        assert saved[name]["tied_frac"] == sum(r["tied"] for r in rows[name]) / 3
    assert saved["paired_ndcg@10"] == {"recpo_vs_zero_shot": zero_diff, "recpo_vs_pop": pop_diff}
