"""Like/dislike GRPO: parser, rewards, prompts, samples, metrics, and the recipe on the tiny model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from recipes import grpo_like_dislike as recipe
from rrec import grpo, recpo, text_rollout
from rrec.tasks import like_dislike as ld
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

STRICT = "<reasoning>\nShe likes crime films.\n</reasoning>\n<answer>\nYes\n</answer>"

# (completion, parsed answer, strict format, soft format)
CASES = [
    # the template exactly: all three criteria hold
    (STRICT, True, 1.0, 1.0),
    # whitespace before and after is allowed by the strict format
    ("\n  " + STRICT + "\n\n", True, 1.0, 1.0),
    # multi-line reasoning: "." must cross lines in both format patterns
    ("<reasoning>\nline one\nline two\n</reasoning>\n<answer>\nNo\n</answer>", False, 1.0, 1.0),
    # "Like" is read as Yes, "DISLIKE" as No (any case), surrounding spaces stripped
    (STRICT.replace("Yes", "Like"), True, 1.0, 1.0),
    (STRICT.replace("Yes", "  DISLIKE "), False, 1.0, 1.0),
    # the format does not look at the answer's content: "Maybe" is well formed but unparseable
    (STRICT.replace("Yes", "Maybe"), None, 1.0, 1.0),
    # trailing sentence punctuation is tolerated: "Yes." and "No!" are answers (the format still holds)
    (STRICT.replace("Yes", "Yes."), True, 1.0, 1.0),
    (STRICT.replace("Yes", "No!"), False, 1.0, 1.0),
    # but a sentence is not: "Yes, probably" is unparseable
    (STRICT.replace("Yes", "Yes, probably"), None, 1.0, 1.0),
    # extra text before the blocks: strict fails, soft holds, the answer still parses
    ("Sure! " + STRICT, True, 0.0, 1.0),
    # extra text between the blocks: strict fails, soft holds
    (STRICT.replace("</reasoning>\n", "</reasoning>\nSo:\n"), True, 0.0, 1.0),
    # no line breaks inside the tags: strict fails, soft holds
    ("<reasoning>crime fan</reasoning><answer>No</answer>", False, 0.0, 1.0),
    # tags out of order (answer first): both formats fail, the answer still parses
    ("<answer>\nYes\n</answer>\n<reasoning>\nbecause\n</reasoning>", True, 0.0, 0.0),
    # missing reasoning block: both formats fail, the answer parses
    ("<answer>\nNo\n</answer>", False, 0.0, 0.0),
    # missing closing answer tag: unparseable, both formats fail
    ("<reasoning>\nhmm\n</reasoning>\n<answer>\nYes", None, 0.0, 0.0),
    # missing answer block altogether: unparseable
    ("<reasoning>\nhmm\n</reasoning>\nYes", None, 0.0, 0.0),
    # two answer blocks: ambiguous, unparseable; strict fails (each tag once), soft holds
    (STRICT + "\n<answer>\nNo\n</answer>", None, 0.0, 1.0),
    # empty reasoning (blank line only): strict fails, soft holds
    ("<reasoning>\n \n</reasoning>\n<answer>\nYes\n</answer>", True, 0.0, 1.0),
    # closing tag before the opening one: unparseable
    ("</answer>Yes<answer>", None, 0.0, 0.0),
    # plain text, no tags
    ("Yes", None, 0.0, 0.0),
]


@pytest.mark.parametrize(("text", "parsed", "strict", "soft"), CASES)
def test_parser_and_format_rewards(text, parsed, strict, soft):
    assert ld.parse_answer(text) is parsed
    assert ld.strict_format_reward([text]) == [strict]
    assert ld.soft_format_reward([text]) == [soft]


def test_correctness_reward_against_labels():
    texts = [c[0] for c in CASES]
    labels = [True] * len(CASES)
    # correct exactly when the parsed answer is True; None and False score 0
    assert ld.correctness_reward(texts, label=labels) == [float(c[1] is True) for c in CASES]
    # against False labels: only the parsed False answers score
    assert ld.correctness_reward(texts, label=[False] * len(CASES)) == [float(c[1] is False) for c in CASES]


def test_reward_matrix_and_weighted_sum_with_group_advantages():
    # one prompt (label Yes), G = 2: the strict Yes completion scores 2*1 + 0.5*1 + 0.5*1 = 3.0; the
    # bare "<answer>No</answer>" scores 0 + 0 + 0 = 0 -> GRPO advantages +-(1.5 / std) with std of
    # [3, 0] (unbiased) = 3/sqrt(2): +-1/sqrt(2) (eps 1e-4 ignored at this tolerance)
    texts = [STRICT, "<answer>No</answer>"]
    r = grpo.reward_matrix(ld.REWARD_FUNCS, texts, grpo.repeat_columns({"label": [True]}, 2))
    assert r.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    total = ld.weighted_reward(r, [2.0, 0.5, 0.5])
    assert total.tolist() == [3.0, 0.0]
    adv = recpo.group_advantages(total, 2, "grpo")
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]) / math.sqrt(2), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="3 reward columns for 2 weights"):
        ld.weighted_reward(r, [1.0, 1.0])


SYSTEM = (
    "You predict whether a user will like a movie, from the movies they liked and disliked before. "
    "First think about the user's tastes and the movie, then answer Yes or No, in exactly this format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\nYes or No\n</answer>"
)


def test_prompts_golden(tokenizer):
    user = ld.user_prompt(["Heat (1995)", "Fargo (1996)"], [True, False], "Casino (1995)")
    assert user == (
        "The user's past movies, oldest first:\n"
        "1. Heat (1995): Liked\n"
        "2. Fargo (1996): Disliked\n"
        "Will the user like Casino (1995)? Answer Yes or No."
    )
    assert ld.SYSTEM_PROMPT == SYSTEM
    assert ld.user_prompt([], [], "Heat (1995)").startswith("The user's past movies, oldest first:\n(none)\n")
    with pytest.raises(ValueError, match="2 titles for 1"):
        ld.user_prompt(["a", "b"], [True], "c")
    # the recipe's prompt ids decode to SmolLM2's chat layout around those two turns
    rows = pd.DataFrame(
        {"history_titles": [["Heat (1995)"]], "history_liked": [[True]], "target_title": ["Casino (1995)"]}
    )
    [ids] = recipe.prompts_of(tokenizer, rows)
    assert tokenizer.decode(ids) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nThe user's past movies, oldest first:\n1. Heat (1995): Liked\n"
        "Will the user like Casino (1995)? Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sft_targets_end_with_the_stop_token(tokenizer):
    yes, no = recipe.sft_targets(tokenizer, [True, False])
    assert tokenizer.decode(yes) == "<answer>\nYes\n</answer><|im_end|>"
    assert tokenizer.decode(no) == "<answer>\nNo\n</answer><|im_end|>"


def test_like_view_from_a_tiny_frame():
    items = pd.DataFrame(
        {"item_id": ["1", "2", "3", "4"], "title": ["Heat", "Fargo", "Casino", "Ran"],
         "year": ["1995", "1996", "", float("nan")]}
    )  # fmt: skip
    nan = float("nan")
    samples = pd.DataFrame(
        {
            "user_id": ["u", "u", "v"],
            "position": [3, 4, 1],
            "history": [["1", "2", "3"], ["1", "2", "3", "4"], ["4"]],
            "history_ratings": [[5.0, 2.0, nan], [5.0, 2.0, nan, 4.0], [nan]],
            "history_timestamps": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], [1.0]],
            "target": ["4", "1", "2"],
            "rating": [4.0, 3.0, 5.0],
            "timestamp": [4.0, 5.0, 2.0],
        }
    )
    view = ld.like_view(samples, items, history=2, like_threshold=4.0)
    # row 0: rated history 1 (5), 2 (2) -> last 2 kept, liked [5>=4, 2>=4] = [T, F]; target 4 rated 4 -> T
    # row 1: rated history 1, 2, 4 (3 is NaN: skipped) -> last 2: 2 (2), 4 (4) -> [F, T]; target rated 3 -> F
    # row 2: its only history item is unrated -> no history left -> dropped
    assert view["user_id"].tolist() == ["u", "u"]
    assert view["history"].tolist() == [["1", "2"], ["2", "4"]]
    assert view["history_ratings"].tolist() == [[5.0, 2.0], [2.0, 4.0]]
    assert view["history_liked"].tolist() == [[True, False], [False, True]]
    # titles with the year when known; "" and NaN years give the bare title
    assert view["history_titles"].tolist() == [["Heat (1995)", "Fargo (1996)"], ["Fargo (1996)", "Ran"]]
    assert view["target_title"].tolist() == ["Ran", "Heat (1995)"]
    assert view["label"].tolist() == [True, False]
    # a stricter threshold (5): only the 5 is a like; both targets (4, 3) are dislikes
    strict = ld.like_view(samples, items, history=2, like_threshold=5.0)
    assert strict["history_liked"].tolist() == [[True, False], [False, False]]
    assert strict["label"].tolist() == [False, False]
    with pytest.raises(ValueError, match="history"):
        ld.like_view(samples, items, history=0)


def test_item_label_years():
    assert ld.item_label("Heat", "1995") == "Heat (1995)"
    assert ld.item_label("Heat", 1995.0) == "Heat (1995)"  # a year read back as a float
    assert ld.item_label("Heat", None) == ld.item_label("Heat", "nan") == "Heat"


def test_accuracy_metrics_hand_worked():
    # labels [T, F, T, F], answers [T, None, F, F]: right, wrong (unparseable), wrong, right -> 0.5;
    # parse rate 3/4; Yes rate 1/4; label Yes rate 2/4
    m = ld.accuracy_metrics([True, None, False, False], [True, False, True, False], ["a", "a", "b", "b"],
                            n_resamples=200)  # fmt: skip
    assert m["n"] == 4 and m["accuracy"] == 0.5 and m["parse_rate"] == 0.75
    assert m["yes_rate"] == 0.25 and m["label_yes_rate"] == 0.5
    # two users, each with accuracy 1/2: every user resample has mean 1/2, so the interval is a point
    assert m["accuracy_low"] == m["accuracy_high"] == 0.5
    # parse rates per user: a 1/2, b 1 -> resampled means lie in [1/2, 1]
    assert 0.5 <= m["parse_rate_low"] <= 0.75 <= m["parse_rate_high"] <= 1.0
    with pytest.raises(ValueError):
        ld.accuracy_metrics([True], [True, False], ["a", "b"])


def _args(tmp_path, tokenizer, **kw) -> list[str]:
    base = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 2,
        "prompts_per_step": 2,
        "num_generations": 4,
        "max_completion_length": 6,
        "temperature": 1.5,
        "eval_samples": 4,
        "eval_max_new_tokens": 4,
        "bootstrap_resamples": 50,
        "warmup_steps": 0,
        "lr": 1e-2,
        "dtype": "float32",
        "device": "cpu",
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _capture_policy(monkeypatch) -> dict:
    """Wrap text_rollout.load_policy to keep the LoRA parameters (live) and a copy of their initial values."""
    seen: dict = {}
    load = text_rollout.load_policy

    def wrapped(*a, **k):
        lm, tok = load(*a, **k)
        seen["live"] = {n: p for n, p in lm.named_parameters() if p.requires_grad}
        seen["init"] = {n: p.detach().clone() for n, p in seen["live"].items()}
        return lm, tok

    monkeypatch.setattr(text_rollout, "load_policy", wrapped)
    return seen


def _check_run(tmp_path, result, seen, method: str) -> None:
    run = tmp_path / "run"
    # every LoRA weight (A and B, 7 projections, 2 layers) moved and is finite
    assert len(seen["live"]) == 2 * 7 * 2 and all("lora_" in n for n in seen["live"])
    for n, p in seen["live"].items():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p.detach(), seen["init"][n]), f"{n} did not change"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 == len(result["history"])
    for rec in log:
        assert all(math.isfinite(v) for v in rec.values())
    saved = json.loads((run / "result.json").read_text())
    assert {"before", "after", "steps", "wall_s", "config"} <= set(saved)
    assert saved["config"]["method"] == method and saved["steps"] == 2
    for key in ("before", "after"):
        assert saved[key]["n"] == 4 and 0 <= saved[key]["accuracy"] <= 1
    for name in ("eval_before.jsonl", "eval_after.jsonl"):
        rows = [json.loads(line) for line in (run / name).read_text().splitlines()]
        assert [r["sample"] for r in rows] == [0, 1, 2, 3]
        assert {"user_id", "target", "label", "parsed", "completion"} <= set(rows[0])
    assert (run / "config.json").exists()
    # final/ is a plain HF folder (LoRA merged): it loads as a model
    lm, _ = text_rollout.load_policy(str(run / "final"), lora=False, device="cpu")
    assert not hasattr(lm, "peft_config")


def test_recipe_grpo_two_steps(tmp_path, tokenizer, monkeypatch):
    # the random tiny model never writes the tags, so the real rewards are all 0 (zero advantages,
    # nothing moves); a first reward favouring short completions gives non-zero advantages
    def shortness(completions, **_):
        return [-float(len(c)) for c in completions]

    monkeypatch.setattr(ld, "REWARD_FUNCS", (shortness, ld.strict_format_reward, ld.soft_format_reward))
    seen = _capture_policy(monkeypatch)
    result = recipe.main(_args(tmp_path, tokenizer))
    _check_run(tmp_path, result, seen, "grpo")
    rec = result["history"][0]
    assert rec["train/strict_format_mean"] == 0.0 and rec["train/parse_rate"] == 0.0
    assert rec["train/zero_std_groups"] < 1.0  # the shortness reward varies within the groups
    assert 1 <= rec["train/completion_len"] <= 6 and 0 <= rec["train/truncated"] <= 1
    assert {"train/clip_fraction", "train/lr", "train/step_s", "train/correctness_std"} <= set(rec)


def test_recipe_sft_two_steps(tmp_path, tokenizer, monkeypatch):
    seen = _capture_policy(monkeypatch)
    result = recipe.main(_args(tmp_path, tokenizer, method="sft"))
    _check_run(tmp_path, result, seen, "sft")
    assert set(result["history"][0]) == {"step", "train/loss", "train/grad_norm", "train/lr", "train/step_s"}


def test_recipe_same_eval_samples_for_both_methods(tmp_path):
    data = tiny_prepared(tmp_path / "data")
    cfg = recipe.LikeDislikeConfig(prepared=str(data), eval_samples=5, seed=3)
    _, held_a = recipe.load_views(cfg)
    _, held_b = recipe.load_views(recipe.LikeDislikeConfig(prepared=str(data), eval_samples=5, seed=3,
                                                           method="sft"))  # fmt: skip
    assert len(held_a) == 5
    pd.testing.assert_frame_equal(held_a, held_b)


def test_recipe_rejects_bad_settings(tmp_path, tokenizer):
    from rrec.config import ConfigError

    with pytest.raises(ConfigError):
        recipe.main(_args(tmp_path, tokenizer, no_such_key=1))
    with pytest.raises(ValueError, match="method"):
        recipe.main(_args(tmp_path, tokenizer, method="dpo"))
    with pytest.raises(ValueError, match="beta_kl"):  # full fine-tuning takes a KL now (a frozen copy)
        recipe.main(_args(tmp_path, tokenizer, beta_kl=-0.1))
