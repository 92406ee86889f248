"""notebooks/quickstart.ipynb runs top to bottom on a tiny RecPO run."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from recipes import train_recpo
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, tokenizer, monkeypatch):
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "out_dir": str(tmp_path / "run"),
        "steps": 2, "users_per_step": 2, "num_generations": 2, "max_completion_length": 4,
        "eval_users": 2, "eval_max_new_tokens": 4, "dtype": "float32", "tensorboard": False,
    }  # fmt: skip
    train_recpo.main([f"{k}={v}" for k, v in args.items()])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "store notebooks without outputs"
    )
    monkeypatch.setenv("RREC_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    try:
        client.execute()
    except Exception as e:  # nbclient raises CellExecutionError with the cell's traceback
        pytest.fail(f"notebook failed: {e}")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert os.environ["RREC_RUN"].endswith("run")
