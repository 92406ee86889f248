"""The HTTP service (FastAPI): recommendations, catalog changes while serving, health and statistics.

    POST   /recommend      {"history": [...]} or {"histories": [[...], ...]}, k, reasoning, max_new_tokens,
                           seed (sampled reasoning, reproducible), strict, exclude_history
    POST   /items          {"items": [{"item_id", "title", attributes...}], "remove": [ids]}: add or replace,
                           and remove, as one new table version
    DELETE /items/{id}     remove one item
    GET    /health         status, catalog size, table fingerprint and version
    GET    /stats          the same, plus requests, errors, batches, swaps and p50/p99 latency (ms)

Bad requests are 4xx with a plain message (``{"detail": ...}``): malformed JSON 400, unknown item to remove
404, oversized batch 413, the rest 422 (k or max_new_tokens out of range, an empty history, neither or
both of ``history`` / ``histories``, an unknown item id with ``strict=true``). Without ``strict``, unknown
ids are left out of the prompt and listed per history in ``unknown_items``. Any other failure is a 500
whose message names the error type, never a traceback. Every answer names its table (``fingerprint``,
``version``): the one version its batch was ranked on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rrec.serve.batcher import Batcher, Query, Stats
from rrec.serve.catalog import TableVersion, VersionedCatalog


@dataclass
class ServeOptions:
    """Limits of the service: ``max_batch`` histories per request and per forward pass, ``max_wait_ms``
    a batch waits for company, ``max_k``, and ``max_new_tokens`` (the cap and default reasoning budget)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_k: int = 100
    max_new_tokens: int = 64


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str | int
    rating: float | None = None
    timestamp: float | None = None


Entry = str | int | Event


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Entry] | None = None
    histories: list[list[Entry]] | None = None
    k: int = 10
    reasoning: bool = True
    max_new_tokens: int | None = None
    seed: int | None = None
    strict: bool = False
    exclude_history: bool = True


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    items: list[dict] = Field(default_factory=list)
    remove: list[str | int] = Field(default_factory=list)


def table_info(version: TableVersion) -> dict:
    return {"fingerprint": version.fingerprint, "version": version.number, "items": len(version.index)}


class Service:
    """A loaded model behind one inference thread, with a versioned catalog (the app's state)."""

    def __init__(self, model, options: ServeOptions = ServeOptions()) -> None:
        self.model, self.options = model.eval(), options
        self.model_lock = threading.Lock()
        self.catalog = VersionedCatalog(model, self.model_lock)
        self.stats = Stats()
        self.batcher = Batcher(
            model, self.catalog, self.model_lock, options.max_batch, options.max_wait_ms / 1000.0, self.stats
        )

    def query(self, req: RecommendRequest) -> tuple[Query, list[list[str]]]:
        """Check a request against the limits and the current catalog; raises ``HTTPException`` (4xx)."""
        opts = self.options
        if (req.history is None) == (req.histories is None):
            raise HTTPException(422, "give exactly one of 'history' (one user) or 'histories' (a batch)")
        histories = [req.history] if req.history is not None else req.histories
        if not histories:
            raise HTTPException(422, "'histories' is empty: give at least one history")
        if len(histories) > opts.max_batch:
            raise HTTPException(413, f"{len(histories)} histories in one request; at most {opts.max_batch}")
        if not 1 <= req.k <= opts.max_k:
            raise HTTPException(422, f"k must be between 1 and {opts.max_k}, got {req.k}")
        budget = opts.max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        if not 1 <= budget <= opts.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens must be in 1..{opts.max_new_tokens}, got {budget}")
        version = self.catalog.current
        kept, unknown = [], []
        for b, history in enumerate(histories):
            if not history:
                raise HTTPException(422, f"history {b} is empty: give at least one item id")
            entries = [e.model_dump(exclude_none=True) if isinstance(e, Event) else e for e in history]
            ids = [str(e["item_id"] if isinstance(e, dict) else e) for e in entries]
            bad = [i for i in ids if not version.knows(i)]  # removed items stay known: never unknown later
            if bad and req.strict:
                raise HTTPException(422, f"history {b}: unknown item ids {bad[:10]} (strict=true)")
            pairs = zip(entries, ids, strict=True)
            kept.append([{**e, "item_id": i} if isinstance(e, dict) else i for e, i in pairs if i not in bad])
            unknown.append(bad)
        query = Query(kept, req.k, req.reasoning, budget, req.seed, req.exclude_history)
        return query, unknown


def create_app(service: Service) -> FastAPI:
    """The FastAPI app of ``service``; the inference thread runs while the app does (its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        service.batcher.stop()

    app = FastAPI(title="rrec", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"detail": "malformed JSON in the request body"}, status_code=400)
        where = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors]
        detail = [f"{w}: {e.get('msg')}" for w, e in zip(where, errors, strict=True)]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.post("/recommend")
    async def recommend(req: RecommendRequest) -> dict:
        start = time.perf_counter()
        try:
            query, unknown = service.query(req)
        except HTTPException:
            service.stats.record(time.perf_counter() - start, 0, error=True)
            raise
        try:
            answer = await asyncio.wrap_future(service.batcher.submit(query))
        except (ValueError, KeyError) as e:  # the library's checks (e.g. every item removed)
            service.stats.record(time.perf_counter() - start, 0, error=True)
            raise HTTPException(422, str(e).strip("'\"")) from None
        except Exception:  # answered as a plain 500 by the handler above; counted here
            service.stats.record(time.perf_counter() - start, 0, error=True)
            raise
        results = [
            {"item_ids": r.item_ids, "scores": r.scores, "reasoning": r.reasoning,
             "forced_answer": r.forced_answer, "unknown_items": bad}
            for r, bad in zip(answer.recommendations, unknown, strict=True)
        ]  # fmt: skip
        elapsed = time.perf_counter() - start
        service.stats.record(elapsed, len(results), error=False)
        latency = round(elapsed * 1000, 3)
        return {"results": results, "table": table_info(answer.version), "latency_ms": latency}

    def change(upserts: list[dict], remove: list[str]) -> dict:
        for j, r in enumerate(upserts):
            if r.get("item_id") in (None, "") or not str(r.get("title") or "").strip():
                raise HTTPException(422, f"items[{j}]: needs a non-empty 'item_id' and 'title'")
        start = time.perf_counter()
        try:
            done = service.catalog.apply(upserts, remove)
        except KeyError as e:
            raise HTTPException(404, str(e).strip("'\"")) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        service.stats.count("swaps")
        build_ms = round((time.perf_counter() - start) * 1000, 3)
        table = table_info(done.version)
        return {"added": done.added, "changed": done.changed, "removed": done.removed, "table": table,
                "build_ms": build_ms}  # fmt: skip

    @app.post("/items")
    def post_items(req: ItemsRequest) -> dict:  # a plain def: FastAPI runs it in its thread pool
        return change(req.items, [str(i) for i in req.remove])

    @app.delete("/items/{item_id}")
    def delete_item(item_id: str) -> dict:
        return change([], [item_id])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **table_info(service.catalog.current)}

    @app.get("/stats")
    def stats() -> dict:
        return {**table_info(service.catalog.current), **service.stats.snapshot()}

    return app
