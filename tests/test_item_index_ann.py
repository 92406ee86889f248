"""Approximate backends at their documented defaults reach recall@10 >= 0.95 against exact search.

Data: 5,000 random unit vectors of dim 64 and 50 random unit queries (random data has no cluster
structure, the hard case for IVF and HNSW). recall@10 = |approx top-10 ∩ exact top-10| / 10, averaged.
"""

from __future__ import annotations

import numpy as np
import pytest

from item_index import ItemIndex


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    q = rng.standard_normal((50, 64)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at_10(index, exact, queries):
    got = index.search(queries, 10)[1]
    want = exact.search(queries, 10)[1]
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist(), strict=True)])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(
    ("backend", "params"),
    [
        ("ivf", {}),  # nlist=1024 needs 39,936 items to train: still exact at 5,000
        ("ivf", {"nlist": 64}),  # trains at 2,496 items; default nprobe = ceil(7/8 * 64) = 56
        ("hnsw", {}),  # M=32, ef_construction=100, ef_search=256
    ],
)
def test_default_settings_reach_recall_095(data, metric, backend, params):
    x, queries = data
    exact = ItemIndex(64, metric, "flat")
    index = ItemIndex(64, metric, backend, **params)
    for target in (exact, index):
        target.add(range(5000), x)
    if backend == "ivf":
        assert index._backend.is_trained == ("nlist" in params)
    recall = recall_at_10(index, exact, queries)
    assert recall >= 0.95, f"{backend} {params} {metric}: recall@10 {recall:.3f}"


def test_fewer_probes_lose_recall_on_random_data(data):
    """The reason for the conservative nprobe default: 1/8 of the lists misses many true neighbours."""
    x, queries = data
    exact, index = ItemIndex(64), ItemIndex(64, "ip", "ivf", nlist=64, nprobe=8)
    for target in (exact, index):
        target.add(range(5000), x)
    assert recall_at_10(index, exact, queries) < 0.8
