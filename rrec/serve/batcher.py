"""Request batching across concurrent clients: one inference thread, one model, many waiting requests.

Requests queue as :class:`Query` objects. The inference thread takes the oldest, then for up to
``max_wait_s`` gathers later ones that can share its forward pass (same ``reasoning``, budget and
``exclude_history``; greedy only: a seeded sampled request runs alone, because row b of a batch draws
from ``seed + b`` and its result must not depend on its neighbours) until ``max_batch`` histories. The
batch takes the catalog's current :class:`~rrec.serve.catalog.TableVersion` once and runs entirely on it,
so every answer names the one version it was ranked against. A query that cannot join waits for the next
batch, in arrival order.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from rrec.serve.catalog import TableVersion, VersionedCatalog


@dataclass
class Query:
    """One request: its ``histories`` (ids known to the catalog), the cut-off ``k`` and decoding options."""

    histories: list[list]
    k: int
    reasoning: bool
    max_new_tokens: int
    seed: int | None = None
    exclude_history: bool = True
    future: Future = field(default_factory=Future)

    def key(self) -> tuple:
        """Queries with equal keys share a batch (never a seeded one)."""
        return (self.reasoning, self.max_new_tokens, self.exclude_history, self.seed is None or id(self))


@dataclass
class Answer:
    """A query's recommendations (``rrec.model.Recommendation``, one per history), the ``version`` they
    were ranked on and how many histories the batch held."""

    recommendations: list
    version: TableVersion
    batch_histories: int


class Stats:
    """Counters and a window of request latencies, safe to update from several threads."""

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.requests = self.errors = self.histories = self.batches = self.swaps = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)
        self.started = time.monotonic()

    def record(self, seconds: float, histories: int, error: bool) -> None:
        with self._lock:
            self.requests += 1
            self.errors += int(error)
            self.histories += histories if not error else 0
            self.latencies.append(seconds)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict:
        """``requests``, ``errors``, ``histories``, ``batches``, ``swaps``, ``uptime_s`` and the p50/p99
        latency (ms) over the last ``window`` requests (``None`` before the first)."""
        with self._lock:
            lat = np.asarray(self.latencies, dtype=float) * 1000.0
            out = {k: getattr(self, k) for k in ("requests", "errors", "histories", "batches", "swaps")}
        out["uptime_s"] = round(time.monotonic() - self.started, 3)
        for q in (50, 99):
            out[f"p{q}_ms"] = round(float(np.percentile(lat, q)), 3) if len(lat) else None
        return out


class Batcher:
    """The inference thread (see the module docstring).

    Args:
        model: the ``ReasoningRecommender``.
        catalog: its :class:`VersionedCatalog` (read once per batch).
        model_lock: held around each batch (the catalog holds it while it encodes).
        max_batch: the most histories in one forward pass.
        max_wait_s: how long the first query of a batch waits for company.
    """

    def __init__(
        self, model, catalog: VersionedCatalog, model_lock, max_batch: int, max_wait_s: float, stats: Stats
    ) -> None:
        self.model, self.catalog, self.model_lock, self.stats = model, catalog, model_lock, stats
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[Query] = queue.Queue()
        self._held: collections.deque[Query] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the inference thread (a no-op while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rrec-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, query: Query) -> Future:
        self._queue.put(query)
        return query.future

    def _next(self, timeout: float) -> Query | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _gather(self, first: Query) -> list[Query]:
        batch, size = [first], len(first.histories)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch and first.seed is None:
            q = self._next(max(0.0, deadline - time.monotonic()))
            if q is None:
                break
            if q.key() != first.key() or size + len(q.histories) > self.max_batch:
                self._held.appendleft(q)  # first in line for the next batch
                break
            batch.append(q)
            size += len(q.histories)
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._next(0.05)
            if first is None:
                continue
            batch = self._gather(first)
            try:
                self._run(batch)
            except Exception as e:  # every waiting client gets the error; the thread keeps serving
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(e)

    def _run(self, batch: list[Query]) -> None:
        histories = [h for q in batch for h in q.histories]
        first = batch[0]
        with self.model_lock:
            version = self.catalog.current  # taken once: the whole batch ranks on this version
            version.install(self.model)
            recs = self.model.recommend_batch(
                histories, k=max(q.k for q in batch), exclude_history=first.exclude_history,
                reasoning=first.reasoning, max_new_tokens=first.max_new_tokens,
                do_sample=first.seed is not None, seed=first.seed,
            )  # fmt: skip
        self.stats.count("batches")
        start = 0
        for q in batch:
            mine = recs[start : start + len(q.histories)]
            start += len(q.histories)
            for r in mine:
                r.item_ids, r.scores = r.item_ids[: q.k], r.scores[: q.k]
            q.future.set_result(Answer(mine, version, len(histories)))
