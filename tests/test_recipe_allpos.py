"""The all-position recipe end to end on the tiny model and a tiny dataset."""

from __future__ import annotations

import json

import pytest

from recipes import train_allpos
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared


@pytest.mark.parametrize("item_side", ["frozen", "cached", "in_batch"])
def test_allpos_recipe_runs_and_reports(tmp_path, tokenizer, item_side, monkeypatch):
    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "cache"))
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data", n_users=10, n_items=30, per_user=8)),
        "out_dir": str(tmp_path / "run"), "max_history": 3, "steps": 4, "chunks_per_step": 4,
        "item_side": item_side, "refresh_every": 2, "eval_every_minutes": 0.0001, "valid_users": 4,
        "valid_samples_per_user": 2, "log_every": 1, "max_train_minutes": 30,
    }  # fmt: skip
    res = train_allpos.main([f"{k}={v}" for k, v in args.items()])
    assert res["steps"] == 4 and res["targets"] > 0
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    t = saved["test"]
    assert t["trained"]["n_samples"] == t["pop"]["n_samples"] == t["zero_shot"]["n_samples"] > 0
    assert set(saved["paired_ndcg@10"]) == {"trained_vs_pop", "trained_vs_zero_shot"}
    assert len(saved["valid_curve"]) >= 2  # before training and at least once during it
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "run" / "id_vectors" / "id_vectors.json").exists()


def test_unknown_item_side_is_refused(tmp_path):
    with pytest.raises(ValueError, match="item_side must be one of"):
        train_allpos.main([f"out_dir={tmp_path}", "item_side=stale"])
