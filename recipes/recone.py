"""RecOne: cold-start SFT on reasoning traces, then RecZero's RL stage.

Launch: ``rrec recone recipes/configs/recone_smollm2_ml100k.yaml traces=<traces.jsonl> [key=value ...]``
(or under ``accelerate launch ... -m recipes.recone``, as RecZero: each process takes its share of every
SFT and RL batch, gradients averaged, process 0 writes); the traces come from ``python -m
recipes.make_traces`` (or any JSONL with the fields ``prompt`` (the user turn, as
``rrec.tasks.rating.user_prompt`` writes it), ``trace`` (the assistant's answer, which must itself follow
the four-tag template, see ``rrec.tasks.rating.parse_rating``) and ``rating``).

Stages:
  1. SFT: ``sft_steps`` steps of ``rrec.grpo.sft_loss`` (cross-entropy on the trace tokens and the
     end-of-turn token, the prompt carries no loss) on shuffled batches of traces, with its own
     learning rate;
  2. with LoRA: the SFT adapter is merged into the weights (``merge_and_unload``) and RL starts with a
     fresh adapter, so the KL reference of the RL stage (the adapter-disabled model) is the SFT model,
     not the original one; without LoRA both stages train all weights and the KL reference is a frozen
     copy of the SFT weights (``rrec.training.reference_policy``);
  3. RL: ``recipes.reczero.rl_loop`` with the same config keys as RecZero.
The held-out samples are evaluated before SFT, after SFT and after RL; outputs as RecZero's, plus
eval_after_sft.jsonl; metrics.jsonl holds the SFT lines (``stage: sft``) before the RL lines.

Where we depart from the paper (Kong et al. 2025, arXiv 2510.23077): its cold-start traces come from a
strong teacher; ``recipes/make_traces.py`` accepts any local model folder, and with the 135M default
the traces are few and poor. SFT hyperparameters are ours. A trace whose rate disagrees with its
``rating`` field is kept (counted in ``result.json``): the file is trusted as given.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recipes import reczero
from rrec import atomic_files, distributed, grpo, text_rollout, training
from rrec.config import config_from_argv, to_dict
from rrec.tasks import rating


@dataclass
class RecOneConfig(reczero.RecZeroConfig):  # RecZero's keys (the RL stage) plus the SFT stage's
    out_dir: str = "runs/recone"
    traces: str = ""  # JSONL with prompt, trace, rating (required)
    sft_steps: int = 100  # ours
    sft_batch_size: int = 4
    sft_lr: float = 1e-4  # ours: a usual LoRA SFT rate
    sft_warmup_steps: int = 0


def read_traces(path: str | Path, low: float, high: float) -> list[dict]:
    """The traces of a JSONL file; a line without the fields or with an invalid trace is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"traces file {path} not found (make one with recipes.make_traces)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        missing = {"prompt", "trace", "rating"} - set(rec)
        if missing:
            raise ValueError(f"{path.name}: line {n} lacks {sorted(missing)}")
        if rating.parse_rating(rec["trace"], low, high) is None:
            raise ValueError(f"{path.name}: line {n}: the trace does not follow the four-tag template")
        out.append(rec)
    if not out:
        raise ValueError(f"{path.name}: no traces")
    return out


def sft_stage(lm, tokenizer, traces: list[dict], cfg: RecOneConfig, log_lines: list[str], out: Path):
    """``cfg.sft_steps`` SFT steps on ``lm`` in place; appends ``stage: sft`` lines to metrics.jsonl."""
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule_with_warmup

    stop, _ = text_rollout.stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    system = rating.system_prompt(cfg.low, cfg.high)
    prompts = [text_rollout.chat_prompt(tokenizer, t["prompt"], system=system) for t in traces]
    targets = [tokenizer(t["trace"].strip(), add_special_tokens=False)["input_ids"] + [stop] for t in traces]
    rank, world = distributed.rank_and_world()
    params = training.trainable_parameters(lm)
    distributed.broadcast_parameters(params)
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.sft_warmup_steps)
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    lm.train()
    for step in tqdm(range(cfg.sft_steps), desc="sft", unit="step", disable=rank > 0):
        t0 = time.time()
        while len(order) < cfg.sft_batch_size:  # reshuffle at each epoch's end
            order += rng.permutation(len(traces)).tolist()
        batch, order = order[: cfg.sft_batch_size], order[cfg.sft_batch_size :]
        batch = batch[distributed.batch_slice(cfg.sft_batch_size, rank, world)]  # this process's share
        loss = grpo.sft_loss(lm, [prompts[i] for i in batch], [targets[i] for i in batch], pad)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT step {step + 1}: non-finite loss")
        loss.backward()
        distributed.average_gradients(params)  # the mean of the W local token means
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        mean_loss = distributed.sum_over_processes(loss.detach()).item() / world
        rec = {"step": step + 1, "stage": "sft", "sft/loss": mean_loss, "sft/grad_norm": float(grad_norm),
               "sft/lr": sched.get_last_lr()[0], "sft/step_s": time.time() - t0}  # fmt: skip
        if rank == 0 and (step + 1) % cfg.log_every == 0:
            log_lines.append(json.dumps(rec) + "\n")
            atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
    lm.eval()


def main(argv: list[str] | None = None) -> dict:
    from rrec.backbone import apply_lora

    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(RecOneConfig, argv)
    if not cfg.traces:
        raise ValueError("traces=<file.jsonl> is required (make one with python -m recipes.make_traces)")
    out = Path(cfg.out_dir)
    device, main_process = distributed.start_run(out, to_dict(cfg), cfg.device)
    say = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    traces = read_traces(cfg.traces, cfg.low, cfg.high)
    disagree = sum(
        round(rating.parse_rating(t["trace"], cfg.low, cfg.high)) != math.floor(float(t["rating"]) + 0.5)
        for t in traces
    )
    train, held = reczero.load_views(cfg)
    mean = rating.global_mean(train)
    lm, tok = text_rollout.load_policy(
        cfg.model, dtype=cfg.dtype, device=str(device), lora=cfg.lora, lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    say(f"{len(traces)} traces ({disagree} disagree with their rating), {len(held)} held-out samples")
    t0 = time.time()
    before, rows = reczero.evaluate(lm, tok, held, cfg, mean)
    reczero.write_rows(out / "eval_before.jsonl", rows)
    log_lines: list[str] = []
    sft_stage(lm, tok, traces, cfg, log_lines, out)
    if cfg.lora:  # the SFT adapter becomes part of the weights; RL trains a fresh one
        lm = apply_lora(lm.merge_and_unload(), rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        lm.eval()
    after_sft, rows = reczero.evaluate(lm, tok, held, cfg, mean)
    reczero.write_rows(out / "eval_after_sft.jsonl", rows)
    history = reczero.rl_loop(lm, tok, train, cfg, out, log_lines)
    after, rows = reczero.evaluate(lm, tok, held, cfg, mean)
    reczero.write_rows(out / "eval_after.jsonl", rows)
    base = reczero.baselines(train, held, cfg)
    reczero.save_final(lm, tok, out)
    result = {"before": before, "after_sft": after_sft, "after": after, "baselines": base,
              "traces": len(traces), "traces_disagreeing": disagree, "sft_steps": cfg.sft_steps,
              "steps": cfg.steps, "global_mean": mean, "wall_s": time.time() - t0,
              "config": to_dict(cfg)}  # fmt: skip
    if main_process:
        atomic_files.atomic_write_json(out / "result.json", result)
    say(reczero.table({"before": before, "after_sft": after_sft, "after": after, **base}))
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
