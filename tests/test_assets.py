"""Asset fetching without the network: verification, idempotence, and a clear error when pip fails."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest

from rrec import assets


def _fake_wheel(tmp_path, member: str, payload: bytes):
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel


def test_extract_verifies_and_is_idempotent(tmp_path, monkeypatch):
    payload = b"user_id:token\titem_id:token\n1\t2\n"
    asset = assets.WheelAsset(
        "fake==0.1", {"pkg/data.inter": ("data.inter", hashlib.sha256(payload).hexdigest())}
    )
    calls = []

    def fake_download(requirement, dest):
        calls.append(requirement)
        return _fake_wheel(dest, "pkg/data.inter", payload)

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    target = tmp_path / "cache" / "data"
    assert not assets._files_ok(target, asset)
    assets._extract(asset, target)
    assert (target / "data.inter").read_bytes() == payload
    assert assets._files_ok(target, asset) and calls == ["fake==0.1"]


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    asset = assets.WheelAsset("fake==0.1", {"pkg/data.inter": ("data.inter", "0" * 64)})
    monkeypatch.setattr(assets, "_pip_download", lambda r, d: _fake_wheel(d, "pkg/data.inter", b"tampered"))
    with pytest.raises(assets.AssetError, match="sha256"):
        assets._extract(asset, tmp_path / "data")
    assert not (tmp_path / "data" / "data.inter").exists()  # nothing half-verified is left behind


def test_unreachable_pypi_gives_a_clear_error(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="ERROR: Could not find a version\nNetwork is unreachable"
        )

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(assets.AssetError, match=r"(?s)is PyPI reachable.*Network is unreachable"):
        assets._pip_download("recbole==1.2.1", tmp_path)


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert assets.dataset_dir("ml-100k") == tmp_path / "c" / "data" / "ml-100k"
    with pytest.raises(ValueError, match="unknown dataset"):
        assets.dataset_dir("ml-20m")
