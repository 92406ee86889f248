"""Golden strings for the user and item prompts, and the single-token <answer>."""

from __future__ import annotations

import pytest
import torch

from rrec.prompts import (
    ANSWER_TOKEN,
    PromptStyle,
    add_answer_token,
    relative_time,
    render_item_prompt,
    render_user_prompt,
)

CATALOG = {
    "1": {"item_id": "1", "title": "Toy Story", "year": "1995", "genres": "Animation, Comedy"},
    "2": {"item_id": "2", "title": "GoldenEye", "year": "1995", "genres": "Action, Thriller"},
    "3": {"item_id": "3", "title": "Heat", "year": None, "genres": "", "description": "a b c d e f"},
}


def test_user_prompt_golden(tokenizer):
    history = [
        {"item_id": "1", "rating": 5.0, "timestamp": 0.0},
        {"item_id": "2", "rating": 3.0, "timestamp": 86400.0 * 20},  # 20 days after the first
    ]
    target_time = 86400.0 * 23  # the target comes 23 days after the first, 3 days after the second
    text = render_user_prompt(tokenizer, history, CATALOG, target_time=target_time)
    expected = (
        "<|im_start|>system\n"
        "You are a movie recommender. Read the user's viewing history, think briefly about their tastes, "
        "then write <answer> to recommend the next item.<|im_end|>\n"
        "<|im_start|>user\n"
        "Viewing history, oldest first:\n"
        "- [3 weeks before] Toy Story (1995; Animation, Comedy), rated 5/5\n"  # 23 days = 3 weeks
        "- [3 days before] GoldenEye (1995; Action, Thriller), rated 3/5\n"
        "Which item should this user see next?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == expected
    no_reasoning = render_user_prompt(tokenizer, history, CATALOG, target_time=target_time, reasoning=False)
    assert no_reasoning == expected + ANSWER_TOKEN


def test_user_prompt_without_time_or_rating(tokenizer):
    text = render_user_prompt(tokenizer, [{"item_id": "3"}], CATALOG)
    # no timestamp, no rating, empty attributes: only the bare title remains
    assert "- Heat\nWhich item" in text


def test_item_prompt_golden(tokenizer):
    text = render_item_prompt(tokenizer, CATALOG["3"], PromptStyle(description_words=4))
    expected = (
        "<|im_start|>system\nSummarise this item for a recommender.<|im_end|>\n"
        "<|im_start|>user\nTitle: Heat\nDescription: a b c d ...<|im_end|>\n"  # 6 words cut to 4
        "<|im_start|>assistant\n<answer>"
    )
    assert text == expected


def test_title_words_cuts_long_titles_in_history_and_item_prompts(tokenizer):
    long = {"item_id": "9", "title": "eSUN Bronze filament 1.75mm 0.5kg Spool for Makerbot", "brand": "eSUN"}
    style = PromptStyle(title_words=3, item_fields=("brand",), show_time=False)
    user = render_user_prompt(tokenizer, [{"item_id": "9"}], {"9": long}, style=style)
    assert "- eSUN Bronze filament ... (eSUN)\n" in user  # 8 words cut to 3, the cut marked
    item = render_item_prompt(tokenizer, long, style)
    assert "Title: eSUN Bronze filament ...\nBrand: eSUN" in item
    short = {"item_id": "1", "title": "Toy Story"}  # within the budget: unchanged, no marker
    assert "- Toy Story\n" in render_user_prompt(tokenizer, [{"item_id": "1"}], {"1": short}, style=style)
    with pytest.raises(ValueError, match="title_words"):
        render_item_prompt(tokenizer, long, PromptStyle(title_words=0))


def test_relative_time():
    assert relative_time(3600) == "same day"
    assert relative_time(86400 * 1.5) == "1 day before"
    assert relative_time(86400 * 14) == "2 weeks before"
    assert relative_time(86400 * 61) == "2 months before"
    assert relative_time(86400 * 800) == "2 years before"


def test_answer_token_is_one_id_and_initialised(tokenizer, tiny_lm):
    import copy

    tok = copy.deepcopy(tokenizer)
    pieces = tok(ANSWER_TOKEN, add_special_tokens=False).input_ids
    assert len(pieces) == 3  # SmolLM2 splits "<answer>" into "<", "answer", ">"
    emb_before = tiny_lm.get_input_embeddings().weight.detach().clone()
    new_id = add_answer_token(tok, tiny_lm)
    assert tok(f"think{ANSWER_TOKEN}", add_special_tokens=False).input_ids[-1] == new_id
    assert tok(ANSWER_TOKEN, add_special_tokens=False).input_ids == [new_id]
    w = tiny_lm.get_input_embeddings().weight
    assert w.shape[0] == new_id + 1
    torch.testing.assert_close(w[new_id], emb_before[pieces].mean(0))
    torch.testing.assert_close(w[:new_id], emb_before)  # old rows untouched
    # tied output embedding: the same row
    torch.testing.assert_close(tiny_lm.get_output_embeddings().weight[new_id], w[new_id])
    assert add_answer_token(tok, tiny_lm) == new_id  # idempotent
