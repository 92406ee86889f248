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
