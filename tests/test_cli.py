"""The ``rrec`` command: help without torch, clear config errors, thin wrappers over the recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rrec import assets
from rrec.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = ["fetch", "prepare", "evaluate", "train-recpo", "like-dislike", "reczero", "recone"]
    for command in [*commands, "make-traces", "recllm-r1", "serve"]:
        assert command in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rrec.cli import app\n"
        "assert CliRunner().invoke(app, ['evaluate', '--help']).exit_code == 0\n"
        "assert 'torch' not in sys.modules, 'rrec --help imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_help_imports_neither_torch_nor_fastapi():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rrec.cli import app\n"
        "result = CliRunner().invoke(app, ['serve', '--help'])\n"
        "assert result.exit_code == 0 and '--data' in result.output\n"
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_unknown_key_is_a_clear_error():
    result = runner.invoke(app, ["evaluate", "max_user=3"])
    assert result.exit_code == 2
    assert "unknown config keys ['max_user']" in result.output
    assert "Traceback" not in result.output


def test_evaluate_missing_config_file():
    result = runner.invoke(app, ["evaluate", "no/such/config.yaml", "method=pop"])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def write_atomic(directory: Path) -> None:
    """RecBole atomic files: 3 items, 2 users with 4 interactions each (6 samples)."""
    directory.mkdir()
    (directory / "tiny.item").write_text(
        "item_id:token\ttitle:token_seq\n1\tAlpha\n2\tBeta\n3\tGamma\n", encoding="utf-8"
    )
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += [f"{u}\t{i}\t4\t{10 * t + int(u)}" for u in ("1", "2") for t, i in enumerate("1231")]
    (directory / "tiny.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_prepare_writes_reuses_and_refuses_a_different_config(tmp_path):
    write_atomic(tmp_path / "atomic")
    out = tmp_path / "prepared"
    args = ["prepare", f"dataset=recbole:{tmp_path / 'atomic'}:tiny", f"out_dir={out}"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    # 2 users x 3 samples = 6; temporal 80/10/10 cuts at floor(4.8) = 4 and floor(5.4) = 5: 4 / 1 / 1
    assert "tiny: 3 items, 2 users, 8 interactions" in first.output
    assert (out / "test.parquet").exists() and (out / "prepare.json").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reusing" in again.output
    other = runner.invoke(app, [*args, "split=loo"])
    assert other.exit_code == 2 and "force=true" in other.output
    forced = runner.invoke(app, [*args, "split=loo", "force=true"])
    assert forced.exit_code == 0 and "reusing" not in forced.output


def test_fetch_prints_where_things_are(monkeypatch, tmp_path):
    calls = []

    def fake_fetch(datasets, model=True, force=False):
        calls.append((datasets, model, force))
        return {name: tmp_path / name for name in (*datasets, "model")}

    monkeypatch.setattr(assets, "fetch", fake_fetch)
    monkeypatch.setenv("RREC_CACHE", str(tmp_path))
    result = runner.invoke(app, ["fetch", "--ml-1m", "--force"])
    assert result.exit_code == 0, result.output
    assert calls == [(("ml-100k", "ml-1m"), True, True)]
    assert str(tmp_path / "ml-1m") in result.output and f"cache: {tmp_path}" in result.output


def test_paired_compares_per_sample_files(tmp_path):
    rows_a = [{"user_id": "u1", "target": "1", "rank": 1}, {"user_id": "u2", "target": "2", "rank": 3}]
    rows_b = [{"user_id": "u1", "target": "1", "rank": 2}, {"user_id": "u2", "target": "2", "rank": 30}]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "per_user.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(
        app, ["paired", str(tmp_path / "a" / "per_user.jsonl"), str(tmp_path / "b" / "per_user.jsonl")]
    )
    assert result.exit_code == 0, result.output
    # by hand: ((1 - 1/log2 3) + (1/log2 4 - 0)) / 2 = (0.36907 + 0.5) / 2
    assert "NDCG@10 +0.4345" in result.output
    (tmp_path / "c.jsonl").write_text(json.dumps(rows_b[0]) + "\n")
    bad = runner.invoke(app, ["paired", str(tmp_path / "a" / "per_user.jsonl"), str(tmp_path / "c.jsonl")])
    assert bad.exit_code == 2 and "same samples" in bad.output


def test_paired_subset_pairs_on_a_samples_only(tmp_path):
    # A scored u2 and u1 (a subset, its own order); B is a whole split with a re-consumed item of u1
    rows_a = [{"user_id": "u2", "target": "2", "rank": 3}, {"user_id": "u1", "target": "1", "rank": 1},
              {"user_id": "u1", "target": "1", "rank": 1}]  # fmt: skip
    rows_b = [{"user_id": "u1", "target": "1", "rank": 2}, {"user_id": "u3", "target": "5", "rank": 1},
              {"user_id": "u1", "target": "1", "rank": 1},
              {"user_id": "u2", "target": "2", "rank": 30}]  # fmt: skip
    for name, rows in (("a", rows_a), ("b", rows_b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    plain = runner.invoke(app, ["paired", a, b])
    assert plain.exit_code == 2 and "same samples" in plain.output
    result = runner.invoke(app, ["paired", a, b, "--subset"])
    assert result.exit_code == 0, result.output
    # by hand: u2: 1/log2 4 - 0 = 0.5; u1 first: 1 - 1/log2 3 = 0.36907; u1 second: 1 - 1 = 0
    assert "NDCG@10 +0.2897" in result.output  # (0.5 + 0.36907 + 0) / 3
    (tmp_path / "b.jsonl").write_text(json.dumps(rows_b[0]) + "\n")
    missing = runner.invoke(app, ["paired", a, b, "--subset"])
    assert missing.exit_code == 2 and "missing from the other file" in missing.output
