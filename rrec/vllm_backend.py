"""An optional vLLM rollout backend: vLLM samples the reasonings, our HF model computes what RecPO needs.

Letters: B users (prompts), G samples per user, P prompt tokens, T completion tokens, D hidden.

Status. This backend is optional: it is used only when ``vllm`` is importable and the caller asks for it
(``generate_reasoning_vllm`` with an ``llm`` from ``make_llm``); ``rrec`` never imports vLLM otherwise,
and the default rollout is ``rrec.rollout.generate_reasoning``. It has NOT been run against a real vLLM
in this project: vLLM is in neither our CI nor the environment of our GPU machine. What is tested (on CPU,
``tests/test_vllm_backend.py``) is everything on our side of the boundary, through a fake ``llm`` whose
``generate`` returns objects shaped like vLLM's ``RequestOutput``: the post-processing of vLLM's token
ids and finish reasons, the teacher-forced user states and log-probs, parity with ``generate_reasoning``
when both decode greedily, and the LoRA-merged weights handed to ``load_weights``. The vLLM side (the
``SamplingParams`` fields, where a stop token lands, the engine's model for weight sync) follows vLLM's
source as read for this module (``vllm/sampling_params.py``, ``vllm/v1/core/sched/utils.py``
``check_stop``, ``vllm/v1/engine/detokenizer.py``, ``vllm/v1/engine/parallel_sampling.py``,
``vllm/v1/engine/llm_engine.py``, ``vllm/entrypoints/llm.py``: V1 engine, stored copies of recent but
unpinned releases; the engine-model path of ``sync_weights`` is the one verl reaches, reported
working with vLLM 0.17), not a run.

The contract is ``generate_reasoning``'s (same ``Rollout``):

* vLLM gets the prompts as token ids (left padding stripped), one request per row (b*G + g), with
  ``stop_token_ids = [<answer>] + eos`` and ``ignore_eos=True`` so that only those ids stop a row. vLLM
  appends the stop token to ``token_ids`` before it stops (``check_stop``; the detokenizer drops it
  from the text only), so ``detokenize=False``: the text is never read;
* an EOS stop is replaced by ``<answer>`` and flagged ``forced``; a row cut at the budget
  (``finish_reason == "length"``) gets ``<answer>`` in place of its last token, ``forced`` (as
  ``generate_reasoning(force_at_budget=True)``); completions are right-padded with ``pad_id``;
* the user states and ``logps`` come from one teacher-forced HF forward over prompt + the sampled token
  ids (never re-tokenised text): the final hidden state at ``<answer>``, and the float32 log-probs of the
  taken tokens under ``softmax(logits / temperature)`` without top-k/top-p (1 for greedy), masked as in
  ``generate_reasoning``. vLLM's own logprobs are not used: they come after its sampler's processing
  and in the engine's lower precision.

Where it departs from ``generate_reasoning``: vLLM draws with its own RNG, so the samples differ from ours
for the same seed (row i gets vLLM seed ``seed + i``, or ``row_seeds[i]``); top-k/top-p are vLLM's
(``top_k=-1`` and ``top_p=1.0`` mean none; recent vLLM refuses ``temperature > 2``); vLLM's bf16 forward
can pick another token than our float32 forward where two logits nearly tie, greedy included. One
request per row rather than ``n=G``: vLLM refuses ``n > 1`` with ``temperature=0`` and splits ``n`` into
n child requests anyway.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rrec.engine import effective_weight
from rrec.rollout import Rollout

ENGINE_MODEL_PATH = "llm.llm_engine.model_executor.driver_worker.worker.model_runner.model"


def available() -> bool:
    """True when ``vllm`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "the vLLM rollout backend needs vllm (pip install vllm, on a CUDA machine); it is optional: "
            "rrec.rollout.generate_reasoning (rollout_engine hf/static/auto) needs nothing more"
        ) from err
    return vllm


def _vllm_version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("vllm"), "__version__", "not installed"))


def make_llm(
    model_path: str | Path, *, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.4, **kw: Any
):
    """A ``vllm.LLM`` over a full-weights HF folder (see ``save_for_vllm``), ready for ``sync_weights``.

    Sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless already set) so that the engine runs in this
    process, where ``sync_weights`` can reach its model. ``gpu_memory_utilization`` leaves room for the
    HF model that trains beside it on the same GPU. ``kw`` goes to ``vllm.LLM`` (e.g. ``max_model_len``,
    ``seed``, ``enforce_eager``); ``tensor_parallel_size`` must stay 1.
    """
    if kw.get("tensor_parallel_size", 1) != 1:
        raise ValueError("sync_weights reaches one in-process worker: tensor_parallel_size must be 1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm = _import_vllm()
    return vllm.LLM(model=str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, **kw)


def _base(lm: nn.Module) -> nn.Module:
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def merged_weights(lm: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``lm``'s weights under their HF names, LoRA deltas merged in (as its forward uses them), lazily.

    A PEFT LoRA layer ``q_proj`` yields ``q_proj.weight`` = base + delta (``rrec.engine.effective_weight``)
    and none of its ``base_layer`` / ``lora_A`` / ``lora_B`` parameters; an embedding with PEFT trainable
    token rows (``<answer>``) yields its ``weight`` with the rows written in; tied weights are yielded once.
    """
    base = _base(lm)
    lora = [(name, mod) for name, mod in base.named_modules() if hasattr(mod, "lora_A")]
    tokens = [(name, mod) for name, mod in base.named_modules() if hasattr(mod, "token_adapter")]
    inside = tuple(f"{name}." for name, _ in lora + tokens)
    for name, p in base.named_parameters():
        if not name.startswith(inside):
            yield name, p.detach()
    for name, mod in tokens:
        if mod.token_adapter.tied_adapter is None:  # a head tied to the embedding is the same weight
            yield f"{name}.weight", mod.weight.detach()
    for name, mod in lora:
        w, b = effective_weight(mod)
        yield f"{name}.weight", w.detach()
        if b is not None:
            yield f"{name}.bias", b.detach()


@torch.no_grad()
def save_for_vllm(lm: nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write ``lm`` (LoRA merged) and ``tokenizer`` (with ``<answer>``) as a HF folder vLLM can load."""
    d = Path(directory)
    _base(lm).save_pretrained(d, state_dict=dict(merged_weights(lm)))
    tokenizer.save_pretrained(d)
    return d


def engine_model(llm) -> nn.Module:
    """The model inside an in-process vLLM V1 engine (the object whose ``load_weights`` takes HF names)."""
    try:
        return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    except AttributeError as err:
        raise RuntimeError(
            f"vLLM {_vllm_version()}: no model at {ENGINE_MODEL_PATH}, the in-process V1 engine path that "
            "sync_weights targets. Create the LLM with rrec.vllm_backend.make_llm (it sets "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0 before the engine starts); a multiprocess engine would need "
            "llm.collective_rpc, which is not implemented here"
        ) from err


@torch.no_grad()
def sync_weights(llm, lm: nn.Module) -> None:
    """Copy ``lm``'s current weights (LoRA merged) into vLLM's model; call after each optimiser step.

    Goes through the model's ``load_weights`` (which maps HF names onto vLLM's fused q/k/v and gate/up
    parameters and copies in place, so captured CUDA graphs stay valid), then resets the prefix cache,
    whose KV blocks were computed with the old weights.
    """
    engine_model(llm).load_weights(weights=merged_weights(lm))
    reset = getattr(llm, "reset_prefix_cache", None)
    if reset is not None:
        reset()


def completions_from_outputs(
    token_ids: Sequence[Sequence[int]],
    finish_reasons: Sequence[str | None],
    *,
    answer_id: int,
    pad_id: int,
    eos_ids: Sequence[int] = (),
    max_new_tokens: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """vLLM's sampled ids per row -> ((n, T) right-padded ids, (n, T) mask, (n,) forced), T the longest.

    A row keeps its tokens up to its first ``<answer>`` or EOS; an EOS becomes ``<answer>`` (forced). A
    row with neither and ``finish_reason == "length"`` has its last token replaced by ``<answer>``
    (forced; an empty row becomes ``[<answer>]``). Any other finish reason raises: vLLM stopped on
    something this backend did not ask for.

    Example:
        >>> ids, mask, forced = completions_from_outputs(
        ...     [[5, 9], [5, 2], [5, 6, 7]], ["stop", "stop", "length"],
        ...     answer_id=9, pad_id=0, eos_ids=[2], max_new_tokens=3)
        >>> ids.tolist(), mask.tolist(), forced.tolist()
        ([[5, 9, 0], [5, 9, 0], [5, 6, 9]], [[1, 1, 0], [1, 1, 0], [1, 1, 1]], [False, True, True])
    """
    eos = set(eos_ids) - {answer_id}
    rows, forced = [], []
    for i, (toks, reason) in enumerate(zip(token_ids, finish_reasons, strict=True)):
        toks = list(toks)
        if len(toks) > max_new_tokens:
            raise ValueError(f"row {i} has {len(toks)} tokens for a budget of {max_new_tokens}")
        stop = next((j for j, t in enumerate(toks) if t == answer_id or t in eos), None)
        if stop is not None:
            rows.append([*toks[:stop], answer_id])
            forced.append(toks[stop] != answer_id)
        elif reason == "length":
            rows.append([*toks[:-1], answer_id])
            forced.append(True)
        else:
            raise ValueError(
                f"row {i} finished with {reason!r} on none of the stop ids ({answer_id} and {sorted(eos)})"
            )
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device), torch.tensor(forced, dtype=torch.bool, device=device)


def _sampling_params(
    vllm, n_rows: int, *, stop_ids: list[int], max_new_tokens: int, do_sample: bool, temperature: float,
    top_k: int | None, top_p: float | None, seed: int | None, row_seeds: Sequence[int] | None,
) -> list:  # fmt: skip
    """One ``vllm.SamplingParams`` per row: greedy is ``temperature=0``; the row seeds as documented."""
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    params = []
    for i in range(n_rows):
        row_seed = row_seeds[i] if row_seeds is not None else (None if seed is None else seed + i)
        params.append(
            vllm.SamplingParams(
                n=1,
                temperature=temperature if do_sample else 0.0,
                top_k=top_k if do_sample and top_k is not None else -1,
                top_p=top_p if do_sample and top_p is not None else 1.0,
                max_tokens=max_new_tokens,
                stop_token_ids=stop_ids,
                ignore_eos=True,  # only stop_token_ids stop a row, as in generate_reasoning
                seed=int(row_seed) if do_sample and row_seed is not None else None,
                detokenize=False,  # token_ids keep the stop token either way; the text is never read
            )
        )
    return params


@torch.no_grad()
def generate_reasoning_vllm(
    llm,
    lm: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    answer_id: int,
    pad_id: int,
    eos_ids: Sequence[int] = (),
    max_new_tokens: int = 512,
    num_generations: int = 1,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Rollout:
    """``rrec.rollout.generate_reasoning``'s contract with vLLM sampling (see the module docstring).

    Args:
        llm: a ``vllm.LLM`` holding ``lm``'s current weights (``make_llm``, then ``sync_weights`` after
            each optimiser step).
        lm: the HF model (possibly PEFT-wrapped) for the teacher-forced states and log-probs.
        prompt_ids: (B, P) left-padded prompt ids; prompt_mask: (B, P).
        max_new_tokens: budget including ``<answer>`` (>= 1).
        seed: row i (user-major, b*G + g) samples with vLLM seed ``seed + i``; None: vLLM's own RNG.
        row_seeds: optional (B*G,) per-row vLLM seeds (e.g. ``rrec.training.rollout_seeds``); wins over
            ``seed``. Both are unused when greedy.

    Returns:
        a ``Rollout``: rows user-major, ``user_states`` (B*G, D) and ``logps`` (B*G, T) from one float32
        teacher-forced pass of ``lm`` over exactly the sampled ids.
    """
    from rrec.training import policy_forward  # training imports rollout: keep this module light

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    G = num_generations
    n = prompt_ids.shape[0] * G
    if row_seeds is not None and len(row_seeds) != n:
        raise ValueError(f"{len(row_seeds)} row_seeds for {prompt_ids.shape[0]} prompts x {G} samples")
    prompt_ids = prompt_ids.repeat_interleave(G, 0)  # (B*G, P)
    prompt_mask = prompt_mask.repeat_interleave(G, 0)
    prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt is empty (its mask is all 0)")
    eos = [e for e in dict.fromkeys(eos_ids) if e != answer_id]
    params = _sampling_params(
        _import_vllm(), n, stop_ids=[answer_id, *eos], max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, row_seeds=row_seeds,
    )  # fmt: skip
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    if len(outputs) != n:
        raise ValueError(f"vLLM returned {len(outputs)} outputs for {n} requests")
    samples = [out.outputs[0] for out in outputs]  # n=1: one completion per request, in request order
    completion_ids, completion_mask, forced = completions_from_outputs(
        [s.token_ids for s in samples], [s.finish_reason for s in samples], answer_id=answer_id,
        pad_id=pad_id, eos_ids=eos, max_new_tokens=max_new_tokens, device=prompt_ids.device,
    )  # fmt: skip
    logps, states = policy_forward(
        lm, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature if do_sample else 1.0
    )  # (B*G, T), (B*G, D)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logps=logps.float(),
        user_states=states,
        forced=forced,
    )
