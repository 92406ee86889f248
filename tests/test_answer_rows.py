"""The ``<answer>`` rows on a model whose embedding table has spare rows (Qwen2.5's shape): initialised
when the token is added even without a resize, trainable under LoRA, and saved/loaded with the adapter.

The model is a tiny random Qwen2 with untied embeddings and ``len(tokenizer) + 16`` rows, so the added
``<answer>`` id (= ``len(tokenizer)``) lands on a spare row and ``add_answer_token`` does not resize.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from rrec.backbone import apply_lora
from rrec.model import ReasoningRecommender
from rrec.prompts import ANSWER_TOKEN, add_answer_token

SPARE = 16


def make_tiny_qwen2(tokenizer, seed: int = 0, hidden: int = 32):
    """A 2-layer, hidden-32 Qwen2 with untied embeddings and 16 spare rows beyond the tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer) + SPARE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(cfg).eval()


def catalog(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [str(i) for i in range(n)], "title": [f"Film {i}" for i in range(n)]})


def test_answer_rows_initialised_on_a_spare_row_without_resize(tokenizer):
    tok, lm = copy.deepcopy(tokenizer), make_tiny_qwen2(tokenizer)
    pieces = tok(ANSWER_TOKEN, add_special_tokens=False).input_ids  # "<", "answer", ">"
    inp_before = lm.get_input_embeddings().weight.detach().clone()
    out_before = lm.get_output_embeddings().weight.detach().clone()
    new_id = add_answer_token(tok, lm)
    assert new_id == len(tokenizer)  # the first spare row
    inp, out = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    assert inp.shape[0] == len(tokenizer) + SPARE and out.shape[0] == len(tokenizer) + SPARE  # no resize
    # each side's new row is the mean of that side's piece rows (untied: two different means)
    torch.testing.assert_close(inp[new_id], inp_before[pieces].mean(0))
    torch.testing.assert_close(out[new_id], out_before[pieces].mean(0))
    assert not torch.equal(inp[new_id], out[new_id])
    others = torch.ones(inp.shape[0], dtype=torch.bool)
    others[new_id] = False
    assert torch.equal(inp[others], inp_before[others]) and torch.equal(out[others], out_before[others])


def test_answer_rows_train_under_lora_and_round_trip(tmp_path, tokenizer):
    base = tmp_path / "base"
    make_tiny_qwen2(tokenizer, seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = ReasoningRecommender.from_pretrained(base, catalog=catalog(), max_new_tokens=4)
    aid = model.answer_id
    model.lm = apply_lora(model.lm, rank=2, trainable_tokens=[aid])
    deltas = {n: p for n, p in model.lm.named_parameters() if "trainable_tokens_delta" in n}
    assert len(deltas) == 2 and all(p.requires_grad and p.shape == (1, 32) for p in deltas.values())

    # both rows get gradient: the input row through the state at <answer>, the output row through its logit
    ids = torch.tensor([[*model.tokenizer("Film 3", add_special_tokens=False).input_ids, aid]])
    out = model.lm(input_ids=ids, output_hidden_states=True)
    (out.hidden_states[-1][0, -1].sum() + out.logits[0, :, aid].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas.values())

    with torch.no_grad():  # "train" the rows: move them away from their initialisation
        for p in deltas.values():
            p.add_(torch.randn_like(p))
    rows = (model.lm.get_input_embeddings().weight[aid].clone(), model.lm_head.weight[aid].clone())
    model.build_item_table(batch_size=8)
    before = model.recommend(["1", "2"], k=5)
    model.save_pretrained(tmp_path / "m")
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m")  # the item table's fingerprint must match
    assert torch.equal(loaded.lm.get_input_embeddings().weight[aid], rows[0])
    assert torch.equal(loaded.lm_head.weight[aid], rows[1])
    after = loaded.recommend(["1", "2"], k=5)
    assert before.item_ids == after.item_ids and before.reasoning == after.reasoning


def test_tied_embeddings_train_one_row(tokenizer):
    from tests.conftest import make_tiny_lm

    tok, lm = copy.deepcopy(tokenizer), make_tiny_lm(tokenizer)
    aid = add_answer_token(tok, lm)
    peft = apply_lora(lm, rank=2, trainable_tokens=[aid])
    deltas = [p for n, p in peft.named_parameters() if "trainable_tokens_delta" in n]
    assert len(deltas) == 1  # tied: one row serves the input and the output side
    with torch.no_grad():
        deltas[0].add_(1.0)
    out, inp = peft.get_output_embeddings().weight, peft.get_input_embeddings().weight
    torch.testing.assert_close(out[aid], inp[aid])


def test_merged_token_rows_same_outputs_and_restored(tokenizer):
    from rrec.backbone import merged_token_rows

    tok, lm = copy.deepcopy(tokenizer), make_tiny_qwen2(tokenizer, seed=2)
    aid = add_answer_token(tok, lm)
    peft = apply_lora(lm, rank=2, trainable_tokens=[aid])
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(torch.randn_like(p))
    ids = torch.tensor([[*tok("Film 3", add_special_tokens=False).input_ids, aid, aid]])
    adapters = [m.token_adapter for m in peft.modules() if hasattr(m, "token_adapter")]
    bases = [a.base_layer.weight.detach().clone() for a in adapters]
    with torch.no_grad():
        ref = peft(input_ids=ids).logits  # PEFT's forward: the table rebuilt with the rows written in
        with merged_token_rows(peft):
            assert all(a.merged for a in adapters)
            got = peft(input_ids=ids).logits  # the rows read from the base tables
    assert torch.equal(got, ref)  # the same table either way: bit for bit
    assert not any(a.merged for a in adapters)
    assert all(torch.equal(a.base_layer.weight, b) for a, b in zip(adapters, bases, strict=True))
    with merged_token_rows(peft):  # with grad: a no-op, the rows must keep their gradient
        assert not any(a.merged for a in adapters)
