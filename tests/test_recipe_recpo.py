"""RecPO recipe: a few steps on the tiny model."""

from __future__ import annotations

import json

import torch

from recipes import train_recpo
from rrec.backbone import apply_lora
from rrec.model import ReasoningRecommender
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared
from tests.tolerance import K_STEP, assert_f32_close


def _args(tmp_path, tokenizer, **kw):
    base = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 3,
        "users_per_step": 2,
        "num_generations": 3,
        "max_completion_length": 6,
        "eval_users": 3,
        "eval_max_new_tokens": 4,
        "warmup_steps": 0,
        "lr": 1e-2,
        "dtype": "float32",
        "tensorboard": False,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def test_recpo_lora_every_trainable_parameter_changes(tmp_path, tokenizer):
    args = _args(tmp_path, tokenizer)
    before = ReasoningRecommender.from_pretrained(tmp_path / "base")  # created by _args
    result = train_recpo.main(args)
    assert len(result["history"]) == 3
    for rec in result["history"]:
        assert all(v == v for v in rec.values())  # no NaN
    after = ReasoningRecommender.from_pretrained(tmp_path / "run" / "final")
    # LoRA: every adapter weight moved away from its init; rebuild the init as the recipe's setup does
    torch.manual_seed(0)
    init = ReasoningRecommender.from_pretrained(tmp_path / "base")
    init_lm = apply_lora(init.lm, rank=4, alpha=8, trainable_tokens=[init.answer_id])
    init_lora = dict(init_lm.named_parameters())
    lora = {n: p for n, p in after.lm.named_parameters() if "lora_" in n or "trainable_tokens_delta" in n}
    assert len(lora) == 2 * 7 * 2 + 1  # A and B, 7 projections, 2 layers; the (tied) <answer> row
    for n, p in lora.items():
        assert not torch.equal(p, init_lora[n]), f"{n} did not change"
    # the base weights are untouched
    b0 = dict(before.lm.named_parameters())
    for n, p in after.lm.named_parameters():
        if n not in lora:
            key = n.replace("base_model.model.", "").replace(".token_adapter", "").replace(".base_layer", "")
            torch.testing.assert_close(p, b0[key])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "train/clip_fraction" in json.loads(lines[0])


def test_recpo_full_finetune_changes_all_params_and_clip_engages(tmp_path, tokenizer):
    args = _args(tmp_path, tokenizer, lora=False, num_iterations=2, steps=2, lr=5e-2)
    base = ReasoningRecommender.from_pretrained(tmp_path / "base")
    start = {n: p.detach().clone() for n, p in base.lm.named_parameters()}
    result = train_recpo.main(args)
    after = ReasoningRecommender.from_pretrained(tmp_path / "run" / "final")
    for n, p in after.lm.named_parameters():
        assert not torch.equal(p, start[n]), f"{n} did not change"
    # with mu = 2 the second epoch's ratio moves off 1 and the clip engages
    assert max(r["train/clip_fraction"] for r in result["history"]) > 0


def test_recpo_static_engine_equals_the_hf_rollout(tmp_path, tokenizer):
    # rollout_engine=static samples from the static-KV-cache decoder (rrec.engine, LoRA merged and
    # refreshed after every step): the same logits up to float32 rounding, so the same tokens from the same
    # generator, and the same rewards and losses up to float32 rounding of a step over the batch's tokens
    # (tests/tolerance.py; the two paths sum in another order). Losses are compared while the parameters
    # are still equal up to one step's rounding (steps 1-2): from then on Adam's g / (|g| + eps) turns a
    # rounding difference in a near-zero gradient coordinate into up to lr, a divergence no rounding
    # bound covers (measured at step 3 with trainable <answer> rows: 25 eps32 sqrt(n)). The evaluations
    # before and after training use the same decoder (greedy): equal metrics.
    hf = train_recpo.main(_args(tmp_path, tokenizer, out_dir=tmp_path / "hf", rollout_engine="hf"))
    st = train_recpo.main(_args(tmp_path, tokenizer, out_dir=tmp_path / "static", rollout_engine="static"))
    n_tokens = 2 * 3 * (105 + 6)  # B x G rows of prompt (tiny_prepared: <= 105 tokens) + completion
    for a, b in zip(hf["history"], st["history"], strict=True):
        assert a["train/reasoning_len"] == b["train/reasoning_len"]
        loss = ("train/loss",) if a["step"] <= 2 else ()
        for key in (*loss, "train/reward_mean", "train/ndcg"):
            scale = max(1.0, abs(a[key]))  # losses and rewards of order 1
            assert_f32_close(b[key], a[key], n=n_tokens, k=K_STEP, scale=scale, msg=f"{a['step']} {key}")
    for when in ("before", "after"):
        for key in ("ndcg@10", "hit@10"):
            assert abs(hf[when][key] - st[when][key]) <= 1e-6, (when, key)


def test_max_train_minutes_stops_then_evaluates_and_saves(tmp_path, tokenizer):
    # a budget of ~0 minutes is crossed by the first step: that step completes, the loop stops, and the
    # run ends like a full one (evaluation after, final model, result.json) with the steps really done
    result = train_recpo.main(_args(tmp_path, tokenizer, steps=5, max_train_minutes=1e-9))
    assert result["steps"] == 1 and result["stopped_by_time"] and len(result["history"]) == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 1
    assert (tmp_path / "run" / "final").is_dir() and "ndcg@10" in result["after"]
    # without a budget nothing stops early
    full = train_recpo.main(_args(tmp_path, tokenizer, out_dir=tmp_path / "full", steps=2))
    assert full["steps"] == 2 and not full["stopped_by_time"]


def _hybrid_dir(tmp_path, tokenizer):
    """An untrained all-position model (train_allpos, 0 steps): stream format, LoRA, zero ID vectors."""
    from recipes import train_allpos

    args = {"model": str(tiny_model_dir(tmp_path / "base", tokenizer)), "prepared": str(tiny_prepared(
        tmp_path / "data")), "out_dir": str(tmp_path / "allpos"), "max_history": 5, "steps": 0,
        "eval_every_minutes": 0, "test_before": False, "test_users": 2}  # fmt: skip
    train_allpos.main([f"{k}={v}" for k, v in args.items()])
    return tmp_path / "allpos" / "model"


def test_recpo_item_action_trains_the_id_vectors_of_its_targets(tmp_path, tokenizer):
    """A hybrid model's ID vectors move only where the item action had a target (in-batch softmax), and
    with id_lr=0 they stay as they are; reasoning_format=stream writes the reasoning after the item lines."""
    from rrec.data import load_prepared

    folder = _hybrid_dir(tmp_path, tokenizer)
    args = _args(tmp_path, tokenizer, model=str(folder), id_lr=0.5, reasoning_format="stream")
    train_recpo.main(args)
    after = ReasoningRecommender.from_pretrained(tmp_path / "run" / "final")
    assert after.config.reasoning_format == "stream"
    weights = zip(after.id_vectors.ids, after.id_vectors.weight, strict=True)
    moved = {i for i, v in weights if v.abs().max() > 0}
    targets = set(load_prepared(tmp_path / "data").splits["train"]["target"].astype(str))
    assert moved and moved <= targets  # 3 steps x 2 users: a few train targets, nothing else
    # the saved table holds the hybrid rows of the final ID vectors
    rows = after.table_rows(after.item_ids, after.encode_items(list(after.catalog.values()), progress=False))
    assert_f32_close(after.item_table(), rows, n=after.hidden_size, k=K_STEP)

    train_recpo.main(_args(tmp_path, tokenizer, model=str(folder), id_lr=0.0, out_dir=str(tmp_path / "r0")))
    fixed = ReasoningRecommender.from_pretrained(tmp_path / "r0" / "final")
    assert fixed.id_vectors.weight.abs().max() == 0 and fixed.config.reasoning_format == "chat"
