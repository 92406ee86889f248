"""item_index at catalog scale on CPU: build time, search latency, recall@10 against flat, adding 10k items.

Data (``--data random``, the default): N random Gaussian vectors of dim D (default 1M x 576), rows
normalised (metric "ip"), and random unit queries -- the worst case for approximate search, since random
data has no cluster structure. ``--data clustered``: each vector is one of ``--centres`` random unit
centres plus Gaussian noise of norm about ``--noise``, normalised; queries are drawn the same way (a
crude stand-in for LLM item embeddings, which are far from uniform).

Timings go through the public ``ItemIndex`` API (input checks, the float32 store and id mapping
included). Build = one ``add`` of the whole catalog: wall time, process CPU time (``time.process_time``,
all threads) and the 1-minute load average before / after are recorded, since the machine is shared and
wall times are inflated by other jobs. Latency is the median of several runs: ``--runs-b1`` single
queries, ``--runs-b64`` batches of 64. recall@10 = |top-10 ∩ exact top-10| / 10, averaged over the 64
batch queries, where the exact top-10 comes from numpy (flat must score 1.000 against it).

The data lives in a memory-mapped temporary file (page cache, not process memory), so that only the
index's copies are held in memory: its float32 store (2.3 GB at 1M x 576), plus FAISS's for ivf / hnsw.

Runs (``--backends`` picks a subset; with ``--write``, a subset run replaces only its own rows, and a
``--data clustered`` run writes its own subsection):

    .venv/bin/python bench/item_index_scale.py --write BENCHMARKS.md                    # all, 17 min
    .venv/bin/python bench/item_index_scale.py --backends hnsw --write BENCHMARKS.md
    .venv/bin/python bench/item_index_scale.py --data clustered --backends ivf,hnsw --write BENCHMARKS.md
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
CLUSTERED = "### Clustered synthetic data"
BACKENDS = ("flat", "ivf", "hnsw")

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--items", type=int, default=1_000_000)
parser.add_argument("--dim", type=int, default=576)
parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of flat,ivf,hnsw")
parser.add_argument("--hnsw-items", type=int, default=None, help="build hnsw on the first N items only")
parser.add_argument("--hnsw-M", type=int, default=None, help="default: ItemIndex's")
parser.add_argument("--hnsw-ef-construction", type=int, default=None, help="default: ItemIndex's")
parser.add_argument("--data", choices=("random", "clustered"), default="random")
parser.add_argument("--centres", type=int, default=4096)
parser.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to a centre")
parser.add_argument("--nprobe", default="16,64,256", help="ivf nprobe values to sweep, comma-separated")
parser.add_argument("--runs-b1", type=int, default=7)
parser.add_argument("--runs-b64", type=int, default=3)
parser.add_argument("--write", type=Path, default=None, help="markdown file to put the section into")
args = parser.parse_args()
backends = [b for b in BACKENDS if b in args.backends.split(",")]
if not backends or set(args.backends.split(",")) - set(BACKENDS):
    parser.error(f"--backends: expected a comma-separated subset of {','.join(BACKENDS)}")
hnsw_items = args.items if args.hnsw_items is None else min(args.hnsw_items, args.items)
hnsw_params = {k: v for k, v in (("M", args.hnsw_M), ("ef_construction", args.hnsw_ef_construction)) if v}
command = " ".join([".venv/bin/python", *sys.argv])
started, load_before = time.time(), os.getloadavg()


def unit(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def draw(rng: np.random.Generator, out: np.ndarray, centres: np.ndarray | None) -> None:
    """Fill out (N, D) with unit vectors in chunks: random directions, or centre + noise (centres given)."""
    for s in range(0, len(out), 65_536):
        chunk = rng.standard_normal((min(65_536, len(out) - s), out.shape[1]), dtype=np.float32)
        if centres is not None:
            chunk *= args.noise / np.sqrt(out.shape[1])
            chunk += centres[rng.integers(len(centres), size=len(chunk))]
        out[s : s + len(chunk)] = unit(chunk)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def recall_at_10(got: np.ndarray, want: np.ndarray) -> float:
    pairs = zip(got.tolist(), want.tolist(), strict=True)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))


rng = np.random.default_rng(0)
centres = None
if args.data == "clustered":
    centres = unit(rng.standard_normal((args.centres, args.dim), dtype=np.float32))
tmpdir = Path(tempfile.mkdtemp(prefix="item_index_scale_"))
t0 = time.perf_counter()
# the last 10k rows are the items added after the build
x = np.lib.format.open_memmap(tmpdir / "x.npy", "w+", np.float32, (args.items + 10_000, args.dim))
draw(rng, x, centres)
queries = np.empty((64 + args.runs_b1, args.dim), dtype=np.float32)
draw(rng, queries, centres)
batch, singles = queries[:64], queries[64:]
print(f"data ({args.data}): {args.items:,} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)

rows: list[dict] = []
sweep: list[tuple[str, str, float, float]] = []
truth: dict[int, np.ndarray] = {}  # catalog size -> exact top-10 ids of the 64 batch queries


def exact_top10(xq: np.ndarray, n: int) -> np.ndarray:
    """Exact top-10 ids (Q, 10) over the first n items by numpy (order is irrelevant to recall)."""
    return np.argpartition(-(xq @ x[:n].T), 10, axis=1)[:, :10]


def measure(backend: str, n: int, params: dict, sweep_params: list[dict]) -> None:
    """Build, time searches, compute recall, sweep search-time settings, then time adding 10k items."""
    index = ItemIndex(args.dim, "ip", backend, **params)
    load0, cpu0 = os.getloadavg()[0], time.process_time()
    build = timed(lambda: index.add(np.arange(n), x[:n]))
    cpu, load1 = time.process_time() - cpu0, os.getloadavg()[0]
    print(
        f"{backend}: built {n:,} in {build:.1f} s wall, {cpu:.1f} s CPU, load {load0:.2f} -> {load1:.2f}",
        flush=True,
    )
    b1 = statistics.median(timed(lambda q=q: index.search(q[None], 10)) for q in singles)
    b64_runs = [timed(lambda: index.search(batch, 10)) for _ in range(args.runs_b64)]
    ids = index.search(batch, 10)[1]
    if n not in truth:
        truth[n] = exact_top10(batch, n)
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
            "cpu": cpu,
            "load": (load0, load1),
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
        rows[-1]["load_time"] = timed(lambda: ItemIndex.load(tmp / "idx", expected_fingerprint="bench"))
        shutil.rmtree(tmp)


reference: tuple[float, float] | None = None
for backend in backends:
    if backend == "flat":
        measure("flat", args.items, {}, [])
    elif backend == "ivf":
        if reference is None and args.data == "random":  # numpy over the whole catalog, for reference
            b1 = statistics.median(timed(lambda q=q: exact_top10(q[None], args.items)) for q in singles)
            b64 = statistics.median(
                timed(lambda: exact_top10(batch, args.items)) for _ in range(args.runs_b64)
            )
            reference = (b1, b64)
        measure("ivf", args.items, {}, [{"nprobe": int(p)} for p in args.nprobe.split(",")])
    else:
        measure("hnsw", hnsw_items, hnsw_params, [{"ef_search": e} for e in (64, 1024)])
    gc.collect()  # free one index (about 5 GB at 1M) before building the next
shutil.rmtree(tmpdir)  # the mapping of x stays valid until exit

elapsed, load_after = time.time() - started, os.getloadavg()
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown")
machine = (
    f"{model}, {os.cpu_count()} cores, no GPU; faiss {faiss.__version__}, numpy {np.__version__}, "
    f"Python {platform.python_version()}; {datetime.date.today().isoformat()}"
)
run = (
    f"`{command}` (total {elapsed / 60:.1f} min; load average before / after: "
    f"{load_before[0]:.2f} / {load_after[0]:.2f})"
)
HEADER = [
    "| backend | items | params | build wall (s) | build CPU (s) | load avg at build start / end "
    "| search b1 (ms) | search b64 (ms) | recall@10 vs exact | add 10k (s) |",
    "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
]
SWEEP_HEADER = ["| backend | setting | search b64 (ms) | recall@10 |", "|---|---|---:|---:|"]
table = [
    f"| {r['backend']} | {r['items']:,} | {r['params']} | {r['build']:.1f} | {r['cpu']:.1f} "
    f"| {r['load'][0]:.2f} / {r['load'][1]:.2f} | {r['b1']:.1f} | {r['b64']:.0f} | {r['recall']:.3f} "
    f"| {r['add']:.2f} |"
    for r in rows
]
sweep_rows = [f"| {b} | {s} | {ms:.0f} | {r:.3f} |" for b, s, ms, r in sweep]
latency = (
    f"- Latency: median of {args.runs_b1} single-query searches (batch 1) and {args.runs_b64} searches of "
    "64 queries (batch 64), k=10, through `ItemIndex.search`. Build = `add` of the whole catalog "
    "(ivf: k-means training included); build CPU = process CPU time of that `add`, all threads "
    "(the honest cost on a shared machine, where wall time is inflated by other jobs). Add 10k = one "
    "`add` of 10,000 more items after the build."
)

if args.data == "clustered":
    lines = [
        CLUSTERED,
        "",
        f"- Data: {args.items:,} vectors of dim {args.dim}, each one of {args.centres:,} random unit centres "
        f"plus Gaussian noise of norm about {args.noise}, normalised; 64 + {args.runs_b1} queries drawn the "
        "same way. A crude stand-in for LLM item embeddings, which are far from uniform; not real data.",
        f"- Machine: {machine}. Run: {run}.",
        latency,
        "",
        *HEADER,
        *table,
        "",
        "Search-time settings on the same structures (batch 64):",
        "",
        *SWEEP_HEADER,
        *sweep_rows,
        "",
    ]
elif backends == list(BACKENDS):
    flat = rows[0]
    lines = [
        SECTION,
        "",
        f"- Machine: {machine}.",
        f"- Run: {run}.",
        f"- Data: {args.items:,} random unit vectors of dim {args.dim}, metric ip, 64 + {args.runs_b1} "
        "random unit queries. Random data has no cluster structure: the hardest case for ivf and hnsw.",
        latency,
        "",
        *HEADER,
        *table,
        "",
        "For reference (not an ItemIndex backend): numpy `xq @ X.T` + `argpartition` over the same "
        f"{args.items:,} vectors: {1000 * reference[0]:.1f} ms at batch 1, {1000 * reference[1]:.0f} ms at "
        f"batch 64. ItemIndex's flat search scores with BLAS at every batch size (item_index/exact.py); "
        f"FAISS {faiss.__version__}'s own flat index would do so only when queries x dim >= "
        f"`distance_compute_blas_threshold` ({faiss.cvar.distance_compute_blas_threshold:,} here, i.e. from "
        f"{-(-faiss.cvar.distance_compute_blas_threshold // args.dim)} queries at dim {args.dim}).",
        "",
        f"Save / load of the flat index at {args.items:,} items (load verifies the sha256 and rebuilds FAISS "
        f"from the vectors): {flat['save']:.1f} s / {flat['load_time']:.1f} s.",
        "",
        "Search-time settings on the same structures (batch 64):",
        "",
        *SWEEP_HEADER,
        *sweep_rows,
        "",
    ]
else:
    lines = [f"- {', '.join(backends)} rows: {run}; {machine}.", *table, *sweep_rows]
print("\n" + "\n".join(lines))


def merge_rows(section: str) -> str:
    """A subset run: replace its backends' rows in both tables of ``section`` and its run note."""
    out, note = [], f"- {', '.join(backends)} rows: {run}; {machine}."
    new_main = {r.split(" | ")[0][2:]: r for r in table}
    new_sweep_done = False
    lines_in = section.split("\n")
    for i, line in enumerate(lines_in):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith(f"- {', '.join(backends)} rows: "):
            continue  # the old note of the same subset; the new one goes after the "- Latency" bullet
        if line.startswith("|") and cells[0] in backends:
            if len(cells) > 4:  # main table
                line = new_main.pop(cells[0], None)
            else:  # sweep table: drop the old rows, put the new ones where the first old one was
                line = None if new_sweep_done else "\n".join(sweep_rows)
                new_sweep_done = True
            if line is None:
                continue
        out.append(line)
        if line.startswith("- Latency:"):
            out.append(note)
        last = i + 1 == len(lines_in) or not lines_in[i + 1].startswith("|")
        if line.startswith("|") and new_main and last and len(cells) > 4:
            out.extend(new_main.values())  # backends not in the table yet
            new_main = {}
    if not new_sweep_done and sweep_rows:
        out.extend(["", *sweep_rows])
    return "\n".join(out)


if args.write is not None:
    text = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION + "\n"
    head, rest = text.split(SECTION, 1)
    nxt = rest.find("\n## ")
    body, tail = (rest[:nxt], rest[nxt + 1 :]) if nxt >= 0 else (rest, "")  # body: our section, sans heading
    if args.data == "clustered":
        if CLUSTERED in body:  # replace the subsection: up to the next "### " heading or the section's end
            before, after = body.split(CLUSTERED, 1)
            nxt = after.find("\n### ")
            body = before + "\n".join(lines) + (after[nxt:] if nxt >= 0 else "")
        else:
            body = body.rstrip("\n") + "\n\n" + "\n".join(lines)
        section = SECTION + body
    elif backends == list(BACKENDS):
        subsection = body[body.find(CLUSTERED) :] if CLUSTERED in body else ""
        section = "\n".join(lines) + ("\n" + subsection if subsection else "")
    else:
        section = merge_rows(SECTION + body)
    text = head + section.rstrip("\n") + "\n\n" + tail
    args.write.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {args.write}")
