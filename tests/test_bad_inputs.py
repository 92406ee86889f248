"""Bad inputs: each gives a clear error (a ValueError / KeyError naming what is wrong) or a documented
behaviour, never a traceback from deep inside torch. One test per case; docs/bad_inputs.md lists them.

Tiny random model (2 layers, hidden 32), 10 items, reasoning budget 3 tokens, ``max_history=4``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from item_index import ItemIndex, ItemIndexError
from rrec.backbone import weights_fingerprint
from rrec.data import DataError, load_amazon2023, load_recbole_atomic
from rrec.evaluation import evaluate_samples
from rrec.metrics import hit_at_k, ndcg_at_k, rank_of_target
from rrec.model import ReasoningRecommender
from rrec.prompts import HistoryTruncatedWarning, item_content
from tests.conftest import make_tiny_lm
from tests.test_model import catalog

D = 32  # the tiny model's hidden size


def make_rec(tokenizer, items: pd.DataFrame | None = None, build: bool = True) -> ReasoningRecommender:
    items = catalog(10) if items is None else items
    model = ReasoningRecommender(
        make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), items, max_new_tokens=3, max_history=4
    )
    if build:
        model.build_item_table(batch_size=16)
    return model


@pytest.fixture(scope="module")
def rec(tokenizer):
    """Shared, never mutated (tests that change the model use ``fresh``)."""
    return make_rec(tokenizer)


@pytest.fixture()
def fresh(tokenizer):
    return make_rec(tokenizer)


def samples(histories: list[list[str]], targets: list[str]) -> pd.DataFrame:
    n = len(histories)
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "history": histories,
            "target": targets,
            "timestamp": [0.0] * n,
        }
    )


# ----------------------------------------------------------------------------- histories
def test_unknown_history_id_is_a_key_error(rec):
    # KeyError naming the unknown ids; an id beyond max_history (cut from the prompt) is checked too
    with pytest.raises(KeyError, match=r"1 history items not in the catalog: \['nope'\]"):
        rec.recommend(["1", "nope"], k=3)
    with pytest.raises(KeyError, match="nope"):
        rec.recommend(["nope", "1", "2", "3", "4", "5"], k=3)


def test_empty_history_is_a_cold_start(rec):
    # allowed: the prompt says "(no items yet)", nothing is excluded, k items come back
    assert "Viewing history, oldest first:\n(no items yet)\nWhich item" in rec.user_prompt([])
    out = rec.recommend([], k=4)
    assert len(out.item_ids) == 4 and len(set(out.item_ids)) == 4


def test_duplicate_ids_in_history_are_kept(rec):
    # a repeated id is one prompt line per entry (a re-watch is an event) and is excluded once
    prompt = rec.user_prompt(["3", "3"])
    assert prompt.count("Movie number 3") == 2
    out = rec.recommend(["3", "3"], k=10)
    assert len(out.item_ids) == 9 and "3" not in out.item_ids  # 10 items minus the one in the history


def test_long_history_is_truncated_with_one_warning(rec):
    # the oldest entries beyond max_history=4 are cut; one HistoryTruncatedWarning per call, not per history
    long = [str(i) for i in range(7)]
    with pytest.warns(HistoryTruncatedWarning) as caught:
        prompt = rec.user_prompt(long)
    assert "Movie number 2" not in prompt and all(f"Movie number {i}" in prompt for i in range(3, 7))
    with pytest.warns(HistoryTruncatedWarning) as caught:
        out = rec.recommend_batch([long, long[:5], ["1"]], k=3)
    hits = [w for w in caught if issubclass(w.category, HistoryTruncatedWarning)]
    assert len(hits) == 1 and "2 of 3 histories exceed max_history=4" in str(hits[0].message)
    assert not set(out[0].item_ids) & set(long)  # every history item is excluded, also the cut ones
    with warnings.catch_warnings():
        warnings.simplefilter("error", HistoryTruncatedWarning)
        rec.recommend(long[:4], k=3)  # exactly max_history: no warning


def test_long_histories_warn_once_per_evaluation(rec):
    # evaluate_samples warns once for the whole run, not once per batch
    df = samples([[str(i) for i in range(6)]] * 3, ["8", "9", "8"])
    with pytest.warns(HistoryTruncatedWarning) as caught:
        evaluate_samples(rec, df, batch_size=1, progress=False)
    hits = [w for w in caught if issubclass(w.category, HistoryTruncatedWarning)]
    assert len(hits) == 1 and "3 of 3" in str(hits[0].message)


def test_history_record_without_item_id(rec):
    # ValueError quoting the record
    with pytest.raises(ValueError, match="history record without 'item_id'"):
        rec.recommend([{"rating": 5.0}], k=3)


def test_history_that_is_not_a_list(rec):
    # a bare string would be read character by character: refused; so is one history given to _batch
    with pytest.raises(ValueError, match="a history must be a list of item ids or records, got str '12'"):
        rec.recommend("12", k=3)
    with pytest.raises(ValueError, match="got str '1'"):
        rec.recommend_batch(["1", "2"], k=3)


def test_int_ids_are_converted_other_types_refused(rec, tokenizer):
    # ids are str; int (Python or numpy) ids are converted with str(); float/None/bool are a ValueError
    assert rec.user_prompt([5, np.int64(6)]) == rec.user_prompt(["5", "6"])
    assert rec.recommend([5, 6], k=3).item_ids == rec.recommend(["5", "6"], k=3).item_ids
    for bad in (5.0, None, True):
        with pytest.raises(ValueError, match="item ids must be str or int"):
            rec.recommend([bad], k=3)
    items = catalog(4).assign(item_id=[0, 1, 2, 3])  # an int id column: keys become "0".."3"
    model = make_rec(tokenizer, items)
    assert model.item_ids == ["0", "1", "2", "3"] and model.catalog["2"]["item_id"] == "2"
    with pytest.raises(ValueError, match=r"catalog: item ids must be str or int, got float 1\.0"):
        make_rec(tokenizer, catalog(2).assign(item_id=[1.0, 2.0]), build=False)


def test_target_times_of_another_length(rec):
    # ValueError, not zip's bare message
    with pytest.raises(ValueError, match="1 target_times for 2 histories"):
        rec.recommend_batch([["1"], ["2"]], k=3, target_times=[0.0])


# ----------------------------------------------------------------------------- k and the catalog
@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_k_must_be_a_positive_int(rec, k):
    # ValueError before any generation (torch's topk would say "selected index k out of range")
    with pytest.raises(ValueError, match="k must be a positive int"):
        rec.recommend(["1"], k=k)


def test_k_larger_than_what_is_left(rec):
    # returns every item left after excluding the history (8 of 10), never the excluded ones at -inf
    out = rec.recommend(["1", "2"], k=100)
    assert len(out.item_ids) == 8 and not {"1", "2"} & set(out.item_ids)
    assert all(np.isfinite(out.scores))
    assert len(rec.recommend(["1", "2"], k=100, exclude_history=False).item_ids) == 10


def test_recommend_before_build_item_table(tokenizer, monkeypatch):
    # ValueError naming build_item_table, raised before any reasoning is generated
    model = make_rec(tokenizer, build=False)
    monkeypatch.setattr(model, "reason", lambda *a, **kw: pytest.fail("generated before checking"))
    with pytest.raises(ValueError, match="no item table yet: call build_item_table first"):
        model.recommend(["1"], k=3)


def test_recommend_without_catalog(tokenizer):
    # ValueError "no catalog", not a KeyError for every history item
    model = ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer))
    with pytest.raises(ValueError, match="no catalog"):
        model.user_prompt(["1"])


def test_empty_catalog(tokenizer, fresh):
    # building from an empty catalog, or ranking after every item was removed: ValueError
    with pytest.raises(ValueError, match="the catalog is empty"):
        make_rec(tokenizer, catalog(0))
    fresh.update_items(removed=list(fresh.item_ids))
    with pytest.raises(ValueError, match="the item table is empty"):
        fresh.recommend([], k=3)


def test_catalog_without_item_id_or_title(tokenizer):
    # ValueError listing the columns found; a non-DataFrame too
    with pytest.raises(ValueError, match=r"catalog needs columns 'item_id' and 'title', got \['item_id'\]"):
        make_rec(tokenizer, pd.DataFrame({"item_id": ["1"]}), build=False)
    with pytest.raises(ValueError, match="catalog must be a pandas DataFrame, got list"):
        make_rec(tokenizer, [{"item_id": "1", "title": "x"}], build=False)


def test_duplicate_ids_in_catalog(tokenizer):
    # ValueError listing the repeated ids (50 and "50" are the same id once converted)
    with pytest.raises(ValueError, match=r"catalog: duplicate item ids \['1'\]"):
        make_rec(tokenizer, pd.concat([catalog(3), catalog(1, start=1)]), build=False)
    mixed = pd.DataFrame({"item_id": [50, "50"], "title": ["a", "b"]})
    with pytest.raises(ValueError, match=r"duplicate item ids \['50'\]"):
        make_rec(tokenizer, mixed, build=False)


def test_update_items_duplicate_ids(fresh):
    # ValueError before anything is encoded or removed: the table is unchanged
    before = fresh.item_ids
    cases = [
        (dict(added=pd.concat([catalog(1, start=20)] * 2)), r"added: duplicate item ids \['20'\]"),
        (dict(added=catalog(1, start=3)), r"added: already in the item table: \['3'\]"),
        (dict(removed=["1", "1"]), r"removed: duplicate item ids: \['1'\]"),
        (dict(changed=pd.concat([catalog(1, start=2)] * 2)), r"changed: duplicate item ids \['2'\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh.update_items(**kwargs)
        assert fresh.item_ids == before


def test_update_items_unknown_or_conflicting_ids(fresh):
    # absent removed/changed ids, an id both removed and changed, a bare string: ValueError, table unchanged
    before = fresh.item_ids
    cases = [
        (dict(removed=["77"]), r"removed: not in the item table: \['77'\]"),
        (dict(changed=catalog(1, start=77)), r"changed: not in the item table: \['77'\]"),
        (dict(removed=["4"], changed=catalog(1, start=4)), r"in more than one of .*\['4'\]"),
        (dict(removed="4"), "removed must be a list of item ids"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh.update_items(**kwargs)
        assert fresh.item_ids == before
    fresh.update_items(removed=[4])  # an int id is converted like everywhere else
    assert "4" not in fresh.item_ids


# ----------------------------------------------------------------------------- item text
def test_missing_item_title_is_untitled_with_a_warning(tokenizer):
    # None / NaN / pd.NA / "" / blank titles: one UserWarning naming them; prompts say "Untitled item"
    items = catalog(6).astype(object)
    items["title"] = [None, float("nan"), pd.NA, "", "   ", "Fine title"]
    with pytest.warns(UserWarning, match=r"without a title .*\['0', '1', '2', '3', '4'\]"):
        model = make_rec(tokenizer, items)
    for i in "01234":
        assert item_content(model.catalog[i]).startswith("Title: Untitled item\n")
    assert len(model.item_ids) == 6


def test_non_utf8_item_text_becomes_replacement_char(tokenizer):
    # bytes are decoded as UTF-8 and invalid bytes (or surrogateescape leftovers) become U+FFFD
    items = catalog(3).astype(object)
    items["title"] = [b"Caf\xc3\xa9 \xff", "Bad\udcff tail", "ok"]
    items["genres"] = [b"\xfe", None, "Drama"]
    model = make_rec(tokenizer, items)
    assert item_content(model.catalog["0"]).startswith("Title: Café \ufffd\nYear: 1990\nGenres: \ufffd")
    assert item_content(model.catalog["1"]).startswith("Title: Bad\ufffd tail")
    assert "\ufffd" in model.user_prompt(["0", "1"]) and len(model.item_ids) == 3


def test_non_utf8_data_file_is_a_data_error(tmp_path):
    # loaders read UTF-8 only: a Latin-1 byte is a DataError naming the file
    (tmp_path / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\t1\t0\n")
    (tmp_path / "tiny.item").write_bytes(b"item_id:token\ttitle:token_seq\n1\tCaf\xe9\n")
    with pytest.raises(DataError, match=r"^tiny\.item: cannot read .*utf-8"):
        load_recbole_atomic(tmp_path, "tiny")
    (tmp_path / "meta_X.jsonl").write_bytes(b'{"parent_asin": "a", "title": "Caf\xe9"}\n')
    (tmp_path / "X.jsonl").write_text('{"user_id": "u", "parent_asin": "a", "rating": 5, "timestamp": 1}\n')
    with pytest.raises(DataError, match=r"^meta_X\.jsonl: cannot read .*utf-8"):
        load_amazon2023(tmp_path / "X.jsonl", tmp_path / "meta_X.jsonl")


# ----------------------------------------------------------------------------- NaN / inf
def test_nan_or_inf_user_state_is_refused_by_score(rec, monkeypatch):
    # score names the rows; a score overflowing to inf (dot similarity, huge state) is refused too
    states = torch.randn(3, D)
    states[1, 0], states[2, 5] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"user states contain NaN or inf at rows \[1, 2\]"):
        rec.score(states)
    monkeypatch.setattr(rec.config, "similarity", "dot")
    with pytest.raises(ValueError, match=r"scores \(dot / temperature overflowed\) contain NaN or inf"):
        rec.score(torch.full((1, D), 1e38))
    with pytest.raises(ValueError, match=r"user states must be \(B, 32\)"):
        rec.score(torch.randn(2, 16))


def test_nan_model_is_refused_by_recommend_evaluate_and_build(fresh):
    # a model whose forward yields NaN: recommend and evaluate refuse to rank; no table is built from it
    with torch.no_grad():
        fresh.lm.model.norm.weight[0] = float("nan")
    with pytest.raises(ValueError, match="user states contain NaN or inf"):
        fresh.recommend(["1"], k=3)
    with pytest.raises(ValueError, match="user states contain NaN or inf"):
        evaluate_samples(fresh, samples([["1"]], ["2"]), progress=False)
    with pytest.raises(ValueError, match=r"item states contain NaN or inf at items \['0', '1'"):
        fresh.build_item_table(batch_size=16)
    with pytest.raises(ValueError, match=r"item states contain NaN or inf at items \['20'\]"):
        fresh.update_items(added=catalog(1, start=20))
    assert len(fresh.item_ids) == 10  # the old table is untouched


def test_item_index_refuses_nan_vectors():
    # ItemIndex itself refuses NaN/inf rows on add and replace, naming the ids (already the case)
    index = ItemIndex(2)
    with pytest.raises(ItemIndexError, match=r"vectors for ids \['b'\].*NaN or inf"):
        index.add(["a", "b"], np.array([[1, 0], [np.nan, 0]], np.float32))
    index.add(["a"], np.array([[1, 0]], np.float32))
    with pytest.raises(ItemIndexError, match="NaN or inf"):
        index.replace(["a"], np.array([[np.inf, 0]], np.float32))


def test_rank_of_target_refuses_nan_and_bad_targets():
    # NaN anywhere (not just at the target), out-of-range targets, mismatched shapes: ValueError
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, float("nan"), 0.2]])
    with pytest.raises(ValueError, match=r"NaN scores at rows \[1\]"):
        rank_of_target(scores, torch.tensor([0, 0]))
    ok = torch.tensor([[0.1, 0.9, 0.5], [float("-inf"), 0.3, float("inf")]])
    assert rank_of_target(ok, torch.tensor([2, 1])).tolist() == [2, 2]  # ±inf are ordinary extremes
    with pytest.raises(ValueError, match=r"target_index outside \[0, 3\) at rows \[1\]"):
        rank_of_target(ok, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"target_index must be \(2,\)"):
        rank_of_target(ok, torch.tensor([0]))
    with pytest.raises(ValueError, match="exclude_mask must be"):
        rank_of_target(ok, torch.tensor([0, 1]), torch.zeros(2, 2, dtype=torch.bool))


def test_metrics_refuse_bad_k_and_ranks():
    # k must be a positive int; ranks are 1-based
    with pytest.raises(ValueError, match="cut-off k must be a positive int, got 0"):
        hit_at_k(torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match=r"got 10\.0"):
        ndcg_at_k(torch.tensor([1, 2]), 10.0)
    with pytest.raises(ValueError, match=r"ranks are 1-based: got \[0.0\]"):
        ndcg_at_k(torch.tensor([0, 2]), 10)


# ----------------------------------------------------------------------------- model and table
def test_answer_never_emitted_is_forced(rec):
    # with <answer> made impossible, the budget forces it: items come back with forced_answer=True
    answer = rec.answer_id

    def ban_answer(module, args, logits):
        return logits.index_fill(-1, torch.tensor([answer]), float("-inf"))

    handle = rec.lm_head.register_forward_hook(ban_answer)
    try:
        out = rec.recommend(["1", "2"], k=5)
        states, _, forced = rec.reason([["1"], ["2"]], max_new_tokens=2)
    finally:
        handle.remove()
    assert out.forced_answer and len(out.item_ids) == 5 and all(np.isfinite(out.scores))
    assert forced == [True, True] and torch.isfinite(states).all()


def test_max_new_tokens_below_one(rec, tokenizer):
    # 0 used to mean "the config's budget" silently; now a ValueError (the constructor checks too)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 0"):
        rec.recommend(["1"], k=3, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_history must be a positive int, got 0"):
        ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), max_history=0)


def test_item_table_of_another_dim_assigned(fresh):
    # assigning an ItemIndex of another dim (or metric, or type) is a ValueError; the old table stays
    small = ItemIndex(16)
    small.add(["1"], np.ones((1, 16), np.float32))
    with pytest.raises(ValueError, match="item table dim 16 does not match the model's hidden size 32"):
        fresh.rec_head = small
    with pytest.raises(ValueError, match="metric 'ip'"):
        fresh.rec_head = ItemIndex(D, metric="l2")
    with pytest.raises(ValueError, match=r"must be an item_index\.ItemIndex"):
        fresh.rec_head = np.zeros((10, D))
    assert len(fresh.recommend(["1"], k=3).item_ids) == 3
    other = ItemIndex(D)  # a valid table replaces the cached tensor at once
    other.add(["5"], np.ones((1, D), np.float32))
    fresh.rec_head = other
    assert fresh.recommend([], k=3).item_ids == ["5"]


def test_item_table_of_another_dim_loaded(tmp_path, fresh):
    # a saved table of another dim (same fingerprint): ItemIndexError naming meta.json and both dims
    fresh.save_pretrained(tmp_path / "m")
    small = ItemIndex(16)
    small.add(list(fresh.item_ids), np.ones((10, 16), np.float32))
    small.save(tmp_path / "m" / "item_index", fingerprint=weights_fingerprint(fresh.lm))
    with pytest.raises(
        ItemIndexError, match=r"item_index/meta\.json: dim mismatch: saved dim 16, expected 32"
    ):
        ReasoningRecommender.from_pretrained(tmp_path / "m")


def test_item_table_built_by_another_model(tmp_path, tokenizer, fresh):
    # fingerprint mismatch: ItemIndexError naming the file, both fingerprints and the fix
    fresh.save_pretrained(tmp_path / "m")
    saved = weights_fingerprint(fresh.lm)
    other = ReasoningRecommender(make_tiny_lm(tokenizer, seed=9), copy.deepcopy(tokenizer))
    other.lm.save_pretrained(tmp_path / "m" / "model")  # swap the weights under the saved table
    expected = weights_fingerprint(other.lm)
    with pytest.raises(ItemIndexError) as err:
        ReasoningRecommender.from_pretrained(tmp_path / "m")
    message = str(err.value)
    assert str(tmp_path / "m" / "item_index" / "meta.json") in message
    assert f"saved {saved!r}, expected {expected!r}" in message and saved != expected
    assert "build_item_table()" in message


def test_evaluate_samples_bad_inputs(rec):
    # missing columns, unknown targets, batch_size 0: ValueError / KeyError before any reasoning
    df = samples([["1"]], ["2"])
    with pytest.raises(ValueError, match=r"samples lack the columns \['target'\]"):
        evaluate_samples(rec, df.drop(columns="target"), progress=False)
    with pytest.raises(KeyError, match="1 targets are not in the item table"):
        evaluate_samples(rec, samples([["1"]], ["nope"]), progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate_samples(rec, df, batch_size=0, progress=False)
    res = evaluate_samples(rec, samples([["1", "2"]], ["3"]), top_k=50, progress=False)
    assert len(res.top_ids[0]) == 8 and not {"1", "2"} & set(res.top_ids[0])  # masked items left out
