"""bench/cpu_search.py at toy size: the ratio is ItemIndex's median over numpy's, on the same top k."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def load_cpu_search():
    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_search.py"
    spec = importlib.util.spec_from_file_location("bench_cpu_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_search = load_cpu_search()


def test_numpy_reference_is_the_sorted_top_k():
    # scores of the query [1, 0] against rows [0,1] [3,0] [1,0] [2,0]: 0, 3, 1, 2 -> best first: rows 1, 3, 2
    x = np.array([[0, 1], [3, 0], [1, 0], [2, 0]], np.float32)
    assert cpu_search.numpy_top_k(np.array([[1, 0]], np.float32), x, 3).tolist() == [[1, 3, 2]]


def test_measure_reports_the_ratio_of_medians_on_the_same_results():
    out = cpu_search.measure(n=3000, dim=16, repeats=3)
    runs = out["runs_s"]
    assert len(runs["item_index"]) == len(runs["numpy"]) == 3
    assert out["item_index_s"] == sorted(runs["item_index"])[1] and out["numpy_s"] == sorted(runs["numpy"])[1]
    assert out["cpu_flat_1m_b64_vs_numpy"] == out["item_index_s"] / out["numpy_s"]
    assert out["same_top_k"] is True
    assert (out["n"], out["dim"], out["batch"], out["k"]) == (3000, 16, 64, 10)
    with pytest.raises(ValueError, match="at least 3"):
        cpu_search.measure(n=100, dim=4, repeats=2)
