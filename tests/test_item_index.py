"""ItemIndex: search parity with a brute-force numpy oracle, catalog changes, errors, the torch path.

Exact settings used throughout: ``flat``; ``ivf`` with ``nprobe == nlist`` (every list scanned);
``hnsw`` with ``ef_search`` larger than the number of graph nodes (every reachable node visited).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from item_index import ItemIndex, ItemIndexError
from tests.tolerance import f32_tol

EXACT = {"flat": {}, "ivf": {"nlist": 2, "nprobe": 2}, "hnsw": {"M": 16, "ef_search": 2000}}


def brute_force(vectors, ids, xq, k, metric, exclude=None):
    """The oracle: float64 scores of every item, stable sort (ties by catalog order), excluded -> -inf.

    Rows are padded to k like ``ItemIndex.search``: score -inf, id -1 (int ids) or None (str ids).
    """
    ids = list(ids)
    pad = -1 if ids and isinstance(ids[0], int) else None
    x = np.asarray(vectors, np.float64).reshape(len(ids), -1)
    q = np.asarray(xq, np.float64)
    s = q @ x.T if metric == "ip" else -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (Q, N)
    for i, ex in enumerate(exclude or []):
        s[i, np.isin(np.array(ids, dtype=object), list(ex or []))] = -np.inf
    s = np.concatenate([s, np.full((len(q), k), -np.inf)], axis=1)  # (Q, N + K): room for padding
    all_ids = np.array([*ids, *[pad] * k], dtype=object)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (Q, K)
    top = np.take_along_axis(s, order, axis=1)
    return top, np.where(np.isinf(top), pad, all_ids[order])


def score_tol(vectors, xq, metric: str) -> float:
    """Float32 rounding of a FAISS score (tests/tolerance.py): a sum of d products bounded by |x| |q|
    (ip), or for L2, computed as |x|^2 + |q|^2 - 2 x.q, of terms bounded by (|x| + |q|)^2."""
    x, q = np.asarray(vectors, np.float64), np.asarray(xq, np.float64)
    d = q.shape[-1]
    xn, qn = np.linalg.norm(x.reshape(-1, d), axis=1).max(), np.linalg.norm(q.reshape(-1, d), axis=1).max()
    return f32_tol(d, xn * qn if metric == "ip" else (xn + qn) ** 2)


def assert_matches_oracle(got, vectors, ids, xq, k, metric, exclude=None, tol=None):
    """``got = (scores, ids)`` equals the oracle: scores to float32 rounding, ids exactly except at ties.

    Where an id differs from the oracle's, it must be a distinct, non-excluded item whose own score equals
    the oracle's score at that rank (an exact or near tie that FAISS broke the other way).
    """
    scores, got_ids = got
    ref_scores, ref_ids = brute_force(vectors, ids, xq, k, metric, exclude)
    tol = score_tol(vectors, xq, metric) if tol is None else tol
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=tol)
    lookup = dict(zip(list(ids), np.asarray(vectors, np.float64), strict=True))
    for q in range(len(got_ids)):
        row = [i for i in got_ids[q].tolist() if i not in (-1, None)]
        assert len(set(row)) == len(row), f"query {q}: repeated ids {row}"
        excluded = set((exclude[q] or []) if exclude else [])
        for j in np.flatnonzero(got_ids[q] != ref_ids[q]):
            item = got_ids[q, j]
            assert item in lookup and item not in excluded, f"query {q} rank {j}: bad id {item}"
            diff = lookup[item] - xq[q]
            own = lookup[item] @ xq[q] if metric == "ip" else -(diff @ diff)
            assert abs(own - ref_scores[q, j]) <= tol, f"query {q} rank {j}: {item} != {ref_ids[q, j]}"


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- worked example
# Items (insertion order a, b, c, d): a=[1,0,0] b=[0,2,0] c=[1,1,1] d=[3,0,1]; query q=[1,1,0].
# ip:  a=1, b=2, c=2, d=3          -> d, b, c, a (b before c: tie broken by insertion order)
# l2:  |q-a|^2=1, |q-b|^2=1+1=2, |q-c|^2=1, |q-d|^2=4+1+1=6 -> scores -1, -2, -1, -6 -> a, c, b, d
ITEMS = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 1], [3, 0, 1]], dtype=np.float32)
QUERY = np.array([[1, 1, 0]], dtype=np.float32)


@pytest.mark.parametrize("backend", list(EXACT))
def test_worked_example_ip_and_l2(backend):
    for metric, want_ids, want_scores in [
        ("ip", ["d", "b", "c", "a"], [3, 2, 2, 1]),
        ("l2", ["a", "c", "b", "d"], [-1, -1, -2, -6]),
    ]:
        index = ItemIndex(3, metric, backend, **EXACT[backend])
        index.add(["a", "b", "c", "d"], ITEMS)
        scores, ids = index.search(QUERY, k=4)
        assert ids.tolist() == [want_ids] and scores.tolist() == [want_scores]
        assert scores.dtype == np.float32 and ids.dtype == object


def test_worked_example_exclude_and_padding():
    index = ItemIndex(3, "ip")
    index.add([10, 11, 12, 13], ITEMS)  # a=10, b=11, c=12, d=13
    scores, ids = index.search(QUERY, k=3, exclude=[[13, 999]])  # 999 is not in the index: ignored
    assert ids.tolist() == [[11, 12, 10]] and scores.tolist() == [[2, 2, 1]]
    scores, ids = index.search(QUERY, k=6)  # 4 items: two padding slots
    assert ids.dtype == np.int64 and ids.tolist() == [[13, 11, 12, 10, -1, -1]]
    assert scores.tolist() == [[3, 2, 2, 1, -np.inf, -np.inf]]
    str_index = ItemIndex(3, "ip")
    str_index.add(["a", "b"], ITEMS[:2])
    assert str_index.search(QUERY, k=3)[1].tolist() == [["b", "a", None]]
    assert ItemIndex(3).search(QUERY, k=2)[1].tolist() == [[None, None]]  # empty, no id type yet


# --------------------------------------------------------------------------- parity with brute force
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nq", [1, 7, 40])  # ties and batch sizes up to 300: tests/test_item_index_exact.py
def test_flat_equals_brute_force(metric, nq):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    xq = rng.standard_normal((nq, 32)).astype(np.float32)
    ids = [f"item{i}" for i in range(1000)]
    index = ItemIndex(32, metric)
    index.add(ids, x)
    ref_scores, ref_ids = brute_force(x, ids, xq, 10, metric)
    gaps = -np.diff(brute_force(x, ids, xq, 11, metric)[0], axis=1)
    assert gaps.min() > 1e-3  # no near-ties in this data, so ids must match exactly
    scores, got = index.search(xq, 10)
    assert (got == ref_ids).all()
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=score_tol(x, xq, metric))
    # with exclusions: the first 3 true neighbours of each query (and an unknown id) are left out
    exclude = [[*row[:3].tolist(), "nope"] for row in ref_ids]
    ref_scores, ref_ids = brute_force(x, ids, xq, 10, metric, exclude)
    scores, got = index.search(xq, 10, exclude=exclude)
    assert (got == ref_ids).all() and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=score_tol(x, xq, metric))


def test_search_accepts_torch_queries_and_matches_numpy():
    rng = np.random.default_rng(1)
    x, xq = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    index = ItemIndex(8)
    index.add(range(50), x)
    s_np, i_np = index.search(xq, 5)
    s_t, i_t = index.search(torch.from_numpy(xq), 5)
    assert (i_np == i_t).all() and (s_np == s_t).all()


def test_ivf_trains_at_39_per_list_and_is_exact_with_all_lists_probed():
    rng = np.random.default_rng(2)
    x, xq = rng.standard_normal((200, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    index = ItemIndex(16, "l2", "ivf", nlist=4, nprobe=4)  # trains at 39 * 4 = 156 items
    index.add(range(155), x[:155])
    assert not index._backend.is_trained
    index.add([155], x[155:156])
    assert index._backend.is_trained
    index.add(range(156, 200), x[156:])
    assert_matches_oracle(index.search(xq, 10), x, range(200), xq, 10, "l2")


def test_hnsw_rebuilds_when_stale_nodes_outnumber_live_ones():
    rng = np.random.default_rng(3)
    x, xq = rng.standard_normal((100, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    index = ItemIndex(8, "ip", "hnsw", ef_search=500)
    index.add(range(100), x)
    index.remove(range(40))  # 40 stale <= 60 live: filtered, no rebuild
    assert index._backend.n_stale == 40
    assert_matches_oracle(index.search(xq, 10), x[40:], range(40, 100), xq, 10, "ip")
    index.remove(range(40, 70))  # 70 stale > 30 live: the next search rebuilds from the store
    scores, ids = index.search(xq, 10)
    assert index._backend.n_stale == 0 and index._backend.index.ntotal == 30
    assert_matches_oracle((scores, ids), x[70:], range(70, 100), xq, 10, "ip")


# --------------------------------------------------------------------------- catalog changes
@pytest.mark.parametrize("backend", list(EXACT))
def test_churned_index_equals_index_built_from_scratch(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    index = ItemIndex(16, "ip", backend, **EXACT[backend])
    index.add(range(300), x)
    index.remove(range(0, 100, 10))  # 10 removed
    new = rng.standard_normal((10, 16)).astype(np.float32)
    index.add(range(1000, 1010), new)  # 10 added (at the end of `ids`)
    changed = rng.standard_normal((10, 16)).astype(np.float32)
    index.replace(range(200, 210), changed)  # 10 replaced (keep their places)
    final_ids = [i for i in range(300) if not (i < 100 and i % 10 == 0)] + list(range(1000, 1010))
    final = np.concatenate([x, new])[[i if i < 300 else 300 + i - 1000 for i in final_ids]]
    final[[final_ids.index(i) for i in range(200, 210)]] = changed
    assert index.ids == final_ids and len(index) == 300
    assert np.array_equal(index.vectors_for(final_ids), final)
    scratch = ItemIndex(16, "ip", backend, **EXACT[backend])
    scratch.add(final_ids, final)
    xq = rng.standard_normal((20, 16)).astype(np.float32)
    scores, ids = index.search(xq, 10)
    scratch_scores, scratch_ids = scratch.search(xq, 10)
    assert (ids == scratch_ids).all()
    np.testing.assert_allclose(scores, scratch_scores, rtol=0, atol=score_tol(final, xq, "ip"))
    assert_matches_oracle((scores, ids), final, final_ids, xq, 10, "ip")


def test_ids_keep_insertion_order_and_membership():
    index = ItemIndex(2)
    index.add(["x", "y", "z"], np.eye(3, 2, dtype=np.float32))
    index.replace(["x"], np.ones((1, 2), np.float32))
    index.remove(["y"])
    index.add(["y"], np.zeros((1, 2), np.float32))  # re-added: goes to the end
    assert index.ids == ["x", "z", "y"] and len(index) == 3
    assert "x" in index and "w" not in index and 1 not in index and [1] not in index
    assert index.vectors_for(["x", "y"]).tolist() == [[1, 1], [0, 0]]


# --------------------------------------------------------------------------- errors
def test_errors_name_what_is_wrong():
    index = ItemIndex(4)
    index.add([1, 2, 3], np.zeros((3, 4), np.float32))
    cases = [
        (lambda: index.add([3, 4], np.zeros((2, 4), np.float32)), r"duplicate ids .*\[3\]"),
        (lambda: index.add([5, 5], np.zeros((2, 4), np.float32)), r"duplicate ids .*\[5\]"),
        (lambda: index.remove([2, 9]), r"unknown ids \[9\]"),
        (lambda: index.replace([8], np.zeros((1, 4), np.float32)), r"unknown ids \[8\]"),
        (lambda: index.vectors_for([7]), r"unknown ids \[7\]"),
        (lambda: index.position_of([6]), r"unknown ids \[6\]"),
        (lambda: index.add([4], np.zeros((1, 5), np.float32)), r"shape \(1, 5\); expected \(1, 4\)"),
        (lambda: index.add([4, 5], np.zeros((1, 4), np.float32)), r"shape \(1, 4\); expected \(2, 4\)"),
        (lambda: index.search(np.zeros((2, 3), np.float32), 1), r"shape \(2, 3\); expected \(n, 4\)"),
        (lambda: index.add([4, "a"], np.zeros((2, 4), np.float32)), r"mixed int and str"),
        (lambda: index.add(["a"], np.zeros((1, 4), np.float32)), r"holds int ids; got str ids \['a'\]"),
        (lambda: index.add([True], np.zeros((1, 4), np.float32)), r"bad ids \[True\]"),
        (lambda: index.add([-1], np.zeros((1, 4), np.float32)), r"bad ids \[-1\]"),
        (lambda: index.add("ab", np.zeros((2, 4), np.float32)), r"ids must be a sequence"),
        (lambda: index.search(np.full((1, 4), np.inf, np.float32), 1), r"rows \[0\] .*NaN or inf"),
        (lambda: index.search(np.zeros((1, 4), np.float32), 0), r"k must be a positive int"),
        (lambda: index.search(np.zeros((2, 4), np.float32), 1, exclude=[[1]]), r"one entry per query \(2\)"),
    ]
    for call, message in cases:
        with pytest.raises(ItemIndexError, match=message):
            call()
    nan = np.zeros((3, 4), np.float32)
    nan[1, 2] = np.nan
    with pytest.raises(ItemIndexError, match=r"ids \[11\] .*NaN or inf"):
        index.add([10, 11, 12], nan)
    assert index.ids == [1, 2, 3]  # failed calls change nothing
    assert issubclass(ItemIndexError, ValueError)


def test_constructor_errors():
    for kwargs, message in [
        ({"dim": 0}, r"dim must be a positive int"),
        ({"dim": 4, "metric": "cos"}, r"unknown metric 'cos'"),
        ({"dim": 4, "backend": "lsh"}, r"unknown backend 'lsh'"),
        ({"dim": 4, "backend": "ivf", "nlists": 8}, r"no parameters \['nlists'\]"),
        ({"dim": 4, "backend": "ivf", "nlist": 8, "nprobe": 9}, r"nprobe=9 is larger than nlist=8"),
        ({"dim": 4, "backend": "hnsw", "M": 0}, r"M=0 must be a positive int"),
    ]:
        with pytest.raises(ItemIndexError, match=message):
            ItemIndex(**kwargs)


# --------------------------------------------------------------------------- torch path
def test_as_tensor_rows_follow_ids_and_position_of_maps_ids_to_rows():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    index = ItemIndex(3)
    index.add(["a", "b", "c", "d", "e", "f"], x)
    index.remove(["b", "d"])  # ids: a c e f -> rows 0 1 2 3
    table = index.as_tensor()
    assert table.dtype == torch.float32 and table.shape == (4, 3)
    assert np.array_equal(table.numpy(), x[[0, 2, 4, 5]])
    assert index.position_of(["f", "a", "e"]).tolist() == [3, 0, 2]
    assert index.position_of(["f"]).dtype == np.int64
    table[0] = 100.0  # a copy: the index is unchanged
    assert index.vectors_for(["a"]).tolist() == [x[0].tolist()]
    assert index.as_tensor(dtype=torch.bfloat16).dtype == torch.bfloat16
    # scores through the tensor equal the index's own exact search
    q = rng.standard_normal((1, 3)).astype(np.float32)
    logits = torch.from_numpy(q) @ index.as_tensor().T  # (1, N)
    top = torch.topk(logits, 2).indices[0].tolist()
    assert [index.ids[i] for i in top] == index.search(q, 2)[1][0].tolist()


# --------------------------------------------------------------------------- catalog churn (property)
OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "replace"]), st.integers(1, 30), st.integers(0, 2**31 - 1)),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("backend", list(EXACT))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, metric=st.sampled_from(["ip", "l2"]))
def test_catalog_churn_keeps_mapping_and_exact_search(backend, ops, metric):
    dim, next_id = 6, 0
    index = ItemIndex(dim, metric, backend, **EXACT[backend])  # ivf trains once 78 items are present
    model: dict[int, np.ndarray] = {}  # the expected catalog, in insertion order
    for kind, count, seed in ops:
        rng = np.random.default_rng(seed)
        if kind == "add":
            new = list(range(next_id, next_id + count))
            next_id += count
            vecs = rng.standard_normal((count, dim)).astype(np.float32)
            index.add(new, vecs)
            model.update(zip(new, vecs, strict=True))
        elif model:
            chosen = rng.choice(list(model), size=min(count, len(model)), replace=False).tolist()
            if kind == "remove":
                index.remove(chosen)
                for i in chosen:
                    del model[i]
            else:
                vecs = rng.standard_normal((len(chosen), dim)).astype(np.float32)
                index.replace(chosen, vecs)
                model.update(zip(chosen, vecs, strict=True))
        assert index.ids == list(model)
        if model:
            assert np.array_equal(index.vectors_for(list(model)), np.stack(list(model.values())))
            xq = rng.standard_normal((3, dim)).astype(np.float32)
            exclude = [list(model)[:2], [], None]
            got = index.search(xq, 5, exclude=exclude)
            assert_matches_oracle(got, np.stack(list(model.values())), list(model), xq, 5, metric, exclude)


def test_rank_candidates_worked_example():
    from item_index.ranking import rank_candidates

    # one query, 4 candidates from FAISS (l2 distances, best first) with keys 7, 3, 5 and -1 (not found);
    # key k sits at store row k // 2 (7 -> 3, 3 -> 1, 5 -> 2). Key 5 is excluded.
    dist = np.array([[1.0, 2.0, 2.0, 0.0]], np.float32)
    keys = np.array([[7, 3, 5, -1]])
    scores, rows = rank_candidates(dist, keys, lambda k: k // 2, "l2", 4, [{5}])
    # l2 scores are -dist: -1 (row 3), -2 (row 1); then two padding slots
    assert scores.tolist() == [[-1.0, -2.0, -np.inf, -np.inf]] and rows.tolist() == [[3, 1, -1, -1]]
    # ip: equal scores 2.0 for keys 3 and 5 are ordered by row (1 before 2), whatever FAISS's order
    scores, rows = rank_candidates(dist[:, :3], keys[:, [0, 2, 1]], lambda k: k // 2, "ip", 2, [set()])
    assert scores.tolist() == [[2.0, 2.0]] and rows.tolist() == [[1, 2]]
