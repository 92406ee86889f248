"""RecPO training: rollout -> fused reward -> group advantages -> num_iterations x (loss, step).

Launch: ``rrec train-recpo recipes/configs/recpo_smollm2_ml100k.yaml [key=value ...]`` or
``accelerate launch -m recipes.train_recpo <config>`` (single process is the default; the loop is written
on ``accelerate.Accelerator`` so that the same script later runs multi-process).

Per step, in the order of the paper's Algorithm 1:
  1. every ``refresh_every`` steps rebuild the whole item table; every step re-encode the batch's
     target items and write them into the table (before sampling and rewarding);
  2. sample G reasonings per user (temperature / top-k / top-p), keeping the sampled ids;
  3. score the user states at ``<answer>`` against the full table (history masked), fused reward;
  4. group advantages; old log-probs from a teacher-forced pass on exactly the sampled ids (when
     ``num_iterations`` >= 2; with 1 the ratio is 1 by construction, as in TRL);
  5. ``num_iterations`` PPO epochs over the rollout batch: token-level clipped loss on reasoning tokens
     plus the item action on each group's best trajectory (``rrec.recpo.recpo_loss``).

Departures from the paper, all deliberate: see ``rrec/recpo.py`` (real old log-probs, correct RLOO,
float32 ranking, no re-tokenisation). Defaults follow the paper (G=4, temperature 1.5, top-k 200, 512
new tokens, LoRA rank 4 on all linear projections, lr 1e-5 with 32 warm-up steps); the demo config
shortens the run to fit a 2-core CPU. Validated: the unit tests and short CPU runs; the paper-scale GPU
run is not reproduced here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rrec import recpo, training
from rrec.config import load_config, to_dict
from rrec.metrics import rank_of_target


@dataclass
class RecPOConfig:
    model: str = ""  # HF folder or rrec folder; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal (prepared on demand)
    out_dir: str = "runs/recpo"
    seed: int = 0
    dtype: str = (
        "auto"  # auto: bf16 where fast (GPU, CPUs with AVX512-BF16/AMX) else float32; LoRA stays fp32
    )
    device: str = "auto"  # auto: cuda if available, else cpu
    max_history: int = 20  # history items shown in the prompt (R²ec: 20)
    lora: bool = True
    lora_rank: int = 4  # R²ec
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    steps: int = 200
    users_per_step: int = 4  # B
    num_generations: int = 4  # G (R²ec)
    temperature: float = 1.5  # R²ec sampling temperature
    top_k: int = 200  # R²ec
    top_p: float = 1.0
    max_completion_length: int = 512  # R²ec
    lr: float = 1e-5  # R²ec
    warmup_steps: int = 32  # R²ec; really applied (linear from 0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1  # mu, PPO epochs per rollout batch
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon
    loss_type: str = "grpo"
    advantage: str = "grpo"  # grpo | rloo | none
    reward_beta: float = 0.05  # weight of the softmax-similarity term (R²ec)
    reward_mode: str = "convex"  # convex (official code) | additive (paper text)
    ndcg_k: int = 1000
    beta_kl: float = 0.0
    item_weight: float = 1.0
    item_grad: bool = True  # the batch targets' item states carry gradient in the item action
    refresh_every: int = 50  # full item-table rebuild period (steps)
    eval_every: int = 0  # 0: only before and after training
    eval_split: str = "test"
    eval_users: int | None = 32
    eval_samples_per_user: int | None = 1
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 16
    save_every: int = 0  # 0: only the final checkpoint
    log_every: int = 1
    tensorboard: bool = True


def setup(cfg: RecPOConfig):
    """Model (+LoRA), prepared data, evaluation subset: shared with the contrastive recipe."""
    from rrec.assets import fetch, model_dir
    from rrec.backbone import apply_lora, parse_dtype
    from rrec.data import load_prepared
    from rrec.evaluation import select_samples
    from rrec.model import ReasoningRecommender

    torch.manual_seed(cfg.seed)
    if cfg.prepared:
        data = load_prepared(cfg.prepared)
    else:
        from recipes.prepare import ensure_default

        data = load_prepared(ensure_default())
    path = cfg.model or str(fetch(datasets=())["model"] if not model_dir().exists() else model_dir())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    dtype = parse_dtype(cfg.dtype, device)
    if dtype != torch.float32 and not cfg.lora:
        dtype = torch.float32  # full fine-tuning keeps float32 master weights (lr 1e-5 vanishes in bf16)
    model = ReasoningRecommender.from_pretrained(
        path, dtype=dtype, device=device, catalog=data.items, max_history=cfg.max_history
    )
    if cfg.lora:
        model.lm = apply_lora(model.lm, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    if cfg.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.lm.enable_input_require_grads()
    eval_df = select_samples(data.splits[cfg.eval_split], cfg.eval_users, cfg.eval_samples_per_user, cfg.seed)
    return model, data, eval_df


def run_eval(model, eval_df, cfg, reasoning: bool = True) -> tuple[dict, list[dict]]:
    from rrec.evaluation import evaluate_samples, per_user_rows, summarize

    model.lm.eval()
    model.build_item_table(batch_size=64)
    res = evaluate_samples(
        model, eval_df, reasoning=reasoning, batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.eval_max_new_tokens, progress=True,
    )  # fmt: skip
    return summarize(res.ranks, res.user_ids), per_user_rows(res)


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from transformers import get_constant_schedule_with_warmup

    from rrec.rollout import generate_reasoning

    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv and "=" not in argv[0] else None
    cfg = load_config(RecPOConfig, path, [a for a in argv if a is not path])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    acc = Accelerator()
    model, data, eval_df = setup(cfg)
    G, B = cfg.num_generations, cfg.users_per_step
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    params = training.trainable_parameters(model.lm)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    model.lm, opt, sched = acc.prepare(model.lm, opt, sched)
    writer = None
    if cfg.tensorboard and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    log_f = open(out / "metrics.jsonl", "w") if acc.is_main_process else None  # noqa: SIM115

    t0 = time.time()
    before, before_rows = run_eval(model, eval_df, cfg)
    acc.print(f"eval before: ndcg@10={before['ndcg@10']:.4f} hit@10={before['hit@10']:.4f}")
    batches = training.sample_batches(data.splits["train"], B, cfg.seed)
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    history: list[dict] = []
    for step in range(cfg.steps):
        t_step = time.time()
        rows = next(batches)
        targets = rows["target"].astype(str).tolist()
        model.lm.eval()
        if step > 0 and cfg.refresh_every and step % cfg.refresh_every == 0:
            model.build_item_table(batch_size=64)
        with torch.no_grad():  # 1. refresh the batch targets before sampling and rewarding
            target_states_old = training.encode_targets(model, targets, grad=False)  # (B, D)
        training.refresh_targets(model, targets, target_states_old)
        prompt_ids, prompt_mask = training.prompt_batch(model, rows)  # (B, P)
        roll = generate_reasoning(  # 2. G reasonings per user, ids kept
            model.lm, prompt_ids, prompt_mask, answer_id=model.answer_id, pad_id=model.pad_id,
            eos_ids=[model.tokenizer.eos_token_id], max_new_tokens=cfg.max_completion_length,
            num_generations=G, do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, generator=gen,
        )  # fmt: skip
        with torch.no_grad():  # 3. reward against the full table, history masked
            scores = model.score(roll.user_states)  # (B*G, N)
            hist = training.history_mask(model, rows["history"].tolist(), scores.shape[1])
            scores = scores.masked_fill(hist.repeat_interleave(G, 0), float("-inf"))
            tcol = training.target_columns(model, targets).repeat_interleave(G)  # (B*G,)
            rewards = recpo.fused_reward(
                scores, tcol, beta=cfg.reward_beta, ndcg_k=cfg.ndcg_k, mode=cfg.reward_mode
            )
            ranks = rank_of_target(scores, tcol)
            adv = recpo.group_advantages(rewards, G, cfg.advantage)  # 4.
            old_logps = old_item = ref_logps = None
            if cfg.num_iterations > 1:
                old_logps, old_states = training.policy_forward(
                    model.lm, roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask,
                    cfg.temperature,
                )  # fmt: skip
                old_item = recpo.in_batch_item_logps(
                    old_states, target_states_old, G, model.config.temperature
                )
            if cfg.beta_kl > 0:
                with acc.unwrap_model(model.lm).disable_adapter():
                    ref_logps, _ = training.policy_forward(
                        model.lm, roll.prompt_ids, roll.prompt_mask, roll.completion_ids,
                        roll.completion_mask, cfg.temperature,
                    )  # fmt: skip
        model.lm.train()
        for _ in range(cfg.num_iterations):  # 5. PPO epochs over this rollout batch
            logps, states = training.policy_forward(
                model.lm, roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask,
                cfg.temperature,
            )  # fmt: skip
            tstates = (
                training.encode_targets(model, targets, grad=True) if cfg.item_grad else target_states_old
            )
            item_lp = recpo.in_batch_item_logps(states, tstates, G, model.config.temperature)
            loss, st = recpo.recpo_loss(
                logps, logps.detach() if old_logps is None else old_logps, adv, roll.completion_mask,
                item_lp, item_lp.detach() if old_item is None else old_item, group_size=G,
                epsilon=cfg.epsilon, epsilon_high=eps_high, loss_type=cfg.loss_type,
                max_completion_length=cfg.max_completion_length, beta_kl=cfg.beta_kl, ref_logps=ref_logps,
                item_weight=cfg.item_weight,
            )  # fmt: skip
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: non-finite loss {loss.item()}")
            acc.backward(loss)
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        n_tok = int(roll.completion_mask.sum())
        dt = time.time() - t_step
        zero_std = (rewards.view(-1, G).std(1) == 0).float().mean().item() if G > 1 else 1.0
        rec = {
            "step": step + 1,
            "train/reward_mean": rewards.mean().item(),
            "train/reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "train/ndcg": recpo.fused_reward(scores, tcol, beta=0.0, ndcg_k=cfg.ndcg_k).mean().item(),
            "train/rank_median": ranks.float().median().item(),
            "train/zero_std_groups": zero_std,
            "train/clip_fraction": st.clip_fraction.item(),
            "train/ratio_mean": st.ratio_mean.item(),
            "train/kl": st.kl.item(),
            "train/item_loss_share": st.item_loss_share.item(),
            "train/loss": loss.item(),
            "train/policy_loss": st.policy_loss.item(),
            "train/item_loss": st.item_loss.item(),
            "train/reasoning_len": roll.completion_mask.sum(1).float().mean().item(),
            "train/forced_answer": roll.forced.float().mean().item(),
            "train/grad_norm": float(grad_norm),
            "train/lr": sched.get_last_lr()[0],
            "train/tokens_per_s": n_tok / dt,
            "train/step_s": dt,
        }
        history.append(rec)
        if log_f is not None and (step + 1) % cfg.log_every == 0:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            if writer is not None:
                for k, v in rec.items():
                    if k != "step" and math.isfinite(v):
                        writer.add_scalar(k, v, step + 1)
            acc.print(
                f"step {step + 1}/{cfg.steps} reward {rec['train/reward_mean']:.4f} "
                f"ndcg {rec['train/ndcg']:.4f} clip {rec['train/clip_fraction']:.3f} "
                f"len {rec['train/reasoning_len']:.0f} {dt:.1f}s"
            )
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            mid, _ = run_eval(model, eval_df, cfg)
            mid_rec = {"step": step + 1, **{f"eval/{k}": v for k, v in mid.items() if isinstance(v, float)}}
            if log_f is not None:
                log_f.write(json.dumps(mid_rec) + "\n")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and acc.is_main_process:
            model.lm = acc.unwrap_model(model.lm)
            model.save_pretrained(out / f"checkpoint-{step + 1}")

    train_s = time.time() - t0
    after, after_rows = run_eval(model, eval_df, cfg)
    acc.print(f"eval after: ndcg@10={after['ndcg@10']:.4f} hit@10={after['hit@10']:.4f}")
    result = {"before": before, "after": after, "steps": cfg.steps, "wall_s": time.time() - t0,
              "train_and_eval_s": train_s, "config": to_dict(cfg)}  # fmt: skip
    if acc.is_main_process:
        model.lm = acc.unwrap_model(model.lm)
        model.save_pretrained(out / "final")
        (out / "result.json").write_text(json.dumps(result, indent=2))
        for name, rows_ in (("per_user_before.jsonl", before_rows), ("per_user_after.jsonl", after_rows)):
            with open(out / name, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows_)
        if log_f is not None:
            log_f.close()
        if writer is not None:
            writer.close()
    result["history"] = history
    result["examples"] = after_rows
    return result


if __name__ == "__main__":
    main()
