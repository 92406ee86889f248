"""The all-position recipe end to end on the tiny model and a tiny dataset."""

from __future__ import annotations

import json

import pytest
import torch

from recipes import train_allpos
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared
from tests.tolerance import f32_tol


@pytest.mark.parametrize("item_side", ["frozen", "cached", "in_batch"])
def test_allpos_recipe_runs_and_reports(tmp_path, tokenizer, item_side, monkeypatch):
    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "cache"))
    # float32 throughout (no bf16 autocast on a bf16-native CPU), so the saved model's table can be compared
    # with a rebuilt one at float32 tolerance on any machine
    monkeypatch.setattr("rrec.backbone.cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr("rrec.fast_eval.cpu_has_fast_bf16", lambda: False)
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
    # the run's model folder loads as a ReasoningRecommender that scores exactly as the recipe evaluated
    from rrec.model import ReasoningRecommender

    loaded = ReasoningRecommender.from_pretrained(tmp_path / "run" / "model", device="cpu")
    assert loaded.config.user_format == "stream" and loaded.config.id_vectors == res["config"]["id_vectors"]
    assert loaded.item_ids == list(res["model"].catalog)
    torch.testing.assert_close(loaded.item_table(), res["table"].cpu(), rtol=0, atol=1e-6)
    if item_side == "frozen":  # base text states: a rebuilt table equals the saved one
        rebuilt = loaded.build_item_table()
        err = (rebuilt.as_tensor() - res["table"].cpu()).abs().max().item()
        assert err <= f32_tol(loaded.hidden_size, 1.0), err
    hist = res["data"].splits["test"].iloc[0]["history"]
    assert len(loaded.recommend(list(hist)[-3:], k=5, reasoning=False).item_ids) == 5


def test_unknown_item_side_is_refused(tmp_path):
    with pytest.raises(ValueError, match="item_side must be one of"):
        train_allpos.main([f"out_dir={tmp_path}", "item_side=stale"])


def test_valid_points_at_requested_steps(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "cache"))
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data", n_users=10, n_items=30, per_user=8)),
        "out_dir": str(tmp_path / "run"), "max_history": 3, "steps": 4, "chunks_per_step": 4,
        "eval_every_minutes": 0, "eval_at_steps": "[2, 4]", "valid_users": 4, "test_users": 2,
        "test_before": False, "max_train_minutes": "null",
    }  # fmt: skip
    res = train_allpos.main([f"{k}={v}" for k, v in args.items()])
    assert [c["step"] for c in res["valid_curve"]] == [2, 4]  # the last one after the loop ends
    assert res["valid_curve"][1]["targets"] > res["valid_curve"][0]["targets"] > 0
