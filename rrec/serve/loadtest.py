"""A loopback load test of a running service: N clients for a bounded time, a catalog change midway.

Each client thread sends ``POST /recommend`` back to back until the time is up. At ``change_at`` of the
run one ``POST /items`` replaces some items (new text) and removes others, as one swap. Afterwards every
response is checked against the table versions the run knows (the first, from ``/health``; the second,
from the change's answer): it names one of them, recommends only items of that version, and, when it was
sent after the swap had returned, names the new version and recommends no removed item.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadReport:
    """What a run measured and what it found wrong (``problems`` empty: it passed)."""

    clients: int
    seconds: float
    sent: int
    answered: int
    errors: int
    histories: int
    throughput_rps: float  # answered requests per second
    p50_ms: float
    p99_ms: float
    swap_ms: float  # the change's build + swap, as the /items call measured it
    versions: dict[str, int]  # fingerprint -> answered requests ranked on it
    problems: list[str] = field(default_factory=list)


@dataclass
class _Record:
    sent_at: float
    latency: float
    status: int
    body: dict | None


def run_load(
    url: str,
    item_ids: list[str],
    *,
    clients: int = 8,
    seconds: float = 10.0,
    change_at: float = 0.5,
    replace_fraction: float = 0.10,
    remove_fraction: float = 0.01,
    request: dict | None = None,
    history_len: tuple[int, int] = (1, 5),
    seed: int = 0,
) -> LoadReport:
    """Drive the service at ``url`` (see the module docstring); ``item_ids`` is its catalog at the start.

    ``request`` holds the fixed fields of each ``/recommend`` body (default ``k=50, reasoning=false``); each
    client adds a random history of ``history_len`` items. The change replaces
    ``max(1, round(replace_fraction * N))`` items and removes ``max(1, round(remove_fraction * N))`` others,
    both drawn with ``seed``. No request may be lost: the server's ``/stats`` request count must grow by
    exactly the number the clients sent.
    """
    import httpx

    rng = random.Random(seed)
    base = {"k": 50, "reasoning": False, **(request or {})}
    shuffled = rng.sample(item_ids, len(item_ids))
    n_replace = max(1, round(replace_fraction * len(item_ids)))
    n_remove = max(1, round(remove_fraction * len(item_ids)))
    replaced, removed = shuffled[:n_replace], shuffled[n_replace : n_replace + n_remove]
    records: list[_Record] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds
    swap: dict = {}

    def client(c: int) -> None:
        local = random.Random(seed * 1000 + c)
        with httpx.Client(base_url=url, timeout=120.0) as http:
            while time.monotonic() < stop_at:
                history = local.sample(item_ids, local.randint(*history_len))
                sent = time.monotonic()
                try:
                    r = http.post("/recommend", json={**base, "history": history})
                    rec = _Record(sent, time.monotonic() - sent, r.status_code, r.json())
                except (httpx.HTTPError, ValueError) as e:
                    rec = _Record(sent, time.monotonic() - sent, -1, {"error": repr(e)})
                with lock:
                    records.append(rec)

    def changer() -> None:
        time.sleep(seconds * change_at)
        items = [{"item_id": i, "title": f"Replaced item {i}"} for i in replaced]
        with httpx.Client(base_url=url, timeout=300.0) as http:
            swap["before"] = http.get("/health").json()
            r = http.post("/items", json={"items": items, "remove": removed})
            swap["returned_at"], swap["status"], swap["body"] = time.monotonic(), r.status_code, r.json()

    with httpx.Client(base_url=url) as http:
        first, counted = http.get("/health").json(), http.get("/stats").json()["requests"]
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    threads.append(threading.Thread(target=changer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    report = _report(records, first, swap, set(item_ids), set(removed), clients, elapsed)
    with httpx.Client(base_url=url) as http:
        counted = http.get("/stats").json()["requests"] - counted
    if counted != report.sent:
        report.problems.append(f"the clients sent {report.sent} requests, the server counted {counted}")
    return report


def _report(records, first, swap, ids: set, removed: set, clients: int, elapsed: float) -> LoadReport:
    problems = []
    if swap.get("status") != 200:
        problems.append(f"the catalog change failed: {swap.get('status')} {swap.get('body')}")
        new_fp, returned_at, swap_ms = None, float("inf"), float("nan")
    else:
        new_fp, returned_at = swap["body"]["table"]["fingerprint"], swap["returned_at"]
        swap_ms = swap["body"]["build_ms"]
    allowed = {first["fingerprint"]: ids, new_fp: ids - removed}
    ok = [r for r in records if r.status == 200]
    for r in records:
        if r.status != 200:
            problems.append(f"status {r.status}: {r.body}")
    versions: dict[str, int] = {}
    for r in ok:
        fp = r.body["table"]["fingerprint"]
        versions[fp] = versions.get(fp, 0) + 1
        if fp not in allowed:
            problems.append(f"a response names an unknown table {fp}")
            continue
        shown = {i for res in r.body["results"] for i in res["item_ids"]}
        if not shown <= allowed[fp]:
            problems.append(f"table {fp}: recommended items not in it: {sorted(shown - allowed[fp])[:5]}")
        if r.sent_at > returned_at and (fp != new_fp or shown & removed):
            problems.append(f"sent after the swap, ranked on {fp} with removed {sorted(shown & removed)}")
    lat = np.asarray([r.latency for r in ok]) * 1000.0
    return LoadReport(
        clients=clients,
        seconds=round(elapsed, 3),
        sent=len(records),
        answered=len(ok),
        errors=len(records) - len(ok),
        histories=sum(len(r.body["results"]) for r in ok),
        throughput_rps=round(len(ok) / elapsed, 2),
        p50_ms=round(float(np.percentile(lat, 50)), 2) if len(lat) else float("nan"),
        p99_ms=round(float(np.percentile(lat, 99)), 2) if len(lat) else float("nan"),
        swap_ms=swap_ms,
        versions=versions,
        problems=problems[:20],
    )
