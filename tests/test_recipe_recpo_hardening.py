"""RecPO recipe, the rules the unit tests cannot see from outside: one run on the tiny model, observed.

The run (LoRA, B=2, G=3, mu=2, eval_every=1, 2 steps, only keys the old recipe knew) uses a dataset where
a user's target usually also appears in its history and users share targets; each test reads one
recorded aspect of it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recipes import train_recpo
from rrec import recpo, rollout, training
from rrec.data import load_prepared, prepare, save_prepared
from rrec.evaluation import select_samples
from tests.recipe_fixtures import GENRES, tiny_model_dir

STEPS, MU, B, G = 2, 2, 2, 3


def repeat_prepared(directory, n_users: int = 12):
    """User u watches item u, then item 12 + u % 4 seven times: from its second sample on, the target is
    also in the history, and users u, u+4, u+8 share targets."""
    items = pd.DataFrame({
        "item_id": [str(i) for i in range(16)], "title": [f"Film {i}" for i in range(16)],
        "year": [str(1980 + i) for i in range(16)], "genres": [GENRES[i % 5] for i in range(16)],
    })  # fmt: skip
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        t0 = rng.integers(0, 10_000)
        for j, i in enumerate([u] + [12 + u % 4] * 7):
            rows.append((str(u), str(i), 3.0, float(t0 + 1000 * j)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    save_prepared(prepare(items, inter, name="repeat", split="temporal", max_history=5), directory)
    return directory


def _keys(df: pd.DataFrame) -> list[tuple]:
    return list(zip(df["user_id"].astype(str), df["target"].astype(str), df["timestamp"], strict=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("recpo_hardening")
    args = {
        "model": str(tiny_model_dir(tmp / "base", tokenizer)),
        "prepared": str(repeat_prepared(tmp / "data")),
        "out_dir": str(tmp / "run"),
        "steps": STEPS, "users_per_step": B, "num_generations": G, "num_iterations": MU,
        "max_completion_length": 4, "eval_every": 1, "eval_users": 3,
        "eval_max_new_tokens": 4, "warmup_steps": 0, "lr": 1e-2, "dtype": "float32", "tensorboard": False,
    }  # fmt: skip
    rec: dict[str, list] = {"forward": [], "reward": [], "rollout": [], "loss": [], "item": [], "eval": []}
    forward, reward, generate = training.policy_forward, recpo.fused_reward, rollout.generate_reasoning
    loss_fn, item_fn, run_eval = recpo.recpo_loss, recpo.in_batch_item_logps, train_recpo.run_eval

    def wrap(name, fn, keep):
        def wrapped(*a, **kw):
            out = fn(*a, **kw)
            if name != "rollout" or kw.get("do_sample"):  # the evaluations decode greedily: not recorded
                rec[name].append(keep(a, kw, out))
            return out

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "policy_forward", wrap("forward", forward, lambda a, kw, out: None))
        keep_scores = lambda a, kw, out: (a[0].clone(), a[1].clone())  # noqa: E731
        mp.setattr(recpo, "fused_reward", wrap("reward", reward, keep_scores))
        mp.setattr(rollout, "generate_reasoning", wrap("rollout", generate, lambda a, kw, out: out))
        mp.setattr(recpo, "recpo_loss", wrap("loss", loss_fn, lambda a, kw, out: (a[3].clone(), out[1])))
        mp.setattr(recpo, "in_batch_item_logps", wrap("item", item_fn, lambda a, kw, out: kw.get("targets")))
        mp.setattr(train_recpo, "run_eval", wrap("eval", run_eval, lambda a, kw, out: _keys(a[1])))
        result = train_recpo.main([f"{k}={v}" for k, v in args.items()])
    data = load_prepared(args["prepared"])
    return {"result": result, "rec": rec, "data": data, "args": args, "out": tmp / "run"}


def test_reward_never_masks_a_target_that_is_in_the_history(run):
    # the batches this run drew (sample_batches with its seed): most targets are also in the history
    batches = training.sample_batches(run["data"].splits["train"], B, 0)
    drawn = pd.concat([next(batches) for _ in range(STEPS)])
    in_history = [str(t) in map(str, h) for h, t in zip(drawn["history"], drawn["target"], strict=True)]
    assert sum(in_history) >= 1  # the case under test occurs
    # the reward sees the target's own score (finite), never the history's -inf, as the evaluation does
    assert run["rec"]["reward"]
    for scores, tcol in run["rec"]["reward"]:
        assert torch.isfinite(scores.gather(1, tcol[:, None])).all()


def test_old_logps_come_from_the_first_iteration(run):
    # mu = 2: one teacher-forced pass per iteration, none before the loop (the old code made mu + 1)
    assert len(run["rec"]["forward"]) == STEPS * MU
    for rec in run["result"]["history"]:
        assert rec["train/ratio_mean_first"] == 1.0  # exactly: the old log-probs are these, detached
    assert any(rec["train/ratio_mean"] != 1.0 for rec in run["result"]["history"])  # epoch 2 moved


def test_forced_answer_tokens_leave_the_token_term(run):
    # 4 new tokens from a random model: <answer> is forced at the budget (or replaces a sampled EOS)
    rolls, losses = run["rec"]["rollout"], run["rec"]["loss"]
    assert len(rolls) == STEPS and len(losses) == STEPS * MU
    assert any(bool(r.forced.any()) for r in rolls)
    for s, roll in enumerate(rolls):
        expected = roll.completion_mask.clone()
        last = roll.completion_mask.sum(1) - 1  # (B*G,) the <answer> column
        rows = torch.arange(expected.shape[0])
        expected[rows[roll.forced], last[roll.forced]] = 0
        for mask, _ in losses[s * MU : (s + 1) * MU]:
            assert torch.equal(mask, expected)


def test_item_action_knows_the_batch_targets(run):
    # the in-batch softmax receives the batch's target ids (duplicates are not negatives of each other)
    batches = training.sample_batches(run["data"].splits["train"], B, 0)
    targets = [next(batches)["target"].astype(str).tolist() for _ in range(STEPS)]
    assert run["rec"]["item"] == [t for t in targets for _ in range(MU)]


def test_mid_training_evaluation_runs_on_valid_and_test_only_before_and_after(run):
    args, data = run["args"], run["data"]
    test = _keys(select_samples(data.splits["test"], args["eval_users"], 1, 0))
    valid = _keys(select_samples(data.splits["valid"], 32, 1, 0))  # valid_users, valid_samples_per_user
    calls = run["rec"]["eval"]
    # before, one mid-training evaluation after step 1 (step 2 is the last), after
    assert calls == [test, valid, test]
    assert not set(valid) & set(test)
    lines = [json.loads(x) for x in (run["out"] / "metrics.jsonl").read_text().splitlines()]
    mid = [x for x in lines if "valid/ndcg@10" in x]
    assert [x["step"] for x in mid] == [1] and not any(k.startswith("eval/") for x in lines for k in x)


def test_full_finetune_with_kl_uses_a_frozen_reference(tmp_path, tokenizer):
    # lora=false and beta_kl > 0: the reference is a frozen copy of the starting weights (the old code
    # called disable_adapter(), which a plain model does not have). Step 1 runs at the starting weights:
    # KL 0 up to rounding (k3 ~ d^2/2 with d a few float32 ulps of |logp| ~ 11: far below 1e-8); after
    # one update the policy has moved away from the reference
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(repeat_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 2, "users_per_step": 2, "num_generations": 2, "max_completion_length": 4, "eval_users": 2,
        "eval_max_new_tokens": 2, "warmup_steps": 0, "lr": 5e-2, "dtype": "float32", "tensorboard": False,
        "lora": False, "beta_kl": 0.5,
    }  # fmt: skip
    result = train_recpo.main([f"{k}={v}" for k, v in args.items()])
    kl = [r["train/kl"] for r in result["history"]]
    assert 0 <= kl[0] < 1e-8 and kl[1] > 1e-4
