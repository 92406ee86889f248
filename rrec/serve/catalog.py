"""Catalog versions for a running service: each change builds a new table beside the old one, then swaps.

A :class:`TableVersion` is never changed once made: its item index, its (N, D) table tensor, its live
records and the records of removed items (which histories may still name). :class:`VersionedCatalog`
holds the current one; a change (:meth:`VersionedCatalog.apply`) encodes the new and changed items,
copies the old rows into a fresh index and only then replaces the reference, one assignment, so a reader
sees the old version or the new one, never half of either. A batch that took the old version finishes on
it. Changes run one at a time.

The rows are the ones ``ReasoningRecommender.update_items`` would write: a changed item keeps its place
and its learned ID vector, a new one goes last and is scored by its text alone (also an id removed and
added again: its ID vector went with it), a removed one leaves the index while its text stays for prompts.

The fingerprint names a version's content: sha256 over the ids and the float32 rows, in order (16 hex).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from item_index import ItemIndex
from rrec.id_vectors import hybrid_rows
from rrec.inputs import check_finite


@dataclass(frozen=True)
class TableVersion:
    """One catalog state: ``index`` (ids + rows), ``table`` (N, D) on the model's device, the live
    ``catalog`` records, the ``removed`` records, a ``number`` counting from 0 and the ``fingerprint``."""

    number: int
    fingerprint: str
    index: ItemIndex
    table: Tensor
    catalog: Mapping[str, Mapping]
    removed: Mapping[str, Mapping]

    def knows(self, item_id: str) -> bool:
        """Whether a history may name ``item_id`` (a live or a removed item)."""
        return item_id in self.catalog or item_id in self.removed

    def install(self, model) -> None:
        """Point ``model``'s catalog and item table at this version (called by the one inference thread)."""
        model.catalog, model.removed_items = self.catalog, self.removed  # read only: never update_items
        model.rec_head = self.index
        model._table = self.table  # the cached torch copy, so a batch does not copy the table again


def fingerprint(ids: Sequence[str], rows: np.ndarray) -> str:
    """sha256 of the ids (NUL-separated) and the float32 rows (N, D), first 16 hex digits."""
    h = hashlib.sha256("\0".join(ids).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def make_version(
    number: int, template: ItemIndex, ids: list[str], rows: np.ndarray, catalog, removed, device
) -> TableVersion:
    """A :class:`TableVersion` with a fresh index like ``template`` (its backend, parameters) of ``rows``."""
    index = ItemIndex(template.dim, metric="ip", backend=template.backend, **template.backend_params)
    index.add(ids, rows)
    table = index.as_tensor(device=device)
    return TableVersion(number, fingerprint(ids, rows), index, table, dict(catalog), dict(removed))


@dataclass
class Change:
    """What one :meth:`VersionedCatalog.apply` did: the ids ``added``, ``changed``, ``removed``, and the
    new ``version``."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    version: TableVersion


class VersionedCatalog:
    """The current :class:`TableVersion` of a loaded model, and atomic changes to it.

    Args:
        model: a ``ReasoningRecommender`` with an item table (``build_item_table`` or loaded).
        model_lock: held while the model encodes (the inference thread holds it per batch), so encoding
            and inference never run on the model at the same time; they interleave per chunk.
        chunk: items encoded per lock hold.
    """

    def __init__(self, model, model_lock: AbstractContextManager | None = None, chunk: int = 32) -> None:
        self.model, self.chunk = model, chunk
        self.model_lock = model_lock if model_lock is not None else nullcontext()
        self._change_lock = threading.Lock()
        index = model.rec_head
        if index is None:
            raise ValueError("the model has no item table: call build_item_table first")
        ids = [str(i) for i in index.ids]
        rows = index.vectors_for(ids) if ids else np.empty((0, index.dim), np.float32)
        self.current = make_version(0, index, ids, rows, model.catalog, model.removed_items, model.device)

    def _rows(self, records: dict[str, dict], removed: Mapping[str, Mapping]) -> np.ndarray:
        """(n, D) table rows for ``records``, encoded chunk by chunk under the model lock."""
        out = []
        items = list(records.items())
        for start in range(0, len(items), self.chunk):
            part = dict(items[start : start + self.chunk])
            ids = list(part)
            with self.model_lock:
                text = self.model.encode_items(list(part.values()), progress=False)  # (n, D)
            check_finite(text, "item states", labels=ids)
            rows = self.model.table_rows(ids, text)
            again = [j for j, i in enumerate(ids) if i in removed]  # removed then added: text alone
            if again:
                cosine = self.model.config.similarity == "cosine"
                rows[again] = hybrid_rows(text[again], None, cosine).to(rows.dtype)
            out.append(rows.detach().float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.current.index.dim), np.float32)

    def apply(self, upserts: Sequence[Mapping] = (), remove: Sequence[str] = ()) -> Change:
        """Add or replace the items ``upserts`` (records with ``item_id`` and ``title``) and remove
        ``remove``, as one new version; returns a :class:`Change`.

        Raises:
            KeyError: a removed id is not in the catalog.
            ValueError: an id is both upserted and removed, or repeats; NaN or inf states (nothing swapped).
        """
        with self._change_lock:
            old = self.current
            records = {str(r["item_id"]): {**r, "item_id": str(r["item_id"])} for r in upserts}
            if len(records) != len(upserts):
                raise ValueError("an item id repeats in the change")
            gone = [str(i) for i in remove]
            if len(set(gone)) != len(gone):
                raise ValueError("an id to remove repeats")
            missing = [i for i in gone if i not in old.catalog]
            if missing:
                raise KeyError(f"not in the catalog: {missing[:5]}")
            both = sorted(set(gone) & set(records))
            if both:
                raise ValueError(f"ids both added and removed: {both[:5]}")
            fresh = self._rows(records, old.removed)  # the slow part: the old version serves meanwhile
            row_of = {i: j for j, i in enumerate(records)}
            dropped = set(gone)
            kept = [i for i in old.index.ids if i not in dropped]
            rows = old.index.vectors_for(kept) if kept else np.empty((0, old.index.dim), np.float32)
            for j, i in enumerate(kept):
                if i in row_of:
                    rows[j] = fresh[row_of[i]]
            added = [i for i in records if i not in old.catalog]
            ids = kept + added
            if added:
                rows = np.concatenate([rows, fresh[[row_of[i] for i in added]]])
            catalog = {i: r for i, r in old.catalog.items() if i not in dropped} | records
            removed = {i: r for i, r in old.removed.items() if i not in records}
            removed |= {i: old.catalog[i] for i in gone}
            version = make_version(old.number + 1, old.index, ids, rows, catalog, removed, self.model.device)
            self.current = version  # the swap: one reference assignment
            changed = [i for i in records if i in old.catalog]
            return Change(added=added, changed=changed, removed=gone, version=version)
