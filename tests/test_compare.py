"""recipes/compare.py end to end on a tiny prepared dataset and a tiny random LLM (CPU, seconds)."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import torch

from recipes import compare, evaluate
from recipes import train_baseline as train_baseline_recipe
from rrec.baselines import Popularity, popularity_counts, score_split
from rrec.config import ConfigError, load_config
from rrec.data import load_prepared
from rrec.evaluation import select_samples
from rrec.metrics import paired_bootstrap, per_sample_ndcg
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
COLUMNS = ["method", "eval set", "Hit@5", "Hit@10", "Hit@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]
COLUMNS += ["NDCG@10 95% CI", "NDCG@10 - pop (paired 95% CI)", "samples", "users", "wall s", "CPU s"]
SMALL = ["epochs=1", "sasrec={hidden_size: 8, num_heads: 1, inner_size: 16}", "max_new_tokens=4"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    # 12 users x 7 samples = 84; temporal 80/10/10 -> 9 test samples from 4 users (the latest targets)
    return tiny_prepared(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, tokenizer) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("lm") / "tiny-lm", copy.deepcopy(tokenizer))


@pytest.fixture(scope="module")
def first(tmp_path_factory, prepared, llm_dir):
    """pop + sasrec trained for one epoch + the tiny LLM (with reasoning), into a results file that
    already has another engineer's section."""
    tmp = tmp_path_factory.mktemp("compare")
    results_md = tmp / "results.md"
    results_md.write_text("# Results\n\n## Zero-shot\n\nsomeone else's numbers\n")
    argv = [f"prepared={prepared}", "methods=[pop,sasrec]", f"checkpoints={{tiny: {llm_dir}}}", *SMALL]
    argv += [f"out_dir={tmp / 'out'}", f"results_md={results_md}"]
    return compare.main(argv), results_md, tmp / "out", argv


def by_key(results: dict) -> dict[tuple[str, str], dict]:
    return {(r["name"], r["eval_set"]): r for r in results["rows"]}


def test_table_has_the_rows_and_columns(first, prepared):
    results, _, out, _ = first
    rows = by_key(results)
    # ID baselines on the full split and again on the LLM's subset; the LLM on the subset only.
    expected = [
        ("pop", "full"),
        ("pop", "subset"),
        ("sasrec", "full"),
        ("sasrec", "subset"),
        ("tiny", "subset"),
    ]
    assert list(rows) == expected
    data = load_prepared(prepared)
    test = data.splits["test"]
    subset = select_samples(test, None, 1, 0)  # every test user, earliest sample each
    assert rows["pop", "full"]["metrics"]["n_samples"] == len(test) == 9
    for name in ("pop", "sasrec", "tiny"):
        m = rows[name, "subset"]["metrics"]
        assert m["n_samples"] == len(subset) == m["n_users"] == test["user_id"].nunique() == 4
    lines = results["table"].splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == COLUMNS
    assert len(lines) == 2 + 5  # header, rule, 5 rows; full rows first
    assert [line.split("|")[2].strip() for line in lines[2:]] == ["full"] * 2 + ["subset"] * 3
    for (name, eval_set), row in rows.items():
        m = row["metrics"]
        assert json.loads((out / eval_set / f"{name}.json").read_text())["ndcg@10"] == m["ndcg@10"]
        low, high = m["ndcg@10_ci95"]
        assert 0.0 <= low <= m["ndcg@10"] + 1e-12 and m["ndcg@10"] <= high + 1e-12 <= 1.0 + 1e-12
        assert m["hit@5"] <= m["hit@10"] <= m["hit@20"] and m["ndcg@5"] <= m["ndcg@10"] <= m["ndcg@20"]
        assert row["wall_s"] >= 0 and row["cpu_s"] >= 0
    assert (out / "sasrec" / "model.pt").exists() and (out / "table.md").exists()


def test_pop_rows_equal_direct_scoring(first, prepared):
    """Parity: compare's pop rows are score_split on the same samples with the history masked."""
    rows = by_key(first[0])
    data = load_prepared(prepared)
    item_ids = data.items["item_id"].tolist()
    pop = Popularity(popularity_counts(data.splits["train"], item_ids))
    test = data.splits["test"]
    for eval_set, samples in (("full", test), ("subset", select_samples(test, None, 1, 0))):
        ranks = score_split(pop, samples, item_ids, mask_history=True)
        hit10 = float((ranks <= 10).double().mean())
        assert rows["pop", eval_set]["metrics"]["hit@10"] == pytest.approx(hit10)


def test_rows_are_compared_with_pop_on_the_same_samples(first, prepared):
    """Each non-pop row ranked here carries NDCG@10 - pop with its paired interval: recomputed here from
    the saved SASRec model and the popularity counts on the same samples."""
    results, _, out, _ = first
    rows = by_key(results)
    data = load_prepared(prepared)
    item_ids = data.items["item_id"].tolist()
    pop = Popularity(popularity_counts(data.splits["train"], item_ids))
    sasrec, _ = compare.load_baseline(out / "sasrec", item_ids, "cpu")
    test = data.splits["test"]
    for eval_set, samples in (("full", test), ("subset", select_samples(test, None, 1, 0))):
        a = per_sample_ndcg(score_split(sasrec, samples, item_ids, mask_history=True), 10)
        b = per_sample_ndcg(score_split(pop, samples, item_ids, mask_history=True), 10)
        d = paired_bootstrap(a, b, samples["user_id"].astype(str).tolist())
        vs = rows["sasrec", eval_set]["metrics"]["ndcg@10_vs_pop"]
        assert vs == {"mean": d.mean, "ci95": [d.low, d.high], "frac_positive": d.frac_positive}
        assert "ndcg@10_vs_pop" not in rows["pop", eval_set]["metrics"]
    tiny = rows["tiny", "subset"]["metrics"]
    assert set(tiny["ndcg@10_vs_pop"]) == {"mean", "ci95", "frac_positive"}
    assert 0.0 <= tiny["tied_frac"] <= 1.0  # an LLM row says how often its target was tied
    cells = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line.split("|")[11].strip()
             for line in results["table"].splitlines()[2:]}  # fmt: skip
    assert cells["pop/full"] == cells["pop/subset"] == "-"
    vs = rows["sasrec", "full"]["metrics"]["ndcg@10_vs_pop"]
    assert cells["sasrec/full"] == f"{vs['mean']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]"


def test_markdown_is_appended_with_the_command(first):
    results, results_md, _, argv = first
    text = results_md.read_text()
    assert text.startswith("# Results\n\n## Zero-shot\n\nsomeone else's numbers\n")  # untouched
    block = text.split("someone else's numbers\n", 1)[1]
    assert block.startswith("\n## tiny\n\n### Comparison: pop, sasrec, tiny (")
    assert f"- Command: `{results['command']}`" in block
    assert results["command"].endswith(shlex.join(argv))
    assert "-m recipes.compare" in results["command"]
    assert f"torch {torch.__version__}" in block and "cores" in block and "load average" in block
    assert results["table"] in block
    assert "- tiny (subset): item table built in" in block


def test_checkpoints_and_precomputed_metrics_are_reused(first, prepared, tmp_path):
    """A baseline run folder is scored, not retrained; metrics files from rrec evaluate and
    train_baseline land in the eval set their samples match."""
    results, _, out, _ = first
    pop_eval = tmp_path / "pop-eval"
    evaluate.main([f"prepared={prepared}", "method=pop", "samples_per_user=1", f"out_dir={pop_eval}"])
    pop_train = tmp_path / "pop-train"
    train_baseline_recipe.main(
        train_baseline_recipe.load_config(
            [f"prepared_dir={prepared}", f"output_dir={pop_train}", "model=pop", "num_threads=1"]
        )
    )
    argv = [f"prepared={prepared}", "methods=[]", f"checkpoints={{sasrec: {out / 'sasrec'}}}"]
    argv += [f"metrics={{pop-eval: {pop_eval / 'metrics.json'}, pop-train: {pop_train / 'metrics.json'}}}"]
    argv += [f"out_dir={tmp_path / 'out'}", f"results_md={tmp_path / 'r.md'}", "epochs=0"]
    again = by_key(compare.main(argv))
    before = by_key(results)
    expected = [("sasrec", "full"), ("sasrec", "subset"), ("pop-eval", "subset"), ("pop-train", "full")]
    assert list(again) == expected
    assert again["sasrec", "full"]["metrics"]["mrr"] == before["sasrec", "full"]["metrics"]["mrr"]
    assert "not retrained" in again["sasrec", "full"]["note"]
    assert again["pop-eval", "subset"]["metrics"]["ndcg@10"] == pytest.approx(
        before["pop", "subset"]["metrics"]["ndcg@10"]
    )
    assert again["pop-train", "full"]["metrics"]["ndcg@10"] == pytest.approx(
        before["pop", "full"]["metrics"]["ndcg@10"]
    )
    assert (tmp_path / "r.md").read_text().startswith("# Results\n")


def test_append_markdown_writes_the_dataset_heading_once(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\n## MovieLens-100K, temporal split\n\ntheirs")  # no final newline
    compare.append_markdown(path, "## MovieLens-100K, temporal split", "### Mine\n")
    compare.append_markdown(path, "## Amazon'18 Industrial & Scientific", "### Mine too\n")
    compare.append_markdown(path, "## MovieLens-100K, temporal split", "### Again\n")
    assert path.read_text() == (
        "# Results\n\n## MovieLens-100K, temporal split\n\ntheirs\n\n### Mine\n"
        "\n## Amazon'18 Industrial & Scientific\n\n### Mine too\n"
        "\n## MovieLens-100K, temporal split\n\n### Again\n"
    )
    new = tmp_path / "new.md"
    compare.append_markdown(new, "## X", "### Y\n")
    assert new.read_text().startswith("# Results\n") and new.read_text().endswith("\n## X\n\n### Y\n")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "unknown config keys"),
        ("methods=[pop,bert4rec]", "bert4rec"),
        ("sasrec={heads: 2}", "unknown model settings"),
        ("checkpoints={x: /nonexistent/run}", "not a folder"),
        ("metrics={x: /nonexistent/metrics.json}", "not a file"),
    ],
)
def test_bad_config_is_an_error(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        compare.main([override, f"out_dir={tmp_path}", "append=false"])
    assert not any(tmp_path.iterdir())  # refused before any work


def test_comparison_table_formats_a_row():
    metrics = {"hit@5": 0.1, "hit@10": 0.2, "hit@20": 0.3, "ndcg@5": 0.05, "ndcg@10": 0.0865}
    metrics |= {"ndcg@20": 0.1, "mrr": 0.07, "ndcg@10_ci95": [0.07, 0.1], "n_samples": 9906, "n_users": 166}
    table = compare.comparison_table([compare.Row("sasrec", "full", metrics, 812.4, 5.04, "")])
    row = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    metric_cells = ["0.1000", "0.2000", "0.3000", "0.0500", "0.0865", "0.1000", "0.0700"]
    # 812.4 s -> "812" (whole seconds from 10 s on), 5.04 s -> "5.0" (one decimal below 10 s)
    assert row == ["sasrec", "full", *metric_cells, "[0.0700, 0.1000]", "-", "9,906", "166", "812", "5.0"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("compare_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_say_how_to_run(path):
    assert path.read_text().startswith(
        "# .venv/bin/python -m recipes.compare " + f"recipes/configs/{path.name}"
    )
    cfg = load_config(compare.Config, path)
    assert set(cfg.methods) <= {*compare.BASELINES, *compare.ZERO_SHOT, *cfg.checkpoints, *cfg.metrics}
