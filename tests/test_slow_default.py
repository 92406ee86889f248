"""Slow tests on the embedded default (SmolLM2-135M-Instruct, MovieLens-100K); need `rrec fetch`.

The `slow_ci` subset runs in CI (`make test`); the rest with `pytest -m slow`.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.slow_ci
def test_converted_smollm2_answers_a_chat_prompt(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    lm = AutoModelForCausalLM.from_pretrained(default_model_dir)  # plain HF loading, no gguf
    assert sum(p.numel() for p in lm.parameters()) == pytest.approx(134.5e6, rel=0.01)
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


@pytest.mark.slow_ci
def test_recommend_for_a_real_movielens_user(default_model_dir):
    from rrec.data import ensure_default, load_prepared
    from rrec.model import ReasoningRecommender

    data = load_prepared(ensure_default())
    row = data.splits["test"].iloc[0]
    model = ReasoningRecommender.from_pretrained(default_model_dir, catalog=data.items, max_new_tokens=32)
    model.build_item_table(batch_size=64)
    history = [
        {"item_id": i, "rating": r, "timestamp": t}
        for i, r, t in zip(row.history, row.history_ratings, row.history_timestamps, strict=True)
    ]
    rec = model.recommend(history, k=20, target_times=[row.timestamp])
    assert len(rec.item_ids) == 20 and len(set(rec.item_ids)) == 20
    assert not set(rec.item_ids) & set(row.history)
    assert rec.reasoning.strip(), "empty reasoning"
    assert all(torch.isfinite(torch.tensor(rec.scores)))
