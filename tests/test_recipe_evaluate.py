"""recipes/evaluate.py end to end on a tiny random model and a tiny prepared dataset (CPU, seconds)."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch

from recipes import evaluate
from rrec.config import ConfigError
from rrec.data import prepare, save_prepared
from rrec.metrics import rank_of_target
from tests.conftest import make_tiny_lm

N_ITEMS = 10
N_USERS = 6


def tiny_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """10 movies; user u<k> watches items k, k+1, ..., k+6 (mod 10), one a day, users interleaved."""
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(N_ITEMS)],
            "title": [f"Movie {i}" for i in range(N_ITEMS)],
            "year": [str(1990 + i) for i in range(N_ITEMS)],
            "genres": ["Drama" if i % 2 else "Comedy" for i in range(N_ITEMS)],
        }
    )
    rows = [
        (f"u{u}", str((u + j) % N_ITEMS), float(1 + (u + j) % 5), 86400.0 * j + u)
        for u in range(N_USERS)
        for j in range(7)
    ]
    return items, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    items, inter = tiny_tables()
    # 6 users x 6 samples = 36 samples; temporal 80/10/10: train 28, valid 4, test 4 (the latest targets)
    data = prepare(items, inter, name="tiny", split="temporal", max_history=5)
    assert len(data.splits["test"]) == 4
    return save_prepared(data, tmp_path_factory.mktemp("prepared") / "tiny-temporal")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny-lm")
    make_tiny_lm(tokenizer).save_pretrained(d)
    copy.deepcopy(tokenizer).save_pretrained(d)
    return d


def run(tmp_path, prepared_dir, *overrides: str) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    metrics = evaluate.main([f"prepared={prepared_dir}", f"out_dir={out}", *overrides])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["hit@10"] == metrics["hit@10"]
    rows = [json.loads(line) for line in (out / "per_user.jsonl").read_text().splitlines()]
    return on_disk, rows


METRIC_KEYS = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)] + ["mrr"]


def check(metrics: dict, rows: list[dict], n_samples: int) -> None:
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0
        lo, hi = metrics[f"{key}_ci95"]
        assert lo <= metrics[key] + 1e-12 and metrics[key] <= hi + 1e-12
    assert metrics["n_samples"] == len(rows) == n_samples
    assert metrics["n_items"] == N_ITEMS
    assert {"config", "machine", "time", "samples_sha", "date", "command"} <= set(metrics)
    assert metrics["machine"]["torch"] == torch.__version__
    for row in rows:
        assert 1 <= row["rank"] <= N_ITEMS
        assert {"user_id", "target", "rank", "top_k", "reasoning", "forced_answer"} <= set(row)
        assert len(set(row["top_k"])) == len(row["top_k"]) <= N_ITEMS  # top_k=20 > 10 items


@pytest.mark.parametrize("reasoning", [True, False])
def test_llm_end_to_end(tmp_path, prepared_dir, model_dir, reasoning):
    metrics, rows = run(
        tmp_path,
        prepared_dir,
        f"model={model_dir}",
        f"reasoning={str(reasoning).lower()}",
        "max_new_tokens=4",
        "batch_size=3",
        "item_batch_size=4",
        "dtype=float32",
    )
    check(metrics, rows, n_samples=4)
    assert metrics["method"] == ("reasoning" if reasoning else "noreason")
    assert metrics["config"]["dtype"] == "float32"
    assert ("reasoning/forced_rate" in metrics) == reasoning
    if reasoning:
        # a random model rarely writes <answer> within 3 tokens; whatever it does, this is a rate
        assert 0.0 <= metrics["reasoning/forced_rate"] <= 1.0
    else:
        assert all(r["reasoning"] == "" and not r["forced_answer"] for r in rows)


def test_pop_matches_counts_by_hand(tmp_path, prepared_dir):
    """Most-popular ranks equal ranks from train counts computed here directly from the samples."""
    metrics, rows = run(tmp_path, prepared_dir, "method=pop")
    check(metrics, rows, n_samples=4)
    from rrec.data import load_prepared

    data = load_prepared(prepared_dir)
    train, test = data.splits["train"], data.splits["test"]
    # every train target once, plus each user's first train history (their sequence before it)
    counts = train["target"].value_counts().to_dict()
    for history in train.sort_values("position").drop_duplicates("user_id")["history"]:
        for item in history:
            counts[item] = counts.get(item, 0) + 1
    ids = data.items["item_id"].tolist()
    scores = torch.tensor([[float(counts.get(i, 0)) for i in ids]] * len(test))
    exclude = torch.tensor([[i in h for i in ids] for h in test["history"]])
    expected = rank_of_target(scores, torch.tensor([ids.index(t) for t in test["target"]]), exclude)
    assert [r["rank"] for r in rows] == expected.tolist()
    assert [r["target"] for r in rows] == test["target"].tolist()


def test_every_method_sees_the_same_samples(tmp_path, prepared_dir, model_dir):
    subset = ["max_users=3", "samples_per_user=1", "seed=1"]
    pop, pop_rows = run(tmp_path / "pop", prepared_dir, "method=pop", *subset)
    llm, llm_rows = run(
        tmp_path / "llm", prepared_dir, f"model={model_dir}", "reasoning=false", "dtype=float32", *subset
    )
    assert pop["samples_sha"] == llm["samples_sha"]
    assert [(r["user_id"], r["target"]) for r in pop_rows] == [(r["user_id"], r["target"]) for r in llm_rows]
    assert pop["n_users"] == pop["n_samples"] <= 3


def test_yaml_then_overrides_and_errors(tmp_path, prepared_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: pop\nmax_users: 1\n")
    out = f"out_dir={tmp_path / 'o'}"
    metrics = evaluate.main([str(cfg), f"prepared={prepared_dir}", out, "max_users=2"])
    assert metrics["n_users"] == 2 and metrics["config"]["max_users"] == 2
    with pytest.raises(ConfigError, match="method must be"):
        evaluate.main(["method=sasrec", f"prepared={prepared_dir}"])
    with pytest.raises(ConfigError, match="split 'dev' not in"):
        evaluate.main(["method=pop", "split=dev", f"prepared={prepared_dir}", f"out_dir={tmp_path / 'o'}"])


def test_static_decoder_gives_the_same_ranks_as_hf(tmp_path, prepared_dir, model_dir):
    # rollout_engine=static writes the reasonings with rrec.engine (what "auto" picks on a GPU): greedy,
    # so the same tokens and, up to float32 rounding, the same states; ranks and reasonings equal
    common = (f"model={model_dir}", "max_new_tokens=5", "batch_size=3", "dtype=float32")
    _, hf = run(tmp_path / "hf", prepared_dir, *common, "rollout_engine=hf")
    _, st = run(tmp_path / "st", prepared_dir, *common, "rollout_engine=static")
    assert [r["rank"] for r in hf] == [r["rank"] for r in st]
    assert [r["reasoning"] for r in hf] == [r["reasoning"] for r in st]
    with pytest.raises(ValueError, match="engine must be one of"):
        run(tmp_path / "bad", prepared_dir, *common, "rollout_engine=vllm")


@pytest.fixture(scope="module")
def stream_model_dir(tmp_path_factory, tokenizer):
    """An rrec folder in the all-position format: stream prompts, base-model items, non-zero ID vectors."""
    from rrec.model import ReasoningRecommender

    items, _ = tiny_tables()
    model = ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), items, max_history=3,
                                 user_format="stream", id_vectors=True)  # fmt: skip
    model.id_vectors.ensure(items["item_id"].tolist())
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        model.id_vectors.weight.copy_(torch.randn(model.id_vectors.weight.shape, generator=g))
    d = tmp_path_factory.mktemp("stream") / "m"
    model.save_pretrained(d)
    return d


@pytest.mark.parametrize("which", ["chat", "stream"])
def test_fast_path_gives_the_ranks_of_the_sample_by_sample_path(tmp_path, prepared_dir, model_dir,
                                                                 stream_model_dir, which):  # fmt: skip
    folder = model_dir if which == "chat" else stream_model_dir
    common = [f"model={folder}", "reasoning=false", "dtype=float32", "batch_size=3"]
    slow, slow_rows = run(tmp_path / "slow", prepared_dir, *common, "fast=false")
    fast, fast_rows = run(tmp_path / "fast", prepared_dir, *common, "fast=true", "batch_size=2")
    assert [r["rank"] for r in fast_rows] == [r["rank"] for r in slow_rows]
    assert [r["tied"] for r in fast_rows] == [r["tied"] for r in slow_rows]
    assert [r["top_k"] for r in fast_rows] == [r["top_k"] for r in slow_rows]
    assert fast["ndcg@10"] == slow["ndcg@10"] and fast["samples_sha"] == slow["samples_sha"]


def test_paired_with_other_per_user_files(tmp_path, prepared_dir, model_dir):
    _, pop_rows = run(tmp_path / "pop", prepared_dir, "method=pop")
    pop_file = tmp_path / "pop" / "run" / "per_user.jsonl"
    llm, rows = run(tmp_path / "llm", prepared_dir, f"model={model_dir}", "reasoning=false", "dtype=float32",
                    f"paired_with=[{pop_file}]")  # fmt: skip
    d = llm["paired_ndcg@10"]["run"]
    # by hand: the mean over samples of NDCG@10(llm) - NDCG@10(pop), 1/log2(rank + 1) inside the top 10
    ndcg = [[1 / math.log2(r["rank"] + 1) if r["rank"] <= 10 else 0.0 for r in rs] for rs in (rows, pop_rows)]
    expected = sum(a - b for a, b in zip(*ndcg, strict=True)) / len(rows)
    assert d["mean"] == pytest.approx(expected, abs=1e-12)
    assert d["ci95"][0] <= d["mean"] + 1e-12 and d["mean"] <= d["ci95"][1] + 1e-12
    other = tmp_path / "other.jsonl"
    other.write_text(pop_file.read_text().splitlines()[0] + "\n")  # one sample, not the same four
    with pytest.raises(ConfigError, match="same samples"):
        run(tmp_path / "bad", prepared_dir, "method=pop", f"paired_with=[{other}]")
    with pytest.raises(ConfigError, match="not a file"):
        run(tmp_path / "bad2", prepared_dir, "method=pop", f"paired_with=[{tmp_path / 'nope.jsonl'}]")
