"""The loopback load test in CI: a real uvicorn server on 127.0.0.1, 6 clients for 8 s, the tiny model.

Midway, one change replaces 10% of the 200-item catalog (20 items, new text) and removes 1% (2 items).
``rrec.serve.loadtest.run_load`` checks every response: no errors, none lost (the server counted every
request sent), each ranked on exactly one known table version and recommending only its items, and none
sent after the swap returned recommending a removed item. bench/serve_load.py runs the same for longer.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from rrec.model import ReasoningRecommender
from rrec.serve.app import ServeOptions, Service
from rrec.serve.loadtest import run_load
from rrec.serve.server import start_in_thread
from tests.conftest import make_tiny_lm


def test_load_with_a_catalog_change_midway(tokenizer):
    items = pd.DataFrame(
        {"item_id": [f"m{i}" for i in range(200)], "title": [f"Film {i}" for i in range(200)]}
    )
    model = ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), items, max_new_tokens=4)
    model.build_item_table()
    service = Service(model, ServeOptions(max_batch=16, max_wait_ms=5.0, max_k=50, max_new_tokens=4))
    server, url = start_in_thread(service)
    try:
        report = run_load(
            url, list(items["item_id"]), clients=6, seconds=8.0, request={"k": 50, "reasoning": False}
        )
    finally:
        server.should_exit = True
    print(report)
    assert report.problems == []
    assert report.errors == 0 and report.answered == report.sent > 20
    assert len(report.versions) == 2  # requests were answered on both sides of the swap
    stats = service.stats.snapshot()
    assert stats["swaps"] == 1 and stats["errors"] == 0
    assert len(service.catalog.current.index) == 198
