"""``ReasoningRecommender`` with the all-position options: stream prompts, a base-model item encoder, and
the hybrid text + ID table, through build, update, save and load; the base-checksum check on load."""

from __future__ import annotations

import copy
import json
import warnings

import pandas as pd
import pytest
import torch

from rrec import backbone
from rrec.backbone import apply_lora
from rrec.model import ReasoningRecommender
from rrec.persistence import CONFIG_NAME, EMBEDDED_BASE
from rrec.prompts import HistoryTruncatedWarning, PromptStyle
from rrec.stream import StreamPrompter
from tests.conftest import make_tiny_lm
from tests.tolerance import K_FORWARD, N_TINY, f32_tol

CATALOG = pd.DataFrame(
    {"item_id": [str(i) for i in range(8)], "title": [f"Film {i}" for i in range(8)], "year": 1990}
)
STYLE = PromptStyle(item_fields=("year",))


def _model(tokenizer, lm=None, **kw) -> ReasoningRecommender:
    lm = lm if lm is not None else make_tiny_lm(tokenizer)
    return ReasoningRecommender(lm, copy.deepcopy(tokenizer), CATALOG, style=STYLE, max_history=3, **kw)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def test_hybrid_rows_follow_build_update_save_load(tokenizer, tmp_path):
    model = _model(tokenizer, id_vectors=True)
    table = model.build_item_table().as_tensor()
    text = model.encode_items(CATALOG, progress=False)  # (8, D)
    tol = f32_tol(N_TINY, 1.0)
    assert (table - _unit(text)).abs().max() <= tol  # zero ID vectors: text only
    with torch.no_grad():
        model.id_vectors.weight[2] = torch.linspace(-1, 1, model.hidden_size)
    v2 = model.id_vectors.weight[2].clone()
    model.update_items(changed=CATALOG.iloc[[2]].assign(title="Film 2, restored"))  # keeps its ID vector
    new_text = model.encode_items(CATALOG.iloc[[2]].assign(title="Film 2, restored"), progress=False)[0]
    expected = _unit(_unit(new_text) + v2)  # by hand: normalise(normalise(text) + id)
    assert (model.item_table()[model.item_ids.index("2")] - expected).abs().max() <= tol

    added = pd.DataFrame({"item_id": ["new"], "title": ["A new film"], "year": 2001})
    model.update_items(added=added, removed=["5"])
    assert "5" not in model.id_vectors.ids and "new" in model.id_vectors.ids
    assert model.id_vectors.rows(["new"]).abs().max() == 0  # a new item starts with text alone
    row_new = model.item_table()[model.item_ids.index("new")]
    assert (row_new - _unit(model.encode_items(added, progress=False)[0])).abs().max() <= tol

    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / CONFIG_NAME).read_text())["id_vectors"] is True
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.id_vectors.ids == model.id_vectors.ids
    torch.testing.assert_close(loaded.id_vectors.weight, model.id_vectors.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.item_table(), model.item_table(), rtol=0, atol=0)
    rebuilt = loaded.build_item_table().as_tensor()  # same rows from text + loaded ID vectors
    assert (rebuilt - model.item_table()).abs().max() <= tol


def test_stream_format_reads_the_state_of_the_stream_prompt(tokenizer):
    model = _model(tokenizer, user_format="stream")
    model.build_item_table()
    prompter = StreamPrompter(model.tokenizer, model.answer_id, model.catalog, STYLE)
    hist = ["1", "4", "2"]
    states, texts, _ = model.reason([hist, ["3"]], reasoning=False)
    ids, bounds = prompter.ids(hist)
    full = backbone.last_token_states(
        model.lm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
    )
    scale = full.abs().max().item()
    assert (states[0] - full[0]).abs().max() <= f32_tol(N_TINY, scale, K_FORWARD)
    assert bounds[-1] == len(ids) - 1 and texts == ["", ""]
    with pytest.warns(HistoryTruncatedWarning):
        cut, _, _ = model.reason([["0", *hist]], reasoning=False)  # 4 items, max_history 3: the oldest goes
    assert (cut[0] - states[0]).abs().max() <= f32_tol(N_TINY, scale, K_FORWARD)
    cold = model.recommend([], k=3, reasoning=False)  # the head, then <answer>
    assert len(cold.item_ids) == 3
    with pytest.raises(KeyError, match="not in the catalog"):
        model.reason([["nope"]], reasoning=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = model.recommend(hist, k=8, reasoning=False)
    assert not set(rec.item_ids) & set(hist) and len(rec.item_ids) == 5


def test_stream_reasoning_prompt_continues_after_the_last_item_line(tokenizer):
    model = _model(tokenizer, user_format="stream", reasoning_format="stream")
    model.build_item_table()
    hist = ["1", "4", "2"]
    (plain, _) = model.prompt_ids([hist], reasoning=False)[0]
    (with_reasoning, _) = model.prompt_ids([hist])[0]
    assert plain[-1] == model.answer_id and with_reasoning == plain[:-1]  # <answer> left open
    # a budget of one token forces <answer> at once: an empty reasoning reads the no-reasoning state
    states, texts, forced = model.reason([hist, ["3"]], reasoning=True, max_new_tokens=1)
    ref, _, _ = model.reason([hist, ["3"]], reasoning=False)
    assert forced == [True, True] and texts == ["", ""]
    assert (states - ref).abs().max() <= f32_tol(N_TINY, ref.abs().max().item(), K_FORWARD)
    longer, texts, _ = model.reason([hist], reasoning=True, max_new_tokens=4)  # a written reasoning moves it
    assert (longer[0] - ref[0]).abs().max() > f32_tol(N_TINY, ref.abs().max().item(), K_FORWARD)
    with pytest.raises(ValueError, match="needs user_format"):
        _model(tokenizer, reasoning_format="stream")


def test_options_are_checked(tokenizer):
    with pytest.raises(ValueError, match="user_format"):
        _model(tokenizer, user_format="tweet")
    with pytest.raises(ValueError, match="reasoning_format"):
        _model(tokenizer, user_format="stream", reasoning_format="tweet")
    with pytest.raises(ValueError, match="item_encoder"):
        _model(tokenizer, item_encoder="other")


def test_base_item_encoder_ignores_the_adapter(tokenizer):
    base = _model(tokenizer).build_item_table().as_tensor()
    tables = {}
    for encoder in ("base", "self"):
        model = _model(tokenizer, item_encoder=encoder)  # <answer> added first, then LoRA (as recipes do)
        model.lm = apply_lora(model.lm, rank=4, alpha=8)
        with torch.no_grad():
            for name, p in model.lm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)  # an adapter that changes every state
        tables[encoder] = model.build_item_table().as_tensor()
    by_base, by_self = tables["base"], tables["self"]
    tol = f32_tol(N_TINY, 1.0)
    assert (by_base - base).abs().max() <= tol
    assert (by_self - base).abs().max() > 100 * tol


def test_adapter_on_other_base_weights_is_refused(tokenizer, tmp_path, monkeypatch):
    base_dir = tmp_path / "base"
    make_tiny_lm(tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    monkeypatch.setattr("rrec.assets.model_dir", lambda: base_dir)  # the tiny base plays the embedded one
    from transformers import AutoModelForCausalLM

    model = _model(
        tokenizer, AutoModelForCausalLM.from_pretrained(base_dir), user_format="stream", item_encoder="base",
        id_vectors=True,
    )  # fmt: skip
    model.lm = apply_lora(model.lm, rank=4, alpha=8)
    model.config.base_model = str(base_dir)
    model.build_item_table()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert cfg["base_model"] == EMBEDDED_BASE and len(cfg["base_checksum"]) == 64
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m", device="cpu")  # checksum matches
    assert loaded.config.user_format == "stream" and loaded.config.item_encoder == "base"
    torch.testing.assert_close(loaded.item_table(), model.item_table(), rtol=0, atol=0)

    make_tiny_lm(tokenizer, seed=1).save_pretrained(base_dir)  # another version of the base
    with pytest.raises(ValueError, match="another version of the base model"):
        ReasoningRecommender.from_pretrained(tmp_path / "m", device="cpu")
