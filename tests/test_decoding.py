"""rrec.decoding (engine choice, DecoderPool) and the static decoder inside recommend() / the evaluator.

CPU, float32, tiny random Llama: the static decoder must give what the HF path gives (same greedy tokens,
same user states up to float32 rounding); the CUDA-graph check's fallback is driven through a stand-in
for the captured graph (a real capture needs CUDA).
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from rrec.backbone import apply_lora, final_hidden
from rrec.decoding import DecoderPool, check_engine, use_static
from rrec.engine import GraphMismatchWarning, StaticDecoder
from rrec.evaluation import evaluate_samples
from rrec.model import ReasoningRecommender
from rrec.rollout import left_pad
from tests.conftest import make_tiny_lm
from tests.test_model import catalog
from tests.tolerance import N_TINY, assert_f32_close


def _lora(lm, seed=0):
    lm = apply_lora(lm, rank=2)
    torch.manual_seed(seed)
    for name, p in lm.named_parameters():
        if "lora_B" in name:  # B starts at 0: give the adapter a real delta
            torch.nn.init.normal_(p, std=0.05)
    return lm.eval()


def _tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


def test_engine_choice(tokenizer):
    llama, gpt2 = make_tiny_lm(tokenizer), _tiny_gpt2(tokenizer)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device type is read
    assert not use_static("hf", llama, cuda)  # hf: always the HF forward
    assert not use_static("auto", llama, cpu)  # auto: the plain path on CPU
    assert use_static("auto", llama, cuda)  # auto: the static decoder on a GPU, supported model
    assert not use_static("auto", gpt2, cuda)  # ... but never for an unsupported architecture
    assert use_static("static", llama, cpu)  # static: wherever the model is
    with pytest.raises(ValueError, match="gpt2"):
        use_static("static", gpt2, cpu)  # static on an unsupported model: an error naming it
    with pytest.raises(ValueError, match="engine must be one of"):
        check_engine("vllm")
    with pytest.raises(ValueError, match="engine must be one of"):
        ReasoningRecommender(llama, copy.deepcopy(tokenizer), rollout_engine="fast")


@pytest.fixture()
def lora_rec(tokenizer):
    lm = _lora(make_tiny_lm(tokenizer, seed=3))
    model = ReasoningRecommender(lm, copy.deepcopy(tokenizer), catalog(), max_new_tokens=8)
    model.build_item_table(batch_size=16)
    return model


def test_recommend_with_the_static_decoder_equals_hf(lora_rec):
    histories = [["1", "2"], ["5", "6", "7", "8"], []]  # three prompt lengths: left padding exercised
    hf = lora_rec.recommend_batch(histories, k=10, engine="hf")
    st = lora_rec.recommend_batch(histories, k=10, engine="static")
    for a, b in zip(hf, st, strict=True):
        assert a.reasoning == b.reasoning and a.forced_answer == b.forced_answer
        assert a.item_ids == b.item_ids
        # scores are cos / 0.02: the states' rounding (relative to |cos| <= 1) times 1 / 0.02
        assert_f32_close(b.scores, a.scores, n=N_TINY, scale=1 / 0.02)
    # the model's default applies when no engine is named; batch 1 gets its own engine in the pool
    lora_rec.rollout_engine = "static"
    one = lora_rec.recommend(histories[0], k=10)
    assert one.item_ids == hf[0].item_ids and one.reasoning == hf[0].reasoning
    assert sorted(lora_rec._decoders.engines) == [1, 3]


def test_evaluator_with_the_static_decoder_equals_hf(lora_rec):
    samples = pd.DataFrame({
        "user_id": ["a", "b", "c", "d", "e"],
        "history": [["1", "2"], ["3"], ["4", "5", "6"], ["7", "8", "9", "10"], ["11"]],
        "target": ["20", "21", "22", "23", "24"],
        "timestamp": [1.0, 2.0, 3.0, 4.0, 5.0],
    })  # fmt: skip
    kw = dict(batch_size=2, max_new_tokens=6, progress=False)  # batches of 2, 2, 1: two engine shapes
    lora_rec.rollout_engine = "hf"
    hf = evaluate_samples(lora_rec, samples, **kw)
    lora_rec.rollout_engine = "static"
    st = evaluate_samples(lora_rec, samples, **kw)
    assert torch.equal(hf.ranks, st.ranks)
    assert hf.reasonings == st.reasonings and hf.top_ids == st.top_ids


def _prompt(tokenizer):
    texts = ["Recommend a movie after Heat (1995).", "Hi there"]
    return left_pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id)


def test_pool_reuses_shares_refreshes_and_evicts(tokenizer):
    lm = _lora(make_tiny_lm(tokenizer, seed=5))
    pool = DecoderPool(max_engines=2, slot_step=16)
    a = pool.get(lm, rows=2, need=10)
    assert a.max_len == 16  # rounded up to the slot step
    assert pool.get(lm, rows=2, need=16) is a  # fits: reused (and its CUDA graph with it)
    b = pool.get(lm, rows=2, need=17)
    assert b is not a and b.max_len == 32  # a longer batch: a bigger engine replaces it
    c = pool.get(lm, rows=4, need=10)
    assert c.weights is b.weights  # one weight snapshot for every batch shape
    # after an optimiser step the next get() holds the new weights: prefill equals the HF forward
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_A" in name:
                p.add_(0.1)
    ids, mask = _prompt(tokenizer)
    got = pool.get(lm, rows=2, need=ids.shape[1] + 1).prefill(ids, mask)
    want = final_hidden(lm, ids, mask)[0][:, -1]
    assert_f32_close(got, want, n=N_TINY)
    pool.get(lm, rows=8, need=10)  # a third shape: the least recently used (rows=4) goes
    assert sorted(pool.engines) == [2, 8]
    lm.to(torch.float64)  # the model changed dtype: every snapshot is dropped
    d = pool.get(lm, rows=2, need=10)
    assert d.dtype == torch.float64 and list(pool.engines) == [2]


def _graph_engine(tokenizer, monkeypatch, corrupt: bool):
    """An engine that believes it runs CUDA graphs, with a stand-in replay: the eager step, plus 0.5
    added to every hidden unit when ``corrupt`` (what a bad capture would return)."""
    lm = make_tiny_lm(tokenizer, seed=4)
    eng = StaticDecoder(lm, rows=2, max_len=24)
    eng.cuda_graph = True

    def fake_replay(self, tokens, positions, slot):
        self._graph = "captured"
        out = self._eager(tokens, positions, slot)
        return out + 0.5 if corrupt else out

    monkeypatch.setattr(StaticDecoder, "_replay", fake_replay)
    ids, mask = _prompt(tokenizer)
    eng.prefill(ids, mask)
    return eng, mask


@pytest.mark.parametrize("corrupt", [False, True])
def test_graph_check_keeps_a_good_capture_and_drops_a_bad_one(tokenizer, monkeypatch, corrupt):
    eng, mask = _graph_engine(tokenizer, monkeypatch, corrupt)
    tok = torch.tensor([11, 12])
    pos = mask.sum(1)  # next positions (left-padded prompts)
    ref = copy.deepcopy(eng)
    ref.cuda_graph = False
    want = ref.decode(tok, pos, torch.ones(2, dtype=torch.bool))
    if corrupt:
        with pytest.warns(GraphMismatchWarning, match="decoding eagerly"):
            got = eng.decode(tok, pos, torch.ones(2, dtype=torch.bool))
        assert not eng.cuda_graph and eng._graph is None  # eager from now on
    else:
        got = eng.decode(tok, pos, torch.ones(2, dtype=torch.bool))
        assert eng.cuda_graph and eng._graph == "captured"  # kept: later steps replay
    torch.testing.assert_close(got, want)  # either way the step's output is the eager one
    # the next step: both engines agree (the cache holds the same keys and values)
    nxt = torch.tensor([13, 14])
    torch.testing.assert_close(
        eng.decode(nxt, pos + 1, torch.ones(2, dtype=torch.bool)),
        ref.decode(nxt, pos + 1, torch.ones(2, dtype=torch.bool)),
    )


def test_loading_another_model_never_writes_into_the_first(tokenizer):
    # plain parameters are referenced, not copied: loading a second model must re-reference them, not
    # copy its values into the first model's tensors (which would silently change that model)
    first, second = make_tiny_lm(tokenizer, seed=1), make_tiny_lm(tokenizer, seed=2)
    kept = {n: p.detach().clone() for n, p in first.named_parameters()}
    eng = StaticDecoder(first, rows=2, max_len=32)
    eng.load(second)
    for n, p in first.named_parameters():
        assert torch.equal(p, kept[n]), n
    ids, mask = _prompt(tokenizer)
    assert_f32_close(eng.prefill(ids, mask), final_hidden(second, ids, mask)[0][:, -1], n=N_TINY)
    # the pool starts afresh for another model object
    pool = DecoderPool(slot_step=16)
    a = pool.get(first, rows=2, need=10)
    b = pool.get(second, rows=2, need=10)
    assert a is not b and list(pool.engines) == [2]


def test_sibling_sampler_with_a_static_pool_equals_hf(tokenizer):
    from rrec.text_rollout import _POOLS, sample_completions

    lm = _lora(make_tiny_lm(tokenizer, seed=6))
    prompts = [tokenizer("Rate Heat (1995).")["input_ids"], tokenizer("Hi")["input_ids"]]
    kw = dict(num_generations=2, max_new_tokens=7, do_sample=False)
    hf = sample_completions(lm, tokenizer, prompts, **kw)
    st = sample_completions(lm, tokenizer, prompts, engine="static", **kw)
    assert list(_POOLS[lm]["static"].engines) == [4]  # 2 prompts x G=2 rows ran on the static decoder
    assert torch.equal(hf.completion_ids, st.completion_ids) and hf.texts == st.texts
    assert torch.equal(hf.truncated, st.truncated)
    assert_f32_close(st.logps, hf.logps, n=N_TINY)
    # "auto" on a CPU keeps the HF forward: no engine is built
    sample_completions(lm, tokenizer, prompts, **kw)
    assert not _POOLS[lm]["auto"].engines
