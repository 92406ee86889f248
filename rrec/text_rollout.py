"""Text completions for the GRPO sibling systems: the policy and its tokenizer, chat prompts, G sampled
completions per prompt, and batched generation for evaluation.

Sampling is the KV-cached sampler of ``rrec.rollout`` (the prompt prefilled once per prompt and shared by
its G samples; sampled ids kept, never decoded and re-tokenised for the loss). What differs from RecPO's
rollout: the completion ends at the chat template's end-of-turn token (or is cut at the budget), and it is
also decoded to text, which the reward functions of ``rrec.grpo`` read.

Letters: B prompts, G completions per prompt, P prompt tokens, T completion tokens.
Rows are prompt-major: row ``b*G + g`` is completion g of prompt b.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rrec import distributed
from rrec.decoding import DecoderPool
from rrec.rollout import generate_reasoning, left_pad
from rrec.training import rollout_seeds


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
    weights_dtype = parse_dtype(dtype, device) if lora else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype).to(device)
    if lora:
        lm = apply_lora(lm, rank=lora_rank, alpha=lora_alpha)
    if gradient_checkpointing:
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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
    engine: str = "auto",
) -> TextRollout:
    """G completions per prompt (greedy when ``do_sample`` is False), KV cache shared per prompt.

    ``engine`` (``rrec.decoding``): ``auto`` runs the static decoder with CUDA graphs on a GPU and the HF
    forward on a CPU; ``static`` / ``hf`` force one. The decoders are kept per model (weakly: they go
    with the model), so engines and captured graphs are reused from call to call.
    """
    device = next(lm.parameters()).device
    stop, others = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    ids, mask = left_pad(prompts, pad, device)  # (B, P)
    rows, need = ids.shape[0] * num_generations, ids.shape[1] + max_new_tokens + 1
    decoder = _pool(lm, engine).for_rollout(lm, rows, need)
    roll = generate_reasoning(
        lm, ids, mask, answer_id=stop, pad_id=pad, eos_ids=others, max_new_tokens=max_new_tokens,
        num_generations=num_generations, do_sample=do_sample, temperature=temperature, top_k=top_k,
        top_p=top_p, generator=generator, row_seeds=row_seeds, force_at_budget=False, engine=decoder,
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


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {engine: DecoderPool}


def _pool(lm: nn.Module, engine: str) -> DecoderPool:
    pools = _POOLS.setdefault(lm, {})
    if engine not in pools:
        pools[engine] = DecoderPool(engine)
    return pools[engine]


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
