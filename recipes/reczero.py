"""RecZero: rating prediction learned by pure RL (GRPO) on the four-step "think before recommendation"
template.

Launch: ``rrec reczero recipes/configs/reczero_smollm2_ml100k.yaml [key=value ...]`` (one process), or
``accelerate launch --config_file recipes/configs/accelerate_ddp.yaml -m recipes.reczero <config>
[key=value ...]``: each of W processes takes B/W samples with their G completions (groups stay local),
``rrec.grpo.grpo_update`` averages gradients over processes, evaluation is sharded and gathered, process 0
writes the files; ``row_seeds=true`` makes the sampled completions independent of W.

Per step: B training samples -> the prompt (system turn with the template, user turn with the last H
rated titles and the target, ``rrec.tasks.rating``) -> G sampled completions (ids kept, cut at the
end-of-turn token or ``max_completion_length``) -> format + answer rewards summed -> group advantages ->
``rrec.grpo.grpo_update`` (``num_iterations`` clipped steps, k3 KL to the starting policy when
``beta_kl`` > 0). Before and after training the same held-out samples (a seeded draw of ``eval_samples``
rows of ``eval_split``) are answered greedily and scored (MAE, RMSE, parse rate; an unparseable answer
counts as the global training mean, see ``rrec.tasks.rating``), next to the global-mean, user-mean and
history-mean baselines on the same samples.

Outputs in ``out_dir``: config.json, metrics.jsonl (one line per logged step), eval_before.jsonl and
eval_after.jsonl (one line per sample: truth, prediction, completion), result.json (before / after /
baselines), final/ (the LoRA merged into the base weights: a plain HF folder that ``model=`` accepts).

Where we depart from the paper (Kong et al. 2025, arXiv 2510.23077; its code is not public): the model
is SmolLM2-135M-Instruct with LoRA rank 4, not a 7B model with full fine-tuning; the prompt wording and
the reward constants are ours (see ``rrec/tasks/rating.py``); ``beta_kl`` 0.001 is the usual GRPO value,
not checked against the paper. :func:`rl_loop` is also the RL stage of ``recipes/recone.py``. Validated:
the unit tests and short CPU runs only.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rrec import atomic_files, distributed, grpo, recpo, text_rollout, training
from rrec.config import config_from_argv, to_dict
from rrec.tasks import rating


@dataclass
class RecZeroConfig:
    model: str = ""  # HF folder; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal (prepared on demand)
    amazon_reviews: str = (
        ""  # an Amazon Reviews 2023 <Category>.jsonl[.gz]; with amazon_meta, replaces prepared
    )
    amazon_meta: str = ""  # its meta_<Category>.jsonl[.gz]
    out_dir: str = "runs/reczero"
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 where fast (GPU, CPUs with AVX512-BF16/AMX) else float32
    device: str = "auto"  # auto: cuda if available, else cpu
    history: int = 10  # H rated items shown (ours; TALLRec-style prompts show 10)
    low: float = 1.0  # rating scale (ML-100K, Amazon: 1-5)
    high: float = 5.0
    lora: bool = True
    lora_rank: int = 4  # R²ec's value, kept for the sibling systems
    lora_alpha: int = 8
    gradient_checkpointing: bool = False
    steps: int = 200
    batch_size: int = 4  # B prompts per step
    num_generations: int = 4  # G (R²ec's value; the paper's is not checked)
    temperature: float = 1.0  # TRL default
    top_k: int | None = None
    top_p: float | None = None
    max_completion_length: int = 512  # four short paragraphs fit
    lr: float = 1e-5  # R²ec's LoRA rate
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1  # mu (TRL default)
    epsilon: float = 0.2  # TRL default
    epsilon_high: float | None = None  # None: = epsilon
    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo
    advantage: str = "grpo"  # grpo | rloo | none
    beta_kl: float = 0.001  # k3 KL to the RL stage's starting policy (usual GRPO value)
    format_reward: float = 0.5  # +/- for a valid / invalid format (a public reimplementation: 1)
    max_error: float = 4.0  # answer = 1 - |y - y_hat| / max_error (4: widest error on 1-5; reimpl.: 2)
    eval_split: str = "test"
    eval_samples: int | None = 64  # a seeded draw from eval_split; None: all
    eval_max_new_tokens: int = 512
    eval_batch_size: int = 16
    bootstrap_resamples: int = 1000
    row_seeds: bool = False  # one sampling seed per (step, sample, g): independent of the process count
    log_every: int = 1


def load_views(cfg: RecZeroConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training view, held-out evaluation view) from the Amazon files or the prepared dataset."""
    from rrec.data import load_prepared

    if bool(cfg.amazon_reviews) != bool(cfg.amazon_meta):
        raise ValueError("amazon_reviews and amazon_meta go together")
    if cfg.amazon_reviews:
        data = rating.load_amazon2023_rating(cfg.amazon_reviews, cfg.amazon_meta, max_history=cfg.history)
    elif cfg.prepared:
        data = load_prepared(cfg.prepared)
    else:
        from rrec.data import ensure_default

        data = load_prepared(ensure_default())
    train = rating.rating_view(data.splits["train"], data.items, history=cfg.history)
    held = rating.rating_view(data.splits[cfg.eval_split], data.items, history=cfg.history)
    if cfg.eval_samples is not None and cfg.eval_samples < len(held):
        held = held.sample(n=cfg.eval_samples, random_state=cfg.seed).sort_index()
    return train, held.reset_index(drop=True)


def prompts_of(tokenizer, rows: pd.DataFrame, cfg: RecZeroConfig) -> list[list[int]]:
    """Chat-prompt ids of view rows."""
    system = rating.system_prompt(cfg.low, cfg.high)
    return [
        text_rollout.chat_prompt(tokenizer, rating.user_prompt(t, r, target), system=system)
        for t, r, target in zip(
            rows["history_titles"], rows["history_ratings"], rows["target_title"], strict=True
        )
    ]


def evaluate(
    lm, tokenizer, held: pd.DataFrame, cfg: RecZeroConfig, fallback: float
) -> tuple[dict, list[dict]]:
    """Greedy answers on the held-out rows -> (metrics, one row per sample)."""
    texts = text_rollout.generate_texts(
        lm, tokenizer, prompts_of(tokenizer, held, cfg), max_new_tokens=cfg.eval_max_new_tokens,
        batch_size=cfg.eval_batch_size, progress=True,
    )  # fmt: skip
    preds = [rating.parse_rating(t, cfg.low, cfg.high) for t in texts]
    metrics = rating.rating_metrics(
        preds, held["rating"].tolist(), held["user_id"].tolist(), fallback=fallback,
        n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
    )  # fmt: skip
    rows = [
        {"user_id": u, "target": t, "rating": y, "prediction": p, "completion": c}
        for u, t, y, p, c in zip(held["user_id"], held["target"], held["rating"], preds, texts, strict=True)
    ]
    return metrics, rows


def baselines(train: pd.DataFrame, held: pd.DataFrame, cfg: RecZeroConfig) -> dict[str, dict]:
    """Global-mean, user-mean and history-mean metrics on the held-out rows."""
    mean = rating.global_mean(train)
    preds = {
        "global_mean": [mean] * len(held),
        "user_mean": rating.user_mean_predictions(train, held),
        "history_mean": rating.history_mean_predictions(held, mean),
    }
    return {
        name: rating.rating_metrics(
            p,
            held["rating"].tolist(),
            held["user_id"].tolist(),
            fallback=mean,
            n_resamples=cfg.bootstrap_resamples,
            seed=cfg.seed,
        )
        for name, p in preds.items()
    }


def table(rows: dict[str, dict]) -> str:
    """A plain-text table: method, MAE [95% CI], RMSE [95% CI], parse rate."""
    lines = [f"{'method':<14} {'MAE [95% CI]':<24} {'RMSE [95% CI]':<24} parse"]
    for name, m in rows.items():
        mae = f"{m['mae']:.3f} [{m['mae_low']:.3f}, {m['mae_high']:.3f}]"
        rmse = f"{m['rmse']:.3f} [{m['rmse_low']:.3f}, {m['rmse_high']:.3f}]"
        lines.append(f"{name:<14} {mae:<24} {rmse:<24} {m['parse_rate']:.2f}")
    return "\n".join(lines)


def rl_loop(
    lm, tokenizer, train: pd.DataFrame, cfg: RecZeroConfig, out: Path, log_lines: list[str]
) -> list[dict]:
    """``cfg.steps`` GRPO steps on ``lm`` (trained in place); appends to ``out/metrics.jsonl``."""
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule_with_warmup

    reference = training.reference_policy(lm, cfg.beta_kl)  # LoRA: adapter off; full: a frozen copy
    G, B = cfg.num_generations, cfg.batch_size
    rank = distributed.rank_and_world()[0]
    params = training.trainable_parameters(lm)
    distributed.broadcast_parameters(params)  # every process starts from process 0's (fresh) adapter
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    funcs = rating.make_rewards(
        format_reward=cfg.format_reward, max_error=cfg.max_error, low=cfg.low, high=cfg.high
    )
    batches = training.sample_batches(train, B, cfg.seed)
    device = next(lm.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    history: list[dict] = []
    bar = tqdm(range(cfg.steps), desc="rl", unit="step", disable=rank > 0)
    for step in bar:
        t0 = time.time()
        mine, seeds = text_rollout.local_rows(B, step, cfg.seed, G)  # this process's rows of the global batch
        batch = next(batches).iloc[mine]
        roll = text_rollout.sample_completions(
            lm, tokenizer, prompts_of(tokenizer, batch, cfg), num_generations=G,
            max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, generator=gen, row_seeds=seeds if cfg.row_seeds else None,
        )  # fmt: skip
        r = grpo.reward_matrix(
            funcs, roll.texts, grpo.repeat_columns({"rating": batch["rating"].tolist()}, G)
        )
        total = r.sum(1)  # (B*G,)
        parsed = [rating.parse_rating(t, cfg.low, cfg.high) for t in roll.texts]
        adv = recpo.group_advantages(total, G, cfg.advantage)  # (B*G,)
        st = grpo.grpo_update(
            lm, params, opt, sched, roll, adv, num_iterations=cfg.num_iterations, temperature=cfg.temperature,
            epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
            max_completion_length=cfg.max_completion_length, beta_kl=cfg.beta_kl, reference=reference,
            max_grad_norm=cfg.max_grad_norm,
        )  # fmt: skip
        flags = torch.tensor([[p is not None] for p in parsed], dtype=torch.float32)
        lengths = torch.stack([roll.completion_mask.sum(1).float(), roll.truncated.float()], 1).cpu()
        per_row = torch.cat([total[:, None], r, flags, lengths], 1)  # (B*G/W, 6)
        per_row = distributed.gather_rows(per_row.to(device)).cpu()  # every process's rows, in order
        total, r, flags, lengths = per_row[:, 0], per_row[:, 1:3], per_row[:, 3], per_row[:, 4:]
        dt = time.time() - t0
        rec = {
            "step": step + 1,
            "train/reward_mean": total.mean().item(),
            "train/reward_std": total.std().item() if total.numel() > 1 else 0.0,
            "train/format_reward": r[:, 0].mean().item(),
            "train/answer_reward": r[:, 1].mean().item(),
            "train/parse_rate": flags.mean().item(),
            "train/zero_std_groups": (total.view(-1, G).std(1) == 0).float().mean().item() if G > 1 else 1.0,
            "train/completion_len": lengths[:, 0].mean().item(),
            "train/truncated": lengths[:, 1].mean().item(),
            "train/loss": st.loss,
            "train/kl": st.kl,
            "train/clip_fraction": st.clip_fraction,
            "train/grad_norm": st.grad_norm,
            "train/lr": sched.get_last_lr()[0],
            "train/step_s": dt,
            "train/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
        history.append(rec)
        if rank == 0 and (step + 1) % cfg.log_every == 0:
            log_lines.append(json.dumps(rec) + "\n")
            atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
            bar.write(
                f"step {step + 1}/{cfg.steps} reward {rec['train/reward_mean']:.3f} "
                f"parse {rec['train/parse_rate']:.2f} kl {st.kl:.4f} "
                f"len {rec['train/completion_len']:.0f} {dt:.1f}s"
            )
    return history


def save_final(lm, tokenizer, out: Path):
    """Merge the LoRA (if any) into the weights and save a plain HF folder to ``out/final``.

    Returns the merged model (the input is not usable afterwards when it had an adapter). Only process 0
    writes."""
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
    if distributed.rank_and_world()[0] > 0:
        return lm
    with atomic_files.atomic_folder(out / "final") as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return lm


def write_rows(path: Path, rows: list[dict]) -> None:
    """One JSON line per row; only process 0 writes."""
    if distributed.rank_and_world()[0] > 0:
        return
    atomic_files.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(RecZeroConfig, argv)
    out = Path(cfg.out_dir)
    device, main_process = distributed.start_run(out, to_dict(cfg), cfg.device)
    say = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    train, held = load_views(cfg)
    mean = rating.global_mean(train)
    lm, tok = text_rollout.load_policy(
        cfg.model, dtype=cfg.dtype, device=str(device), lora=cfg.lora, lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    say(
        f"{len(train):,} training samples, {len(held)} held-out samples ({cfg.eval_split}); "
        f"global mean {mean:.3f}"
    )
    t0 = time.time()
    before, before_rows = evaluate(lm, tok, held, cfg, mean)
    write_rows(out / "eval_before.jsonl", before_rows)
    history = rl_loop(lm, tok, train, cfg, out, [])
    after, after_rows = evaluate(lm, tok, held, cfg, mean)
    write_rows(out / "eval_after.jsonl", after_rows)
    base = baselines(train, held, cfg)
    save_final(lm, tok, out)
    result = {"before": before, "after": after, "baselines": base, "steps": cfg.steps, "global_mean": mean,
              "wall_s": time.time() - t0, "config": to_dict(cfg)}  # fmt: skip
    if main_process:
        atomic_files.atomic_write_json(out / "result.json", result)
    say(table({"before": before, "after": after, **base}))
    result["history"] = history
    return result


if __name__ == "__main__":
    main()
