"""rrec.training: the KL reference policy (LoRA and full fine-tuning) and the history mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rrec import training
from rrec.backbone import apply_lora
from tests.conftest import make_tiny_lm


def _batch(tokenizer):
    # two prompts of 5 and 3 tokens (left-padded), completions of 4 and 2 tokens (right-padded)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[11, 12, 13, 14, 15], [pad, pad, 21, 22, 23]])
    prompt_mask = (prompt_ids != pad).long()
    prompt_mask[0] = 1
    completion_ids = torch.tensor([[31, 32, 33, 34], [41, 42, pad, pad]])
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return prompt_ids, prompt_mask, completion_ids, completion_mask, 1.5


def _perturb(params, seed: int, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_reference_policy_is_none_without_kl_and_refuses_negative_beta(tokenizer):
    lm = make_tiny_lm(tokenizer)
    assert training.reference_policy(lm, 0.0) is None
    with pytest.raises(ValueError, match="beta_kl"):
        training.reference_policy(lm, -0.1)


def test_full_finetune_reference_is_a_frozen_copy_of_the_start(tokenizer):
    # full fine-tuning has no adapter to disable: the reference is a copy of the weights at construction,
    # frozen; training the live model afterwards does not move it
    batch = _batch(tokenizer)
    lm = make_tiny_lm(tokenizer)
    start, _ = training.policy_forward(lm, *batch)
    ref = training.reference_policy(lm, 0.1)
    assert all(not p.requires_grad for p in ref.frozen.parameters()) and not ref.frozen.training
    _perturb(lm.parameters(), seed=1)  # "training" the live model
    moved, _ = training.policy_forward(lm, *batch)
    got = ref.logps(*batch)
    assert not got.requires_grad
    # the same weights and the same float32 computation (the copy runs the same code): equal to rounding
    tol = 8 * torch.finfo(torch.float32).eps * start.abs().max().item()
    assert (got - start).abs().max().item() <= tol
    assert (moved - start).abs().max().item() > 100 * tol  # the live model did move


def test_lora_reference_is_the_adapter_disabled_model(tokenizer):
    # LoRA: no copy; the reference log-probs are the base model's (adapter off), while the live policy
    # carries the adapter; the model's train/eval flag is restored after the reference pass
    batch = _batch(tokenizer)
    base, _ = training.policy_forward(make_tiny_lm(tokenizer, seed=0), *batch)
    lm = apply_lora(make_tiny_lm(tokenizer, seed=0), rank=2)
    _perturb([p for p in lm.parameters() if p.requires_grad], seed=2, std=0.2)
    ref = training.reference_policy(lm, 0.1)
    assert ref.frozen is None  # no second copy of the weights
    lm.train()
    got = ref.logps(*batch)
    assert lm.training
    live, _ = training.policy_forward(lm, *batch)
    tol = 8 * torch.finfo(torch.float32).eps * base.abs().max().item()
    assert (got - base).abs().max().item() <= tol
    assert (live - base).abs().max().item() > 100 * tol


def test_history_mask_never_marks_the_target():
    # user 0's target "b" is also in its history: its column stays unmasked (the evaluation's rule);
    # user 1's history items are all masked; an id outside the table is ignored
    model = SimpleNamespace(item_ids=["a", "b", "c", "d"], device="cpu")
    mask = training.history_mask(model, [["a", "b", "c"], ["b", "zz"]], 4, targets=["b", "d"])
    assert mask.tolist() == [[True, False, True, False], [False, True, False, False]]
    with pytest.raises(ValueError, match="targets"):
        training.history_mask(model, [["a"]], 4, targets=["b", "c"])
