"""The demo's whole flow (table, examples, plots) on the tiny model and a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

from recipes import demo
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared


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
    assert any(f"NDCG@10 {v} (" in out for v in ("improved", "got worse", "did not change"))
    assert out.count("actual next:") == 3
    for p in summary["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert saved["pop"]["n_samples"] == saved["before"]["n_samples"] == saved["after"]["n_samples"]
