"""The trained default shipped with the package: its files, its card, and loading it (checksum verified)."""

from __future__ import annotations

import json

import pytest

from rrec import pretrained
from rrec.persistence import EMBEDDED_BASE

DEFAULT = pretrained.HERE / pretrained.DEFAULT


def test_the_default_ships_under_10_mb_with_its_card():
    assert pretrained.DEFAULT in pretrained.available()
    size = sum(f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file())
    assert size <= 10 * 1024 * 1024, size
    cfg = json.loads((DEFAULT / "rrec_config.json").read_text())
    assert cfg["base_model"] == EMBEDDED_BASE and len(cfg["base_checksum"]) == 64
    assert cfg["user_format"] == "stream" and cfg["item_encoder"] == "base" and cfg["id_vectors"]
    card = pretrained.model_card()
    assert card["base_checksum"] == cfg["base_checksum"] and card["size_bytes"] == sum(
        f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file() and f.name != "model_card.json"
    )
    assert card["trained_by"].startswith("python -m recipes.train_allpos")
    assert card["valid_curve"][-1]["ndcg@10"] > 0 and card["train"]["targets"] > 0
    if card["test"] is not None:  # the run's own test evaluation: the full test split
        for name in ("trained", "pop"):
            assert card["test"][name]["n_samples"] == 9906 and card["test"][name]["n_users"] == 166
        for d in card["paired_ndcg@10"].values():  # trained minus most-popular, paired over users
            lo, hi = d["ci95"] if "ci95" in d else (d["low"], d["high"])
            assert lo <= d["mean"] <= hi
    demo = card["demo_test"]  # the demo's paired measurement on this very model
    assert (
        demo["test"]["trained"]["n_samples"] == demo["test"]["most-popular"]["n_samples"] == demo["samples"]
    )
    assert set(demo["paired_ndcg@10"]["trained_vs_pop"]) >= {"mean", "low", "high"}


def test_unknown_shipped_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="rrec:ml100k-allpos"):
        pretrained.resolve("rrec:nope")
    assert pretrained.resolve("some/dir").as_posix() == "some/dir"


@pytest.mark.slow
@pytest.mark.slow_ci
def test_default_loads_on_the_embedded_base_and_recommends(default_model_dir):
    from rrec.data import ensure_default, load_prepared
    from rrec.model import ReasoningRecommender
    from rrec.persistence import base_checksum

    assert (
        base_checksum(default_model_dir)
        == json.loads((DEFAULT / "rrec_config.json").read_text())["base_checksum"]
    )
    data = load_prepared(ensure_default())
    model = ReasoningRecommender.from_pretrained("rrec:ml100k-allpos", device="cpu")
    assert hasattr(model.lm, "disable_adapter") and len(model.id_vectors.ids) == len(data.items)
    sub = data.items.head(60)  # a small table: the whole one takes a minute
    model.build_item_table(sub)
    rec = model.recommend(["1", "2", "3"], k=5, reasoning=False)
    assert len(rec.item_ids) == 5 and not {"1", "2", "3"} & set(rec.item_ids)
