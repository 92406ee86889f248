"""RecZero, RecOne and make_traces recipes: a few steps on the tiny model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from recipes import make_traces, recone, reczero
from rrec import text_rollout
from rrec.data import load_prepared
from rrec.tasks import rating
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

GOOD = (
    "<analyze user>likes film {0}</analyze user><analyze item>film {0}</analyze item>"
    "<match>fits</match><rate>{1}</rate>"
)


def _args(tmp_path, tokenizer, **kw) -> list[str]:
    base = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 2,
        "batch_size": 2,
        "num_generations": 3,
        "max_completion_length": 6,
        "eval_samples": 4,
        "eval_max_new_tokens": 4,
        "bootstrap_resamples": 50,
        "warmup_steps": 0,
        "lr": 1e-2,
        "dtype": "float32",
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reczero_runs_and_writes_its_outputs(tmp_path, tokenizer):
    result = reczero.main(_args(tmp_path, tokenizer))
    run = tmp_path / "run"
    assert len(result["history"]) == 2 and len(_lines(run / "metrics.jsonl")) == 2
    saved = json.loads((run / "result.json").read_text())
    for key in ("before", "after"):
        assert saved[key]["n"] == 4 and 0 <= saved[key]["parse_rate"] <= 1
    assert set(saved["baselines"]) == {"global_mean", "user_mean", "history_mean"}
    rows = _lines(run / "eval_after.jsonl")
    assert len(rows) == 4 and {"rating", "prediction", "completion"} <= set(rows[0])
    # the random tiny model never writes the template: every prediction falls back to the global mean,
    # so its MAE equals the global-mean baseline's on the same samples
    assert saved["after"]["parse_rate"] == 0.0
    assert saved["after"]["mae"] == pytest.approx(saved["baselines"]["global_mean"]["mae"])
    # final/ is a plain HF folder (LoRA merged): it loads as a model
    lm, _ = text_rollout.load_policy(str(run / "final"), lora=False, device="cpu")
    assert not hasattr(lm, "peft_config")


def test_reczero_rejects_unknown_keys_and_kl_without_lora(tmp_path, tokenizer):
    from rrec.config import ConfigError

    with pytest.raises(ConfigError):
        reczero.main(_args(tmp_path, tokenizer, no_such_key=1))
    with pytest.raises(ValueError, match="beta_kl"):  # full fine-tuning takes a KL now (a frozen copy)
        reczero.main(_args(tmp_path, tokenizer, beta_kl=-0.1))


def test_rl_loop_moves_every_lora_parameter(tmp_path, tokenizer, monkeypatch):
    # the real rewards are constant (-0.5) on a random model, giving zero advantages; a reward that
    # favours short completions gives non-zero ones, so every LoRA weight must move
    def length_rewards(**_):  # (format, answer) as the recipe expects: -length and 0
        return [
            lambda completions, **_: [-float(len(c)) for c in completions],
            lambda completions, **_: [0.0] * len(completions),
        ]

    monkeypatch.setattr(rating, "make_rewards", length_rewards)
    cfg = reczero.RecZeroConfig(
        steps=2, batch_size=2, num_generations=4, max_completion_length=6, lr=1e-2, warmup_steps=0,
        temperature=1.5, beta_kl=0.01,
    )  # fmt: skip
    lm, tok = text_rollout.load_policy(
        str(tiny_model_dir(tmp_path / "m", tokenizer)), dtype="float32", device="cpu"
    )
    data = load_prepared(tiny_prepared(tmp_path / "d"))
    train = rating.rating_view(data.splits["train"], data.items)
    before = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    history = reczero.rl_loop(lm, tok, train, cfg, tmp_path, [])
    assert len(history) == 2 and all(h["train/parse_rate"] == 0.0 for h in history)
    after = dict(lm.named_parameters())
    assert before and all(not torch.equal(before[n], after[n]) for n in before)


def _traces(path, n: int = 3) -> str:
    lines = [
        {
            "prompt": rating.user_prompt([f"Film {i}"], [4.0], f"Film {i + 1}"),
            "trace": GOOD.format(i, 4),
            "rating": 4,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_recone_sft_then_rl(tmp_path, tokenizer):
    traces = _traces(tmp_path / "traces.jsonl")
    result = recone.main(
        _args(
            tmp_path,
            tokenizer,
            traces=traces,
            sft_steps=3,
            sft_batch_size=3,
            sft_lr=1e-2,
            eval_samples=2,
            eval_max_new_tokens=2,
        )
    )
    run = tmp_path / "run"
    log = _lines(run / "metrics.jsonl")
    sft = [r for r in log if r.get("stage") == "sft"]
    assert len(sft) == 3 and len(log) == 5  # 3 SFT lines, then 2 RL lines
    # the same 3 traces every step at lr 1e-2: the cross-entropy must go down
    assert sft[-1]["sft/loss"] < sft[0]["sft/loss"]
    saved = json.loads((run / "result.json").read_text())
    assert saved["traces"] == 3 and saved["traces_disagreeing"] == 0
    assert {"before", "after_sft", "after", "baselines"} <= set(saved)
    assert (run / "eval_after_sft.jsonl").exists() and (run / "final" / "config.json").exists()
    assert len(result["history"]) == 2


def test_recone_read_traces_rejects_bad_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "trace": "<rate>4</rate>", "rating": 4}) + "\n")
    with pytest.raises(ValueError, match="line 1"):  # the trace lacks three of the four blocks
        recone.read_traces(bad, 1, 5)
    bad.write_text(json.dumps({"prompt": "p", "rating": 4}) + "\n")
    with pytest.raises(ValueError, match="lacks"):
        recone.read_traces(bad, 1, 5)
    with pytest.raises(FileNotFoundError):
        recone.read_traces(tmp_path / "none.jsonl", 1, 5)


def test_collect_traces_keeps_first_try_and_rationalised():
    rows = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "history_titles": [["X"]] * 4,
            "history_ratings": [[3.0]] * 4,
            "target": ["1", "2", "3", "4"],
            "target_title": ["T1", "T2", "T3", "T4"],
            "rating": [4.0, 2.0, 5.0, 4.5],
        }
    )
    calls: list[list[str]] = []

    def teacher(users: list[str]) -> list[str]:
        calls.append(users)
        if len(calls) % 2 == 1:  # the first call of each collect_traces
            return [
                GOOD.format(1, 4),  # a: right first try
                GOOD.format(2, 5),  # b: 5 != 2, retried
                "I think 5",  # c: no template, retried
                GOOD.format(4, 5),  # d: 5 == 4.5 rounded half up (5): right first try
            ]
        return [GOOD.format(2, 2), GOOD.format(3, 4)]  # b: now right; c: 4 != 5, dropped

    records, counts = make_traces.collect_traces(teacher, rows)
    assert counts == {"samples": 4, "first_try": 2, "rationalised": 1, "dropped": 1}
    assert [r["user_id"] for r in records] == ["a", "b", "d"]
    assert [r["source"] for r in records] == ["first_try", "rationalised", "first_try"]
    # the second call gives the truth to b and c; the stored prompt is the plain one, without the hint
    assert len(calls[1]) == 2 and "actually rated the target item 2" in calls[1][0]
    assert "actually rated" not in records[1]["prompt"] and records[1]["prompt"] == calls[0][1]
    calls.clear()
    _, no_retry = make_traces.collect_traces(teacher, rows, rationalise=False)
    assert no_retry["rationalised"] == 0 and no_retry["dropped"] == 2 and len(calls) == 1
    with pytest.raises(ValueError, match="answers"):  # a teacher that loses answers is an error
        make_traces.collect_traces(lambda users: users[:1], rows)


def test_make_traces_with_the_tiny_teacher(tmp_path, tokenizer):
    args = [
        f"teacher={tiny_model_dir(tmp_path / 'teacher', tokenizer)}",
        f"prepared={tiny_prepared(tmp_path / 'data')}",
        f"out_dir={tmp_path / 'traces'}",
        "num_samples=3",
        "max_new_tokens=5",
        "dtype=float32",
    ]
    result = make_traces.main(args)
    # a random model never follows the template: nothing is kept, everything is counted
    assert result["samples"] == 3
    assert result["first_try"] + result["rationalised"] + result["dropped"] == 3
    lines = (tmp_path / "traces" / "traces.jsonl").read_text().splitlines()
    assert len(lines) == result["first_try"] + result["rationalised"]
