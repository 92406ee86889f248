"""The demo's whole flow (trained vs zero-shot vs most-popular with paired verdicts, examples, a RecPO
continuation, plots) on a tiny model trained here by the all-position recipe, and a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recipes import demo, train_allpos
from rrec.data import load_prepared
from rrec.evaluation import select_samples
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


def test_demo_flow(tmp_path, tokenizer, capsys, monkeypatch):
    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "cache"))
    prepared = str(tiny_prepared(tmp_path / "data"))
    train_allpos.main([
        f"model={tiny_model_dir(tmp_path / 'base', tokenizer)}", f"prepared={prepared}",
        f"out_dir={tmp_path / 'trained'}", "max_history=3", "steps=2", "chunks_per_step=4",
        "eval_every_minutes=0", "test_before=false", "test_users=2", "test_samples_per_user=1",
    ])  # fmt: skip
    recpo = {"steps": 1, "users_per_step": 2, "num_generations": 2, "max_completion_length": 4,
             "eval_users": 3, "eval_max_new_tokens": 4, "dtype": "float32"}  # fmt: skip
    args = [f"model={tmp_path / 'trained' / 'model'}", f"prepared={prepared}", f"out_dir={tmp_path / 'run'}",
            "samples_per_user=2", "examples=3", "example_tokens=4",
            *[f"recpo.{k}={v}" for k, v in recpo.items()]]  # fmt: skip
    summary = demo.main([str(demo.DEFAULT_CONFIG), *args])
    out = capsys.readouterr().out
    assert "most-popular" in out and "zero-shot" in out and "ndcg@10 95% CI" in out and "tied_frac" in out
    run = tmp_path / "run"
    rows = {
        name: [json.loads(line) for line in (run / f"per_user_{name}.jsonl").read_text().splitlines()]
        for name in ("trained", "zero_shot", "most_popular")
    }
    n = len(rows["trained"])
    picked = select_samples(load_prepared(prepared).splits["test"], None, 2, 0)  # every user's 2 earliest
    assert [(r["user_id"], r["target"]) for r in rows["trained"]] == list(
        zip(picked["user_id"].astype(str), picked["target"].astype(str), strict=True)
    )
    lines = out.splitlines()
    line, pop_diff = expected_line(
        rows["trained"], rows["most_popular"], "above most-popular", "below most-popular"
    )
    assert "trained vs most-popular: " + line in lines
    line, zero_diff = expected_line(rows["trained"], rows["zero_shot"], "improved", "got worse")
    assert "trained vs zero-shot: " + line in lines
    assert out.count("actual next:") == 3 and out.count("\n  reasoning: ") == 3
    saved = json.loads((run / "demo.json").read_text())
    assert saved["paired_ndcg@10"] == {"trained_vs_pop": pop_diff, "trained_vs_zero_shot": zero_diff}
    for name, key in (("trained", "trained"), ("zero_shot", "zero-shot"), ("most_popular", "most-popular")):
        assert saved["test"][key]["n_samples"] == n
        assert saved["test"][key]["tied_frac"] == sum(r["tied"] for r in rows[name]) / n
    # the RecPO continuation: before/after on its users, its verdict recomputed from its saved rows
    rec = [
        [json.loads(x) for x in (run / "recpo" / f"per_user_{w}.jsonl").read_text().splitlines()]
        for w in ("after", "before")
    ]
    line, diff = expected_line(*rec, "improved", "got worse")
    assert "RecPO after 1 steps vs before: " + line in lines
    assert saved["recpo"]["paired_ndcg@10"] == diff and saved["recpo"]["steps"] == 1
    for p in summary["recpo"]["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
