"""item_index at catalog scale on CPU: build time, search latency, recall@10 against flat, adding 10k items.

Data: N random Gaussian vectors of dim D (default 1M x 576), rows normalised (metric "ip"), and random
unit queries -- the worst case for approximate search, since random data has no cluster structure.
HNSW is built on the first ``--hnsw-items`` rows only (FAISS's HNSW build is the slow part on 2 cores);
its recall is measured against exact search over those same rows.

Timings go through the public ``ItemIndex`` API (input checks, the float32 store and id mapping
included). Latency is the median of several runs: ``--runs-b1`` single queries, ``--runs-b64``
batches of 64. recall@10 = |top-10 ∩ exact top-10| / 10, averaged over the 64 batch queries, where the
exact top-10 comes from numpy (flat must score 1.000 against it).

Run (17 minutes on a shared 2-core machine under a load average of 5-8; 1M x 576 float32 is 2.3 GB, and
an index holds two copies, its store and FAISS's):

    .venv/bin/python bench/item_index_scale.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from item_index import ItemIndex

SECTION = "## item_index at 1M items (CPU)"

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--items", type=int, default=1_000_000)
parser.add_argument("--dim", type=int, default=576)
parser.add_argument("--hnsw-items", type=int, default=150_000)
parser.add_argument("--runs-b1", type=int, default=7)
parser.add_argument("--runs-b64", type=int, default=3)
parser.add_argument("--write", type=Path, default=None, help="markdown file to put the section into")
args = parser.parse_args()
command = " ".join([".venv/bin/python", *sys.argv])
started, load_before = time.time(), os.getloadavg()


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def recall_at_10(got: np.ndarray, want: np.ndarray) -> float:
    pairs = zip(got.tolist(), want.tolist(), strict=True)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))


rng = np.random.default_rng(0)
t0 = time.perf_counter()
x = unit(rng, args.items + 10_000, args.dim)  # the last 10k rows are the items added after the build
queries = unit(rng, 64 + args.runs_b1, args.dim)
batch, singles = queries[:64], queries[64:]
print(f"data: {args.items:,} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)

rows: list[dict] = []
sweep: list[tuple[str, str, float, float]] = []
truth: dict[int, np.ndarray] = {}  # catalog size -> exact top-10 ids of the 64 batch queries


def measure(backend: str, n: int, params: dict, sweep_params: list[dict]) -> None:
    """Build, time searches, compute recall, sweep search-time settings, then time adding 10k items."""
    index = ItemIndex(args.dim, "ip", backend, **params)
    build = timed(lambda: index.add(np.arange(n), x[:n]))
    print(f"{backend}: built {n:,} in {build:.1f} s", flush=True)
    b1 = statistics.median(timed(lambda q=q: index.search(q[None], 10)) for q in singles)
    b64_runs = [timed(lambda: index.search(batch, 10)) for _ in range(args.runs_b64)]
    ids = index.search(batch, 10)[1]
    if n not in truth:  # exact top-10 over the same n items, by numpy (order is irrelevant to recall)
        truth[n] = np.argpartition(-(batch @ x[:n].T), 10, axis=1)[:, :10]
    recall = recall_at_10(ids, truth[n])
    if backend == "ivf" and not index._backend.is_trained:  # below 39 * nlist items: exact, nothing to sweep
        sweep_params = []
    for override in sweep_params:
        backend_obj = index._backend  # search-time settings only; the structure is reused
        if "nprobe" in override:
            backend_obj.ivf.nprobe = override["nprobe"]
        else:
            backend_obj.index.hnsw.efSearch = backend_obj.ef_search = override["ef_search"]
        runs = [timed(lambda: index.search(batch, 10)) for _ in range(args.runs_b64)]
        got = recall_at_10(index.search(batch, 10)[1], truth[n])
        name = ", ".join(f"{k}={v}" for k, v in override.items())
        sweep.append((backend, name, 1000 * statistics.median(runs), got))
        print(f"  {backend} {name}: b64 {sweep[-1][2]:.0f} ms, recall {got:.3f}", flush=True)
    add = timed(lambda: index.add(np.arange(args.items, args.items + 10_000), x[args.items :]))
    shown = ", ".join(f"{k}={v}" for k, v in index.backend_params.items()) or "-"
    rows.append(
        {
            "backend": backend,
            "items": n,
            "params": shown,
            "build": build,
            "b1": 1000 * b1,
            "b64": 1000 * statistics.median(b64_runs),
            "recall": recall,
            "add": add,
        }
    )
    print(f"  {rows[-1]}", flush=True)
    if backend == "flat":  # save / load of the largest catalog (load verifies sha256, rebuilds FAISS)
        tmp = Path(tempfile.mkdtemp())
        rows[-1]["save"] = timed(lambda: index.save(tmp / "idx", fingerprint="bench"))
        rows[-1]["load"] = timed(lambda: ItemIndex.load(tmp / "idx", expected_fingerprint="bench"))
        shutil.rmtree(tmp)


measure("flat", args.items, {}, [])
gc.collect()  # free one index (about 5 GB at 1M) before building the next


def numpy_top10(xq: np.ndarray) -> np.ndarray:
    """Reference only (not a backend): one BLAS matmul over all items, then argpartition."""
    return np.argpartition(-(xq @ x[: args.items].T), 10, axis=1)[:, :10]  # (Q, 10)


reference_b1 = statistics.median(timed(lambda q=q: numpy_top10(q[None])) for q in singles)
reference_b64 = statistics.median(timed(lambda: numpy_top10(batch)) for _ in range(args.runs_b64))
measure("ivf", args.items, {}, [{"nprobe": p} for p in (16, 64, 256)])
gc.collect()
measure("hnsw", args.hnsw_items, {}, [{"ef_search": e} for e in (64, 1024)])

elapsed, load_after = time.time() - started, os.getloadavg()
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown")
flat = rows[0]
lines = [
    SECTION,
    "",
    f"- Machine: {model}, {os.cpu_count()} cores, no GPU; faiss {faiss.__version__}, numpy {np.__version__}, "
    f"Python {platform.python_version()}; {datetime.date.today().isoformat()}.",
    f"- Command: `{command}` (total {elapsed / 60:.1f} min). Load average before / after: "
    f"{load_before[0]:.2f} / {load_after[0]:.2f} (the machine is shared; other jobs add noise).",
    f"- Data: {args.items:,} random unit vectors of dim {args.dim}, metric ip, 64 + {args.runs_b1} random "
    "unit queries. Random data has no cluster structure: the hardest case for ivf and hnsw.",
    f"- Latency: median of {args.runs_b1} single-query searches (batch 1) and {args.runs_b64} searches of "
    "64 queries (batch 64), k=10, through `ItemIndex.search`. Build = `add` of the whole catalog "
    "(ivf: k-means training included). Add 10k = one `add` of 10,000 more items after the build.",
    "",
    "| backend | items | params | build (s) | search b1 (ms) | search b64 (ms) | recall@10 vs exact "
    "| add 10k (s) |",
    "|---|---:|---|---:|---:|---:|---:|---:|",
    *(
        f"| {r['backend']} | {r['items']:,} | {r['params']} | {r['build']:.1f} | {r['b1']:.1f} "
        f"| {r['b64']:.0f} | {r['recall']:.3f} | {r['add']:.2f} |"
        for r in rows
    ),
    "",
    f"hnsw was built on the first {args.hnsw_items:,} items only (build {rows[2]['build']:.0f} s), not on "
    f"{args.items:,}: a full-size HNSW build does not fit this benchmark's ~15-minute budget on 2 cores, so "
    "it was not measured. Its recall is against exact search over those same items.",
    "",
    "For reference (not an ItemIndex backend): numpy `xq @ X.T` + `argpartition` over the same "
    f"{args.items:,} vectors: {1000 * reference_b1:.1f} ms at batch 1, {1000 * reference_b64:.0f} ms at "
    f"batch 64. FAISS {faiss.__version__} uses its BLAS path for flat search only when queries x dim >= "
    f"`distance_compute_blas_threshold` ({faiss.cvar.distance_compute_blas_threshold:,} here, i.e. from "
    f"{-(-faiss.cvar.distance_compute_blas_threshold // args.dim)} queries at dim {args.dim}), so a batch of "
    "64 scans the catalog once per query.",
    "",
    f"Save / load of the flat index at {args.items:,} items (load verifies the sha256 and rebuilds FAISS "
    f"from the vectors): {flat['save']:.1f} s / {flat['load']:.1f} s.",
    "",
    "Search-time settings on the same structures (batch 64):",
    "",
    "| backend | setting | search b64 (ms) | recall@10 |",
    "|---|---|---:|---:|",
    *(f"| {b} | {s} | {ms:.0f} | {r:.3f} |" for b, s, ms, r in sweep),
    "",
]
section = "\n".join(lines)
print("\n" + section)

if args.write is not None:
    text = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
    if SECTION in text:  # replace our section only: up to the next "## " heading or the end
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    args.write.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {args.write}")
