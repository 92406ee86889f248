"""Atomic writes: a file or a folder appears whole, or not at all.

Everything goes to a temporary name beside its target (``.{name}.tmp-*``), is fsynced, and is renamed
into place: readers (and a run resumed after a crash) see the old content or the new, never a mix, and a
failure leaves the old content untouched. ``atomic_write_text`` / ``atomic_write_json`` do this for one
file (``os.replace``), ``atomic_folder`` for a folder (a run's final model, every training checkpoint of
``rrec.checkpoint``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsync, ``os.replace``.

    Readers see the old content or the new, never a mix; on any error the old file is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written by ``atomic_write_text``."""
    atomic_write_text(path, json.dumps(obj, indent=2))


@contextmanager
def atomic_folder(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``directory``; when the block succeeds, its files are fsynced and
    the folder is renamed to ``directory`` (an existing one is replaced); when it fails, it is removed
    and ``directory`` is untouched. Temporary folders left by a crash are removed first."""
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        if directory.exists():  # the one non-atomic moment: between these two renames
            os.rename(directory, old)
        try:
            os.rename(tmp, directory)
        except BaseException:
            if old.exists():
                os.rename(old, directory)
            raise
        _fsync(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
