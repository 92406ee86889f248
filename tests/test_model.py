"""ReasoningRecommender on a tiny random model: parity, item table, recommend, catalog change, save/load."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from item_index import ItemIndexError
from rrec.backbone import apply_lora
from rrec.model import ReasoningRecommender
from tests.conftest import make_tiny_lm
from tests.tolerance import N_TINY, assert_f32_close

GENRES = ["Comedy", "Drama", "Action", "Horror", "Romance"]


def catalog(n=40, start=0):
    return pd.DataFrame(
        {
            "item_id": [str(i) for i in range(start, start + n)],
            "title": [f"Movie number {i}" for i in range(start, start + n)],
            "year": [str(1990 + i % 10) for i in range(start, start + n)],
            "genres": [GENRES[i % 5] for i in range(start, start + n)],
        }
    )


@pytest.fixture()
def rec(tokenizer):
    lm, tok = make_tiny_lm(tokenizer), copy.deepcopy(tokenizer)
    model = ReasoningRecommender(lm, tok, catalog(), max_new_tokens=8)
    model.build_item_table(batch_size=16)
    return model


def test_wrapped_logits_equal_bare_hf(tokenizer):
    bare = make_tiny_lm(tokenizer, seed=3)
    tok = copy.deepcopy(tokenizer)
    wrapped = ReasoningRecommender(make_tiny_lm(tokenizer, seed=3), tok)
    ids = torch.tensor([tok("A short test sentence").input_ids])
    # the wrapped vocabulary has <answer> appended; the old rows' logits are the bare model's
    out_w = wrapped(ids).logits
    out_b = bare(ids).logits
    torch.testing.assert_close(out_w[..., : out_b.shape[-1]], out_b)
    assert out_w.shape[-1] == out_b.shape[-1] + 1


def test_score_is_cosine_over_temperature(rec):
    u = torch.randn(3, rec.lm.config.hidden_size)
    table = rec.rec_head.vectors_for(rec.item_ids)  # stored normalised
    expected = torch.nn.functional.normalize(u, dim=-1) @ torch.from_numpy(table).T / 0.02
    torch.testing.assert_close(rec.score(u), expected)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-5)


def test_recommend_distinct_not_in_history(rec):
    history = [{"item_id": "3", "rating": 5.0, "timestamp": 0.0}, "7", 11]
    out = rec.recommend(history, k=20)
    assert len(out.item_ids) == 20 and len(set(out.item_ids)) == 20
    assert not {"3", "7", "11"} & set(out.item_ids)
    assert out.scores == sorted(out.scores, reverse=True)
    assert isinstance(out.reasoning, str)
    # a random tiny model never writes <answer> by itself within 8 tokens: the answer was forced
    assert out.forced_answer
    with_hist = rec.recommend(history, k=40, exclude_history=False)
    assert {"3", "7", "11"} <= set(with_hist.item_ids)


def test_recommend_batch_equals_single(rec):
    hs = [["1", "2"], ["5", "6", "7", "8"]]
    batch = rec.recommend_batch(hs, k=5)
    singles = [rec.recommend(h, k=5) for h in hs]
    for b, s in zip(batch, singles, strict=True):
        assert b.item_ids == s.item_ids
        assert_f32_close(b.scores, s.scores, n=N_TINY, scale=1 / 0.02)  # cos / 0.02: |cos| <= 1


def test_no_reasoning_mode(rec):
    out = rec.recommend(["1", "2"], k=5, reasoning=False)
    assert out.reasoning == "" and len(out.item_ids) == 5


def test_unknown_history_item_is_a_clear_error(rec):
    with pytest.raises(KeyError, match="not in the catalog"):
        rec.recommend(["1", "nope"], k=5)


def test_catalog_change_equals_rebuild(tokenizer, rec):
    removed = [str(i) for i in range(10)]
    changed = catalog(10, start=20)
    changed["title"] = [f"Renamed film {i}" for i in range(20, 30)]
    added = catalog(10, start=100)
    rec.update_items(added=added, removed=removed, changed=changed, batch_size=7)
    final = pd.concat([catalog()[~catalog().item_id.isin(removed + list(changed.item_id))], changed, added])
    fresh = ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), final)
    fresh.build_item_table(batch_size=16)
    assert sorted(rec.item_ids) == sorted(fresh.item_ids)
    ids = sorted(fresh.item_ids)
    # unit vectors from batches of 7 vs 16 items: scale 1
    assert_f32_close(rec.rec_head.vectors_for(ids), fresh.rec_head.vectors_for(ids), n=N_TINY, scale=1.0)
    u = torch.randn(4, rec.lm.config.hidden_size)
    a = rec.score(u)
    b = fresh.score(u)
    top_a = [[rec.item_ids[j] for j in row] for row in a.topk(10).indices.tolist()]
    top_b = [[fresh.item_ids[j] for j in row] for row in b.topk(10).indices.tolist()]
    assert top_a == top_b


def test_save_load_roundtrip(tmp_path, rec):
    before = rec.recommend_batch([["1", "2"], ["9"]], k=10)
    rec.save_pretrained(tmp_path / "m")
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m")
    after = loaded.recommend_batch([["1", "2"], ["9"]], k=10)
    for x, y in zip(before, after, strict=True):
        assert x.item_ids == y.item_ids and x.reasoning == y.reasoning


def test_save_load_lora(tmp_path, tokenizer):
    base_dir = tmp_path / "base"
    lm = make_tiny_lm(tokenizer, seed=5)
    lm.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = ReasoningRecommender.from_pretrained(base_dir, catalog=catalog(), max_new_tokens=6)
    model.lm = apply_lora(model.lm, rank=2)
    with torch.no_grad():  # move the adapter away from its zero init so it matters
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.build_item_table(batch_size=16)
    before = model.recommend(["1", "2", "3"], k=10)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "adapter").exists() and not (tmp_path / "m" / "model").exists()
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m")
    after = loaded.recommend(["1", "2", "3"], k=10)
    assert before.item_ids == after.item_ids and before.reasoning == after.reasoning


def test_item_table_from_another_model_is_refused(tmp_path, tokenizer, rec):
    rec.save_pretrained(tmp_path / "m")
    other = make_tiny_lm(tokenizer, seed=9)
    from rrec.prompts import add_answer_token

    add_answer_token(copy.deepcopy(tokenizer), other)
    other.save_pretrained(tmp_path / "m" / "model")  # swap the weights under the saved item table
    with pytest.raises(ItemIndexError, match="fingerprint"):
        ReasoningRecommender.from_pretrained(tmp_path / "m")
