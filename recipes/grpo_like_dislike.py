"""Like/dislike prediction (TALLRec's task on MovieLens-100K) learned by GRPO, or by the answer-only SFT
baseline, on the "<reasoning>...</reasoning><answer>Yes|No</answer>" template.

Launch: ``rrec like-dislike recipes/configs/like_dislike_smollm2_ml100k.yaml [key=value ...]`` (one
process), or ``accelerate launch --config_file recipes/configs/accelerate_ddp.yaml -m
recipes.grpo_like_dislike <config> [key=value ...]``: each of W processes takes B/W prompts with their G
completions (groups stay local), ``rrec.grpo.grpo_update`` averages gradients over processes, evaluation is
sharded and gathered, process 0 writes the files; with ``row_seeds=true`` W processes sample exactly what
one does (tested on 2 CPU processes). ``method=sft`` trains the baseline on the same batches and evaluates
it on the same held-out samples (on W processes its gradient is the mean of the W local token means).

Per step, ``method=grpo``: B training samples -> the prompt (system turn with the template, user turn
with the last H rated titles marked Liked / Disliked and the target, ``rrec.tasks.like_dislike``) -> G
sampled completions (ids kept, cut at the end-of-turn token or ``max_completion_length``) -> the three
rewards (correctness, strict format, soft format), weighted and summed -> group advantages ->
``rrec.grpo.grpo_update`` (``num_iterations`` clipped steps; k3 KL to the starting policy when
``beta_kl`` > 0). ``method=sft``: the same B samples, cross-entropy of the target text
``<answer>\\nYes\\n</answer>`` (or No, from the label) followed by the end-of-turn token
(``rrec.grpo.sft_loss``): the model learns the answer without any reasoning. Before and after training
the same held-out samples (a draw of ``eval_samples`` rows of ``eval_split`` fixed by ``seed``, the same
for both methods) are answered greedily and scored: accuracy (unparseable = wrong), parse rate, Yes rate,
95% user-bootstrap intervals.

Outputs in ``out_dir``: config.json, metrics.jsonl (one line per logged step), eval_before.jsonl and
eval_after.jsonl (one line per sample: sample index, user, target, label, parsed answer, completion),
result.json (before / after / steps / wall_s / config), final/ (the LoRA merged into the base weights: a
plain HF folder that ``model=`` accepts).

Where we depart from the papers (TALLRec and CoLLM train this task by SFT on 7B models and report AUC):
the policy is SmolLM2-135M-Instruct with LoRA rank 4; the answer comes after a sampled reasoning and is
scored by accuracy, not AUC; reward weights from the GSM8K GRPO demo (see ``rrec/tasks/like_dislike.py``).
Validated: the unit tests and a 2-step CPU smoke run only. That run showed the limit of the base model:
zero-shot SmolLM2-135M-Instruct never writes an ``<answer>`` block (greedy: "Yes." or the prompt's list
echoed; none of 16 sampled completions had one either), so every reward is 0, every group has zero
variance and GRPO's advantages are all 0: it learns nothing until some completions follow the template
(a larger model, or a format warm-up such as ``method=sft`` first, then ``model=<its final/>``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rrec import atomic_files, distributed, grpo, recpo, text_rollout, training
from rrec.config import config_from_argv, to_dict
from rrec.tasks import like_dislike as ld


@dataclass
class LikeDislikeConfig:
    model: str = ""  # HF folder; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal (prepared on demand)
    out_dir: str = "runs/like_dislike"
    method: str = "grpo"  # grpo | sft (the answer-only SFT baseline)
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 where fast (GPU, CPUs with AVX512-BF16/AMX) else float32
    device: str = "auto"  # auto: cuda if available, else cpu
    history: int = 10  # H rated items shown (TALLRec: 10)
    like_threshold: float = 4.0  # like = rating >= 4 (CoLLM's MovieLens convention)
    lora: bool = True
    lora_rank: int = 4  # R²ec's value, kept for the sibling systems
    lora_alpha: int = 8
    gradient_checkpointing: bool = False
    steps: int = 200
    prompts_per_step: int = 8  # B (ours)
    num_generations: int = 4  # G (R²ec's value)
    temperature: float = 1.0  # TRL default
    top_k: int | None = None  # TRL default: off
    top_p: float | None = None  # TRL default: off (1.0)
    max_completion_length: int = 256  # ours: a short paragraph and the answer fit
    lr: float = 1e-5  # R²ec's LoRA rate
    warmup_steps: int = 10  # ours
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # TRL default
    num_iterations: int = 1  # mu (TRL default)
    epsilon: float = 0.2  # TRL default
    epsilon_high: float | None = None  # None: = epsilon
    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo
    advantage: str = "grpo"  # grpo | rloo | none
    beta_kl: float = 0.0  # TRL's current default (no reference model)
    correctness_weight: float = 2.0  # the GSM8K "reasoning/answer" GRPO demo's weights
    strict_format_weight: float = 0.5
    soft_format_weight: float = 0.5
    eval_split: str = "test"
    eval_samples: int | None = 256  # a draw fixed by seed, the same for every method; None: all
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 16
    bootstrap_resamples: int = 1000
    row_seeds: bool = False  # one sampling seed per (step, prompt, g): independent of the process count
    log_every: int = 1


def load_views(cfg: LikeDislikeConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training view, held-out evaluation view) from the prepared dataset."""
    from rrec.data import load_prepared

    if cfg.prepared:
        data = load_prepared(cfg.prepared)
    else:
        from rrec.data import ensure_default

        data = load_prepared(ensure_default())
    kw = {"history": cfg.history, "like_threshold": cfg.like_threshold}
    train = ld.like_view(data.splits["train"], data.items, **kw)
    held = ld.like_view(data.splits[cfg.eval_split], data.items, **kw)
    if cfg.eval_samples is not None and cfg.eval_samples < len(held):
        held = held.sample(n=cfg.eval_samples, random_state=cfg.seed).sort_index()
    return train, held.reset_index(drop=True)


def prompts_of(tokenizer, rows: pd.DataFrame) -> list[list[int]]:
    """Chat-prompt ids of view rows."""
    return [
        text_rollout.chat_prompt(tokenizer, ld.user_prompt(t, liked, target), system=ld.SYSTEM_PROMPT)
        for t, liked, target in zip(
            rows["history_titles"], rows["history_liked"], rows["target_title"], strict=True
        )
    ]


def evaluate(lm, tokenizer, held: pd.DataFrame, cfg: LikeDislikeConfig) -> tuple[dict, list[dict]]:
    """Greedy answers on the held-out rows -> (metrics, one row per sample)."""
    texts = text_rollout.generate_texts(
        lm, tokenizer, prompts_of(tokenizer, held), max_new_tokens=cfg.eval_max_new_tokens,
        batch_size=cfg.eval_batch_size, progress=True,
    )  # fmt: skip
    parsed = [ld.parse_answer(t) for t in texts]
    metrics = ld.accuracy_metrics(
        parsed, held["label"].tolist(), held["user_id"].tolist(), n_resamples=cfg.bootstrap_resamples,
        seed=cfg.seed,
    )  # fmt: skip
    metrics["strict_format_rate"] = sum(ld.strict_format_reward(texts)) / len(texts)
    rows = [
        {"sample": i, "user_id": u, "target": t, "label": bool(y), "parsed": p, "completion": c}
        for i, (u, t, y, p, c) in enumerate(
            zip(held["user_id"], held["target"], held["label"], parsed, texts, strict=True)
        )
    ]
    return metrics, rows


def sft_targets(tokenizer, labels: list[bool]) -> list[list[int]]:
    """Token ids of ``<answer>\\nYes\\n</answer>`` (or No) followed by the end-of-turn token."""
    stop = text_rollout.stop_ids(tokenizer)[0]
    texts = [f"<answer>\n{'Yes' if y else 'No'}\n</answer>" for y in labels]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [stop] for t in texts]


def table(before: dict, after: dict) -> str:
    """A plain-text before/after table: accuracy [95% CI], parse rate, Yes rate."""
    lines = [f"{'':<8} {'accuracy [95% CI]':<24} {'parse':>6} {'yes':>6} {'strict':>6}"]
    for name, m in (("before", before), ("after", after)):
        acc = f"{m['accuracy']:.3f} [{m['accuracy_low']:.3f}, {m['accuracy_high']:.3f}]"
        rates = f"{m['parse_rate']:>6.2f} {m['yes_rate']:>6.2f} {m['strict_format_rate']:>6.2f}"
        lines.append(f"{name:<8} {acc:<24} {rates}")
    n, base = before["n"], before["label_yes_rate"]
    lines.append(f"always-Yes accuracy on these {n:.0f} samples: {base:.3f}")
    return "\n".join(lines)


def write_rows(path: Path, rows: list[dict]) -> None:
    atomic_files.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> dict:
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule_with_warmup

    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(LikeDislikeConfig, argv)
    if cfg.method not in ("grpo", "sft"):
        raise ValueError(f"method must be 'grpo' or 'sft', got {cfg.method!r}")
    out = Path(cfg.out_dir)
    device, main_process = distributed.start_run(out, to_dict(cfg), cfg.device)
    rank, world = distributed.rank_and_world()
    torch.manual_seed(cfg.seed)
    train, held = load_views(cfg)
    lm, tok = text_rollout.load_policy(
        cfg.model, dtype=cfg.dtype, device=str(device), lora=cfg.lora, lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    say = print if main_process else (lambda *a, **k: None)
    say(
        f"{len(train):,} training samples ({train['label'].mean():.3f} liked), {len(held)} held-out "
        f"samples ({cfg.eval_split}, {held['label'].mean():.3f} liked); method {cfg.method}"
    )
    t0 = time.time()
    before, before_rows = evaluate(lm, tok, held, cfg)
    if main_process:
        write_rows(out / "eval_before.jsonl", before_rows)
    say(f"eval before: accuracy {before['accuracy']:.3f} parse {before['parse_rate']:.2f}")

    G, B = cfg.num_generations, cfg.prompts_per_step
    weights = [cfg.correctness_weight, cfg.strict_format_weight, cfg.soft_format_weight]
    params = training.trainable_parameters(lm)
    distributed.broadcast_parameters(params)  # every process starts from process 0's weights
    reference = training.reference_policy(lm, cfg.beta_kl)  # LoRA: adapter off; full: a frozen copy
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    batches = training.sample_batches(train, B, cfg.seed)
    gen = torch.Generator(device=next(lm.parameters()).device).manual_seed(cfg.seed + rank)
    pad_id = tok.pad_token_id
    history: list[dict] = []
    log_lines: list[str] = []
    bar = tqdm(range(cfg.steps), desc=cfg.method, unit="step", disable=not main_process)
    for step in bar:
        t_step = time.time()
        mine, seeds = text_rollout.local_rows(B, step, cfg.seed, G)  # this process's rows of the global batch
        batch = next(batches).iloc[mine]
        prompts = prompts_of(tok, batch)
        labels = [bool(y) for y in batch["label"]]
        if cfg.method == "grpo":
            roll = text_rollout.sample_completions(
                lm, tok, prompts, num_generations=G, max_new_tokens=cfg.max_completion_length,
                temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=gen,
                row_seeds=seeds if cfg.row_seeds else None,
            )  # fmt: skip
            r = grpo.reward_matrix(ld.REWARD_FUNCS, roll.texts, grpo.repeat_columns({"label": labels}, G))
            total = ld.weighted_reward(r, weights)  # (B*G,)
            adv = recpo.group_advantages(total, G, cfg.advantage)  # (B*G,)
            st = grpo.grpo_update(
                lm, params, opt, sched, roll, adv, num_iterations=cfg.num_iterations,
                temperature=cfg.temperature, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                beta_kl=cfg.beta_kl, reference=reference, max_grad_norm=cfg.max_grad_norm,
            )  # fmt: skip
            parsed = [ld.parse_answer(t) for t in roll.texts]
            flags = torch.tensor([[p is not None, p is True] for p in parsed], dtype=torch.float32)
            lengths = torch.stack([roll.completion_mask.sum(1).float(), roll.truncated.float()], 1).cpu()
            per_row = torch.cat([total[:, None], r, flags, lengths], 1)  # (B*G/W, F+5)
            per_row = distributed.gather_rows(per_row.to(device)).cpu()  # every process's rows, in order
            total, r = per_row[:, 0], per_row[:, 1 : 1 + len(ld.REWARD_NAMES)]
            flags, lengths = per_row[:, -4:-2], per_row[:, -2:]
            zero_std = (total.view(-1, G).std(1) == 0).float().mean().item() if G > 1 else 1.0
            rec = {
                "step": step + 1,
                "train/reward_mean": total.mean().item(),
                "train/reward_std": total.std().item() if total.numel() > 1 else 0.0,
                **{f"train/{n}_mean": r[:, j].mean().item() for j, n in enumerate(ld.REWARD_NAMES)},
                **{f"train/{n}_std": r[:, j].std().item() for j, n in enumerate(ld.REWARD_NAMES)},
                "train/parse_rate": flags[:, 0].mean().item(),
                "train/yes_rate": flags[:, 1].mean().item(),
                "train/zero_std_groups": zero_std,
                "train/clip_fraction": st.clip_fraction,
                "train/ratio_mean": st.ratio_mean,
                "train/kl": st.kl,
                "train/loss": st.loss,
                "train/grad_norm": st.grad_norm,
                "train/completion_len": lengths[:, 0].mean().item(),
                "train/truncated": lengths[:, 1].mean().item(),
            }
        else:  # sft: the answer-only baseline on the same batches
            lm.train()
            loss = grpo.sft_loss(lm, prompts, sft_targets(tok, labels), pad_id)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step + 1}: non-finite SFT loss")
            loss.backward()
            distributed.average_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            lm.eval()
            mean_loss = distributed.sum_over_processes(loss.detach()).item() / world
            rec = {"step": step + 1, "train/loss": mean_loss, "train/grad_norm": float(grad_norm)}
        dt = time.time() - t_step
        rec.update({"train/lr": sched.get_last_lr()[0], "train/step_s": dt})
        history.append(rec)
        if main_process and (step + 1) % cfg.log_every == 0:
            log_lines.append(json.dumps(rec) + "\n")
            atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
            if cfg.method == "grpo":
                bar.write(
                    f"step {step + 1}/{cfg.steps} reward {rec['train/reward_mean']:.3f} "
                    f"correct {rec['train/correctness_mean']:.2f} "
                    f"strict {rec['train/strict_format_mean']:.2f} "
                    f"parse {rec['train/parse_rate']:.2f} len {rec['train/completion_len']:.0f} {dt:.1f}s"
                )
            else:
                bar.write(f"step {step + 1}/{cfg.steps} loss {rec['train/loss']:.4f} {dt:.1f}s")

    after, after_rows = evaluate(lm, tok, held, cfg)
    wall = time.time() - t0
    result = {"before": before, "after": after, "steps": cfg.steps, "wall_s": wall, "config": to_dict(cfg)}
    if main_process:
        write_rows(out / "eval_after.jsonl", after_rows)
        if hasattr(lm, "merge_and_unload"):  # a plain HF folder that model= accepts
            lm = lm.merge_and_unload()
        with atomic_files.atomic_folder(out / "final") as tmp:
            lm.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        atomic_files.atomic_write_json(out / "result.json", result)
    say(table(before, after))
    say(f"wall time (eval before + {cfg.steps} {cfg.method} steps + eval after): {wall:.0f}s")
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
