"""recipes/train_baseline.py end to end on a tiny synthetic prepared dataset (in-process, CPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from rrec.data import PreparedData, save_prepared

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_baseline.py"
_spec = importlib.util.spec_from_file_location("train_baseline", RECIPE)
recipe = importlib.util.module_from_spec(_spec)
sys.modules["train_baseline"] = recipe  # dataclasses resolve the Config annotations through it
_spec.loader.exec_module(recipe)


def split(n: int, offset: int) -> pd.DataFrame:
    # User u{k} has history [i{k % 8}] and target i{(k + 1) % 8}.
    rows = []
    for k in range(offset, offset + n):
        rows.append(
            {
                "user_id": f"u{k % 5}",
                "position": k,
                "history": [f"i{k % 8}"],
                "target": f"i{(k + 1) % 8}",
                "timestamp": float(k),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(8)], "title": [f"t{k}" for k in range(8)]})
    data = PreparedData("toy", items, {"train": split(40, 0), "valid": split(10, 40), "test": split(10, 50)})
    return save_prepared(data, tmp_path_factory.mktemp("data") / "toy")


def run(*args: str) -> dict:
    """The recipe as the command line would run it, minus the process."""
    return recipe.main(recipe.load_config(list(args)))


def test_sasrec_run_writes_metrics_model_and_config(prepared, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: sasrec\nhidden_size: 8\nnum_heads: 1\nlr: 1e-2\n")
    out = tmp_path / "run"
    run(str(config), f"prepared_dir={prepared}", f"output_dir={out}", "epochs=2", "num_threads=1")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/n_samples"] == 10
    assert metrics["test/n_users"] == 5
    assert metrics["train/epochs_run"] == 2
    low, high = metrics["test/ndcg@10_ci95"]
    assert 0.0 <= low <= high <= 1.0
    assert {"test/hit@5", "test/ndcg@20", "test/mrr", "test/hit@10_ci95", "wall_seconds"} <= set(metrics)
    saved = torch.load(out / "model.pt")
    assert saved["kwargs"] == {"hidden_size": 8, "num_heads": 1}
    assert saved["item_ids"] == [f"i{k}" for k in range(8)]
    assert "lr: 0.01" in (out / "config.yaml").read_text()  # YAML's "1e-2" string read as a float


def test_pop_run_from_the_command_line(prepared, tmp_path):
    cmd = [sys.executable, str(RECIPE), "model=pop", f"prepared_dir={prepared}", f"output_dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Train targets (k+1)%8 for k = 0..39 give every item 5 counts; the first histories of u0..u4 add
    # one to i0..i4 (6 each). Test k = 50..59 has history i{k%8} (masked) and target i{(k+1)%8}:
    # targets i3 i4 i5 i6 i7 i0 i1 i2 i3 i4. A count-6 target ties the best and wins ties: rank 1.
    # i5 (history i4): i0..i3 ahead -> rank 5; i6 (history i5) and i7 (history i6): i0..i4 -> rank 6.
    assert metrics["test/hit@5"] == pytest.approx(0.8)
    assert metrics["test/hit@10"] == 1.0
    assert metrics["test/mrr"] == pytest.approx((7 + 1 / 5 + 2 / 6) / 10)


@pytest.mark.parametrize("fails", [False, True])
def test_the_callers_thread_count_is_restored(prepared, tmp_path, fails):
    # The run sets torch's process-wide thread count to num_threads=1; the caller's count (3 here, so it
    # differs from the run's whatever the machine's default) must come back on return and on error (a
    # folder that is not a prepared dataset), or later code in the same process inherits the run's.
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        source = tmp_path / "missing" if fails else prepared
        args = ("model=pop", f"prepared_dir={source}", f"output_dir={tmp_path / 'run'}", "num_threads=1")
        if fails:
            with pytest.raises(ValueError, match="not a prepared dataset"):
                run(*args)
        else:
            run(*args)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=sasrec", "learning_rate=0.1"], "unknown config keys ['learning_rate']"),
        (["model=gru4rec", "num_heads=2"], "['num_heads'] are SASRec settings"),
        (["model=pop", "hidden_size=8"], "pop takes no model settings"),
        (["model=knn"], "model must be pop, sasrec or gru4rec"),
        (["mask_history=maybe"], "mask_history: expected true or false"),
        (["epochs=ten"], "epochs: cannot read 'ten' as int"),
        (["model=pop"], "prepared_dir and output_dir are required"),
    ],
)
def test_bad_configs_are_errors(args, message):
    paths = [] if args == ["model=pop"] else ["prepared_dir=p", "output_dir=o"]
    with pytest.raises(ValueError) as err:
        recipe.load_config([*paths, *args])
    assert message in str(err.value)


def test_config_types_and_nulls():
    cfg = recipe.load_config(["prepared_dir=p", "output_dir=o", "lr=3e-4", "dropout=null", "max_len=50"])
    assert (cfg.lr, cfg.dropout, cfg.max_len, cfg.mask_history) == (3e-4, None, 50, True)
