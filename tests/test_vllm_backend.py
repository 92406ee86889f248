"""The optional vLLM backend without vLLM: post-processing, HF-side states and log-probs, weight sync.

``FakeLLM`` stands in for ``vllm.LLM``: its ``generate`` answers each request with a reference token
stream cut by vLLM's stop rule (``vllm/v1/core/sched/utils.py`` ``check_stop``: the sampled token is
appended, then a token in ``stop_token_ids`` ends the row with finish reason "stop", else reaching
``max_tokens`` ends it with "length"), in objects shaped like ``RequestOutput``. A fake ``vllm`` module
supplies ``SamplingParams`` (a dict of its fields) so the requests can be inspected.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rrec import vllm_backend
from rrec.backbone import apply_lora, final_hidden
from rrec.prompts import add_answer_token
from rrec.rollout import generate_reasoning, left_pad
from rrec.vllm_backend import (
    completions_from_outputs,
    generate_reasoning_vllm,
    merged_weights,
    save_for_vllm,
    sync_weights,
)
from tests.tolerance import N_TINY, assert_f32_close

PAD, ANS, EOS = 0, 9, 2  # ids for the hand-written post-processing cases


class FakeLLM:
    """``generate`` like vLLM's: one output per request, token ids cut by the stop rule above."""

    def __init__(self, stream: Callable[[tuple[int, ...], dict], list[int]]):
        self.stream = stream  # (prompt ids, sampling params) -> the tokens vLLM would draw
        self.requests: list[tuple[tuple[int, ...], dict]] = []

    def generate(self, prompts, sampling_params, use_tqdm=True):
        outputs = []
        for prompt, sp in zip(prompts, sampling_params, strict=True):
            key = tuple(prompt["prompt_token_ids"])
            self.requests.append((key, sp))
            drawn = self.stream(key, sp)[: sp["max_tokens"]]
            stop = next((j for j, t in enumerate(drawn) if t in sp["stop_token_ids"]), None)
            toks, reason = (drawn, "length") if stop is None else (drawn[: stop + 1], "stop")
            done = SimpleNamespace(index=0, token_ids=toks, finish_reason=reason)
            outputs.append(SimpleNamespace(outputs=[done]))
        return outputs


@pytest.fixture()
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **fields: fields
    mod.__version__ = "0.0.fake"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


@pytest.fixture()
def lm_tok(tokenizer, tiny_lm):
    tok = copy.deepcopy(tokenizer)
    answer = add_answer_token(tok, tiny_lm)
    return tiny_lm, tok, answer


TEXTS = [
    "Hello there, how are you today?",
    "A much longer prompt about movies and their genres ok",
    "Three films I liked",
]


def _prompts(tok, texts=TEXTS):
    return left_pad(tok(texts, add_special_tokens=False).input_ids, tok.pad_token_id)


def _post(token_ids, reasons, max_new_tokens=4):
    ids, mask, forced = completions_from_outputs(
        token_ids, reasons, answer_id=ANS, pad_id=PAD, eos_ids=[EOS], max_new_tokens=max_new_tokens
    )
    return ids.tolist(), mask.tolist(), forced.tolist()


# --- post-processing on hand-written vLLM outputs -------------------------------------------------------


def test_stop_at_answer_is_kept_as_sampled():
    # vLLM stopped on <answer> (9) after two tokens: kept as is, not forced, no padding needed
    assert _post([[5, 6, ANS]], ["stop"]) == ([[5, 6, 9]], [[1, 1, 1]], [False])


def test_eos_stop_becomes_answer_and_forced():
    # EOS (2) ends the row: it is replaced by <answer>, the row flagged forced
    assert _post([[5, EOS]], ["stop"]) == ([[5, 9]], [[1, 1]], [True])


def test_length_limit_replaces_last_token():
    # 4 tokens at a budget of 4, no stop: the 4th slot goes to <answer> (7 is dropped), forced
    assert _post([[5, 6, 7, 8]], ["length"]) == ([[5, 6, 7, 9]], [[1, 1, 1, 1]], [True])


def test_empty_output_answers_at_once():
    # nothing drawn (e.g. the prompt filled max_model_len): the row is just <answer>, forced
    assert _post([[]], ["length"]) == ([[9]], [[1]], [True])


def test_rows_keep_their_order_and_pad_right():
    # 2 users x G=2, user-major: u0g0 answers after 1 token, u0g1 hits EOS at once, u1g0 runs to the
    # budget, u1g1 answers at once. T = 4 (the longest row); shorter rows are right-padded with 0
    ids, mask, forced = _post([[5, ANS], [EOS], [5, 6, 7, 8], [ANS]], ["stop", "stop", "length", "stop"])
    assert ids == [[5, 9, 0, 0], [9, 0, 0, 0], [5, 6, 7, 9], [9, 0, 0, 0]]
    assert mask == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert forced == [False, True, True, False]


def test_unexpected_stops_are_refused():
    # "stop" on a token that is neither <answer> nor EOS: vLLM was asked for something else
    with pytest.raises(ValueError, match="none of the stop ids"):
        _post([[5, 6]], ["stop"])
    with pytest.raises(ValueError, match="budget of 4"):
        _post([[5, 6, 7, 8, 1]], ["length"])


# --- the HF side: user states and log-probs from the sampled ids ---------------------------------------


def _random_stream(vocab: int, length: int = 6):
    # what a sampler might draw: ids from the row's own seed, away from the stop ids
    def stream(prompt, sp):
        g = torch.Generator().manual_seed(sp["seed"])
        return torch.randint(1000, vocab - 1000, (length,), generator=g).tolist()

    return stream


def test_states_and_logps_come_from_the_sampled_ids(lm_tok, fake_vllm):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok)
    llm = FakeLLM(_random_stream(len(tok)))
    roll = generate_reasoning_vllm(
        llm, lm, ids, mask, answer_id=answer, pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id],
        max_new_tokens=5, num_generations=2, temperature=1.5, seed=3,
    )  # fmt: skip
    # vLLM got the unpadded prompt ids, user-major: rows 0-1 user 0, 2-3 user 1, 4-5 user 2
    expected = [ids[b][mask[b].bool()].tolist() for b in range(3)]
    assert [list(key) for key, _ in llm.requests] == [p for p in expected for _ in range(2)]
    # 6 random draws at a budget of 5: each row keeps 4 of them and <answer> replaces the 5th, forced
    assert roll.completion_ids.shape == (6, 5) and roll.forced.all()
    assert roll.completion_ids[:, -1].tolist() == [answer] * 6
    assert roll.completion_ids[0, :4].tolist() == _random_stream(len(tok))(None, {"seed": 3})[:4]
    # an independent teacher-forced pass over the same ids: state at <answer>, log softmax(logits / 1.5)
    full = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    fmask = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
    with torch.no_grad():
        hidden, _ = final_hidden(lm, full, fmask)
        logits = lm(input_ids=full, attention_mask=fmask).logits
    P = roll.prompt_ids.shape[1]
    assert_f32_close(roll.user_states, hidden[:, -1], n=N_TINY)
    lp = torch.log_softmax(logits[:, P - 1 : -1].float() / 1.5, -1)
    lp = lp.gather(2, roll.completion_ids[..., None]).squeeze(-1)
    assert_f32_close(roll.logps, lp, n=N_TINY)


def test_greedy_parity_with_generate_reasoning(lm_tok, fake_vllm):
    lm, tok, _ = lm_tok
    ids, mask = _prompts(tok)
    n = 9
    hf = lm.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=GenerationConfig(
            max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None
        ),
    )[:, ids.shape[1] :].tolist()  # what vLLM's greedy would draw (it equals HF greedy, up to ties)
    # The tiny model repeats a token per row. Let user 1's first token play <answer> and the first new
    # token of user 2's stream play EOS, so the three endings all occur: user 0 runs to the budget
    # (forced), user 1 answers at once (not forced), user 2 hits EOS after k tokens (replaced, forced).
    answer, k = hf[1][0], next(j for j, t in enumerate(hf[2]) if t != hf[2][0])
    eos = hf[2][k]
    assert answer not in hf[0] + hf[2] and eos not in hf[0] + hf[1] and 0 < k < n - 1
    streams = {tuple(ids[b][mask[b].bool()].tolist()): hf[b] for b in range(3)}
    llm = FakeLLM(lambda prompt, sp: streams[prompt])
    kw = dict(answer_id=answer, pad_id=tok.pad_token_id, eos_ids=[eos], max_new_tokens=n)
    ours = generate_reasoning(lm, ids, mask, num_generations=2, do_sample=False, **kw)
    theirs = generate_reasoning_vllm(llm, lm, ids, mask, num_generations=2, do_sample=False, **kw)
    assert theirs.forced.tolist() == [True, True, False, False, True, True]
    assert theirs.completion_mask.sum(1).tolist() == [n, n, 1, 1, k + 1, k + 1]
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "forced"):
        assert torch.equal(getattr(theirs, name), getattr(ours, name)), name
    assert_f32_close(theirs.user_states, ours.user_states, n=N_TINY)
    assert_f32_close(theirs.logps, ours.logps, n=N_TINY)


def test_sampling_params_sent_to_vllm(lm_tok, fake_vllm):
    lm, tok, answer = lm_tok
    ids, mask = _prompts(tok, TEXTS[:2])
    eos = tok.eos_token_id
    kw = dict(answer_id=answer, pad_id=tok.pad_token_id, eos_ids=[eos, answer], max_new_tokens=3)
    llm = FakeLLM(_random_stream(len(tok)))
    generate_reasoning_vllm(llm, lm, ids, mask, num_generations=2, temperature=0.7, seed=10, **kw)
    sp = [p for _, p in llm.requests]
    # row i = b*G + g samples with seed 10 + i; no top-k/top-p means vLLM's -1 and 1.0; only <answer>
    # and EOS stop a row (the model's own EOS is ignored), one request per row
    assert [p["seed"] for p in sp] == [10, 11, 12, 13]
    assert sp[0] | {"seed": None} == dict(
        n=1, temperature=0.7, top_k=-1, top_p=1.0, max_tokens=3, stop_token_ids=[answer, eos],
        ignore_eos=True, seed=None, detokenize=False,
    )  # fmt: skip
    llm = FakeLLM(_random_stream(len(tok)))
    generate_reasoning_vllm(llm, lm, ids, mask, num_generations=2, top_k=5, row_seeds=[7, 6, 5, 4], **kw)
    assert [p["seed"] for _, p in llm.requests] == [7, 6, 5, 4] and llm.requests[0][1]["top_k"] == 5
    # greedy is vLLM's temperature 0, without seeds or truncation
    llm = FakeLLM(_random_stream(len(tok)))
    llm.stream = lambda prompt, sp: [1000] * 3
    generate_reasoning_vllm(llm, lm, ids, mask, do_sample=False, top_k=5, seed=1, **kw)
    assert {(p["temperature"], p["seed"], p["top_k"]) for _, p in llm.requests} == {(0.0, None, -1)}


# --- availability and errors -----------------------------------------------------------------------------


def test_not_available_here_and_clear_errors(lm_tok, monkeypatch):
    lm, tok, answer = lm_tok
    assert "vllm" not in sys.modules
    assert vllm_backend.available() is False
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # make_llm's setdefault leaves it as is
    with pytest.raises(ImportError, match="pip install vllm"):
        vllm_backend.make_llm("some/model")
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        vllm_backend.make_llm("some/model", tensor_parallel_size=2)
    ids, mask = _prompts(tok, TEXTS[:1])
    with pytest.raises(ImportError, match="optional"):
        generate_reasoning_vllm(
            FakeLLM(_random_stream(len(tok))), lm, ids, mask, answer_id=answer, pad_id=0, max_new_tokens=2
        )


# --- weight sync -----------------------------------------------------------------------------------------


@pytest.fixture()
def lora_lm(lm_tok):
    lm, tok, _ = lm_tok
    peft = apply_lora(copy.deepcopy(lm), rank=4, alpha=8)
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B starts at 0 (no delta); give it one, as training would
            p.data.normal_(0, 0.1)
    return peft, tok


def test_merged_weights_add_the_lora_delta(lora_lm):
    peft, _ = lora_lm
    ours = dict(merged_weights(peft))
    # by hand for one layer: W + (alpha / r) B A with alpha / r = 8 / 4 = 2
    q = peft.get_base_model().model.layers[0].self_attn.q_proj
    by_hand = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(ours["model.layers.0.self_attn.q_proj.weight"], by_hand)
    # every weight equals PEFT's own merge; lm_head is tied to embed_tokens, so it is sent once
    ref = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert set(ours) == set(ref) - {"lm_head.weight"}
    for name, w in ours.items():
        torch.testing.assert_close(w, ref[name], msg=name)


def _llm_with_engine_model(received: list, resets: list):
    model = SimpleNamespace(load_weights=lambda weights: received.extend(weights))
    runner = SimpleNamespace(model_runner=SimpleNamespace(model=model))
    executor = SimpleNamespace(driver_worker=SimpleNamespace(worker=runner))
    return SimpleNamespace(
        llm_engine=SimpleNamespace(model_executor=executor), reset_prefix_cache=lambda: resets.append(1)
    )


def test_sync_weights_loads_merged_weights_and_resets_prefix_cache(lora_lm):
    peft, _ = lora_lm
    received, resets = [], []
    sync_weights(_llm_with_engine_model(received, resets), peft)
    names = [n for n, _ in received]
    assert names == [n for n, _ in merged_weights(peft)] and len(set(names)) == len(names)
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert resets == [1]  # cached KV blocks were computed with the old weights


def test_sync_weights_names_the_version_when_the_path_is_absent(lora_lm, fake_vllm):
    peft, _ = lora_lm
    with pytest.raises(RuntimeError, match=r"vLLM 0\.0\.fake: no model at llm\.llm_engine"):
        sync_weights(SimpleNamespace(llm_engine=SimpleNamespace()), peft)


def test_save_for_vllm_writes_a_plain_hf_folder(lora_lm, tmp_path):
    peft, tok = lora_lm
    d = save_for_vllm(peft, tok, tmp_path / "for_vllm")
    plain = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids, mask = _prompts(tok)
    with torch.no_grad():
        want = peft(input_ids=ids, attention_mask=mask).logits
        got = plain(input_ids=ids, attention_mask=mask).logits
    assert_f32_close(got, want, n=N_TINY)
    assert len(AutoTokenizer.from_pretrained(d)) == len(tok)  # <answer> included
