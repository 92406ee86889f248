"""RecPO with ``rollout_engine=vllm``, without vLLM: the start-up errors, and a run through a fake engine.

vLLM is not installed here, so the run swaps in ``FakeLLM`` (``tests/test_vllm_backend.py``: it answers
each request with an output shaped like vLLM's, cut by vLLM's stop rule), given an engine model whose
``load_weights`` records what the real ``sync_weights`` sends it, and the fake ``vllm`` module (for
``SamplingParams``). Everything else runs for real: ``save_for_vllm``, ``sync_weights``,
``generate_reasoning_vllm`` and the recipe around them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes import train_recpo
from rrec import distributed, training, vllm_backend
from rrec.backbone import apply_lora
from rrec.data import load_prepared
from rrec.model import ReasoningRecommender
from rrec.vllm_backend import merged_weights
from tests.test_recipe_recpo import _args
from tests.test_vllm_backend import FakeLLM, fake_vllm  # noqa: F401  (fake_vllm: a fixture)
from tests.tolerance import assert_f32_close

B, G = 2, 3  # _args: users_per_step, num_generations


def _stream(vocab: int):
    # a row with vLLM seed s draws k = 1 + s % 4 ids away from the special tokens, then <answer> (the
    # first stop id): its completion is k + 1 tokens, not forced, whatever the model would have sampled
    def stream(prompt, sp):
        k = 1 + sp["seed"] % 4
        g = torch.Generator().manual_seed(sp["seed"])
        return [*torch.randint(1000, vocab - 1000, (k,), generator=g).tolist(), sp["stop_token_ids"][0]]

    return stream


class Recorder:
    """``make_llm``'s stand-in: one ``FakeLLM`` whose engine model records every weight sync."""

    def __init__(self, vocab: int):
        self.made: list[tuple[str, dict]] = []
        self.synced: list[dict[str, torch.Tensor]] = []  # the weights of each sync, in order
        self.events: list[str] = []  # "sync" / "generate", in call order
        self.resets = 0
        self.llm = FakeLLM(_stream(vocab))
        model = SimpleNamespace(load_weights=self.load_weights)
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=worker))
        )
        self.llm.reset_prefix_cache = self.reset
        generate = self.llm.generate

        def logged_generate(*args, **kw):
            self.events.append("generate")
            return generate(*args, **kw)

        self.llm.generate = logged_generate

    def make_llm(self, path, **kw):
        self.made.append((str(path), kw))
        return self.llm

    def load_weights(self, weights):
        self.events.append("sync")
        self.synced.append({n: w.clone() for n, w in weights})

    def reset(self):
        self.resets += 1


def test_vllm_without_vllm_fails_before_anything_runs(tmp_path, tokenizer):
    # vllm is not installed here (tests/test_vllm_backend.py checks it): the run stops at start-up, before
    # the out_dir (config.json, evaluations, result.json) is written
    assert vllm_backend.available() is False
    with pytest.raises(ValueError, match=r"optional.*pip install -e \.\[vllm\]"):
        train_recpo.main(_args(tmp_path, tokenizer, rollout_engine="vllm"))
    assert not (tmp_path / "run").exists()


def test_vllm_refuses_several_processes(tmp_path, tokenizer, monkeypatch):
    # one vLLM per process is not designed: a world of 2 is refused at start-up, vllm present or not
    monkeypatch.setattr(vllm_backend, "available", lambda: True)
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match=r"one process only.*got 2 processes"):
        train_recpo.main(_args(tmp_path, tokenizer, rollout_engine="vllm"))
    assert not (tmp_path / "run").exists()


def test_unknown_engine_still_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"engine must be one of \('auto', 'hf', 'static'\), got 'fast'"):
        train_recpo.main(_args(tmp_path, tokenizer, rollout_engine="fast"))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("fake_vllm")  # generate_reasoning_vllm imports vllm.SamplingParams
def test_vllm_run_syncs_before_each_rollout_and_trains(tmp_path, tokenizer, monkeypatch):
    rec = Recorder(len(tokenizer))
    monkeypatch.setattr(vllm_backend, "available", lambda: True)
    monkeypatch.setattr(vllm_backend, "make_llm", rec.make_llm)
    args = _args(tmp_path, tokenizer, rollout_engine="vllm", steps=2, save_every=1)
    result = train_recpo.main(args)  # evaluations before and after: they decode with auto, not vllm
    run = tmp_path / "run"

    # one engine, on the folder written under out_dir, as long as the HF model's context (tiny: 2048)
    assert rec.made == [(str(run / "vllm_model"), {"max_model_len": 2048, "seed": 0})]
    # a sync before each rollout (2 steps), each followed by its prefix-cache reset
    assert rec.events == ["sync", "generate", "sync", "generate"] and rec.resets == 2
    # sync 1 holds the initial weights (LoRA B = 0: the merge is the base), the ones in the saved folder
    saved = AutoModelForCausalLM.from_pretrained(run / "vllm_model", dtype=torch.float32).state_dict()
    assert set(rec.synced[0]) == set(saved) - {"lm_head.weight"}  # tied to embed_tokens: sent once
    for n, w in rec.synced[0].items():
        assert torch.equal(w, saved[n]), n
    assert len(AutoTokenizer.from_pretrained(run / "vllm_model")) == len(tokenizer) + 1  # <answer> added
    # sync 2 holds the weights after step 1's optimiser step, as checkpoint-1 saved them: the merged
    # projections (2 layers x 7) and the embedding's <answer> row (it trains with LoRA) moved, the rest
    # (the other rows, norms) did not
    after_1 = dict(merged_weights(ReasoningRecommender.from_pretrained(run / "checkpoint-1").lm))
    assert set(after_1) == set(rec.synced[1])
    moved = [n for n in after_1 if not torch.equal(rec.synced[1][n], rec.synced[0][n])]
    emb = "model.embed_tokens.weight"
    assert len(moved) == 15 and all(n.endswith("proj.weight") or n == emb for n in moved)
    rows = (rec.synced[1][emb] != rec.synced[0][emb]).any(1).nonzero().flatten().tolist()
    assert rows == [len(tokenizer)]  # <answer>'s id; tied embeddings: it is the output row too
    for n, w in after_1.items():  # W + (alpha / r) B A: a sum over the rank (4) in another order
        assert_f32_close(rec.synced[1][n], w, n=4, msg=n)

    # the fake got each step's batch prompts (unpadded ids), each G times in a row, user-major
    data = load_prepared(tmp_path / "data")
    model = ReasoningRecommender.from_pretrained(tmp_path / "base", catalog=data.items, max_history=20)
    batches = training.sample_batches(data.splits["train"], B, seed=0)
    expected = []
    for _ in range(2):
        ids, mask = training.prompt_batch(model, next(batches).reset_index(drop=True))
        expected += [ids[b][mask[b].bool()].tolist() for b in range(B) for _ in range(G)]
    assert [list(prompt) for prompt, _ in rec.llm.requests] == expected
    # row i of step s asks for vLLM seed 0 * 2**32 + s * B * G + i: 0..5 at step 0, 6..11 at step 1
    assert [sp["seed"] for _, sp in rec.llm.requests] == list(range(12))
    # and the recipe trained on those completions: seeds 0..5 give k = 1 2 3 4 1 2 (+ <answer>), a mean
    # length of 19/6; seeds 6..11 give k = 3 4 1 2 3 4, 23/6; none forced
    hist = result["history"]
    assert [h["train/reasoning_len"] for h in hist] == pytest.approx([19 / 6, 23 / 6], abs=1e-6)
    assert [h["train/forced_answer"] for h in hist] == [0.0, 0.0]
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in hist)
    assert (run / "result.json").is_file() and result["steps"] == 2

    # every LoRA weight moved from its init (rebuilt as the recipe's setup builds it, seed 0)
    torch.manual_seed(0)
    init = dict(
        apply_lora(
            ReasoningRecommender.from_pretrained(tmp_path / "base").lm, rank=4, alpha=8
        ).named_parameters()
    )
    final = ReasoningRecommender.from_pretrained(run / "final").lm
    lora = {n: p for n, p in final.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    for n, p in lora.items():
        assert not torch.equal(p, init[n]), f"{n} did not change"


@pytest.mark.usefixtures("fake_vllm")  # generate_reasoning_vllm imports vllm.SamplingParams
def test_vllm_row_seeds_reach_vllm(tmp_path, tokenizer, monkeypatch):
    # row_seeds=true: each row's vLLM seed is rrec.training.rollout_seeds(seed, step, user, g), as the
    # HF rollout would use, instead of the per-step formula
    rec = Recorder(len(tokenizer))
    monkeypatch.setattr(vllm_backend, "available", lambda: True)
    monkeypatch.setattr(vllm_backend, "make_llm", rec.make_llm)
    train_recpo.main(_args(tmp_path, tokenizer, rollout_engine="vllm", steps=2, row_seeds=True, eval_users=1))
    want = training.rollout_seeds(0, 0, range(B), G) + training.rollout_seeds(0, 1, range(B), G)
    assert [sp["seed"] for _, sp in rec.llm.requests] == want and len(set(want)) == 2 * B * G
