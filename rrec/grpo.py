"""GRPO on plain text completions: the building blocks of the sibling systems (like/dislike GRPO,
RecZero / RecOne rating prediction, RecLLM-R1).

They share RecPO's core: ``rrec.recpo.group_advantages`` and ``rrec.recpo.policy_loss`` (the
token-level clipped objective with TRL's ``loss_type`` normalisations and the optional k3 KL), and the
KV-cached sampler of ``rrec.rollout`` (the prompt prefilled once per prompt and shared by its G
samples; sampled ids kept, never decoded and re-tokenised for the loss). What differs from RecPO: the
completion ends at the chat template's end-of-turn token (or is cut at the budget), and the reward is
computed from the decoded text by plain functions ``(completions, **columns) -> list[float]`` (TRL's
shape), where every column holds one value per completion.

Letters: B prompts, G completions per prompt, P prompt tokens, T completion tokens, F reward functions.
Rows are prompt-major: row ``b*G + g`` is completion g of prompt b.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rrec import distributed, recpo
from rrec.rollout import generate_reasoning, left_pad
from rrec.training import loss_normalisation, policy_forward, rollout_seeds

RewardFunc = Callable[..., list[float]]


class TextRollout(NamedTuple):
    prompt_ids: Tensor  # (B*G, P) left-padded
    prompt_mask: Tensor  # (B*G, P)
    completion_ids: Tensor  # (B*G, T) right-padded; the stop token, when reached, is the last real one
    completion_mask: Tensor  # (B*G, T) 1 up to and including the stop token
    logps: Tensor  # (B*G, T) float32 behaviour log-probs of the taken tokens (0 on padding)
    truncated: Tensor  # (B*G,) bool: cut at max_new_tokens before the stop token
    texts: list[str]  # (B*G,) decoded completions, the stop token left out


def load_policy(
    model: str = "",
    *,
    dtype: str = "auto",
    device: str = "auto",
    lora: bool = True,
    lora_rank: int = 4,
    lora_alpha: int = 8,
    gradient_checkpointing: bool = False,
) -> tuple[nn.Module, object]:
    """(causal LM, tokenizer) from an HF folder; "" = the embedded SmolLM2-135M-Instruct (fetched once).

    No ``<answer>`` token is added: the sibling systems write their answers as text. ``dtype`` auto: bf16
    where it is fast (GPU, CPUs with AVX512-BF16/AMX), else float32; full fine-tuning keeps float32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrec.assets import fetch, model_dir
    from rrec.backbone import apply_lora, parse_dtype

    path = model or str(model_dir() if model_dir().exists() else fetch(datasets=())["model"])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = parse_dtype(dtype, device) if lora else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    if lora:
        lm = apply_lora(lm, rank=lora_rank, alpha=lora_alpha)
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()
    lm.eval()
    return lm, tokenizer


def stop_ids(tokenizer) -> tuple[int, list[int]]:
    """(the end-of-turn token that ends a completion, other ids that end it too).

    The end-of-turn token is the tokenizer's EOS (``<|im_end|>`` for SmolLM2-Instruct); ``<|endoftext|>``
    and the pad token, when they differ, also end a completion and are written as the end-of-turn token.
    """
    stop = tokenizer.eos_token_id
    if stop is None:
        raise ValueError("the tokenizer has no eos_token: cannot tell where a completion ends")
    others = {tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    others.add(tokenizer.pad_token_id)
    others -= {None, stop}
    return int(stop), sorted(int(i) for i in others)


def chat_prompt(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Token ids of a chat prompt (system + user turn) ending with the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some transformers versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


@torch.no_grad()
def sample_completions(
    lm: nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    num_generations: int = 1,
    max_new_tokens: int = 256,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
) -> TextRollout:
    """G completions per prompt (greedy when ``do_sample`` is False), KV cache shared per prompt."""
    device = next(lm.parameters()).device
    stop, others = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    ids, mask = left_pad(prompts, pad, device)  # (B, P)
    roll = generate_reasoning(
        lm, ids, mask, answer_id=stop, pad_id=pad, eos_ids=others, max_new_tokens=max_new_tokens,
        num_generations=num_generations, do_sample=do_sample, temperature=temperature, top_k=top_k,
        top_p=top_p, generator=generator, row_seeds=row_seeds, force_at_budget=False,
    )  # fmt: skip
    ended = (roll.completion_ids == stop).any(1)  # (B*G,)
    texts = []
    for row, m in zip(roll.completion_ids.tolist(), roll.completion_mask.tolist(), strict=True):
        kept = [t for t, keep in zip(row, m, strict=True) if keep and t != stop]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return TextRollout(
        roll.prompt_ids,
        roll.prompt_mask,
        roll.completion_ids,
        roll.completion_mask,
        roll.logps,
        ~ended,
        texts,
    )


def reward_matrix(
    funcs: Sequence[RewardFunc], completions: Sequence[str], columns: dict[str, Sequence]
) -> Tensor:
    """(B*G, F) float32: reward function f on every completion; each column holds B*G values.

    A reward function returning the wrong number of values or a non-finite value is an error (the group
    advantages would silently become NaN).
    """
    n = len(completions)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    out = torch.zeros(n, len(funcs), dtype=torch.float32)
    for j, f in enumerate(funcs):
        values = f(list(completions), **columns)
        name = getattr(f, "__name__", repr(f))
        if len(values) != n:
            raise ValueError(f"reward {name} returned {len(values)} values for {n} completions")
        out[:, j] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        if not torch.isfinite(out[:, j]).all():
            raise ValueError(f"reward {name} returned a non-finite value")
    return out


def repeat_columns(columns: dict[str, Sequence], group_size: int) -> dict[str, list]:
    """Each per-prompt column repeated G times, prompt-major, to match the rollout rows."""
    return {k: [v for v in values for _ in range(group_size)] for k, values in columns.items()}


class UpdateStats(NamedTuple):
    loss: float
    clip_fraction: float
    ratio_mean: float
    kl: float
    grad_norm: float


def grpo_update(
    lm: nn.Module,
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler,
    roll: TextRollout,
    advantages: Tensor,
    *,
    num_iterations: int = 1,
    temperature: float = 1.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    beta_kl: float = 0.0,
    max_grad_norm: float = 1.0,
) -> UpdateStats:
    """``num_iterations`` clipped policy-gradient steps over one rollout batch (TRL's mu).

    Old log-probs: with ``num_iterations`` = 1 the ratio is 1 by construction (the current log-probs,
    detached, as in TRL); with >= 2 they come from a teacher-forced pass on exactly the sampled ids before
    the first update. ``beta_kl`` > 0 needs a PEFT model: the reference is the adapter-disabled model.
    Several processes (``accelerate launch``, each holding B/W prompts with their G completions, so
    groups and advantages stay local): the token count of ``dapo``/``bnpo`` is the global batch's
    (``rrec.training.loss_normalisation``) and gradients are averaged over processes before the step, so
    W processes take the step one process takes on the whole batch. On one process both are no-ops.
    Returns the statistics of the last iteration (``loss``, ``clip_fraction``, ``ratio_mean`` and ``kl``
    averaged over processes).
    """
    _, world = distributed.rank_and_world()
    n_tok_local = roll.completion_mask.sum().float()
    n_tok = float(distributed.sum_over_processes(n_tok_local))
    loss_type, n_items = loss_normalisation(loss_type, n_tok, world)
    args = (roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask, temperature)
    adv = advantages.to(roll.completion_ids.device)
    old = ref = None
    lm.eval()
    with torch.no_grad():
        if num_iterations > 1:
            old, _ = policy_forward(lm, *args)
        if beta_kl > 0:
            if not hasattr(lm, "disable_adapter"):
                raise ValueError("beta_kl > 0 needs a LoRA (PEFT) model: its reference is the base model")
            with lm.disable_adapter():
                ref, _ = policy_forward(lm, *args)
    lm.train()
    for _ in range(num_iterations):
        logps, _ = policy_forward(lm, *args)  # (B*G, T)
        loss, st = recpo.policy_loss(
            logps, logps.detach() if old is None else old, adv, roll.completion_mask, epsilon=epsilon,
            epsilon_high=epsilon_high, loss_type=loss_type, max_completion_length=max_completion_length,
            num_items_in_batch=n_items, beta_kl=beta_kl, ref_logps=ref,
        )  # fmt: skip
        if distributed.any_process(not bool(torch.isfinite(loss)), logps.device):
            raise FloatingPointError("non-finite GRPO loss (on some process)")
        loss.backward()
        distributed.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    lm.eval()
    with torch.no_grad():  # token-weighted statistics summed over processes; the loss averaged
        sums = distributed.sum_over_processes(
            torch.stack([loss.detach(), st.clip_fraction * n_tok_local, st.ratio_mean * n_tok_local,
                         st.kl * n_tok_local]).float()
        )  # fmt: skip
    n = max(n_tok, 1.0)
    return UpdateStats(
        float(sums[0]) / world, float(sums[1]) / n, float(sums[2]) / n, float(sums[3]) / n, float(grad_norm)
    )


def sft_loss(
    lm: nn.Module, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> Tensor:
    """Mean cross-entropy of the target tokens given their prompts (prompt tokens carry no loss).

    Each row is ``prompt + target`` (the target should end with the end-of-turn token); rows are
    right-padded. Returns a scalar with gradient.
    """
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(f"{len(prompts)} prompts for {len(targets)} targets")
    device = next(lm.parameters()).device
    rows = [list(p) + list(t) for p, t in zip(prompts, targets, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        if not t:
            raise ValueError(f"target {i} is empty")
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(rows[i])
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(list(t))
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, L-1, V)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)


def generate_texts(
    lm: nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
    **sampling,
) -> list[str]:
    """One completion per prompt (greedy unless ``do_sample=True`` is passed), in batches, in order.

    On W processes each generates a contiguous shard of the prompts and every process gets all the
    completions back, in prompt order.
    """
    from tqdm.auto import tqdm

    sampling = {"do_sample": False, **sampling}
    rank, world = distributed.rank_and_world()
    lo, hi = distributed.shard_bounds(len(prompts), rank, world)
    mine = list(prompts[lo:hi])
    was_training = lm.training
    lm.eval()
    out: list[str] = []
    starts = range(0, len(mine), batch_size)
    for s in tqdm(starts, desc="generate", disable=not progress or rank > 0, unit="batch"):
        roll = sample_completions(
            lm, tokenizer, mine[s : s + batch_size], max_new_tokens=max_new_tokens, **sampling
        )
        out.extend(roll.texts)
    lm.train(was_training)
    if world > 1:
        out = [text for part in distributed.gather_objects(out) for text in part]
    return out


def local_rows(batch_size: int, step: int, seed: int, group_size: int) -> tuple[slice, list[int]]:
    """(this process's rows of a global batch of B prompts, one sampling seed per completion row).

    The seeds depend on (seed, step, the prompt's index in the global batch, g) only
    (``rrec.training.rollout_seeds``), so W processes x B/W prompts sample what one process x B does.
    """
    rank, world = distributed.rank_and_world()
    mine = distributed.batch_slice(batch_size, rank, world)
    return mine, rollout_seeds(seed, step, range(mine.start, mine.stop), group_size)
