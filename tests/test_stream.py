"""All-position sequences (rrec.stream), their loss (rrec.allpos) and the ID vectors (rrec.id_vectors)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from rrec.allpos import boundary_states, catalog_loss, encode_items_with_grad, exclusion_mask
from rrec.backbone import last_token_states
from rrec.id_vectors import ItemIDVectors, hybrid_rows
from rrec.prompts import PromptStyle, add_answer_token
from rrec.rollout import left_pad
from rrec.stream import StreamPrompter, chunk_sequences, sample_keys, stream_batch, user_sequences

CATALOG = {str(i): {"item_id": str(i), "title": f"Film {i}", "year": 1990 + i} for i in range(12)}


def _samples(seqs: dict[str, list[str]], max_history: int = 20) -> pd.DataFrame:
    rows = []
    for u, items in seqs.items():
        for p in range(1, len(items)):
            hist = items[max(0, p - max_history) : p]
            rows.append({"user_id": u, "position": p, "history": hist, "history_ratings": [4.0] * len(hist),
                         "target": items[p], "rating": 4.0, "timestamp": float(p)})  # fmt: skip
    return pd.DataFrame(rows)


def test_every_target_is_trained_exactly_once():
    seqs = {"a": [str(i) for i in range(9)], "b": ["3", "1", "4"]}
    df = _samples(seqs)
    assert user_sequences(df)["a"][0] == seqs["a"]
    chunks = chunk_sequences(df, max_history=3)
    # user a: 9 items, windows of 4 overlapping by one: [0..3], [3..6], [6..8]; user b: [0..2]
    assert [c.items for c in chunks if c.user_id == "a"] == [seqs["a"][0:4], seqs["a"][3:7], seqs["a"][6:9]]
    trained = [(c.user_id, p) for c in chunks for p in c.positions[1:]]
    assert sorted(trained) == sorted(sample_keys(df))  # 8 + 2 targets, none twice


def test_boundary_state_equals_per_sample_prompt(tokenizer, tiny_lm):
    tokenizer = copy.deepcopy(tokenizer)  # the fixture is session-wide: never add tokens to it
    """The state at the k-th <answer> of a chunk == the last state of the prompt over its first k items."""
    answer = add_answer_token(tokenizer, tiny_lm)
    style = PromptStyle(item_fields=("year",), show_rating=True)
    prompter = StreamPrompter(tokenizer, answer, CATALOG, style)
    df = _samples({"u": ["0", "5", "2", "7", "1"]})
    chunks = chunk_sequences(df, max_history=4)
    assert len(chunks) == 1
    batch = stream_batch(prompter, chunks, None, sample_keys(df), pad_id=0)
    with torch.no_grad():
        states = boundary_states(tiny_lm, batch.input_ids, batch.attention_mask, batch.rows, batch.cols)
        for k in range(1, 5):  # the boundary after item k-1 predicts item k
            hist = [{"item_id": i, "rating": 4.0} for i in chunks[0].items[:k]]
            ids, mask = left_pad([prompter.prompt_ids(hist, max_history=4)], 0)
            alone = last_token_states(tiny_lm, ids, mask)[0]
            torch.testing.assert_close(states[k - 1], alone, rtol=1e-4, atol=1e-5 * alone.abs().max().item())
    assert batch.targets == ["5", "2", "7", "1"]
    assert batch.exclude[2] == ["0", "5", "2"]  # the history before the target "7"


def test_stream_prompt_is_a_prefix_and_cut_to_max_history(tokenizer, tiny_lm):
    tokenizer = copy.deepcopy(tokenizer)
    answer = add_answer_token(tokenizer, tiny_lm)
    prompter = StreamPrompter(tokenizer, answer, CATALOG, PromptStyle(item_fields=("year",)))
    long_ids, bounds = prompter.ids(["1", "2", "3"])
    assert long_ids[: bounds[1] + 1] == prompter.ids(["1", "2"])[0]
    assert [long_ids[b] for b in bounds] == [answer] * 3
    assert prompter.prompt_ids(["9", "1", "2", "3"], max_history=3) == long_ids
    assert "Film 1 (1991)" in tokenizer.decode(long_ids)
    with pytest.raises(KeyError, match="not in the catalog"):
        prompter.ids(["1", "nope"])
    with pytest.raises(ValueError, match="at least one history item"):
        prompter.ids([])


def test_catalog_loss_worked_values():
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # user 0, target 0: logits (1, 0, 0.6); user 1, target 1: logits (0, 1, 0.8), item 2 excluded
    excl = torch.tensor([[False, False, False], [False, False, True]])
    loss, ranks = catalog_loss(users, table, torch.tensor([0, 1]), excl, 1.0)
    e = torch.e
    l0 = -torch.log(torch.tensor(e / (e + 1 + e**0.6)))
    l1 = -torch.log(torch.tensor(e / (1 + e)))
    torch.testing.assert_close(loss, (l0 + l1) / 2)
    assert ranks.tolist() == [1, 1]
    # a collapsed user (all scores equal) gets the worst rank, not the best: ties count against the target
    _, r = catalog_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0]),
                        None, 1.0)  # fmt: skip
    assert r.tolist() == [2]


def test_exclusion_mask_skips_unknown_ids():
    m = exclusion_mask([["a", "zz"], []], {"a": 0, "b": 1}, 2, "cpu")
    assert m.tolist() == [[True, False], [False, False]]


def test_items_with_grad_equal_full_prompts(tokenizer, tiny_lm):
    from rrec.model import ReasoningRecommender

    model = ReasoningRecommender(tiny_lm, copy.deepcopy(tokenizer), pd.DataFrame(list(CATALOG.values())))
    ids = model.item_prompt_ids([CATALOG["1"], CATALOG["10"], CATALOG["3"]])
    fresh = encode_items_with_grad(model.lm, ids, model.pad_id)
    assert fresh.requires_grad
    full = torch.stack([last_token_states(model.lm, *left_pad([t], model.pad_id))[0] for t in ids])
    torch.testing.assert_close(fresh.detach(), full, rtol=1e-4, atol=1e-5 * full.abs().max().item())


def test_id_vectors_add_remove_save_load(tmp_path):
    v = ItemIDVectors(["a", "b"], 3)
    assert v.rows(["b", "new"]).abs().sum() == 0  # zero-initialised; unknown ids are zeros
    with torch.no_grad():
        v.weight[1] = torch.tensor([1.0, 2.0, 3.0])
    v.add(["c"])
    v.remove(["a"])
    assert v.ids == ["b", "c"]
    assert v.rows(["b", "c", "a"]).tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    v.save(tmp_path / "idv")
    w = ItemIDVectors.load(tmp_path / "idv")
    assert w.ids == ["b", "c"] and torch.equal(w.weight, v.weight)
    with pytest.raises(ValueError, match="already present"):
        w.add(["b"])


def test_hybrid_rows_start_as_text_and_carry_gradient():
    text = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    idv = ItemIDVectors(["x", "y"], 2)
    rows = hybrid_rows(text, idv.weight)
    torch.testing.assert_close(rows, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))  # zero ID vectors: text alone
    rows[0, 0].backward()
    assert idv.weight.grad is not None and idv.weight.grad.abs().sum() > 0
