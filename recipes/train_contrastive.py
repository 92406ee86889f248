"""The R²ec "w/o reasoning" baseline: user prompt followed directly by ``<answer>``, in-batch contrastive.

Launch: ``rrec train-contrastive recipes/configs/contrastive_smollm2_ml100k.yaml [key=value ...]``, or on
several processes ``accelerate launch --config_file recipes/configs/accelerate_ddp.yaml -m
recipes.train_contrastive <config> [key=value ...]`` (DeepSpeed ZeRO-2: ``accelerate_deepspeed_zero2.yaml``,
valid but untested here). Each of W processes takes B/W users; the target item states are gathered with
gradient (``rrec.distributed.gather_rows_with_grad``), so every user still sees all B targets, and the mean
of the W local losses is the one-process loss; gradients are averaged explicitly, as in ``train_recpo``.
Files are written by process 0 only.

Per step: B samples -> user states at ``<answer>`` (no reasoning) and the item states of their targets,
both with gradient -> cross-entropy of ``cos(user, item) / temperature`` over the batch's targets (other
users' targets are the negatives; a target that two users share is not counted as a negative for
either). Evaluation is the same full-catalog evaluator, without reasoning. Model setup, LoRA and the
evaluation subset are shared with ``train_recpo`` so the two are compared on the same users. As there,
the evaluations every ``eval_every`` steps run on a subset of ``valid_split`` (``valid/ndcg@10`` lines
of metrics.jsonl) and ``eval_split`` (test) is evaluated only before and after training, on the same
samples (the "before" numbers are reported beside the "after" ones; nothing in training reads them).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from recipes.train_recpo import prepare, run_eval, setup
from rrec import atomic_files, checkpoint, distributed, training
from rrec.config import config_from_argv, to_dict


@dataclass
class ContrastiveConfig:
    model: str = ""
    prepared: str = ""
    out_dir: str = "runs/contrastive"
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    max_history: int = 20
    lora: bool = True
    lora_rank: int = 4
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    steps: int = 200
    max_train_minutes: float | None = None  # stop after the step that crosses it (then eval + save)
    users_per_step: int = 16  # B: in-batch negatives = B - 1
    lr: float = 1e-5
    warmup_steps: int = 32
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    refresh_every: int = 0  # the table is rebuilt for every evaluation; training needs no table
    eval_every: int = 0  # mid-training evaluations on valid_split; 0: only before and after training
    eval_split: str = "test"  # before and after training only
    valid_split: str = "valid"
    valid_users: int | None = 32
    valid_samples_per_user: int | None = 1
    eval_users: int | None = 32
    eval_samples_per_user: int | None = 1
    eval_max_new_tokens: int = 128  # unused without reasoning; kept for the shared evaluator
    eval_batch_size: int = 16
    save_every: int = 0  # 0: no resumable checkpoints (one is still written on SIGTERM)
    keep_checkpoints: int = 0  # 0 keeps all
    resume_from: str = ""  # a checkpoint folder, or "latest" (the newest in out_dir; none: a fresh start)
    log_every: int = 1


def in_batch_contrastive(
    users: torch.Tensor, items: torch.Tensor, targets: list[str], tau: float, offset: int = 0
) -> torch.Tensor:
    """Cross-entropy of each user over the batch's target items; duplicate targets are not negatives.

    Args:
        users: (b, D) user states of batch rows ``offset .. offset + b - 1`` (b = B on one process).
        items: (B, D) the targets' item states of the whole batch; targets: the B item ids.

    Returns:
        the mean over the b users (the mean over processes of these is the mean over the batch).
    """
    b = users.shape[0]
    logits = F.normalize(users.float(), dim=-1) @ F.normalize(items.float(), dim=-1).T / tau  # (b, B)
    mine = targets[offset : offset + b]
    same = torch.tensor([[a == t for t in targets] for a in mine], device=logits.device)  # (b, B)
    own = torch.arange(offset, offset + b, device=logits.device)  # (b,) each user's column
    is_own = torch.zeros_like(same)
    is_own[torch.arange(b, device=logits.device), own] = True
    logits = logits.masked_fill(same & ~is_own, float("-inf"))
    return F.cross_entropy(logits, own)


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import get_constant_schedule_with_warmup

    from rrec.evaluation import select_samples

    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(ContrastiveConfig, argv)
    acc = Accelerator()
    rank, world = distributed.rank_and_world()
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and (cfg.save_every or cfg.resume_from):
        raise ValueError(
            "checkpoints are not implemented under DeepSpeed (ZeRO-2 shards the optimiser state)"
        )
    mine = distributed.batch_slice(cfg.users_per_step, rank, world)
    out = Path(cfg.out_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_files.atomic_write_json(out / "config.json", to_dict(cfg))
    with acc.main_process_first():  # process 0 fetches / prepares the default data first, once
        model, data, eval_df = setup(cfg, acc.device)
    valid_df = None
    if cfg.eval_every:
        split = data.splits[cfg.valid_split]
        valid_df = select_samples(split, cfg.valid_users, cfg.valid_samples_per_user, cfg.seed)
    params = training.trainable_parameters(model.lm)
    distributed.broadcast_parameters(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    resume = training.resume_path(cfg.resume_from, out)
    start, state = 0, None
    if resume is not None:
        state = checkpoint.load_checkpoint(resume, model=model, optimizer=opt, scheduler=sched, rank=rank,
                                           world=world)  # fmt: skip
        start = state.step
        acc.print(f"resumed from {resume} at step {start}")
    opt = prepare(acc, model, opt, cfg.users_per_step // world, cfg.max_grad_norm)
    t0 = time.time()
    if state is None:
        before, _ = run_eval(model, eval_df, cfg, reasoning=False)
    else:
        before = state.extra["before"]
        checkpoint.set_rng_state(state.rng)
    acc.print(f"eval before: ndcg@10={before['ndcg@10']:.4f} hit@10={before['hit@10']:.4f}")
    batches = training.sample_batches(data.splits["train"], cfg.users_per_step, cfg.seed, start=start)
    log_lines = training.kept_log(out / "metrics.jsonl", start) if start else []
    history = []
    done, timed_out, t_train = cfg.steps, False, time.time()
    with checkpoint.sigterm_flag() as sigterm:
        for step in range(start, cfg.steps):
            t_step = time.time()
            batch = next(batches)  # the global batch, the same on every process
            targets = batch["target"].astype(str).tolist()
            model.lm.train()
            ids, mask = training.prompt_batch(model, batch.iloc[mine].reset_index(drop=True), reasoning=False)
            users = model.user_states(ids, mask)  # (B/W, D), with graph
            local_items = training.encode_targets(model, targets[mine], grad=True)  # (B/W, D)
            items = distributed.gather_rows_with_grad(local_items)  # (B, D): all targets are negatives
            loss = in_batch_contrastive(users, items, targets, model.config.temperature, offset=mine.start)
            if distributed.any_process(not bool(torch.isfinite(loss)), model.device):
                raise FloatingPointError(f"step {step}: non-finite loss on some process")
            acc.backward(loss)
            if not deepspeed:
                distributed.average_gradients(params)
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            global_loss = distributed.sum_over_processes(loss.detach()).item() / world
            rec = {"step": step + 1, "train/loss": global_loss,
                   "train/grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                   "train/lr": sched.get_last_lr()[0], "train/step_s": time.time() - t_step}  # fmt: skip
            history.append(rec)
            if acc.is_main_process and (step + 1) % cfg.log_every == 0:
                log_lines.append(json.dumps(rec) + "\n")
                atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
                acc.print(f"step {step + 1}/{cfg.steps} loss {rec['train/loss']:.4f}")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                mid, _ = run_eval(model, valid_df, cfg, reasoning=False)  # test: before and after only
                if acc.is_main_process:
                    log_lines.append(json.dumps({"step": step + 1, "valid/ndcg@10": mid["ndcg@10"]}) + "\n")
                    atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
            if training.out_of_time(t_train, cfg.max_train_minutes, model.device):
                done, timed_out = step + 1, step + 1 < cfg.steps
                if timed_out:
                    acc.print(f"max_train_minutes={cfg.max_train_minutes} reached after step {done}")
                    break
            stop = distributed.any_process(sigterm(), model.device)
            if stop and deepspeed:
                acc.print(f"SIGTERM: stopping after step {step + 1} (no checkpoint under DeepSpeed)")
                return {"stopped_at": step + 1, "history": history}
            if stop or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                where = checkpoint.save_from_every_process(
                    out, step + 1, model=model, optimizer=opt, scheduler=sched, extra={"before": before},
                    keep=cfg.keep_checkpoints,
                )  # fmt: skip
                if stop:
                    acc.print(
                        f"SIGTERM: saved {where} after step {step + 1}; resume with resume_from={where}"
                    )
                    return {"stopped_at": step + 1, "checkpoint": str(where), "history": history}
    after, after_rows = run_eval(model, eval_df, cfg, reasoning=False)
    acc.print(f"eval after: ndcg@10={after['ndcg@10']:.4f} hit@10={after['hit@10']:.4f}")
    result = {"before": before, "after": after, "steps": done, "stopped_by_time": timed_out,
              "resumed_from": start or None,
              "wall_s": time.time() - t0, "config": to_dict(cfg)}  # fmt: skip
    if acc.is_main_process:
        with atomic_files.atomic_folder(out / "final") as tmp:
            model.save_pretrained(tmp)
        atomic_files.atomic_write_json(out / "result.json", result)
        rows_text = "".join(json.dumps(r) + "\n" for r in after_rows)
        atomic_files.atomic_write_text(out / "per_user_after.jsonl", rows_text)
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
