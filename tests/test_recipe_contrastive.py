"""Contrastive baseline: the loss by hand, and a few steps on the tiny model."""

from __future__ import annotations

import math

import torch

from recipes import train_contrastive
from recipes.train_contrastive import in_batch_contrastive
from rrec.model import ReasoningRecommender
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared


def test_in_batch_contrastive_by_hand():
    # orthonormal users/items: user i matches item i with cosine 1, others 0; tau = 1
    # CE_i = -log(e^1 / (e^1 + (B-1) e^0)) with B = 3 -> log(e + 2) - 1
    u = torch.eye(3)
    loss = in_batch_contrastive(u, u.clone(), ["a", "b", "c"], tau=1.0)
    assert abs(loss.item() - (math.log(math.e + 2) - 1)) < 1e-6
    # users 0 and 1 share target "a": neither counts the other's copy as a negative
    loss = in_batch_contrastive(u[:2], u[:2].clone(), ["a", "a"], tau=1.0)
    assert abs(loss.item() - 0.0) < 1e-6  # only the positive remains: -log(1) = 0


def test_contrastive_recipe_runs(tmp_path, tokenizer):
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 3,
        "users_per_step": 4,
        "eval_users": 3,
        "warmup_steps": 0,
        "lr": 1e-2,
        "dtype": "float32",
    }
    result = train_contrastive.main([f"{k}={v}" for k, v in args.items()])
    assert len(result["history"]) == 3 and all(math.isfinite(r["train/loss"]) for r in result["history"])
    after = ReasoningRecommender.from_pretrained(tmp_path / "run" / "final")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in after.lm.named_parameters())
    assert 0.0 <= result["after"]["ndcg@10"] <= 1.0


def test_contrastive_max_train_minutes_stops_after_the_crossing_step(tmp_path, tokenizer):
    # ~0 minutes: the first step crosses the budget, then the usual evaluation and final save
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 4,
        "max_train_minutes": 1e-9,
        "eval_users": 3,
        "dtype": "float32",
    }
    result = train_contrastive.main([f"{k}={v}" for k, v in args.items()])
    assert result["steps"] == 1 and result["stopped_by_time"] and len(result["history"]) == 1
    assert (tmp_path / "run" / "final").is_dir()


def test_contrastive_mid_training_evaluation_runs_on_valid(tmp_path, tokenizer, monkeypatch):
    # eval_every=1, 2 steps: before (test), after step 1 (valid: test is never touched mid-training),
    # after (the same test samples as before)
    from rrec.data import load_prepared
    from rrec.evaluation import select_samples

    def keys(df):
        return list(zip(df["user_id"].astype(str), df["target"].astype(str), df["timestamp"], strict=True))

    calls = []
    run_eval = train_contrastive.run_eval

    def recording(model, df, cfg, **kw):
        calls.append(keys(df))
        return run_eval(model, df, cfg, **kw)

    monkeypatch.setattr(train_contrastive, "run_eval", recording)
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 2,
        "users_per_step": 4,
        "eval_every": 1,
        "eval_users": 3,
        "dtype": "float32",
    }
    train_contrastive.main([f"{k}={v}" for k, v in args.items()])
    data = load_prepared(tmp_path / "data")
    test = keys(select_samples(data.splits["test"], 3, 1, 0))
    valid = keys(select_samples(data.splits["valid"], 32, 1, 0))  # valid_users, valid_samples_per_user
    assert calls == [test, valid, test] and not set(valid) & set(test)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum("valid/ndcg@10" in line for line in lines) == 1 and not any("eval/" in x for x in lines)
