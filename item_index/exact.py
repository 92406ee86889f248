"""Exact top-k over the float32 store: BLAS scores in blocks, then a float64 re-score of the few candidates.

Why not FAISS's ``IndexFlat``: FAISS 1.15 scores with one BLAS matrix product only when the batch is
large (``distance_compute_blas_threshold`` = 128,000 = queries x dim, i.e. from 223 queries at dim 576);
below that it scans the catalog once per query, 6.6x slower than numpy's ``xq @ X.T`` at batch 64 over
1M x 576 (BENCHMARKS.md). Here every batch goes through BLAS (numpy's ``matmul``), block by block.

Exactness. A float32 matrix product is not exact, and its rounding may differ with a row's place in
the block (BLAS kernels treat edge tiles apart), so two equal vectors could get scores a bit apart and
a tie would be broken by the BLAS kernel.
The rule kept here is the one :func:`item_index.ranking.rank_candidates` states: the top ``k`` by score,
equal scores by store row (insertion order). It is made exact in two steps:

1. Candidates: the float32 score ``s32`` of a row is within ``e`` of its exact score (``e`` below, from
   the standard bound on a sum of D products, |fl(x.q) - x.q| <= gamma_D sum|x_i q_i|, gamma_D =
   D u / (1 - D u), u = 2^-24, plus a term for underflow, times two for safety). A row can only enter
   the top k if its ``s32`` is at least (k-th best exact score so far) - e, or (k-th best ``s32`` of one
   block) - 2e; rows below both are dropped, all others are candidates.
2. Re-score: each candidate's score is recomputed in float64 from the float32 vectors (a product of
   two float32 numbers is exact in float64; the sum is numpy's fixed-order pairwise sum, so equal
   vectors get bit-equal scores), and the running top k is kept by (float64 score desc, row asc). The
   cuts are rounded to the block's float type; the factor two in ``e`` covers that rounding.

Scores come back as float32 of the float64 score: ``x.q`` for ``"ip"``, ``-|x - q|^2`` for ``"l2"``
(computed as the sum of squared differences, not from norms). For ``"l2"`` the BLAS pass scores
``2 x.q - |x|^2`` (the query's own ``|q|^2`` does not change the order), with ``|x|^2`` from the caller.

Memory: one (Qb, Rb) score block of about ``BLOCK`` = 2^22 float32 values (16 MB), a boolean mask and a
partition copy of the same shape, and the candidates (about Qb x K rows of D float64, re-scored
``RESCORE_ROWS`` at a time); nothing of size N x Q. A catalog or query so large that float32 products
could overflow (``(max |x| + max |q|)^2 > 1e30``) is scored in float64 blocks instead. Many exact
ties at the top (say thousands of identical vectors) are correct but slow: each is a candidate and is
re-scored.

Shapes: N store rows, D dim, Q queries, Qb / Rb queries / rows per block, K results, C candidates.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1 << 22  # score-block elements (Qb x Rb): 16 MB of float32
MAX_QUERY_BLOCK = 1024  # Qb at most this, so Rb = BLOCK // Qb is at least 4096
CAP = 256  # more than max(CAP, 2K) candidates for a query in one block: cut at the block's K-th best - 2e
RESCORE_ROWS = 8192  # candidates re-scored at a time: (8192, D) float64, 38 MB at D = 576
U32 = 2.0**-24  # float32 unit round-off
TINY = 2.0**-126  # smallest normal float32: a bound on what one underflowing product can lose


def _rounding_bound(dim: int, metric: str, xmax: float, qnorm: np.ndarray) -> np.ndarray:
    """(Qb,) float64 bound ``e`` on |float32 block score - exact score| (see the module docstring)."""
    gamma = (dim + 2) * U32 / (1 - (dim + 2) * U32)  # gamma_{D+2}: the products' sum, the l2 shift
    # ip: |x.q| <= sum |x_i q_i| <= |x| |q|; l2: 2 x.q and |x|^2 are both bounded by (|x| + |q|)^2
    scale = xmax * qnorm if metric == "ip" else (xmax + qnorm) ** 2
    return 2 * (gamma * scale + (dim + 4) * TINY)


def _exact_scores(xc: np.ndarray, qc: np.ndarray, metric: str) -> np.ndarray:
    """(C,) float64 scores of candidate rows ``xc`` (C, D) against their queries ``qc`` (C, D)."""
    x, q = xc.astype(np.float64), qc.astype(np.float64)
    if metric == "ip":
        return (x * q).sum(axis=1)  # (C,) exact products, fixed-order sum
    diff = x - q  # (C, D), exact unless the two differ by a factor above 2^29 (then rounded once)
    return -(diff * diff).sum(axis=1)


def _merge(
    best_s: np.ndarray, best_r: np.ndarray, qi: np.ndarray, s: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Running top K: (Qb, K) scores / rows plus C candidates (query qi, score s, row r) -> new (Qb, K)."""
    nq, k = best_s.shape
    q_all = np.concatenate([np.repeat(np.arange(nq), k), qi])  # (Qb*K + C,)
    s_all = np.concatenate([best_s.ravel(), s])
    r_all = np.concatenate([best_r.ravel(), r])
    order = np.lexsort((r_all, -s_all, q_all))  # by query, then best score, then earliest row
    q_sorted = q_all[order]
    first = np.searchsorted(q_sorted, np.arange(nq))  # (Qb,) start of each query's run
    keep = order[np.arange(len(order)) - first[q_sorted] < k]  # (Qb*K,) the first K of each run
    return s_all[keep].reshape(nq, k), r_all[keep].reshape(nq, k)


def _candidates(
    scores: np.ndarray, cut: np.ndarray, bound: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (query, column) pairs of a score block that may still enter the top K.

    Args:
        scores: (Qb, Rb) block scores, -inf for removed or excluded rows.
        cut: (Qb,) the running cut, (K-th best exact score) - e, or the dtype's lowest value while fewer
            than K rows are held.
        bound: (Qb,) ``e``.
        k: K.

    Returns:
        ``(qi, ci)``: (C,) query and column of each candidate: block score >= the cut, where a query with
        many such columns (or none held yet) is cut further at its block K-th best score - 2e.
    """
    lowest = np.finfo(scores.dtype).min
    active = np.flatnonzero(scores.max(axis=1) >= cut)  # (A,) queries with a candidate in this block
    if not len(active):
        return active, active
    sub = scores if len(active) == len(scores) else scores[active]  # (A, Rb)
    cut, bound = cut[active], bound[active]  # (A,)
    rb, many = scores.shape[1], max(CAP, 2 * k)
    fresh = np.flatnonzero(cut == lowest) if rb > many else []  # (F,) fewer than K rows held yet
    if len(fresh):
        kth = np.partition(sub if len(fresh) == len(sub) else sub[fresh], rb - k, axis=1)[:, rb - k]  # (F,)
        cut[fresh] = np.maximum(kth - 2 * bound[fresh], lowest)
    hits = sub >= cut[:, None]  # (A, Rb)
    over = np.flatnonzero(np.count_nonzero(hits, axis=1) > many) if rb > many else []  # (O,)
    if len(over):  # many rows above the running cut (a block of better rows, or ties)
        kth = np.partition(sub[over], rb - k, axis=1)[:, rb - k]  # (O,) the block's K-th best
        cut[over] = np.maximum(cut[over], kth - 2 * bound[over])
        hits[over] = sub[over] >= cut[over, None]
    ai, ci = np.nonzero(hits)  # (C,)
    return active[ai], ci


def _search_block(
    store: np.ndarray,
    sq_norms: np.ndarray,
    dead: np.ndarray,
    xq: np.ndarray,
    k: int,
    metric: str,
    excluded: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top K for one block of queries: (Qb, K) float64 scores and int64 rows (-inf / N as padding).

    Args mirror :func:`top_k`; ``dead`` holds the removed rows (ascending) and ``excluded`` the (query,
    row) pairs to leave out, sorted by row.
    """
    n, dim = store.shape
    nq = len(xq)
    qnorm = np.sqrt(np.square(xq, dtype=np.float64).sum(axis=1))  # (Qb,)
    q_shift = qnorm**2 if metric == "l2" else np.zeros(nq)  # an l2 block score is the exact score + |q|^2
    # float32 products of huge vectors overflow (to inf, then NaN for l2): such catalogs score in float64
    wide = (np.sqrt(sq_norms.max()) + qnorm.max()) ** 2 > 1e30
    dtype = np.float64 if wide else np.float32
    rb = int(min(n, max(1, BLOCK // nq), max(1, BLOCK // dim) if wide else n))  # Rb
    xq_b, buf = xq.astype(dtype), np.empty(nq * rb, dtype=dtype)
    best_s = np.full((nq, k), -np.inf)  # (Qb, K) float64
    best_r = np.full((nq, k), n, dtype=np.int64)  # (Qb, K); row n (past the end) sorts after real rows
    ex_q, ex_r = excluded
    for r0 in range(0, n, rb):
        r1 = min(r0 + rb, n)
        block = store[r0:r1]  # (Rb, D)
        out = buf[: nq * (r1 - r0)].reshape(nq, r1 - r0)
        scores = np.matmul(xq_b, block.T.astype(dtype, copy=False), out=out)  # (Qb, Rb)
        if metric == "l2":  # 2 x.q - |x|^2
            scores *= 2
            scores -= sq_norms[r0:r1].astype(dtype)
        lo, hi = np.searchsorted(dead, [r0, r1])
        scores[:, dead[lo:hi] - r0] = -np.inf
        lo, hi = np.searchsorted(ex_r, [r0, r1])
        scores[ex_q[lo:hi], ex_r[lo:hi] - r0] = -np.inf
        bound = _rounding_bound(dim, metric, float(np.sqrt(sq_norms[r0:r1].max())), qnorm)  # (Qb,)
        cut = np.maximum(best_s[:, -1] + q_shift - bound, np.finfo(dtype).min).astype(dtype)  # (Qb,)
        qi, ci = _candidates(scores, cut, bound, k)  # (C,)
        if len(qi):
            chunks = range(0, len(qi), RESCORE_ROWS)
            exact = [
                _exact_scores(block[ci[c : c + RESCORE_ROWS]], xq[qi[c : c + RESCORE_ROWS]], metric)
                for c in chunks
            ]
            best_s, best_r = _merge(best_s, best_r, qi, np.concatenate(exact), ci + r0)
    return best_s, best_r


def top_k(
    store: np.ndarray,
    sq_norms: np.ndarray,
    live: np.ndarray,
    xq: np.ndarray,
    k: int,
    metric: str,
    excluded_rows: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` store rows per query, by score and then by row.

    Args:
        store: (N, D) float32 vectors, removed rows included.
        sq_norms: (N,) float64 squared norms of the rows, ``|x|^2``.
        live: (N,) bool, False for removed rows (never returned).
        xq: (Q, D) float32 queries.
        k: K >= 1.
        metric: ``"ip"`` or ``"l2"``.
        excluded_rows: Q int arrays of rows to leave out for each query.

    Returns:
        ``(scores, rows)``: (Q, K) float32 (higher is better; -inf for padding) and (Q, K) int64 rows
        (-1 for padding, when fewer than K rows are live and not excluded).

    Example:
        >>> store = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)  # rows 0 and 2 are equal
        >>> s, r = top_k(store, (store**2).sum(1), np.ones(3, bool), np.ones((1, 2), np.float32), 2, "ip",
        ...              [np.array([], np.int64)])
        >>> s.tolist(), r.tolist()  # all three score 1: the two earliest rows
        ([[1.0, 1.0]], [[0, 1]])
    """
    n = len(store)
    dead = np.flatnonzero(~live)  # (N - live,) ascending
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    rows = np.full((len(xq), k), -1, dtype=np.int64)
    kept = min(k, n - len(dead))  # beyond the live rows there is only padding
    if kept == 0:
        return scores, rows
    qb = min(len(xq), MAX_QUERY_BLOCK)
    for q0 in range(0, len(xq), qb):
        q1 = min(q0 + qb, len(xq))
        ex_r = np.concatenate([np.asarray(e, np.int64) for e in excluded_rows[q0:q1]])  # (E,)
        ex_q = np.repeat(np.arange(q1 - q0), [len(e) for e in excluded_rows[q0:q1]])  # (E,)
        by_row = np.argsort(ex_r, kind="stable")
        excluded = (ex_q[by_row], ex_r[by_row])
        block_s, block_r = _search_block(store, sq_norms, dead, xq[q0:q1], kept, metric, excluded)
        found = block_r < n  # (Qb, kept)
        scores[q0:q1, :kept] = np.where(found, block_s, -np.inf)
        rows[q0:q1, :kept] = np.where(found, block_r, -1)
    return scores, rows
