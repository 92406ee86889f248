"""Flat search (item_index/exact.py): equal to an exact oracle, ties included, at any batch size.

The oracle scores every (query, item) pair with ``math.fsum`` of the float64 products (each product of two
float32 numbers is exact in float64, and fsum rounds the sum once), so equal vectors get equal scores and
exact ties stay exact; it then sorts by (score desc, insertion position asc). Small blocks
(``exact.BLOCK``) and a small candidate cap (``exact.CAP``) force the multi-block merge and the block-level
cut on catalogs of a few hundred items.
"""

from __future__ import annotations

import doctest
import inspect
import math
import tracemalloc

import numpy as np
import pytest

import item_index
from item_index import ItemIndex, exact


def exact_oracle(vectors, ids, xq, k, metric, exclude=None):
    """(Q, K) float64 scores and ids of the exact top k, ties by position; padded with -inf / -1 / None."""
    pad = -1 if ids and isinstance(ids[0], int) else None
    scores, out = [], []
    for q, query in enumerate(np.asarray(xq, np.float64)):
        left_out = set((exclude[q] or []) if exclude else [])
        ranked = []
        for pos, (item, vec) in enumerate(zip(ids, np.asarray(vectors, np.float64), strict=True)):
            if item in left_out:
                continue
            score = math.fsum(vec * query) if metric == "ip" else -math.fsum((vec - query) ** 2)
            ranked.append((-score, pos, item))
        ranked.sort()
        top = ranked[:k] + [(np.inf, 0, pad)] * (k - len(ranked[:k]))
        scores.append([-s for s, _, _ in top])
        out.append([i for _, _, i in top])
    return np.array(scores), np.array(out, dtype=object)


@pytest.fixture(params=["default", "small_blocks"])
def blocks(request, monkeypatch):
    """Default block sizes, or 40-row blocks with a candidate cap of 1 (``blocks(nq)`` sets them)."""

    def set_for(nq: int) -> None:
        if request.param == "small_blocks":
            monkeypatch.setattr(exact, "BLOCK", 40 * nq)  # Rb = BLOCK // Qb = 40 rows
            monkeypatch.setattr(exact, "CAP", 1)  # a block cut whenever a query has > 2K candidates
            monkeypatch.setattr(exact, "RESCORE_ROWS", 5)

    return set_for


# --------------------------------------------------------------------------- worked example
def test_ties_at_the_cut_go_to_the_earliest_inserted_worked_example():
    # a=[1,0] b=[0,1] c=[1,0] d=[1,1] e=[1,0] f=[0,1]; query q=[1,0]
    # ip:  a=1 b=0 c=1 d=1 e=1 f=0 -> four-way tie at 1: a, c, d, e (insertion order), then b, f
    # l2:  |q-a|^2=0 |q-b|^2=2 |q-c|^2=0 |q-d|^2=1 |q-e|^2=0 |q-f|^2=2 -> a, c, e, d, b, f
    items = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [1, 0], [0, 1]], np.float32)
    q = np.array([[1, 0]], np.float32)
    index = ItemIndex(2, "ip")
    index.add(list("abcdef"), items)
    assert index.search(q, 3)[1].tolist() == [["a", "c", "d"]]  # e ties with them but came later
    assert index.search(q, 5)[1].tolist() == [["a", "c", "d", "e", "b"]]
    l2 = ItemIndex(2, "l2")
    l2.add(list("abcdef"), items)
    scores, ids = l2.search(q, 4)
    assert ids.tolist() == [["a", "c", "e", "d"]] and scores.tolist() == [[0, 0, 0, -1]]
    # remove a: c, d, e lead; replace c by [0,0] (it keeps its place, row 2): ip c=0 now ties with b and f
    index.remove(["a"])
    index.replace(["c"], np.zeros((1, 2), np.float32))
    scores, ids = index.search(q, 5)  # d=1, e=1, then b, c, f all 0 in insertion order
    assert ids.tolist() == [["d", "e", "b", "c", "f"]] and scores.tolist() == [[1, 1, 0, 0, 0]]
    # leaving out d and b: e, c, f, then padding (5 items left, 2 excluded, k=4)
    scores, ids = index.search(q, 4, exclude=[["d", "b"]])
    assert ids.tolist() == [["e", "c", "f", None]] and scores.tolist() == [[1, 0, 0, -np.inf]]


def test_huge_vectors_whose_float32_products_overflow_still_rank_exactly():
    # x = 2^63 + offsets of 2^60 (all exact in float32); query q = 2^63 * [1,1,1,1]. A float32 x.q or |x|^2
    # is 4 * 2^126 = 2^128: inf, so a float32 l2 score 2 x.q - |x|^2 would be NaN. The distances are small:
    # item0 offset [1,0,0,0] -> -(2^60)^2 = -2^120; item1 [0,0,0,0] -> 0; item2 [2,0,0,0] -> -4 * 2^120;
    # item3 [0,1,0,0] -> -2^120. Order: 1, 0, 3 (ties with 0, later), 2.
    base, step = 2.0**63, 2.0**60
    offsets = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0]])
    index = ItemIndex(4, "l2")
    index.add([0, 1, 2, 3], (base + step * offsets).astype(np.float32))
    scores, ids = index.search(np.full((1, 4), base, np.float32), 4)
    assert ids.tolist() == [[1, 0, 3, 2]]
    assert scores.tolist() == [[0.0, -(2.0**120), -(2.0**120), -4 * 2.0**120]]


# --------------------------------------------------------------------------- equal to the oracle
def tied_catalog(rng, n=200, dim=8):
    """Half small-integer vectors (many distinct vectors with equal scores), half copies of 10 random
    float vectors (equal vectors at scattered positions), shuffled; int ids in insertion order."""
    ints = rng.integers(-2, 3, size=(n // 2, dim)).astype(np.float32)
    protos = rng.standard_normal((10, dim)).astype(np.float32)
    copies = protos[rng.integers(10, size=n - n // 2)]
    return np.concatenate([ints, copies])[rng.permutation(n)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nq", [1, 7, 64, 300])
def test_flat_equals_exact_oracle_with_ties_removals_and_exclusions(blocks, metric, nq):
    blocks(nq)
    rng = np.random.default_rng(nq)
    x = tied_catalog(rng)
    index = ItemIndex(8, metric)
    index.add(list(range(200)), x)
    gone = rng.choice(200, size=30, replace=False).tolist()
    index.remove(gone)  # 30 removed: still in the store (not compacted), masked out
    ids = [i for i in range(200) if i not in gone]
    vecs = x[ids]
    # queries: small integers (even rows; exact ties among the integer items) and copies of catalog vectors
    xq = np.where(
        np.arange(nq)[:, None] % 2 == 0, rng.integers(-2, 3, size=(nq, 8)), x[rng.integers(200, size=nq)]
    )
    xq = xq.astype(np.float32)
    exclude = [rng.choice([*ids, 999], size=3).tolist() if q % 3 else None for q in range(nq)]
    full_scores, full_ids = exact_oracle(vecs, ids, xq, 250, metric, exclude)  # 250 > the 170 items left
    tied = (full_scores[0, :-1] == full_scores[0, 1:]) & np.isfinite(full_scores[0, 1:])  # (249,)
    k_tie = 1 + int(np.flatnonzero(tied)[0])  # query 0's ranks k_tie and k_tie + 1 tie: a tie across the cut
    for k in (1, 5, k_tie, 250):
        scores, got = index.search(xq, k, exclude=exclude)
        assert got.tolist() == full_ids[:, :k].tolist()
        assert scores.tolist() == full_scores[:, :k].astype(np.float32).tolist()  # float32 of the exact score


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force_on_random_data_across_many_blocks(monkeypatch, metric):
    """3,000 random items in 16-row blocks per query block of 64: ids equal the float64 brute force."""
    monkeypatch.setattr(exact, "BLOCK", 64 * 16)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    xq = rng.standard_normal((64, 24)).astype(np.float32)
    index = ItemIndex(24, metric)
    index.add(list(range(3000)), x)
    s = xq.astype(np.float64) @ x.astype(np.float64).T  # (Q, N)
    if metric == "l2":
        s = 2 * s - (x.astype(np.float64) ** 2).sum(1) - (xq.astype(np.float64) ** 2).sum(1)[:, None]
    want = np.argsort(-s, axis=1, kind="stable")[:, :10]  # (Q, 10)
    assert (index.search(xq, 10)[1] == want).all()


def test_search_memory_is_blocked_not_queries_times_items(monkeypatch):
    """300 queries x 60,000 items: a full score matrix is 72 MB of float32; the blocked search stays far
    below it (BLOCK = 2^18 values: a 1 MB score block, its mask and partition copy, the candidates)."""
    monkeypatch.setattr(exact, "BLOCK", 1 << 18)
    rng = np.random.default_rng(3)
    index = ItemIndex(8, "ip")
    index.add(list(range(60_000)), rng.standard_normal((60_000, 8)).astype(np.float32))
    xq = rng.standard_normal((300, 8)).astype(np.float32)
    tracemalloc.start()
    index.search(xq, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_exact_doctest():
    assert doctest.testmod(exact).failed == 0


# --------------------------------------------------------------------------- the public API is unchanged
def test_public_api_signatures_are_unchanged():
    assert item_index.__all__ == ["ItemIndex", "ItemIndexError"]
    want = {
        "__init__": "(self, dim: 'int', metric: 'str' = 'ip', backend: 'str' = 'flat', "
        "**backend_params: 'Any') -> 'None'",
        "add": "(self, ids: 'Any', vectors: 'Any') -> 'None'",
        "remove": "(self, ids: 'Any') -> 'None'",
        "replace": "(self, ids: 'Any', vectors: 'Any') -> 'None'",
        "vectors_for": "(self, ids: 'Any') -> 'np.ndarray'",
        "position_of": "(self, ids: 'Any') -> 'np.ndarray'",
        "as_tensor": "(self, device: 'Any' = None, dtype: 'Any' = None) -> 'Any'",
        "search": "(self, xq: 'Any', k: 'int', exclude: 'list[Any] | None' = None) "
        "-> 'tuple[np.ndarray, np.ndarray]'",
        "save": "(self, path: 'str | Path', fingerprint: 'str | None' = None) -> 'None'",
        "load": "(path: 'str | Path', expected_fingerprint: 'str | None' = None, "
        "expected_dim: 'int | None' = None) -> 'ItemIndex'",
    }
    assert {name: str(inspect.signature(getattr(ItemIndex, name))) for name in want} == want
    index = ItemIndex(3, "l2")
    assert (index.dim, index.metric, index.backend, index.backend_params) == (3, "l2", "flat", {})
    index.add([5, 6], np.eye(2, 3, dtype=np.float32))
    scores, ids = index.search(np.zeros((2, 3), np.float32), 3)  # both items at squared distance 1
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids.tolist() == [[5, 6, -1]] * 2 and scores.tolist() == [[-1, -1, -np.inf]] * 2
