"""rrec.grpo: text rollouts, reward matrices, the GRPO update and the SFT loss on the tiny model."""

from __future__ import annotations

import pytest
import torch

from rrec import grpo, ppo, recpo, text_rollout, training
from rrec.backbone import apply_lora
from tests.conftest import make_tiny_lm
from tests.tolerance import assert_f32_close


def _prompts(tokenizer):
    return [
        text_rollout.chat_prompt(tokenizer, "Do you like Heat (1995)?", system="Answer Yes or No."),
        text_rollout.chat_prompt(tokenizer, "Rate Toy Story (1995) from 1 to 5."),
    ]


def test_chat_prompt_ends_with_the_assistant_header(tokenizer):
    ids = text_rollout.chat_prompt(tokenizer, "hi", system="be brief")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_stop_ids_of_smollm2(tokenizer):
    stop, others = text_rollout.stop_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(stop) == "<|im_end|>"
    assert stop not in others and tokenizer.convert_tokens_to_ids("<|endoftext|>") in others


def test_greedy_completions_equal_hf_generate(tokenizer):
    # parity: our KV-cached loop, stopping at <|im_end|>, against HF generate for the same prompts
    lm = make_tiny_lm(tokenizer, seed=3)
    prompts = _prompts(tokenizer)
    roll = text_rollout.sample_completions(lm, tokenizer, prompts, max_new_tokens=12, do_sample=False)
    stop, others = text_rollout.stop_ids(tokenizer)
    for i, p in enumerate(prompts):
        ref = lm.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=12,
            do_sample=False, eos_token_id=[stop, *others], pad_token_id=tokenizer.pad_token_id,
        )[0, len(p):].tolist()  # fmt: skip
        n = int(roll.completion_mask[i].sum())
        got = roll.completion_ids[i, :n].tolist()
        ref = [stop if t in others else t for t in ref]  # another EOS is written as the stop token
        assert got == ref
        assert bool(roll.truncated[i]) == (stop not in ref)
        assert roll.texts[i] == tokenizer.decode([t for t in ref if t != stop], skip_special_tokens=True)


def test_budget_cuts_the_row_and_marks_it_truncated(tokenizer):
    lm = make_tiny_lm(tokenizer, seed=1)
    stop, others = text_rollout.stop_ids(tokenizer)
    head = lm.lm_head

    class NoStop(torch.nn.Module):  # the LM head with every stop token made impossible
        def forward(self, h):
            return head(h).index_fill(-1, torch.tensor([stop, *others]), float("-inf"))

    lm.lm_head = NoStop()
    roll = text_rollout.sample_completions(
        lm, tokenizer, _prompts(tokenizer), max_new_tokens=5, num_generations=3
    )
    assert roll.completion_ids.shape == (6, 5) and roll.completion_mask.sum().item() == 30
    assert roll.truncated.all()
    assert (roll.logps < 0).all() and len(roll.texts) == 6


def test_reward_matrix_checks_lengths_and_finiteness():
    def length(completions, **_):
        return [len(c) for c in completions]

    def match(completions, label, **_):
        return [float(c == y) for c, y in zip(completions, label, strict=True)]

    cols = grpo.repeat_columns({"label": ["a", "bb"]}, 2)
    assert cols == {"label": ["a", "a", "bb", "bb"]}
    r = grpo.reward_matrix([length, match], ["a", "x", "bb", "bb"], cols)
    assert r.tolist() == [[1.0, 1.0], [1.0, 0.0], [2.0, 1.0], [2.0, 1.0]]
    with pytest.raises(ValueError, match="column 'label'"):
        grpo.reward_matrix([length], ["a"], cols)
    with pytest.raises(ValueError, match="returned 1 values"):
        grpo.reward_matrix([lambda completions, **_: [0.0]], ["a", "b"], {})
    with pytest.raises(ValueError, match="non-finite"):
        grpo.reward_matrix([lambda completions, **_: [float("nan")] * 2], ["a", "b"], {})


def test_sft_loss_equals_hf_loss_with_masked_prompt(tokenizer):
    lm = make_tiny_lm(tokenizer)
    prompt, target = [1, 2, 3, 4], [5, 6, 7]
    ours = grpo.sft_loss(lm, [prompt], [target], pad_id=tokenizer.pad_token_id)
    labels = torch.tensor([[-100] * 4 + target])
    ref = lm(input_ids=torch.tensor([prompt + target]), labels=labels).loss
    # two log-sum-exps over the vocabulary in another order: a relative rounding of the sum of V terms
    # is an absolute one of its log (scale 1)
    assert_f32_close(ours.item(), ref.item(), n=len(tokenizer), scale=1.0)
    # padding a second, longer row does not change the per-token mean of the first's terms
    both = grpo.sft_loss(lm, [prompt, [9, 9]], [target, [8, 8, 8, 8, 8, 8]], pad_id=0)
    assert torch.isfinite(both)


def test_policy_loss_is_recpo_loss_without_the_item_term():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=g)
    old = logps + 0.3 * torch.randn(4, 5, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    a, _ = ppo.policy_loss(logps, old, adv, mask, epsilon=0.2, loss_type="bnpo")
    zero = torch.zeros(4)
    b, st = recpo.recpo_loss(
        logps, old, adv, mask, zero, zero, group_size=2, loss_type="bnpo", item_weight=0.0
    )
    # sums over the 20 token slots of terms ratio * adv, ratio ~ 1
    assert_f32_close(a, b, n=mask.numel(), scale=adv.abs().max().item())
    assert st.clip_fraction > 0


def test_grpo_update_moves_every_lora_weight_and_clips_on_the_second_epoch(tokenizer):
    torch.manual_seed(0)
    lm = apply_lora(make_tiny_lm(tokenizer), rank=2)
    params = [p for p in lm.parameters() if p.requires_grad]
    for p in params:  # LoRA B starts at 0; give it a value so every weight gets a gradient at once
        torch.nn.init.normal_(p, std=0.02)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=5e-2)
    gen = torch.Generator().manual_seed(0)
    roll = text_rollout.sample_completions(
        lm,
        tokenizer,
        _prompts(tokenizer),
        num_generations=4,
        max_new_tokens=6,
        temperature=1.5,
        generator=gen,
    )
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 1.0, 0.3])
    adv = recpo.group_advantages(rewards, 4)
    ref = training.reference_policy(lm, 0.1)  # the adapter-disabled model
    st = grpo.grpo_update(
        lm, params, opt, None, roll, adv, num_iterations=2, temperature=1.5, beta_kl=0.1, reference=ref,
        epsilon=0.01,
    )  # fmt: skip
    assert all(not torch.equal(a, p) for a, p in zip(before, params, strict=True))
    assert st.clip_fraction > 0 and st.kl > 0 and all(map(lambda v: v == v, st))  # finite, not NaN
    with pytest.raises(ValueError, match="reference"):  # the KL needs the shared reference
        grpo.grpo_update(lm, params, opt, None, roll, adv, beta_kl=0.1)


def _rollout(lm, tokenizer):
    gen = torch.Generator().manual_seed(0)
    return text_rollout.sample_completions(
        lm, tokenizer, _prompts(tokenizer), num_generations=2, max_new_tokens=4, temperature=1.5,
        generator=gen,
    )  # fmt: skip


def test_grpo_update_full_finetune_kl_to_a_frozen_copy(tokenizer):
    # beta_kl > 0 without LoRA: the reference is a frozen copy of the starting weights. Iteration 1 runs
    # at the starting weights, so its KL is 0 up to rounding; after two updates the KL is positive.
    torch.manual_seed(0)
    lm = make_tiny_lm(tokenizer)
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    roll = _rollout(lm, tokenizer)
    adv = recpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    ref = training.reference_policy(lm, 0.5)
    kw = dict(temperature=1.5, beta_kl=0.5, reference=ref)
    first = grpo.grpo_update(lm, params, opt, None, roll, adv, num_iterations=1, **kw)
    # k3 = e^d - d - 1 ~ d^2 / 2 with |d| <= a few float32 ulps of |logp| ~ log V ~ 11: far below 1e-8
    assert 0 <= first.kl < 1e-8
    second = grpo.grpo_update(lm, params, opt, None, roll, adv, num_iterations=1, **kw)
    assert second.kl > 1e-4 and all(v == v for v in second)


def test_grpo_update_takes_old_logps_from_the_first_iteration(tokenizer, monkeypatch):
    # mu = 3: one teacher-forced pass per iteration and none before the loop (the first pass's log-probs,
    # detached, are the old ones: the ratio is exactly 1 in iteration 1)
    calls = []
    forward = grpo.policy_forward

    def counting(*args, **kw):
        calls.append(1)
        return forward(*args, **kw)

    monkeypatch.setattr(grpo, "policy_forward", counting)
    torch.manual_seed(0)
    lm = apply_lora(make_tiny_lm(tokenizer), rank=2)
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    roll = _rollout(lm, tokenizer)
    adv = recpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    grpo.grpo_update(lm, params, opt, None, roll, adv, num_iterations=3, temperature=1.5)
    assert len(calls) == 3
