"""rrec.serve on the tiny random model: answers equal the library's, catalog versions, every bad request.

The catalog: 12 films "Film 0".."Film 11". The service's answers are checked against
``ReasoningRecommender.recommend_batch`` on the same model (the oracle), and its catalog changes against
``update_items`` on a second copy of the model (same rows, same order).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from rrec.model import ReasoningRecommender
from rrec.serve.app import ServeOptions, Service, create_app
from tests.conftest import make_tiny_lm

ITEMS = pd.DataFrame({"item_id": [str(i) for i in range(12)], "title": [f"Film {i}" for i in range(12)]})
OPTIONS = ServeOptions(max_batch=4, max_wait_ms=2.0, max_k=10, max_new_tokens=3)


def tiny_model(tokenizer) -> ReasoningRecommender:
    model = ReasoningRecommender(make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), ITEMS, max_new_tokens=3)
    model.build_item_table()
    return model


@pytest.fixture()
def served(tokenizer):
    service = Service(tiny_model(tokenizer), OPTIONS)
    with TestClient(create_app(service)) as client:
        yield client, service


def test_answers_equal_the_library_and_name_the_table(served, tokenizer):
    client, _ = served
    oracle = tiny_model(tokenizer)
    histories = [["1", "2"], ["5"], [{"item_id": 7, "rating": 4}]]
    r = client.post("/recommend", json={"histories": histories, "k": 5, "reasoning": False})
    assert r.status_code == 200, r.text
    body = r.json()
    want = oracle.recommend_batch([["1", "2"], ["5"], [{"item_id": "7", "rating": 4}]], k=5, reasoning=False)
    assert [res["item_ids"] for res in body["results"]] == [w.item_ids for w in want]
    np.testing.assert_allclose(body["results"][0]["scores"], want[0].scores, rtol=1e-5)
    assert "1" not in body["results"][0]["item_ids"] and "2" not in body["results"][0]["item_ids"]
    health = client.get("/health").json()
    assert body["table"] == {"fingerprint": health["fingerprint"], "version": 0, "items": 12}
    # Reasoning on: 3 tokens at most, the same as the library's greedy reasoning.
    r = client.post("/recommend", json={"history": ["3"], "k": 3, "max_new_tokens": 2})
    want = oracle.recommend(["3"], k=3, max_new_tokens=2)
    assert r.json()["results"][0]["item_ids"] == want.item_ids
    assert r.json()["results"][0]["reasoning"] == want.reasoning


def test_seeded_sampling_is_reproducible(served):
    client, _ = served
    req = {"history": ["4", "6"], "k": 4, "seed": 11, "max_new_tokens": 3}
    a, b = (client.post("/recommend", json=req).json()["results"][0] for _ in range(2))
    assert a["reasoning"] == b["reasoning"] and a["item_ids"] == b["item_ids"]


def test_unknown_items_are_left_out_and_named_or_refused(served, tokenizer):
    client, _ = served
    r = client.post("/recommend", json={"history": ["1", "nope", "2"], "k": 3, "reasoning": False})
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["unknown_items"] == ["nope"]
    want = tiny_model(tokenizer).recommend(["1", "2"], k=3, reasoning=False)  # as if "nope" were not there
    assert result["item_ids"] == want.item_ids
    r = client.post("/recommend", json={"history": ["1", "nope"], "strict": True})
    assert r.status_code == 422
    assert r.json()["detail"] == "history 0: unknown item ids ['nope'] (strict=true)"


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"history": ["1"], "k": 0}, 422, "k must be between 1 and 10, got 0"),
        ({"history": ["1"], "k": 11}, 422, "k must be between 1 and 10, got 11"),
        ({"history": []}, 422, "history 0 is empty: give at least one item id"),
        ({"histories": [["1"], []]}, 422, "history 1 is empty: give at least one item id"),
        ({"histories": []}, 422, "'histories' is empty: give at least one history"),
        ({"histories": [["1"]] * 5}, 413, "5 histories in one request; at most 4"),
        ({"k": 3}, 422, "give exactly one of 'history' (one user) or 'histories' (a batch)"),
        ({"history": ["1"], "max_new_tokens": 4}, 422, "max_new_tokens must be in 1..3, got 4"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(served, body, status, detail):
    client, service = served
    r = client.post("/recommend", json=body)
    assert (r.status_code, r.json()["detail"]) == (status, detail)
    assert service.stats.snapshot()["errors"] == 1


def test_malformed_json_and_wrong_types(served):
    client, _ = served
    r = client.post("/recommend", content=b'{"history": ["1",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"] == "malformed JSON in the request body"
    r = client.post("/recommend", json={"history": ["1"], "k": "ten"})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("k: ")
    r = client.post("/recommend", json={"history": ["1"], "colour": "red"})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("colour: ")


def test_catalog_changes_match_update_items(served, tokenizer):
    client, service = served
    first = client.get("/health").json()
    new = [{"item_id": "20", "title": "Brand new film"}, {"item_id": "3", "title": "Film 3, recut"}]
    r = client.post("/items", json={"items": new, "remove": ["5"]})
    assert r.status_code == 200, r.text
    change = r.json()
    assert (change["added"], change["changed"], change["removed"]) == (["20"], ["3"], ["5"])
    assert change["table"]["version"] == 1 and change["table"]["items"] == 12
    assert change["table"]["fingerprint"] != first["fingerprint"]
    r = client.delete("/items/7")
    assert r.status_code == 200 and r.json()["table"]["items"] == 11

    oracle = tiny_model(tokenizer)
    oracle.update_items(added=pd.DataFrame(new[:1]), changed=pd.DataFrame(new[1:]), removed=["5"])
    oracle.update_items(removed=["7"])
    index = service.catalog.current.index
    assert index.ids == oracle.rec_head.ids  # "3" kept its place, "20" last
    np.testing.assert_allclose(
        index.vectors_for(index.ids), oracle.rec_head.vectors_for(index.ids), atol=1e-6
    )
    # Removed items are never recommended, even with k = the whole catalog; histories may still hold them.
    r = client.post("/recommend", json={"history": ["5", "1"], "k": 10, "reasoning": False})
    body = r.json()
    assert body["table"]["version"] == 2 and body["results"][0]["unknown_items"] == []
    assert not {"5", "7"} & set(body["results"][0]["item_ids"])
    assert body["results"][0]["item_ids"] == oracle.recommend(["5", "1"], k=10, reasoning=False).item_ids
    assert client.get("/stats").json()["swaps"] == 2


def test_bad_catalog_changes(served):
    client, _ = served
    assert client.delete("/items/nope").status_code == 404
    assert client.delete("/items/nope").json()["detail"] == "not in the catalog: ['nope']"
    r = client.post("/items", json={"items": [{"item_id": "30"}]})
    assert r.status_code == 422 and r.json()["detail"] == "items[0]: needs a non-empty 'item_id' and 'title'"
    r = client.post("/items", json={"items": [{"item_id": "1", "title": "x"}], "remove": ["1"]})
    assert r.status_code == 422 and r.json()["detail"] == "ids both added and removed: ['1']"
    assert client.get("/health").json()["version"] == 0  # nothing was swapped


def test_a_batch_finishes_on_the_version_it_took(served, monkeypatch):
    """A swap that lands while a batch runs does not reach that batch: it answers on its own version."""
    client, service = served
    model = service.model
    old = service.catalog.current
    service.catalog.apply([], ["0", "1", "2"])  # version 1, without items 0-2
    newer, service.catalog.current = service.catalog.current, old  # serve version 0 again for now
    real = model.recommend_batch

    def swap_midway(*args, **kw):
        service.catalog.current = newer  # the swap lands during the forward pass
        return real(*args, **kw)

    monkeypatch.setattr(model, "recommend_batch", swap_midway)
    body = client.post("/recommend", json={"history": ["9"], "k": 10, "reasoning": False}).json()
    assert body["table"]["version"] == 0 and body["table"]["fingerprint"] == old.fingerprint
    assert {"0", "1", "2"} & set(body["results"][0]["item_ids"])  # ranked on the old table: 11 of 12 shown
    body = client.post("/recommend", json={"history": ["9"], "k": 10, "reasoning": False}).json()
    assert body["table"]["version"] == 1 and not {"0", "1", "2"} & set(body["results"][0]["item_ids"])


def test_internal_errors_are_500_without_a_traceback(tokenizer, monkeypatch):
    service = Service(tiny_model(tokenizer), OPTIONS)

    def boom(*args, **kw):
        raise RuntimeError("CUDA error: device-side assert triggered\nTraceback ...")

    monkeypatch.setattr(service.model, "recommend_batch", boom)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        r = c.post("/recommend", json={"history": ["1"], "reasoning": False})
    assert r.status_code == 500 and r.json() == {"detail": "internal error (RuntimeError)"}
    assert service.stats.snapshot()["errors"] == 1
