"""The pure helpers of bench/trl_step.py (TRL itself is not needed: CI does not install the bench extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from recipes.train_recpo import RecPOConfig


def load_trl_step():
    path = Path(__file__).resolve().parents[1] / "bench" / "trl_step.py"
    spec = importlib.util.spec_from_file_location("bench_trl_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trl_step = load_trl_step()


def test_grpo_config_follows_the_recipe_config():
    cfg = RecPOConfig(users_per_step=3, num_generations=5, max_completion_length=17, temperature=0.7,
                      top_k=11, top_p=0.9, epsilon=0.3, loss_type="dr_grpo", lr=2e-5, warmup_steps=2,
                      max_grad_norm=0.5, seed=7)  # fmt: skip
    kw = trl_step.grpo_config_kwargs(cfg, steps=4, bf16=True, out_dir="/tmp/x")
    assert kw["per_device_train_batch_size"] == 15  # 3 users x 5 samples: one generation per step
    assert kw["steps_per_generation"] == 1 and kw["gradient_accumulation_steps"] == 1
    assert kw["num_generations"] == 5 and kw["max_completion_length"] == 17 and kw["max_steps"] == 4
    assert (kw["temperature"], kw["top_k"], kw["top_p"]) == (0.7, 11, 0.9)
    assert (kw["epsilon"], kw["epsilon_high"], kw["loss_type"]) == (0.3, None, "dr_grpo")
    assert (kw["learning_rate"], kw["warmup_steps"], kw["max_grad_norm"], kw["seed"]) == (2e-5, 2, 0.5, 7)
    assert kw["lr_scheduler_type"] == "constant_with_warmup"  # the recipe's get_constant_schedule_with_warmup
    assert kw["beta"] == 0.0 and kw["num_iterations"] == 1  # the recipe's defaults: no reference model
    assert kw["use_vllm"] is False and kw["gradient_checkpointing"] is False and kw["bf16"] is True
    assert kw["shuffle_dataset"] is False  # the prompts of batch k are TRL's step k
    assert kw["scale_rewards"] == "group"  # advantage grpo: (r - mean) / std within the group
    assert kw["report_to"] == "none" and kw["save_strategy"] == "no" and kw["eval_strategy"] == "no"


def test_grpo_config_maps_the_advantage_or_refuses():
    none = RecPOConfig(advantage="none", gradient_checkpointing=True, beta_kl=0.04)
    kw = trl_step.grpo_config_kwargs(none, steps=2, bf16=False, out_dir="/tmp/x")
    assert kw["scale_rewards"] == "none" and kw["gradient_checkpointing"] is True and kw["beta"] == 0.04
    with pytest.raises(ValueError, match="rloo"):
        trl_step.grpo_config_kwargs(RecPOConfig(advantage="rloo"), steps=2, bf16=False, out_dir="/tmp/x")


def test_speedup_prefers_smollm2_and_needs_both_sides():
    out = {"recpo_traj_s_0p5b": 30.0, "trl_grpo_step_traj_s_0p5b": 10.0,
           "recpo_traj_s_smollm2": 60.0, "trl_grpo_step_traj_s_smollm2": 4.0}  # fmt: skip
    assert trl_step.speedup_vs_trl(out, ["0p5b", "smollm2"]) == 15.0  # 60 / 4, not 30 / 10
    del out["trl_grpo_step_traj_s_smollm2"]
    assert trl_step.speedup_vs_trl(out, ["0p5b", "smollm2"]) == 3.0  # the first model: 30 / 10
    assert trl_step.speedup_vs_trl({"recpo_traj_s_0p5b": 30.0}, ["0p5b"]) is None  # TRL not measured


def test_random_reward_is_seeded_and_one_per_completion():
    a, b = trl_step.random_reward(3), trl_step.random_reward(3)
    first = a(["x", "y", "z"], prompts=["p"] * 3)
    assert len(first) == 3 and all(0.0 <= r < 1.0 for r in first)
    assert first == b(["u", "v", "w"])  # same seed, same draws, whatever the text
    assert a(["x", "y", "z"]) != first  # later calls draw on


def test_step_timer_times_each_step_and_reads_trl_lengths():
    timer = trl_step.StepTimer(torch.device("cpu"))
    for _ in range(2):
        timer.on_step_begin(None, None, None)
        timer.on_step_end(None, None, None)
    timer.on_log(None, None, None, logs={"loss": 0.1, "completions/mean_length": 7.5})
    timer.on_log(None, None, None, logs={"train_runtime": 3.0})  # the end-of-training summary
    assert len(timer.seconds) == 2 and all(s >= 0.0 for s in timer.seconds)
    assert timer.lengths == [7.5]
