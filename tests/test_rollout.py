"""The decode loop: HF parity (ref, sampling warpers), <answer> handling, user states."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rrec.backbone import final_hidden
from rrec.prompts import add_answer_token
from rrec.rollout import generate_reasoning, left_pad, sample_next, sample_next_per_row, warp_logits
from tests.tolerance import N_TINY, assert_f32_close


@pytest.fixture()
def lm_tok(tokenizer, tiny_lm):
    tok = copy.deepcopy(tokenizer)
    answer = add_answer_token(tok, tiny_lm)
    return tiny_lm, tok, answer


def _prompts(tok):
    texts = ["Hello there, how are you today?", "A much longer prompt about movies and their genres ok"]
    return left_pad(tok(texts, add_special_tokens=False).input_ids, tok.pad_token_id)


def test_ref_equals_hf_generate(lm_tok):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    n = 12
    ours = generate_reasoning(
        lm, ids, mask, answer_id=answer, pad_id=tok.pad_token_id, max_new_tokens=n, do_sample=False
    )
    hf = lm.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n - 1,
        do_sample=False,
        generation_config=GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=None),
    )
    hf_new = hf[:, ids.shape[1] :]
    # a random tiny model emits neither <answer> nor EOS in 11 steps; our last token is the forced <answer>
    assert torch.equal(ours.completion_ids[:, : n - 1], hf_new)
    assert (ours.completion_ids[:, -1] == answer).all() and ours.forced.all()
    assert ours.completion_mask.sum().item() == 2 * n


def test_user_state_is_hidden_at_answer_of_exact_ids(lm_tok):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    torch.manual_seed(0)
    roll = generate_reasoning(
        lm,
        ids,
        mask,
        answer_id=answer,
        pad_id=tok.pad_token_id,
        max_new_tokens=6,
        num_generations=3,
        do_sample=True,
        temperature=1.5,
        top_k=50,
    )
    assert roll.completion_ids.shape[0] == 6 and roll.user_states.shape == (6, lm.config.hidden_size)
    # teacher-forced pass over prompt + completion: the state at <answer> equals the rollout's
    full = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    fmask = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
    hidden, _ = final_hidden(lm, full, fmask)
    pos = roll.prompt_ids.shape[1] + roll.completion_mask.sum(1) - 1  # index of <answer>
    tf_states = hidden[torch.arange(6), pos]
    assert_f32_close(roll.user_states, tf_states, n=N_TINY)
    # logps: log softmax(logits / T) of the taken tokens, recomputed teacher-forced
    logits = lm(input_ids=full, attention_mask=fmask).logits[:, roll.prompt_ids.shape[1] - 1 : -1] / 1.5
    lp = torch.log_softmax(logits.float(), -1).gather(2, roll.completion_ids[..., None]).squeeze(-1)
    assert_f32_close(roll.logps, lp * roll.completion_mask, n=N_TINY)
    # rows 0-2 share user 0's prompt
    assert torch.equal(roll.prompt_ids[0], roll.prompt_ids[2]) and not torch.equal(
        roll.prompt_ids[0], roll.prompt_ids[3]
    )


def _seeded():
    # the same seed gives the same draws in two runs, up to the step where the runs differ
    return dict(do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(7))


def test_eos_is_replaced_by_answer(lm_tok):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    ref = generate_reasoning(
        lm, ids, mask, answer_id=answer, pad_id=tok.pad_token_id, max_new_tokens=4, **_seeded()
    )
    # declare each row's ref 2nd token an "EOS": both rows must stop there, with <answer> in its place
    fake_eos = ref.completion_ids[:, 1].tolist()
    if set(fake_eos) & set(ref.completion_ids[:, 0].tolist()):
        raise AssertionError("seeded draws collide: pick another seed")
    roll = generate_reasoning(
        lm,
        ids,
        mask,
        answer_id=answer,
        pad_id=tok.pad_token_id,
        eos_ids=fake_eos,
        max_new_tokens=4,
        **_seeded(),
    )
    assert roll.completion_ids.shape[1] == 2
    assert torch.equal(roll.completion_ids[:, 0], ref.completion_ids[:, 0])
    assert (roll.completion_ids[:, 1] == answer).all() and roll.forced.all()
    assert roll.completion_mask.tolist() == [[1, 1], [1, 1]]


def test_rows_finish_at_different_steps(lm_tok):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    ref = generate_reasoning(
        lm, ids, mask, answer_id=answer, pad_id=tok.pad_token_id, max_new_tokens=5, **_seeded()
    )
    # row 0's 2nd token is an "EOS", row 1 runs to the budget
    fake_eos = [ref.completion_ids[0, 1].item()]
    if fake_eos[0] in ref.completion_ids[1].tolist() or fake_eos[0] == ref.completion_ids[0, 0]:
        raise AssertionError("seeded draws collide: pick another seed")
    roll = generate_reasoning(
        lm,
        ids,
        mask,
        answer_id=answer,
        pad_id=tok.pad_token_id,
        eos_ids=fake_eos,
        max_new_tokens=5,
        **_seeded(),
    )
    assert roll.completion_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert roll.completion_ids[0, 2:].tolist() == [tok.pad_token_id] * 3
    torch.testing.assert_close(roll.user_states[1], ref.user_states[1])  # row 1 unaffected


def _hf_probs(logits, temperature, top_k, top_p):
    scores = logits.clone()
    for w in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
        scores = w(None, scores)
    return scores.softmax(-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.5, 20, 1.0), (0.7, 50, 0.9), (1.0, 10, 0.5)])
def test_sampling_distribution_matches_hf(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 2
    ours = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(-1)
    ref = _hf_probs(logits, temperature, top_k, top_p)
    torch.testing.assert_close(ours, ref)  # the distributions themselves agree
    # and the sampler draws from it: total variation of 100k draws vs the exact distribution.
    # E[TV] <= 0.5 * sqrt(2 / (pi n)) * sum_i sqrt(p_i) <= 0.5 * 0.0025 * sqrt(50) ~= 0.009 for n = 1e5.
    n = 100_000
    g = torch.Generator().manual_seed(1)
    draws = sample_next(
        logits.expand(n, -1), do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, generator=g
    )
    emp = torch.bincount(draws, minlength=50).double() / n
    tv = 0.5 * (emp - ref[0].double()).abs().sum().item()
    assert tv < 0.02, tv
    assert emp[ref[0] == 0].sum() == 0  # never a removed token


def test_sampler_matches_hf_generate_first_token(lm_tok):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    ids, mask = ids[:1], mask[:1]
    n = 1000
    torch.manual_seed(0)
    hf = lm.generate(
        input_ids=ids.expand(n, -1),
        attention_mask=mask.expand(n, -1),
        max_new_tokens=1,
        do_sample=True,
        temperature=2.0,
        top_k=8,
        top_p=0.95,
        generation_config=GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=None),
    )
    hf_first = hf[:, -1]
    ours = generate_reasoning(
        lm,
        ids,
        mask,
        answer_id=answer,
        pad_id=tok.pad_token_id,
        max_new_tokens=2,
        num_generations=n,
        do_sample=True,
        temperature=2.0,
        top_k=8,
        top_p=0.95,
        generator=torch.Generator().manual_seed(3),
    )
    vocab = lm.config.vocab_size
    a = torch.bincount(hf_first, minlength=vocab).double() / n
    b = torch.bincount(ours.completion_ids[:, 0], minlength=vocab).double() / n
    # at most 8 tokens survive: two independent 1000-draw histograms differ by TV ~0.05 at most by chance
    assert (a > 0).sum() <= 8 and (b > 0).sum() <= 8
    assert 0.5 * (a - b).abs().sum().item() < 0.12


def test_row_seeds_draw_each_row_independently_of_its_batch(lm_tok):
    # the batch [A, B] with G = 2 and seeds (11, 12, 13, 14) vs the batch [A] alone with seeds (11, 12):
    # A is left-padded to B's width in the first batch and not in the second, and shares the batch with
    # other rows, yet its rows draw the same tokens because each row samples from its own generator
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    kw = dict(answer_id=answer, pad_id=tok.pad_token_id, max_new_tokens=6, num_generations=2,
              do_sample=True, temperature=1.5, top_k=50)  # fmt: skip
    both = generate_reasoning(lm, ids, mask, row_seeds=[11, 12, 13, 14], **kw)
    n_a = int(mask[0].sum())
    alone = generate_reasoning(lm, ids[:1, -n_a:], mask[:1, -n_a:], row_seeds=[11, 12], **kw)
    for row in range(2):
        m = both.completion_mask[row].bool()
        assert torch.equal(alone.completion_mask[row].bool(), m[: alone.completion_mask.shape[1]])
        assert torch.equal(
            both.completion_ids[row][m], alone.completion_ids[row][m[: alone.completion_ids.shape[1]]]
        )
    assert_f32_close(both.user_states[:2], alone.user_states, n=N_TINY)
    # the same seeds give the same rollout; a shared generator is left untouched
    g = torch.Generator().manual_seed(5)
    again = generate_reasoning(lm, ids, mask, row_seeds=[11, 12, 13, 14], generator=g, **kw)
    assert torch.equal(again.completion_ids, both.completion_ids)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state())
    with pytest.raises(ValueError, match="3 row_seeds for 2 prompts x 2 samples"):
        generate_reasoning(lm, ids, mask, row_seeds=[1, 2, 3], **kw)


def test_sample_next_per_row_inverse_cdf_by_hand():
    # the generator seeded 0 gives u = 0.4963; the draw is the first token whose cumulative probability
    # exceeds u. (0.5, 0.5): cum 0.5 > u -> 0; (0.4, 0.6): cum 0.4, 1.0 -> 1; (0.1, 0.2, 0.3, 0.4): cum
    # 0.1, 0.3, 0.6 -> 2; (0.2, 0, 0.8): cum 0.2, 0.2, 1.0 -> 2 (the probability-0 token is skipped)
    assert abs(torch.rand((), generator=torch.Generator().manual_seed(0)).item() - 0.4963) < 1e-4
    cases = [([0.5, 0.5], 0), ([0.4, 0.6], 1), ([0.1, 0.2, 0.3, 0.4], 2), ([0.2, 0.0, 0.8], 2)]
    for probs, expected in cases:
        logits = torch.tensor([probs]).log()
        assert sample_next_per_row(logits, [torch.Generator().manual_seed(0)]).item() == expected, probs


def test_sample_next_per_row_draws_from_the_warped_distribution():
    # n rows of the same logits, each with its own generator: the histogram matches the exact
    # distribution (TV bound as in test_sampling_distribution_matches_hf, n = 20000: ~0.02)
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 2
    n = 20_000
    draws = sample_next_per_row(
        logits.expand(n, -1), [torch.Generator().manual_seed(s) for s in range(n)], temperature=1.5, top_k=20
    )
    ref = warp_logits(logits, temperature=1.5, top_k=20).softmax(-1)[0].double()
    emp = torch.bincount(draws, minlength=50).double() / n
    assert 0.5 * (emp - ref).abs().sum().item() < 0.04
    assert emp[ref == 0].sum() == 0


def test_sample_next_per_row_uses_one_generator_per_row():
    # swapping rows together with their generators swaps the draws: row i sees only generator i
    torch.manual_seed(0)
    logits = torch.randn(2, 40)
    draws = sample_next_per_row(logits, [torch.Generator().manual_seed(s) for s in (1, 2)], top_k=10)
    gens = [torch.Generator().manual_seed(s) for s in (2, 1)]
    assert torch.equal(sample_next_per_row(logits.flip(0), gens, top_k=10), draws.flip(0))
