"""The on-disk format of an item index, written atomically and verified on read.

A saved index is a directory::

    meta.json      {"format": "item_index", "format_version": 1, "dim", "metric", "backend",
                    "backend_params", "count", "fingerprint", "id_type",
                    "files": {name: {"sha256": hex, "bytes": size}}}
    vectors.npy    (N, D) float32, rows in ``ids`` order -- the source of truth
    ids.json       the N external ids, in order
    centroids.npy  (nlist, D) float32, only for a trained ``ivf`` index

No FAISS structure is stored: ``load`` rebuilds it from the vectors (and the IVF centroids, so an
``ivf`` index probes the same lists after loading). An ``hnsw`` graph is rebuilt in parallel, which
FAISS does not make deterministic, so after loading an ``hnsw`` index matches exact search at exact
settings (``ef_search`` >= N) but may differ in which approximate neighbours it misses.

Atomicity: ``save`` writes everything into a fresh temporary directory beside the target
(``.<name>.tmp-*``), fsyncs it, then swaps it in with renames; on any error the temporary directory is
removed and an existing index at the target is untouched. The one non-atomic moment is between two
renames (old index moved aside to ``.<name>.old-*``, new one moved in), a window of microseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from item_index.errors import ItemIndexError
from item_index.inputs import as_ids, duplicates, show

FORMAT, FORMAT_VERSION = "item_index", 1
KNOWN_FILES = ("vectors.npy", "ids.json", "centroids.npy")


class IndexState(NamedTuple):
    """Everything ``save`` writes and ``load`` returns.

    Fields: dim (D), metric, backend, backend_params, fingerprint, id_type (``"int"``, ``"str"`` or
    ``None``), ids (N external ids in order), vectors ((N, D) float32), centroids ((nlist, D) float32 or
    ``None``).
    """

    dim: int
    metric: str
    backend: str
    backend_params: dict[str, Any]
    fingerprint: str | None
    id_type: str | None
    ids: list[Any]
    vectors: np.ndarray
    centroids: np.ndarray | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, write: Any) -> dict[str, Any]:
    """Write one file with ``write(f)``, fsync it and return its ``{"sha256", "bytes"}`` entry."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def _is_replaceable(path: Path) -> bool:
    """True if ``path`` is absent, an empty directory, or a directory holding a saved item index."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(path: Path, state: IndexState) -> None:
    """Write ``state`` to the directory ``path`` atomically (see the module docstring)."""
    path = path.absolute()
    if not _is_replaceable(path):
        raise ItemIndexError(f"refusing to overwrite {path}: it exists and is not a saved item index")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        files = {
            "vectors.npy": _write(tmp / "vectors.npy", lambda f: np.save(f, state.vectors)),
            "ids.json": _write(tmp / "ids.json", lambda f: f.write(json.dumps(state.ids).encode())),
        }
        if state.centroids is not None:
            files["centroids.npy"] = _write(tmp / "centroids.npy", lambda f: np.save(f, state.centroids))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": state.dim,
            "metric": state.metric,
            "backend": state.backend,
            "backend_params": state.backend_params,
            "count": len(state.ids),
            "fingerprint": state.fingerprint,
            "id_type": state.id_type,
            "files": files,
        }
        _write(tmp / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        _fsync_dir(tmp)
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old.exists():
                os.rename(old, path)
            raise
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _fail(path: Path, problem: str) -> ItemIndexError:
    return ItemIndexError(f"{path}: {problem}")


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise _fail(path, "no saved item index here (directory missing)")
    if not meta_path.is_file():
        raise _fail(meta_path, "missing; not a saved item index")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise _fail(meta_path, f"unreadable or not JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _fail(meta_path, f"foreign file: format is {found!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(meta_path, f"unsupported format_version {meta.get('format_version')!r}")
    checks = {
        "dim": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "metric": lambda v: v in ("ip", "l2"),
        "backend": lambda v: v in ("flat", "ivf", "hnsw"),
        "backend_params": lambda v: isinstance(v, dict),
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "fingerprint": lambda v: v is None or isinstance(v, str),
        "id_type": lambda v: v in ("int", "str", None),
        "files": lambda v: isinstance(v, dict) and {"vectors.npy", "ids.json"} <= set(v),
    }
    for key, ok in checks.items():
        if key not in meta or not ok(meta[key]):
            raise _fail(meta_path, f"bad or missing field {key!r}: {meta.get(key)!r}")
    return meta


def _verify_file(path: Path, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise _fail(path.parent / "meta.json", f"bad checksum entry for {path.name}: {entry!r}")
    if not path.is_file():
        raise _fail(path, "missing")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise _fail(path, f"truncated or altered: {size} bytes, meta.json records {entry.get('bytes')}")
    if sha256_of(path) != entry["sha256"]:
        raise _fail(path, "checksum mismatch (sha256 differs from meta.json): the file is corrupted")


def _read_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _fail(path, f"not a readable .npy array ({err})") from err
    if arr.dtype != np.float32 or arr.shape != shape:
        raise _fail(path, f"holds {arr.dtype} {arr.shape}; expected float32 {shape}")
    return arr


def load(path: Path, expected_fingerprint: str | None = None, expected_dim: int | None = None) -> IndexState:
    """Read and verify a directory written by :func:`save`; every failure names the file at fault."""
    meta = _read_meta(path)
    meta_path = path / "meta.json"
    if expected_dim is not None and meta["dim"] != expected_dim:
        raise _fail(meta_path, f"dim mismatch: saved dim {meta['dim']}, expected {expected_dim}")
    if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
        saved = meta["fingerprint"]
        raise _fail(meta_path, f"fingerprint mismatch: saved {saved!r}, expected {expected_fingerprint!r}")
    unknown = sorted(set(meta["files"]) - set(KNOWN_FILES))
    if unknown:
        raise _fail(meta_path, f"lists unknown files {unknown}")
    for name, entry in meta["files"].items():
        _verify_file(path / name, entry)
    n, dim = meta["count"], meta["dim"]
    vectors = _read_array(path / "vectors.npy", (n, dim))
    ids_path = path / "ids.json"
    try:
        raw = json.loads(ids_path.read_text())
    except (OSError, ValueError) as err:
        raise _fail(ids_path, f"unreadable or not JSON ({err})") from err
    if not isinstance(raw, list) or len(raw) != n:
        got = f"a list of {len(raw)}" if isinstance(raw, list) else type(raw).__name__
        raise _fail(ids_path, f"expected a list of {n} ids (meta.json count), got {got}")
    try:
        ids, _ = as_ids(raw, meta["id_type"], "load")
    except ItemIndexError as err:
        raise _fail(ids_path, str(err)) from err
    if n and meta["id_type"] is None:
        raise _fail(meta_path, "id_type is null but ids are present")
    dup = duplicates(ids)
    if dup:
        raise _fail(ids_path, f"duplicate ids {show(dup)}")
    centroids = None
    if "centroids.npy" in meta["files"]:
        nlist = meta["backend_params"].get("nlist")
        if meta["backend"] != "ivf" or not isinstance(nlist, int):
            raise _fail(meta_path, "centroids.npy listed for a backend without nlist")
        centroids = np.array(_read_array(path / "centroids.npy", (nlist, dim)))
    return IndexState(
        dim=dim,
        metric=meta["metric"],
        backend=meta["backend"],
        backend_params=meta["backend_params"],
        fingerprint=meta["fingerprint"],
        id_type=meta["id_type"],
        ids=ids,
        vectors=vectors,
        centroids=centroids,
    )
