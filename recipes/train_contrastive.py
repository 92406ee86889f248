"""The R²ec "w/o reasoning" baseline: user prompt followed directly by ``<answer>``, in-batch contrastive.

Launch: ``rrec train-contrastive recipes/configs/contrastive_smollm2_ml100k.yaml [key=value ...]``.

Per step: B samples -> user states at ``<answer>`` (no reasoning) and the item states of their targets,
both with gradient -> cross-entropy of ``cos(user, item) / temperature`` over the batch's targets (other
users' targets are the negatives; a target that two users share is not counted as a negative for
either). Evaluation is the same full-catalog evaluator, without reasoning. Model setup, LoRA and the
evaluation subset are shared with ``train_recpo`` so the two are compared on the same users.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from recipes.train_recpo import run_eval, setup
from rrec import training
from rrec.config import load_config, to_dict


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
    users_per_step: int = 16  # B: in-batch negatives = B - 1
    lr: float = 1e-5
    warmup_steps: int = 32
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    refresh_every: int = 0  # the table is rebuilt for every evaluation; training needs no table
    eval_every: int = 0
    eval_split: str = "test"
    eval_users: int | None = 32
    eval_samples_per_user: int | None = 1
    eval_max_new_tokens: int = 128  # unused without reasoning; kept for the shared evaluator
    eval_batch_size: int = 16
    log_every: int = 1


def in_batch_contrastive(
    users: torch.Tensor, items: torch.Tensor, targets: list[str], tau: float
) -> torch.Tensor:
    """Cross-entropy of each user over the batch's target items; duplicate targets are not negatives.

    Args:
        users: (B, D) user states; items: (B, D) their targets' item states; targets: B item ids.
    """
    logits = F.normalize(users.float(), dim=-1) @ F.normalize(items.float(), dim=-1).T / tau  # (B, B)
    same = torch.tensor([[a == b for b in targets] for a in targets], device=logits.device)  # (B, B)
    eye = torch.eye(len(targets), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(targets), device=logits.device))


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from transformers import get_constant_schedule_with_warmup

    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv and "=" not in argv[0] else None
    cfg = load_config(ContrastiveConfig, path, [a for a in argv if a is not path])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    acc = Accelerator()
    model, data, eval_df = setup(cfg)
    params = training.trainable_parameters(model.lm)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    model.lm, opt, sched = acc.prepare(model.lm, opt, sched)
    t0 = time.time()
    before, _ = run_eval(model, eval_df, cfg, reasoning=False)
    acc.print(f"eval before: ndcg@10={before['ndcg@10']:.4f} hit@10={before['hit@10']:.4f}")
    batches = training.sample_batches(data.splits["train"], cfg.users_per_step, cfg.seed)
    history = []
    with open(out / "metrics.jsonl", "w") as log_f:
        for step in range(cfg.steps):
            t_step = time.time()
            rows = next(batches)
            targets = rows["target"].astype(str).tolist()
            model.lm.train()
            ids, mask = training.prompt_batch(model, rows, reasoning=False)
            users = model.user_states(ids, mask)  # (B, D), with graph
            items = training.encode_targets(model, targets, grad=True)  # (B, D)
            loss = in_batch_contrastive(users, items, targets, model.config.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: non-finite loss {loss.item()}")
            acc.backward(loss)
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            rec = {"step": step + 1, "train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                   "train/lr": sched.get_last_lr()[0], "train/step_s": time.time() - t_step}  # fmt: skip
            history.append(rec)
            if (step + 1) % cfg.log_every == 0:
                log_f.write(json.dumps(rec) + "\n")
                acc.print(f"step {step + 1}/{cfg.steps} loss {rec['train/loss']:.4f}")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                mid, _ = run_eval(model, eval_df, cfg, reasoning=False)
                log_f.write(json.dumps({"step": step + 1, "eval/ndcg@10": mid["ndcg@10"]}) + "\n")
    after, after_rows = run_eval(model, eval_df, cfg, reasoning=False)
    acc.print(f"eval after: ndcg@10={after['ndcg@10']:.4f} hit@10={after['hit@10']:.4f}")
    result = {"before": before, "after": after, "steps": cfg.steps, "wall_s": time.time() - t0,
              "config": to_dict(cfg)}  # fmt: skip
    if acc.is_main_process:
        model.lm = acc.unwrap_model(model.lm)
        model.save_pretrained(out / "final")
        (out / "result.json").write_text(json.dumps(result, indent=2))
        with open(out / "per_user_after.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in after_rows)
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
