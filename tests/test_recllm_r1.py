"""RecLLM-R1: title parsing and matching, rewards and metrics on hand-written completions; the recipe on
the tiny model."""

from __future__ import annotations

import doctest
import json
import math

import pandas as pd
import pytest
import torch

from rrec import grpo
from rrec.tasks import recllm_r1 as task
from rrec.tasks import title_match
from rrec.tasks.title_match import TitleIndex, normalise_title, parse_titles

# A hand-made catalog. Training targets: Toy Story 7 times, Fargo once (C = 8 targets, N = 8 items), so
# p(i) = (c_i + 1) / 16: Toy Story 8/16 -> self-information 1 bit, Fargo 2/16 -> 3 bits, every other
# item 1/16 -> 4 bits (the catalog's maximum). Normalised novelty: Toy Story 1/4, Fargo 3/4, others 1.
ITEMS = pd.DataFrame(
    {
        "item_id": ["1", "2", "3", "4", "5", "6", "7", "8"],
        "title": [
            "Heat",
            "The Usual Suspects",
            "Twelve Monkeys",
            "Sabrina",
            "Sabrina",
            "Toy Story",
            "Fargo",
            "Heavy",
        ],
        "year": ["1995", "1995", "1995", "1954", "1995", "1995", "1996", "1995"],
        "genres": [
            "Action, Crime, Thriller",
            "Crime, Thriller",
            "Drama, Sci-Fi",
            "Comedy, Romance",
            "Comedy, Romance",
            "Animation, Children's, Comedy",
            "Crime, Drama, Thriller",
            "Drama, Romance",
        ],
    }
)
TRAIN = pd.DataFrame({"target": ["6"] * 7 + ["7"]})


def _answer(*lines: str, reasoning: str = "They like crime films.") -> str:
    body = "".join(f"{n}. {t}\n" for n, t in enumerate(lines, 1))
    return f"<reasoning>{reasoning}</reasoning>\n<answer>\n{body}</answer>"


@pytest.fixture()
def cat():
    return task.build_catalog(ITEMS, TRAIN)


def test_docstring_examples():
    for module in (task, title_match):
        assert doctest.testmod(module).failed == 0


def test_normalise_title_rules():
    assert normalise_title("Usual Suspects, The") == normalise_title("the usual suspects!")  # article moved
    assert normalise_title("Twelve   Monkeys") == "twelve monkeys"  # whitespace collapsed
    assert normalise_title("Star Trek: First Contact") == "star trek first contact"  # ':' -> space


def test_parse_well_formed_completion():
    # valid: reasoning block, answer block, numbered "Title (Year)" lines
    text = _answer("Heat (1995)", "Fargo (1996)")
    assert parse_titles(text) == ["Heat (1995)", "Fargo (1996)"]
    assert title_match.is_well_formed(text)


def test_missing_answer_block_strict_gives_no_titles_and_zero_rewards():
    # invalid: the titles are written but there is no <answer> tag; strict parsing reads nothing
    text = "<reasoning>crime fans</reasoning>\n1. Heat (1995)\n2. Fargo (1996)"
    assert parse_titles(text, strict=True) == []
    funcs, _ = task.make_rewards(task.build_catalog(ITEMS, TRAIN, strict_answer=True), 10)
    assert [f([text], target=["1"])[0] for f in funcs] == [0.0, 0.0, 0.0, 0.0]


def test_missing_answer_block_lenient_reads_numbered_lines(cat):
    # no <answer> tag, default (lenient) parsing: the numbered lines are the list, prose and bullets are
    # not; the format term stays 0. Heat at rank 1 -> NDCG 1; Heat {Action, Crime, Thriller} vs Fargo
    # {Crime, Drama, Thriller}: J = 2/4 -> ILD 1/2; novelty (1 + 3/4) / 2 = 7/8
    text = "Here you go.\n1. Heat (1995)\n2) Fargo (1996)\n- Heavy (1995)\nThe user will like 1. Heat"
    assert parse_titles(text) == ["Heat (1995)", "Fargo (1996)"]
    funcs, _ = task.make_rewards(cat, 10)
    assert [f([text], target=["1"])[0] for f in funcs] == [1.0, 0.5, 0.875, 0.0]


def test_unclosed_answer_is_parsed_but_not_well_formed():
    # cut at the token budget: the titles before the cut count, the format term does not
    text = "<reasoning>r</reasoning>\n<answer>\n1. Heat (1995)\n2. Far"
    assert parse_titles(text) == ["Heat (1995)", "Far"]
    assert not title_match.is_well_formed(text)


def test_extra_text_is_ignored_by_the_parser_and_fails_the_format():
    # text after the year on a line is dropped; text after </answer> breaks the format only
    text = _answer("**Heat** (1995) - a heist film", "- Fargo (1996)") + "\nEnjoy!"
    assert parse_titles(text) == ["Heat (1995)", "Fargo (1996)"]
    assert not title_match.is_well_formed(text)
    # a reasoning block missing: also not well formed
    assert not title_match.is_well_formed("<answer>\n1. Heat (1995)\n</answer>")


def test_duplicated_titles_count_once(cat):
    # the same film three times (exact, without year, other case): one item, two duplicates
    m = cat.index.map_completion(_answer("Heat (1995)", "Heat", "HEAT (1995)", "Fargo (1996)"), 10)
    assert m == title_match.MappedList(["1", "7"], 4, 0, 2)
    rows = task.score_completions(cat, [_answer("Heat (1995)", "Heat")], pd.DataFrame({"user_id": ["u"],
                                  "target": ["1"]}))  # fmt: skip
    assert rows[0]["valid_title_rate"] == 0.5  # 1 distinct item / 2 lines


def test_unknown_titles_are_dropped(cat):
    # "The Matrix" is not in the catalog; "Toy Story 2" would fuzzily match "Toy Story" (ratio 0.9) but
    # its number word "2" differs: a sequel is not its original
    m = cat.index.map_completion(_answer("The Matrix (1999)", "Toy Story 2 (1999)", "Fargo (1996)"), 10)
    assert m.items == ["7"] and m.n_unknown == 2


def test_fuzzy_near_misses_and_articles(cat):
    idx = cat.index
    assert idx.lookup("Twelve Monkey (1995)") == "3"  # near miss, ratio 2*13/27 = 0.96
    assert idx.lookup("Usual Suspects, The (1995)") == "2"  # MovieLens article order: exact after moving
    assert idx.lookup("The Usual Suspect") == "2"  # near miss
    assert idx.lookup("Heavy") == "8" and idx.lookup("Heat") == "1"  # exact keys win over close ones
    assert TitleIndex(ITEMS, fuzzy_cutoff=1.0).lookup("Twelve Monkey") is None  # fuzzy step off


def test_shared_titles_resolved_by_year(cat):
    # two films called Sabrina: the written year picks one; no year (or a wrong one): the first listed
    assert cat.index.lookup("Sabrina (1995)") == "5"
    assert cat.index.lookup("Sabrina (1954)") == "4"
    assert cat.index.lookup("Sabrina") == "4"
    assert cat.index.lookup("Sabrina (2001)") == "4"


def test_accuracy_with_fewer_than_k_titles_and_beyond_k(cat):
    funcs, _ = task.make_rewards(cat, 10)
    acc = funcs[0]
    # 2 titles for K = 10, target second: NDCG = 1 / log2(3)
    assert acc([_answer("Fargo (1996)", "Toy Story (1995)")], target=["6"]) == [
        pytest.approx(1 / math.log2(3))
    ]
    # K = 2, target third: beyond the cut, 0
    funcs2, _ = task.make_rewards(cat, 2)
    assert funcs2[0]([_answer("Heat", "Fargo", "Toy Story")], target=["6"]) == [0.0]


def test_diversity_hand_worked(cat):
    g = cat.genres
    # Heat {Action, Crime, Thriller}, Usual Suspects {Crime, Thriller}, Twelve Monkeys {Drama, Sci-Fi}:
    # J(H,U) = 2/3, J(H,T) = 0, J(U,T) = 0 -> mean 2/9 -> ILD 7/9
    assert task.intra_list_diversity(["1", "2", "3"], g) == pytest.approx(7 / 9)
    assert task.intra_list_diversity(["4", "5"], g) == 0.0  # the two Sabrinas share {Comedy, Romance}
    assert task.intra_list_diversity(["1"], g) == 0.0  # fewer than 2 items: defined as 0
    assert task.intra_list_diversity([], g) == 0.0


def test_novelty_hand_worked(cat):
    # normalised self-information (see ITEMS): Toy Story 1/4, Fargo 3/4, Heat 1
    assert cat.novelty["6"] == pytest.approx(0.25) and cat.novelty["7"] == pytest.approx(0.75)
    assert task.list_novelty(["6", "7"], cat.novelty) == pytest.approx(0.5)
    assert task.list_novelty(["1"], cat.novelty) == 1.0
    assert task.list_novelty([], cat.novelty) == 0.0


def test_weighted_reward_through_reward_matrix(cat):
    funcs, weights = task.make_rewards(cat, 10, w_acc=1.0, w_div=0.2, w_nov=0.2, w_format=0.1)
    good = _answer("Fargo (1996)", "Toy Story (1995)")  # valid; target Toy Story at rank 2
    bad = "I recommend Fargo."  # invalid: no blocks at all
    cols = grpo.repeat_columns({"target": ["6"]}, 2)
    parts = grpo.reward_matrix(funcs, [good, bad], cols)  # (2, 4)
    # good: NDCG 1/log2(3); ILD: Fargo {Crime, Drama, Thriller} vs Toy Story {Animation, Children's,
    # Comedy}, J = 0 -> 1; novelty (3/4 + 1/4) / 2 = 1/2; format 1
    torch.testing.assert_close(parts[0], torch.tensor([1 / math.log2(3), 1.0, 0.5, 1.0]))
    torch.testing.assert_close(parts[1], torch.zeros(4))
    total = parts @ torch.tensor(weights)
    assert total[0].item() == pytest.approx(1 / math.log2(3) + 0.2 + 0.1 + 0.1)


def test_popular_baseline_excludes_history(cat):
    # popularity: Toy Story (7), Fargo (1), then the rest in catalog order (all 0)
    assert task.popular_lists(cat, [[], ["6"]], 3) == [["6", "7", "1"], ["7", "1", "2"]]


def test_summarise_means_and_intervals(cat):
    samples = pd.DataFrame({"user_id": ["a", "a", "b"], "target": ["6", "1", "7"]})
    rows = task.score_lists(cat, [["6", "7"], ["6", "7"], ["6", "7"]], samples)
    s = task.summarise(rows)
    # hits: a/Toy Story rank 1, a/Heat miss, b/Fargo rank 2 -> recall 2/3, NDCG (1 + 0 + 1/log2 3) / 3
    assert s["recall@10"] == pytest.approx(2 / 3)
    assert s["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    lo, hi = s["recall@10_ci95"]
    assert 0 <= lo <= s["recall@10"] <= hi <= 1
    assert s["samples"] == 3 and s["users"] == 2 and s["diversity"] == 1.0


# ---- the recipe on the tiny model --------------------------------------------------------------------


def _args(tmp_path, tokenizer, **kw):
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

    base = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "sft_steps": 2,
        "sft_batch_size": 2,
        "sft_lr": 1e-2,
        "steps": 2,
        "users_per_step": 2,
        "num_generations": 2,
        "max_completion_length": 6,
        "eval_users": 3,
        "eval_max_new_tokens": 6,
        "warmup_steps": 0,
        "lr": 1e-2,
        "dtype": "float32",
        "max_history": 3,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _lora_b(folder):
    from safetensors.torch import load_file

    w = load_file(str(folder / "adapter_model.safetensors"))
    return {n: t for n, t in w.items() if "lora_B" in n}


def test_recipe_runs_both_stages_and_writes_its_outputs(tmp_path, tokenizer):
    from recipes import recllm_r1

    result = recllm_r1.main(_args(tmp_path, tokenizer))
    run = tmp_path / "run"
    saved = json.loads((run / "result.json").read_text())
    assert set(saved) >= {"baseline_pop", "before", "after_sft", "after", "steps", "wall_s", "config"}
    for stage in ("baseline_pop", "before", "after_sft", "after"):
        assert saved[stage]["samples"] == 3 and len(saved[stage]["ndcg@10_ci95"]) == 2
        assert len((run / f"eval_{stage}.jsonl").read_text().splitlines()) == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["sft", "sft", "grpo", "grpo"]
    grpo_rec = lines[-1]
    keys = [
        "accuracy",
        "diversity",
        "novelty",
        "format",
        "zero_std_groups",
        "clip_fraction",
        "completion_len",
    ]
    for key in [*keys, "truncated", "lr", "step_s"]:
        assert math.isfinite(grpo_rec[f"train/{key}"]), key
    assert len(result["history"]) == 4
    # LoRA B starts at 0: the SFT stage (lr 1e-2) moved every B matrix
    assert all(t.abs().sum() > 0 for t in _lora_b(run / "final").values())


def test_grpo_stage_moves_the_policy_when_rewards_differ(tmp_path, tokenizer, monkeypatch):
    from recipes import recllm_r1

    # a random tiny model never writes a title, so every real reward is 0 and every group has zero
    # variance; a reward equal to the completion's length varies within groups and must move the LoRA
    def fake_rewards(cat, k, **_):
        def length(completions, **__):
            return [float(len(c)) for c in completions]

        return [length] * 4, [1.0, 0.0, 0.0, 0.0]

    monkeypatch.setattr(task, "make_rewards", fake_rewards)
    recllm_r1.main(_args(tmp_path, tokenizer, sft_steps=0, num_generations=4, temperature=2.0))
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["after_sft"] is None
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(x["train/zero_std_groups"] < 1 for x in lines)
    assert any(t.abs().sum() > 0 for t in _lora_b(tmp_path / "run" / "final").values())


def test_unknown_config_key_is_an_error(tmp_path):
    from recipes import recllm_r1
    from rrec.config import ConfigError

    with pytest.raises(ConfigError):
        recllm_r1.main([f"out_dir={tmp_path}", "no_such_key=1"])


def test_sft_target_is_a_one_line_list_the_parser_reads_back(cat):
    # the SFT stage teaches the list prompt's answer shape: "1. Title (Year)" of the next item, which the
    # GRPO reward's parser (no tags: numbered lines) maps back to that item
    target = task.sft_target(cat, "2")
    assert target.startswith("1. ") and "Usual Suspects" in target
    assert cat.index.map_completion(target, 10, False).items == ["2"]
