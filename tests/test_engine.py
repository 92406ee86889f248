"""rrec.engine.StaticDecoder: the static-KV-cache decoder equals the HF forward (CPU, float32)."""

from __future__ import annotations

import pytest
import torch

from rrec.backbone import apply_lora
from rrec.engine import StaticDecoder, supported
from rrec.rollout import generate_reasoning, left_pad
from tests.conftest import make_tiny_lm
from tests.tolerance import N_TINY, assert_f32_close


def _tiny_qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def _with_lora(lm):
    lm = apply_lora(lm, rank=2)
    for name, p in lm.named_parameters():
        if "lora_B" in name:  # B starts at 0: give the adapter a real delta
            torch.nn.init.normal_(p, std=0.05)
    return lm.eval()


def _prompts(tokenizer):
    texts = [
        "Recommend a movie after Heat (1995).",
        "Hi",
        "Toy Story (1995), Fargo (1996), Babe (1995) and more",
    ]
    return left_pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id)


def _rollouts(lm, tokenizer, G, **kw):
    ids, mask = _prompts(tokenizer)
    answer = tokenizer.convert_tokens_to_ids("<|im_end|>")
    args = dict(answer_id=answer, pad_id=tokenizer.pad_token_id, eos_ids=[0], max_new_tokens=12,
                num_generations=G, **kw)  # fmt: skip
    ref = generate_reasoning(lm, ids, mask, **args)
    engine = StaticDecoder(lm, rows=ids.shape[0] * G, max_len=ids.shape[1] + 13)
    got = generate_reasoning(lm, ids, mask, engine=engine, **args)
    return ref, got


@pytest.mark.parametrize("kind", ["llama", "qwen2_lora", "llama_lora"])
def test_greedy_rollout_equals_the_hf_path(tokenizer, kind):
    if kind == "llama":
        lm = make_tiny_lm(tokenizer, seed=2)
    elif kind == "qwen2_lora":
        lm = _with_lora(_tiny_qwen2(tokenizer))
    else:
        lm = _with_lora(make_tiny_lm(tokenizer, seed=4))
    ref, got = _rollouts(lm, tokenizer, G=2, do_sample=False)
    assert torch.equal(ref.completion_ids, got.completion_ids) and torch.equal(ref.forced, got.forced)
    assert_f32_close(got.logps, ref.logps, n=N_TINY)
    assert_f32_close(got.user_states, ref.user_states, n=N_TINY)


def test_sampled_rollout_equals_the_hf_path_with_the_same_seeds(tokenizer):
    # per-row generators: identical logits (up to float32 rounding) draw identical tokens
    lm = make_tiny_lm(tokenizer, seed=5)
    ref, got = _rollouts(
        lm, tokenizer, G=3, do_sample=True, temperature=1.5, top_k=50, row_seeds=list(range(9))
    )
    assert torch.equal(ref.completion_ids, got.completion_ids)
    assert_f32_close(got.logps, ref.logps, n=N_TINY)


def test_load_refreshes_merged_lora_weights(tokenizer):
    lm = _with_lora(make_tiny_lm(tokenizer, seed=6))
    ids, mask = _prompts(tokenizer)
    engine = StaticDecoder(lm, rows=3, max_len=ids.shape[1] + 2)
    before = engine.prefill(ids, mask)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    stale = engine.prefill(ids, mask)
    engine.load(lm)
    fresh = engine.prefill(ids, mask)
    from rrec.backbone import final_hidden

    want = final_hidden(lm, ids, mask)[0][:, -1]
    assert torch.equal(before, stale)  # a snapshot: changes are not seen until load()
    assert_f32_close(fresh, want, n=N_TINY)


def test_unsupported_models_and_sizes_are_refused(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert "gpt2" in supported(gpt2)
    with pytest.raises(ValueError, match="cannot run this model"):
        StaticDecoder(gpt2, rows=1, max_len=8)
    lm = make_tiny_lm(tokenizer)
    ids, mask = _prompts(tokenizer)
    engine = StaticDecoder(lm, rows=3, max_len=ids.shape[1] + 1)
    with pytest.raises(ValueError, match="engine holds"):
        engine.prefill(ids, mask, repeat=2)
    engine.prefill(ids, mask)
    engine.decode(
        torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool)
    )
    with pytest.raises(ValueError, match="cache is full"):
        engine.decode(
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
            torch.ones(3, dtype=torch.bool),
        )


@pytest.mark.gpu
def test_cuda_graph_rollout_equals_the_hf_path(tokenizer):
    lm = _with_lora(make_tiny_lm(tokenizer, seed=7)).cuda()
    ids, mask = (t.cuda() for t in _prompts(tokenizer))
    answer = tokenizer.convert_tokens_to_ids("<|im_end|>")
    args = dict(answer_id=answer, pad_id=tokenizer.pad_token_id, eos_ids=[0], max_new_tokens=12,
                num_generations=2, do_sample=False)  # fmt: skip
    ref = generate_reasoning(lm, ids, mask, **args)
    engine = StaticDecoder(lm, rows=6, max_len=ids.shape[1] + 13, cuda_graph=True)
    for _ in range(2):  # the second call replays the graph captured by the first
        got = generate_reasoning(lm, ids, mask, engine=engine, **args)
        assert torch.equal(ref.completion_ids, got.completion_ids)
        torch.testing.assert_close(got.logps, ref.logps, atol=1e-4, rtol=1e-4)
