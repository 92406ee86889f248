"""RecLLM-R1 on MovieLens: SFT (history -> next title), then GRPO (history -> reasoning -> K titles).

Launch: ``rrec recllm-r1 recipes/configs/recllm_r1_smollm2_ml100k.yaml [key=value ...]`` (one process), or
``accelerate launch --config_file recipes/configs/accelerate_ddp.yaml -m recipes.recllm_r1 <config>
[key=value ...]``: each of W processes takes B/W samples of every SFT and GRPO batch (a prompt's G
completions stay together), gradients are averaged over processes (``rrec.grpo.grpo_update``; the SFT
step: the mean of the W local token means), evaluation is sharded and gathered, process 0 writes the
files; ``row_seeds=true`` makes the sampled completions independent of W.

Flow: load the policy (``text_rollout.load_policy``, LoRA) -> evaluate (before) -> SFT stage (``sft_steps``
batches of ``sft_batch_size`` training samples, cross-entropy of the next item as a one-line list, "1.
Title (Year)", after the same prompt as GRPO's, ``grpo.sft_loss``; 0 skips it) -> evaluate (after SFT) ->
GRPO stage (per step: B training samples, G completions each at ``temperature``, rewards accuracy /
diversity / novelty / format from ``rrec.tasks.recllm_r1.make_rewards`` summed with their weights,
``rrec.recpo.group_advantages``, ``grpo.grpo_update``) -> evaluate (after). Evaluation: greedy completions
of the GRPO prompt on a fixed subset of ``eval_split`` (``rrec.evaluation.select_samples``), Recall@10 /
NDCG@10 of the target in the mapped list (95% bootstrap intervals over users), diversity, novelty,
valid-title rate, well-formed rate; the most-popular baseline (top 10 training items outside the history)
on the same samples.

Outputs in ``out_dir``: config.json, metrics.jsonl (one line per SFT and GRPO step), eval_<stage>.jsonl
(one line per eval sample: mapped items, metrics, completion), result.json {baseline_pop, before,
after_sft, after, steps, wall_s, config}, final/ (the LoRA adapter and tokenizer).

Departures from the paper (RecLLM-R1, Xie et al. 2025; no public code) are listed in
``rrec/tasks/recllm_r1.py``; defaults without a paper source are marked "ours". No checkpoints or
resume (the runs are short); validated by the unit tests and short CPU runs only.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rrec import atomic_files, distributed, grpo, recpo, text_rollout, training
from rrec.config import config_from_argv, to_dict
from rrec.tasks import recllm_r1 as task


@dataclass
class RecLLMR1Config:
    model: str = ""  # HF folder; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal (prepared on demand)
    out_dir: str = "runs/recllm-r1"
    seed: int = 0
    dtype: str = "auto"  # text_rollout.load_policy: bf16 where fast, else float32
    device: str = "auto"
    lora: bool = True
    lora_rank: int = 8  # ours (R²ec uses 4; the title task must learn the catalog's names)
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    max_history: int = 10  # ours: history titles shown (most recent last); 10 titles ~ 150 tokens
    k: int = 10  # titles asked for and rewarded (NDCG@K); evaluation is always @10
    fuzzy_cutoff: float = 0.85  # title_match: difflib ratio of a fuzzy title match (ours)
    strict_answer: bool = (
        False  # ours: True reads titles only inside <answer>; False also bare numbered lists
    )
    # SFT stage
    sft_steps: int = 200  # ours; 0 skips the stage
    sft_batch_size: int = 8
    sft_lr: float = 1e-4  # ours: LoRA SFT
    # GRPO stage
    steps: int = 200
    users_per_step: int = 4  # B
    num_generations: int = 4  # G (TRL's default 8 halved for CPU budgets)
    temperature: float = 1.0  # TRL default
    top_k: int | None = None
    top_p: float | None = None
    max_completion_length: int = 256  # reasoning + 10 titles fit in ~200 tokens
    lr: float = 1e-5  # as RecPO
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1  # TRL's mu
    epsilon: float = 0.2  # TRL
    epsilon_high: float | None = None  # None: = epsilon
    loss_type: str = "grpo"
    advantage: str = "grpo"  # grpo | rloo | none
    beta_kl: float = 0.0  # TRL's current default
    w_acc: float = 1.0  # reward weights (ours: rrec/tasks/recllm_r1.py)
    w_div: float = 0.2
    w_nov: float = 0.2
    w_format: float = 0.1
    # evaluation
    eval_split: str = "test"
    eval_users: int | None = 64
    eval_samples_per_user: int | None = 1
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 16
    row_seeds: bool = False  # one sampling seed per (step, sample, g): independent of the process count
    log_every: int = 1


def _prompts(tok, cat: task.Catalog, rows, cfg: RecLLMR1Config) -> list[list[int]]:
    """The list prompt (history -> reasoning -> K titles) of each row; SFT, GRPO and evaluation share it."""
    out = []
    for h in rows["history"]:
        text = task.grpo_prompt(task.history_titles(cat, h, cfg.max_history), cfg.k)
        out.append(text_rollout.chat_prompt(tok, text, system=task.SYSTEM))
    return out


def evaluate(lm, tok, cat, eval_df, cfg: RecLLMR1Config, name: str, out: Path) -> dict:
    """Greedy completions of the GRPO prompt -> per-sample rows (eval_<name>.jsonl) -> summary.

    The completions are generated in shards over processes and gathered; process 0 writes the rows."""
    texts = text_rollout.generate_texts(
        lm, tok, _prompts(tok, cat, eval_df, cfg), max_new_tokens=cfg.eval_max_new_tokens,
        batch_size=cfg.eval_batch_size, progress=True,
    )  # fmt: skip
    rows = task.score_completions(cat, texts, eval_df, k=10)
    summary = task.summarise(rows, k=10, seed=cfg.seed)
    if distributed.rank_and_world()[0] > 0:
        return summary
    atomic_files.atomic_write_text(out / f"eval_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"eval {name}: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float)))
    return summary


def _table(result: dict) -> str:
    cols = ("recall@10", "ndcg@10", "diversity", "novelty", "valid_title_rate", "well_formed")
    lines = [f"{'':13}" + "".join(f"{c:>24}" for c in cols)]
    for name in ("baseline_pop", "before", "after_sft", "after"):
        s = result.get(name)
        if s is None:
            continue
        cells = []
        for c in cols:
            ci = s.get(f"{c}_ci95")
            cells.append(f"{s[c]:.4f} [{ci[0]:.3f},{ci[1]:.3f}]" if ci else f"{s[c]:.4f}")
        lines.append(f"{name:13}" + "".join(f"{x:>24}" for x in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from transformers import get_constant_schedule_with_warmup

    from rrec.data import load_prepared
    from rrec.evaluation import select_samples

    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(RecLLMR1Config, argv)
    t0 = time.time()
    out = Path(cfg.out_dir)
    device, main_process = distributed.start_run(out, to_dict(cfg), cfg.device)
    rank, world = distributed.rank_and_world()
    say = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    if cfg.prepared:
        data = load_prepared(cfg.prepared)
    else:
        from rrec.data import ensure_default

        data = load_prepared(ensure_default())
    train = data.splits["train"]
    cat = task.build_catalog(data.items, train, cfg.fuzzy_cutoff, cfg.strict_answer)
    eval_df = select_samples(data.splits[cfg.eval_split], cfg.eval_users, cfg.eval_samples_per_user, cfg.seed)
    lm, tok = text_rollout.load_policy(
        cfg.model, dtype=cfg.dtype, device=str(device), lora=cfg.lora, lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    stop = text_rollout.stop_ids(tok)[0]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop
    params = training.trainable_parameters(lm)
    distributed.broadcast_parameters(params)  # every process starts from process 0's weights
    reference = training.reference_policy(lm, cfg.beta_kl)  # the loaded policy (LoRA: adapter off)
    log_lines: list[str] = []
    history: list[dict] = []

    def log(rec: dict) -> None:
        history.append(rec)
        if main_process and rec["step"] % cfg.log_every == 0:
            log_lines.append(json.dumps(rec) + "\n")
            atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))

    baseline = task.score_lists(cat, task.popular_lists(cat, eval_df["history"], 10), eval_df, k=10)
    result: dict = {"baseline_pop": task.summarise(baseline, k=10, seed=cfg.seed)}
    if main_process:
        atomic_files.atomic_write_text(
            out / "eval_baseline_pop.jsonl", "".join(json.dumps(r) + "\n" for r in baseline)
        )
    result["before"] = evaluate(lm, tok, cat, eval_df, cfg, "before", out)

    # SFT stage: the list prompt -> "1. <next item's Title (Year)>" + end-of-turn
    sft_batches = training.sample_batches(train, cfg.sft_batch_size, cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.sft_steps):
        t_step = time.time()
        rows = next(sft_batches).iloc[distributed.batch_slice(cfg.sft_batch_size, rank, world)]
        prompts = _prompts(tok, cat, rows, cfg)
        targets = [
            [*tok.encode(task.sft_target(cat, t), add_special_tokens=False), stop] for t in rows["target"]
        ]
        lm.train()
        loss = grpo.sft_loss(lm, prompts, targets, pad)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT step {step + 1}: non-finite loss")
        loss.backward()
        distributed.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lm.eval()
        rec = {
            "stage": "sft",
            "step": step + 1,
            "sft/loss": distributed.sum_over_processes(loss.detach()).item() / world,
            "sft/grad_norm": float(grad_norm),
            "sft/lr": cfg.sft_lr,
            "sft/step_s": time.time() - t_step,
        }
        log(rec)
        say(f"sft {step + 1}/{cfg.sft_steps} loss {rec['sft/loss']:.4f} {rec['sft/step_s']:.1f}s")
    result["after_sft"] = evaluate(lm, tok, cat, eval_df, cfg, "after_sft", out) if cfg.sft_steps else None

    # GRPO stage
    G, B = cfg.num_generations, cfg.users_per_step
    funcs, weights = task.make_rewards(
        cat, cfg.k, w_acc=cfg.w_acc, w_div=cfg.w_div, w_nov=cfg.w_nov, w_format=cfg.w_format
    )
    w = torch.tensor(weights, dtype=torch.float32)  # (F,)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    batches = training.sample_batches(train, B, cfg.seed + 1)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    for step in range(cfg.steps):
        t_step = time.time()
        mine, seeds = text_rollout.local_rows(B, step, cfg.seed, G)  # this process's rows of the global batch
        rows = next(batches).iloc[mine]
        roll = text_rollout.sample_completions(
            lm, tok, _prompts(tok, cat, rows, cfg), num_generations=G,
            max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, generator=gen, row_seeds=seeds if cfg.row_seeds else None,
        )  # fmt: skip
        cols = grpo.repeat_columns({"target": rows["target"].astype(str).tolist()}, G)
        parts = grpo.reward_matrix(funcs, roll.texts, cols)  # (B*G, F)
        rewards = parts @ w  # (B*G,)
        adv = recpo.group_advantages(rewards, G, cfg.advantage)  # (B*G,)
        lr = sched.get_last_lr()[0]
        st = grpo.grpo_update(
            lm, params, opt, sched, roll, adv, num_iterations=cfg.num_iterations,
            temperature=cfg.temperature, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
            loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length, beta_kl=cfg.beta_kl,
            reference=reference, max_grad_norm=cfg.max_grad_norm,
        )  # fmt: skip
        lengths = torch.stack([roll.completion_mask.sum(1).float(), roll.truncated.float()], 1).cpu()
        per_row = distributed.gather_rows(torch.cat([rewards[:, None], parts, lengths], 1).to(device)).cpu()
        rewards, parts, lengths = per_row[:, 0], per_row[:, 1:-2], per_row[:, -2:]  # every process's rows
        zero_std = (rewards.view(-1, G) == rewards.view(-1, G)[:, :1]).all(1).float().mean().item()
        rec = {
            "stage": "grpo",
            "step": step + 1,
            "train/reward_mean": rewards.mean().item(),
            "train/reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            **{f"train/{n}": parts[:, j].mean().item() for j, n in enumerate(task.REWARD_NAMES)},
            "train/zero_std_groups": zero_std,
            "train/loss": st.loss,
            "train/clip_fraction": st.clip_fraction,
            "train/ratio_mean": st.ratio_mean,
            "train/kl": st.kl,
            "train/grad_norm": st.grad_norm,
            "train/completion_len": lengths[:, 0].mean().item(),
            "train/truncated": lengths[:, 1].mean().item(),
            "train/lr": lr,
            "train/step_s": time.time() - t_step,
        }
        log(rec)
        say(
            f"grpo {step + 1}/{cfg.steps} reward {rec['train/reward_mean']:.4f} "
            f"acc {rec['train/accuracy']:.4f} fmt {rec['train/format']:.2f} zero-std {zero_std:.2f} "
            f"len {rec['train/completion_len']:.0f} {rec['train/step_s']:.1f}s"
        )
    result["after"] = evaluate(lm, tok, cat, eval_df, cfg, "after", out)

    result.update({"steps": {"sft": cfg.sft_steps, "grpo": cfg.steps}, "wall_s": time.time() - t0,
                   "config": to_dict(cfg)})  # fmt: skip
    if main_process:
        with atomic_files.atomic_folder(out / "final") as tmp:
            lm.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        atomic_files.atomic_write_json(out / "result.json", result)
    say(_table(result))
    say(f"wall {result['wall_s']:.0f}s -> {out}")
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
