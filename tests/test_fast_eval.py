"""The fast no-reasoning evaluator agrees rank for rank with rrec.evaluation on the same prompts."""

from __future__ import annotations

import copy

import pandas as pd
import torch

from rrec.data import load_prepared
from rrec.evaluation import evaluate_samples
from rrec.fast_eval import rank_samples
from rrec.model import ReasoningRecommender
from tests.conftest import make_tiny_lm
from tests.recipe_fixtures import tiny_prepared


def test_fast_eval_agrees_with_evaluator(tmp_path, tokenizer):
    data = load_prepared(tiny_prepared(tmp_path / "data", n_users=10, n_items=30, per_user=8))
    model = ReasoningRecommender(make_tiny_lm(tokenizer, seed=3), copy.deepcopy(tokenizer), data.items,
                                 max_history=5)  # fmt: skip
    model.build_item_table(batch_size=16)
    samples = pd.concat([data.splits["valid"], data.splits["test"]], ignore_index=True)
    slow = evaluate_samples(model, samples, reasoning=False, batch_size=4, progress=False)

    def prompt(history, t):
        text = model.user_prompt(history, t, reasoning=False)
        return model.tokenizer(text, add_special_tokens=False).input_ids

    fast = rank_samples(model.lm, prompt, samples, model.item_table(), model.item_ids, pad_id=model.pad_id,
                        batch_size=3, progress=False, bf16=False)  # fmt: skip
    assert len(samples) >= 10
    assert fast["ranks"].tolist() == slow.ranks.tolist()
    assert fast["top_ids"] == slow.top_ids
    assert fast["ranks"].dtype == torch.long and fast["tied"].shape == (len(samples),)
