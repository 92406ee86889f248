"""Flat exact search on CPU: ``ItemIndex`` against numpy's ``xq @ X.T`` + ``argpartition``, side by side.

``cpu_flat_1m_b64_vs_numpy`` = (median time of ``ItemIndex(dim, "ip", "flat").search(xq, 10)`` for a
batch of 64 queries) / (median time of numpy's ``xq @ X.T``, ``argpartition`` of the top 10 and a sort of
those 10, on the same float32 data, the same thread settings, in the same run). The two are timed
alternately after one warm-up each, ``repeats`` times (at least 3). Below 1 ItemIndex is faster.

Data: N random Gaussian vectors of dim D, rows normalised (seed 0), and 64 random unit queries. Memory:
the data plus the index's own float32 copy, 2 x N x D x 4 bytes (4.6 GB at the default 1M x 576), plus
numpy's (64, N) score matrix.

``--ivf-nprobe 16,64,...`` instead times ItemIndex's ivf backend (default nlist) at each nprobe against
flat on the same data, alternately, at batch 64 and batch 1 (recall needs clustered data: see
``bench/item_index_scale.py``; search time does not, so random data is used here).

    .venv/bin/python bench/cpu_search.py                # 1M x 576: the issue's number
    .venv/bin/python bench/cpu_search.py --n 100000     # a quick check
    .venv/bin/python bench/cpu_search.py --n 100000 --ivf-nprobe 16,32,64,128,256,1024
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np

from item_index import ItemIndex

BATCH, K = 64, 10


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) float32 random unit vectors, drawn in chunks (no float64 copy of the whole)."""
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65_536):
        chunk = rng.standard_normal((min(65_536, n - s), dim), dtype=np.float32)
        out[s : s + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def numpy_top_k(xq: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """The reference: (Q, k) row numbers of the k best inner products, best first."""
    scores = xq @ x.T  # (Q, N)
    top = np.argpartition(-scores, k, axis=1)[:, :k]  # (Q, k), unordered
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu if ln.startswith("Flags")), [])
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f),
        "thread_env": threads,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def measure(n: int, dim: int, repeats: int) -> dict:
    """Time both searches on the same data; return the ratio with its details.

    Args:
        n: N, catalog size.
        dim: D.
        repeats: timed runs of each side (at least 3), alternating.

    Returns:
        ``{"cpu_flat_1m_b64_vs_numpy": ItemIndex median / numpy median, ...}`` with both medians and all
        runs in seconds, ``same_top_k`` (the two returned the same rows), N, D, batch, k and the machine.
    """
    if repeats < 3:
        raise ValueError(f"repeats must be at least 3, got {repeats}")
    rng = np.random.default_rng(0)
    x = unit_rows(rng, n, dim)
    xq = unit_rows(rng, BATCH, dim)
    index = ItemIndex(dim, "ip", "flat")
    index.add(np.arange(n), x)
    ours_ids = index.search(xq, K)[1]  # warm-up of each side
    numpy_ids = numpy_top_k(xq, x, K)
    runs: dict[str, list[float]] = {"item_index": [], "numpy": []}
    for _ in range(repeats):
        for name, fn in (
            ("item_index", lambda: index.search(xq, K)),
            ("numpy", lambda: numpy_top_k(xq, x, K)),
        ):
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    ours, ref = statistics.median(runs["item_index"]), statistics.median(runs["numpy"])
    return {
        "cpu_flat_1m_b64_vs_numpy": ours / ref,
        "item_index_s": ours,
        "numpy_s": ref,
        "runs_s": runs,
        "same_top_k": bool((ours_ids == numpy_ids).all()),
        "n": n,
        "dim": dim,
        "batch": BATCH,
        "k": K,
        "machine": machine(),
    }


def measure_ivf(n: int, dim: int, nprobes: list[int], repeats: int) -> dict:
    """Median search times (s) of flat and of ivf at each nprobe, timed alternately on the same index.

    Returns:
        ``{"flat": {"b64": s, "b1": s}, "ivf": {nprobe: {"b64": s, "b1": s}}, ...}``; batch 1 is the
        median over ``repeats`` single queries.
    """
    rng = np.random.default_rng(0)
    x, xq = unit_rows(rng, n, dim), unit_rows(rng, BATCH, dim)
    flat, ivf = ItemIndex(dim, "ip", "flat"), ItemIndex(dim, "ip", "ivf")
    for index in (flat, ivf):
        index.add(np.arange(n), x)
    del x

    def timed(index: ItemIndex, queries: np.ndarray) -> float:
        t0 = time.perf_counter()
        index.search(queries, K)
        return time.perf_counter() - t0

    runs: dict = {"flat": {"b64": [], "b1": []}, **{p: {"b64": [], "b1": []} for p in nprobes}}
    for r in range(repeats):
        for p in nprobes:
            ivf._backend.ivf.nprobe = p  # a search-time setting on the trained structure
            for key, queries in (("b64", xq), ("b1", xq[r : r + 1])):
                runs[p][key].append(timed(ivf, queries))
                runs["flat"][key].append(timed(flat, queries))
    med = {name: {key: statistics.median(v) for key, v in sides.items()} for name, sides in runs.items()}
    return {"flat": med.pop("flat"), "ivf": med, "n": n, "dim": dim, "nlist": ivf.backend_params["nlist"],
            "machine": machine()}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ivf-nprobe", default=None, help="comma-separated nprobe values: time ivf vs flat")
    args = parser.parse_args()
    if args.ivf_nprobe:
        nprobes = [int(p) for p in args.ivf_nprobe.split(",")]
        print(json.dumps(measure_ivf(args.n, args.dim, nprobes, args.repeats), indent=2))
    else:
        print(json.dumps(measure(args.n, args.dim, args.repeats), indent=2))
