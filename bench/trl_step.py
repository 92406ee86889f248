"""Item (d) of ``bench/run.py``, TRL's side: ``trl.GRPOTrainer`` steps on the RecPO bench setup.

Everything that sets the amount of work comes from the one ``RecPOConfig`` that ``bench/run.py`` hands to
``recipes/train_recpo.py`` (``grpo_config_kwargs`` maps it onto ``GRPOConfig``):

* model: the same HF model, ``<answer>`` added by ``ReasoningRecommender``, the recipe's LoRA
  (``rrec.backbone.apply_lora`` with ``lora_rank`` / ``lora_alpha`` / ``lora_dropout`` on all linear
  projections), the recipe's dtype (``parse_dtype(cfg.dtype)``: bf16 on CUDA; float32 on a CPU without
  native bf16); TRL runs with ``bf16`` mixed precision exactly when the weights are bf16;
* prompts: the user prompts of the recipe's first ``1 + repeats`` training batches (``sample_batches``,
  same seed), as the chat-templated text that our step tokenises; TRL tokenises a plain-text prompt
  itself (SmolLM2's tokenizer adds no special tokens, so the ids are ours); ``shuffle_dataset=False``
  keeps the batches in order;
* batch: B users x G samples (``per_device_train_batch_size = B*G`` completions, one generation per
  optimiser step, ``num_iterations=1``);
* lengths: ``max_completion_length``, temperature / top-k / top-p and the stopping rule of ours: a
  completion ends at EOS or ``<answer>`` (both made TRL's eos ids). Neither side forces the length: with
  random weights both run to the budget (a stop has probability ~2/V per token), with SmolLM2's weights
  both draw lengths from the same distribution; both mean lengths are recorded for a reader to compare;
* loss: ``beta=0`` (ours ``beta_kl=0``: no reference model), ``loss_type``, ``epsilon``, AdamW
  (``adamw_torch``), lr with a constant schedule after ``warmup_steps``, the same grad-norm clip; no
  gradient checkpointing (ours has it off), no vLLM, no logging to files, saving or evaluation.

Ours does more per step: it also encodes the batch's target items with gradient and scores the user
states against the whole item table. TRL's reward is a seeded random number per completion: its cost is
negligible for both, and random rewards keep every group's advantages non-zero, so TRL's loss and backward
run in full.

Timing: ``trainer.train()`` with ``max_steps = 1 + repeats``; a ``TrainerCallback`` syncs the device and
reads the clock at ``on_step_begin`` and ``on_step_end``. TRL generates inside ``training_step``, so the
window holds generation, rewards, the loss, backward, clipping and the optimiser step, and leaves out the
data loader and the per-step logging. ``train()`` rather than a bare ``training_step`` because the
optimiser step is part of a RecPO step too, and ``train()`` is how TRL is run. The first step is the
warm-up; the median of the others is reported.

Only GPU numbers compare anything: without Triton (a CPU) TRL 1.16's fused LM head scores every position,
prompt included, in a torch fallback, where on CUDA it scores the completion tokens alone.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from transformers import PrinterCallback, TrainerCallback

TRL_VERSION = "1.16.0"  # the bench extra in pyproject.toml
TRL_NOT_MEASURED = "not measured (pass --trl with trl installed: pip install -e '.[bench]')"
TRL_MISSING = f"--trl needs TRL's GRPOTrainer: pip install -e '.[bench]' (or pip install trl=={TRL_VERSION})"


# our advantage -> TRL's scale_rewards: (r - mean_g) / std_g, or r - mean_g
SCALE_REWARDS = {"grpo": "group", "none": "none"}


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


def grpo_config_kwargs(cfg: Any, *, steps: int, bf16: bool, out_dir: str) -> dict[str, Any]:
    """``GRPOConfig`` keyword arguments that do the work of ``steps`` RecPO steps of ``cfg`` (a RecPOConfig).

    Raises ``ValueError`` for an ``advantage`` that GRPOTrainer has no counterpart of (``rloo``).

    Args:
        cfg: the recipe's ``RecPOConfig`` (users_per_step B, num_generations G, lengths, sampling, loss).
        steps: optimiser steps to run (warm-up included).
        bf16: the weights are bf16 (TRL then runs bf16 mixed precision).
        out_dir: a scratch folder (nothing is saved there).
    """
    if cfg.advantage not in SCALE_REWARDS:
        raise ValueError(
            f"GRPOTrainer has no advantage {cfg.advantage!r}; bench with one of {sorted(SCALE_REWARDS)}"
        )
    return {
        "output_dir": out_dir,
        "max_steps": steps,
        "per_device_train_batch_size": cfg.users_per_step * cfg.num_generations,  # B*G completions
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,  # one generation per optimiser step, as ours
        "num_generations": cfg.num_generations,
        "num_iterations": cfg.num_iterations,
        "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "beta": cfg.beta_kl,
        "epsilon": cfg.epsilon,
        "epsilon_high": cfg.epsilon_high,
        "loss_type": cfg.loss_type,
        "scale_rewards": SCALE_REWARDS[cfg.advantage],
        "learning_rate": cfg.lr,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "optim": "adamw_torch",
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "bf16": bf16,
        "use_vllm": False,
        "shuffle_dataset": False,
        "seed": cfg.seed,
        "logging_steps": 1,  # in memory only (report_to none): on_log reads TRL's completion lengths
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def speedup_vs_trl(out: dict, names: list[str]) -> float | None:
    """Ours / TRL's trajectories/s on SmolLM2 when both were measured, else on ``names[0]``; else None."""
    name = "smollm2" if "trl_grpo_step_traj_s_smollm2" in out else names[0]
    ours, theirs = out.get(f"recpo_traj_s_{name}"), out.get(f"trl_grpo_step_traj_s_{name}")
    return ours / theirs if ours and theirs else None


def bench_prompts(model, samples: pd.DataFrame, users: int, steps: int, seed: int) -> list[str]:
    """The user prompts of the recipe's first ``steps`` batches of ``users`` samples, batch after batch."""
    from rrec.evaluation import histories_of
    from rrec.prompts import HistoryTruncatedWarning
    from rrec.training import sample_batches

    batches = sample_batches(samples, users, seed)
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryTruncatedWarning)
        for _ in range(steps):
            rows = next(batches)
            for h, t in zip(histories_of(rows), rows["timestamp"].tolist(), strict=True):
                texts.append(model.user_prompt(h, float(t), True))
    return texts


def random_reward(seed: int) -> Callable[..., list[float]]:
    """A TRL-shaped reward ``(completions, **columns) -> list[float]``: one seeded uniform draw each."""
    rng = random.Random(seed)

    def reward(completions: list, **_: Any) -> list[float]:
        return [rng.random() for _ in completions]

    return reward


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimiser step (device synced) and TRL's logged completion lengths."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []
        self.lengths: list[float] = []
        self._t = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self._t)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and logs.get("completions/mean_length") is not None:
            self.lengths.append(float(logs["completions/mean_length"]))


def trl_grpo_step(lm, tokenizer, items: pd.DataFrame, samples: pd.DataFrame, cfg: Any, repeats: int) -> dict:
    """Time ``repeats`` GRPOTrainer steps after one warm-up on the RecPO bench setup (module docstring).

    Args:
        lm: a fresh causal LM (the same weights / shapes as ours); moved to the recipe's device and dtype.
        tokenizer: its tokenizer (``<answer>`` is added to it).
        items: the catalog (the prompts name its titles).
        samples: the training split the recipe draws its batches from.
        cfg: the recipe's ``RecPOConfig``.
        repeats: timed steps.

    Returns:
        {"traj_s": B*G / median step seconds, "step_s": that median, "completion_len": TRL's mean
        completion length over the timed steps, "prompt_tokens": mean prompt length, "trl": version,
        and on CUDA "peak_mem_gib"}.
    """
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rrec.backbone import apply_lora, parse_dtype
    from rrec.model import ReasoningRecommender

    device = torch.device(
        cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    dtype = parse_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    model = ReasoningRecommender(lm.to(device, dtype), tokenizer, items, max_history=cfg.max_history)
    steps = 1 + repeats
    texts = bench_prompts(model, samples, cfg.users_per_step, steps, cfg.seed)
    ours = tokenizer(texts, add_special_tokens=False).input_ids
    if tokenizer(texts).input_ids != ours:  # TRL tokenises with the special tokens the tokenizer adds
        raise ValueError("this tokenizer adds special tokens: TRL would not see our prompt ids")
    policy = apply_lora(model.lm, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, model.answer_id]  # ours stops at both
    timer = StepTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(**grpo_config_kwargs(cfg, steps=steps, bf16=dtype == torch.bfloat16, out_dir=tmp))
        trainer = GRPOTrainer(
            model=policy, reward_funcs=random_reward(cfg.seed), args=args,
            train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer, callbacks=[timer],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts: the bench prints its own line
        trainer.train()
    if len(timer.seconds) != steps:
        raise RuntimeError(f"GRPOTrainer ran {len(timer.seconds)} steps, expected {steps}")
    step_s = statistics.median(timer.seconds[1:])
    return {
        "traj_s": cfg.users_per_step * cfg.num_generations / step_s,
        "step_s": step_s,
        "completion_len": statistics.mean(timer.lengths[1:]) if len(timer.lengths) > 1 else float("nan"),
        "prompt_tokens": statistics.mean(len(ids) for ids in ours),
        "trl": trl.__version__,
        **({"peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {}),
    }
