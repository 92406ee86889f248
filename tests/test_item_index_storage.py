"""ItemIndex.save / ItemIndex.load: round trips, atomic replacement, and every kind of bad file."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from item_index import ItemIndex, ItemIndexError


def make(backend="flat", n=400, dim=16, ids=None, seed=0, **params):
    rng = np.random.default_rng(seed)
    index = ItemIndex(dim, "ip", backend, **params)
    index.add(ids if ids is not None else list(range(n)), rng.standard_normal((n, dim)).astype(np.float32))
    return index


QUERIES = np.random.default_rng(99).standard_normal((25, 16)).astype(np.float32)


@pytest.mark.parametrize(
    ("backend", "params"),
    [
        ("flat", {}),
        ("ivf", {"nlist": 8, "nprobe": 2}),  # trained (400 >= 39 * 8) and approximate: centroids saved
        ("ivf", {"nlist": 64}),  # untrained (400 < 39 * 64): exact fallback
        ("hnsw", {"ef_search": 1000}),  # exact settings (see storage.py on HNSW graphs)
    ],
)
def test_save_load_gives_identical_search_results(tmp_path, backend, params):
    index = make(backend, ids=[f"sku-{i}" for i in range(400)], **params)
    index.remove(["sku-3", "sku-7"])
    index.replace(["sku-10"], np.ones((1, 16), np.float32))
    index.save(tmp_path / "idx", fingerprint="model=a;data=b")
    loaded = ItemIndex.load(tmp_path / "idx", expected_fingerprint="model=a;data=b", expected_dim=16)
    assert loaded.ids == index.ids and loaded.fingerprint == index.fingerprint == "model=a;data=b"
    assert (loaded.backend, loaded.metric, loaded.backend_params) == (backend, "ip", index.backend_params)
    assert np.array_equal(loaded.vectors_for(loaded.ids), index.vectors_for(index.ids))
    exclude = [["sku-0"]] * len(QUERIES)
    scores, ids = index.search(QUERIES, 10, exclude=exclude)
    loaded_scores, loaded_ids = loaded.search(QUERIES, 10, exclude=exclude)
    assert (ids == loaded_ids).all()
    np.testing.assert_allclose(scores, loaded_scores, rtol=1e-6, atol=1e-6)


def test_meta_records_format_params_and_checksum(tmp_path):
    index = make("ivf", nlist=8)
    index.save(tmp_path / "idx", fingerprint="fp")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["format"] == "item_index" and meta["format_version"] == 1
    assert (meta["dim"], meta["metric"], meta["backend"], meta["count"]) == (16, "ip", "ivf", 400)
    assert meta["backend_params"] == {"nlist": 8, "nprobe": None} and meta["id_type"] == "int"
    digest = hashlib.sha256((tmp_path / "idx" / "vectors.npy").read_bytes()).hexdigest()
    assert meta["files"]["vectors.npy"]["sha256"] == digest
    assert set(meta["files"]) == {"vectors.npy", "ids.json", "centroids.npy"}


def test_fingerprint_is_kept_on_resave_and_empty_index_round_trips(tmp_path):
    index = make()
    index.save(tmp_path / "a", fingerprint="v1")
    index.save(tmp_path / "b")  # None keeps the current fingerprint
    assert ItemIndex.load(tmp_path / "b").fingerprint == "v1"
    empty = make(n=2)
    empty.remove([0, 1])
    empty.save(tmp_path / "e")
    loaded = ItemIndex.load(tmp_path / "e")
    assert len(loaded) == 0 and loaded.id_type == "int" and loaded.fingerprint is None


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failed_save_leaves_previous_index_and_no_temp_dirs(tmp_path, monkeypatch):
    old = make(seed=1)
    old.save(tmp_path / "idx", fingerprint="old")

    def broken_save(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "save", broken_save)  # raises after the temp dir has been created
    with pytest.raises(OSError, match="disk full"):
        make(seed=2).save(tmp_path / "idx", fingerprint="new")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    loaded = ItemIndex.load(tmp_path / "idx", expected_fingerprint="old")
    assert np.array_equal(loaded.vectors_for(loaded.ids), old.vectors_for(old.ids))


def test_failed_swap_restores_previous_index(tmp_path, monkeypatch):
    make(seed=1).save(tmp_path / "idx", fingerprint="old")
    real_rename, calls = os.rename, []

    def rename_failing_second_time(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # first call moves the old index aside, second would move the new one in
            raise OSError("crash between renames (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_failing_second_time)
    with pytest.raises(OSError, match="between renames"):
        make(seed=2).save(tmp_path / "idx", fingerprint="new")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert ItemIndex.load(tmp_path / "idx").fingerprint == "old"


def test_save_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ItemIndexError, match=r"notes: it exists and is not a saved item index"):
        make().save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def saved(tmp_path):
    make().save(tmp_path / "idx", fingerprint="fp")
    return tmp_path / "idx"


def edit_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_truncated_vectors_file(tmp_path):
    path = saved(tmp_path)
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemIndexError, match=r"vectors\.npy: truncated or altered"):
        ItemIndex.load(path)


def test_checksum_mismatch(tmp_path):
    path = saved(tmp_path)
    data = bytearray((path / "vectors.npy").read_bytes())
    data[-1] ^= 0xFF  # same size, one byte of the last float flipped
    (path / "vectors.npy").write_bytes(bytes(data))
    with pytest.raises(ItemIndexError, match=r"vectors\.npy: checksum mismatch"):
        ItemIndex.load(path)


def test_edited_ids_file(tmp_path):
    path = saved(tmp_path)
    ids = json.loads((path / "ids.json").read_text())
    (path / "ids.json").write_text(json.dumps(ids[::-1]))  # same bytes, different order
    with pytest.raises(ItemIndexError, match=r"ids\.json: checksum mismatch"):
        ItemIndex.load(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": 32}, r"vectors\.npy: holds float32 \(400, 16\); expected float32 \(400, 32\)"),
        ({"count": 3}, r"vectors\.npy: holds float32 \(400, 16\); expected float32 \(3, 16\)"),
        ({"format": "other-tool"}, r"meta\.json: foreign file: format is 'other-tool'"),
        ({"format_version": 99}, r"meta\.json: unsupported format_version 99"),
        ({"metric": "cosine"}, r"meta\.json: bad or missing field 'metric'"),
        ({"backend_params": {"nlist": 4}}, r"meta\.json: backend 'flat' has no parameters \['nlist'\]"),
        ({"files": {"vectors.npy": {}, "ids.json": {}, "../x": {}}}, r"meta\.json: lists unknown files"),
    ],
)
def test_edited_meta(tmp_path, changes, message):
    path = saved(tmp_path)
    edit_meta(path, **changes)
    with pytest.raises(ItemIndexError, match=message):
        ItemIndex.load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ItemIndexError, match=r"nowhere: no saved item index here"):
        ItemIndex.load(tmp_path / "nowhere")
    path = saved(tmp_path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ItemIndexError, match=r"meta\.json: unreadable or not JSON"):
        ItemIndex.load(path)
    path = saved(tmp_path / "b")
    os.remove(path / "vectors.npy")
    with pytest.raises(ItemIndexError, match=r"vectors\.npy: missing"):
        ItemIndex.load(path)
    (tmp_path / "c").mkdir()
    with pytest.raises(ItemIndexError, match=r"c/meta\.json: missing; not a saved item index"):
        ItemIndex.load(tmp_path / "c")


def test_expected_dim_and_fingerprint_mismatch(tmp_path):
    path = saved(tmp_path)
    with pytest.raises(ItemIndexError, match=r"meta\.json: dim mismatch: saved dim 16, expected 32"):
        ItemIndex.load(path, expected_dim=32)
    with pytest.raises(ItemIndexError, match=r"meta\.json: fingerprint mismatch: saved 'fp', expected 'fp2'"):
        ItemIndex.load(path, expected_fingerprint="fp2")
