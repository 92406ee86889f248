"""Thin helpers over a Hugging Face causal LM (optionally PEFT-wrapped): hidden states, LoRA, fingerprint.

Letters: B sequences, L tokens, D hidden size, V vocabulary.

The *final hidden state* is the decoder's ``last_hidden_state``: the output of the last block after the
final norm, i.e. exactly what ``lm_head`` multiplies. Reading it from ``lm.get_decoder()`` avoids
computing (B, L, V) logits when only the state is needed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: ``cumsum(mask) - 1``, padding set to 1 (as HF ``generate``)."""
    pos = attention_mask.long().cumsum(-1) - 1  # (B, L)
    return pos.masked_fill(attention_mask == 0, 1)


def final_hidden(
    lm: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor | None = None,
    cache=None,
    use_cache: bool = False,
) -> tuple[Tensor, object]:
    """Run the decoder only.

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L_past + L) 1 for real tokens (covers the cache too).
        position_ids: (B, L); default derived from ``attention_mask``.
        cache: a transformers ``Cache`` holding the first L_past tokens (transformers >= 5.24 names this
            argument and the output field ``cache``; ``past_key_values`` is its deprecated alias).

    Returns:
        ((B, L, D) final hidden states, the updated cache or None).
    """
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
    out = lm.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=use_cache,
    )
    return out.last_hidden_state, (out.cache if use_cache else None)


def last_token_states(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, D) final hidden state at the last position of left-padded sequences (the ``<answer>`` slot)."""
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("last_token_states needs left padding: some rows end with padding")
    hidden, _ = final_hidden(lm, input_ids, attention_mask)
    return hidden[:, -1]


def apply_lora(
    lm: nn.Module,
    rank: int = 4,
    alpha: int = 8,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] = LORA_TARGETS,
    trainable_tokens: Sequence[int] = (),
) -> nn.Module:
    """Wrap ``lm`` with PEFT LoRA (R²ec: rank 4 on q,k,v,o,gate,up,down). Only LoRA weights train, plus
    the input and output embedding rows of ``trainable_tokens`` (the recipes pass ``<answer>``).

    The rows use PEFT's ``trainable_token_indices``: only those rows train and are saved with the adapter
    (with tied embeddings one row serves both sides). PEFT's forward rebuilds the whole (V, D) table with
    the rows written in, on every call: about 120 ms for SmolLM2's table on one CPU core, as much as a
    decode step itself. Decoding therefore runs inside :func:`token_rows_merged` (``generate_reasoning``
    does); the static engine snapshots the merged table once per rollout anyway.
    """
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    targets = [t for t in target_modules if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA targets {target_modules} exist in {type(lm).__name__}")
    tokens = None
    if trainable_tokens:
        names = {id(m): name for name, m in lm.named_modules()}
        inp, out = lm.get_input_embeddings(), lm.get_output_embeddings()
        tokens = {names[id(inp)].rsplit(".", 1)[-1]: list(trainable_tokens)}
        if out is not None and out.weight is not inp.weight:  # untied: the output rows train too
            tokens[names[id(out)].rsplit(".", 1)[-1]] = list(trainable_tokens)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                     trainable_token_indices=tokens)  # fmt: skip
    return get_peft_model(lm, cfg)


@contextlib.contextmanager
def merged_token_rows(lm: nn.Module):
    """Within the block, PEFT trainable token rows (``apply_lora(trainable_tokens=...)``) are written into
    their base tables (PEFT's own ``merge``), so a forward reads the table instead of rebuilding it; the
    tables are restored on exit. Only without grad (merged rows get no gradient); else, and for models
    without such rows, a no-op."""
    modules = lm.modules() if isinstance(lm, nn.Module) else ()
    rows = [m.token_adapter for m in modules if hasattr(m, "token_adapter")]
    rows = [r for r in rows if r.active_adapters and not r.merged and not r.disable_adapters]
    if torch.is_grad_enabled() or not rows:
        yield
        return
    for r in rows:
        r.merge()
    try:
        yield
    finally:
        for r in reversed(rows):
            r.unmerge()


def token_rows_merged(fn):
    """Decorator for a no-grad ``fn(lm, ...)``: each call runs inside ``merged_token_rows(lm)``."""

    @functools.wraps(fn)
    def call(lm, *args, **kwargs):
        with merged_token_rows(lm):
            return fn(lm, *args, **kwargs)

    return call


def continue_adapter(lm: nn.Module) -> nn.Module:
    """Make a loaded PEFT adapter (``from_pretrained`` loads it frozen, for inference) trainable again:
    its LoRA weights and trainable token rows, nothing else. Returns ``lm``."""
    if not is_peft(lm):
        raise ValueError(f"continue_adapter needs a PEFT model, got {type(lm).__name__}")
    for cfg in lm.peft_config.values():
        cfg.inference_mode = False
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name or "trainable_tokens_delta" in name)
    return lm


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); Linux only."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def default_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where it is fast (CUDA with bf16 support; CPUs with AVX512-BF16/AMX), float32 elsewhere.

    On a CPU without native bf16 every bf16 matmul is emulated and runs slower than float32 (measured
    here: item encoding 1.0 vs 2.6 items/s on a 2-core Xeon without AVX512-BF16), so bf16 is only the
    default where it holds up. Ranking is float32 either way.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def parse_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` (see ``default_dtype``), ``bfloat16``/``bf16``, ``float16``/``fp16``, ``float32``/``fp32``."""
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}  # fmt: skip
    if name == "auto":
        return default_dtype(device)
    if name not in table:
        raise ValueError(f"dtype must be auto or one of {sorted(table)}, got {name!r}")
    return table[name]


def is_peft(lm: nn.Module) -> bool:
    return hasattr(lm, "peft_config")


@torch.no_grad()
def weights_fingerprint(lm: nn.Module) -> str:
    """A cheap fingerprint of every weight: name, shape, and float64 sum and sum of squares.

    Item tables record it; loading a table under a model with another fingerprint is refused, because
    item states from one model are meaningless to another. Weights are rounded to bf16 first, so the
    same checkpoint loaded in float32 or bf16 has the same fingerprint.
    """
    h = hashlib.sha256()
    for name, p in sorted(lm.state_dict().items()):
        t = p.detach().to(torch.bfloat16).double()
        h.update(f"{name}:{tuple(p.shape)}:{t.sum().item():.10e}:{(t * t).sum().item():.10e};".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def quiet_weight_loading():
    """Hide transformers' "Loading weights" bar inside the block; the caller's setting comes back after.

    For ``from_pretrained`` calls a loop repeats (one bar per model would interleave with the loop's own
    progress); a single load at the start of a run keeps its bar.
    """
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also turns off huggingface_hub's bars
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if hub_was_disabled:
            hub_utils.disable_progress_bars()
