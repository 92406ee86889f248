"""``ItemIndex``: item vectors under stable external ids, searched exactly (flat) or through FAISS.

The exact float32 numpy copy of the vectors is the source of truth (``vectors_for``, ``as_tensor``,
rebuilds, ``save``). ``flat`` searches it directly (:mod:`item_index.exact`: BLAS in blocks, exact ties);
``ivf`` and ``hnsw`` keep a FAISS structure (see :mod:`item_index.backends`) that only answers searches.
Each live item has an internal int64 *key*, handed out in increasing order and kept by ``replace``; the
store's rows are in insertion order, so the keys of its rows (removed rows included) are sorted and a
key's row is found by binary search. Removed rows are dropped from the store ("compacted") when they
outnumber the live ones or when a row position is needed (``ids``, ``position_of``, ``as_tensor``, ``save``).
Shapes: N items, D dim, Q queries, K results per query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from item_index import exact, storage
from item_index.backends import HNSWBackend, IVFBackend, resolve_params
from item_index.errors import ItemIndexError
from item_index.inputs import Id, as_ids, as_vectors, duplicates, normalize_id, show
from item_index.ranking import excluded_keys, rank_candidates


class ItemIndex:
    """Item vectors under external ids (all int or all str), with exact or approximate top-k search.

    Args:
        dim: D, the vector size.
        metric: ``"ip"`` (inner product; normalise rows for cosine) or ``"l2"`` (squared Euclidean).
        backend: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate; parameters and their defaults
            in :mod:`item_index.backends`: ivf ``nlist=1024, nprobe=None`` (= 64 at nlist 1024), hnsw
            ``M=32, ef_construction=100, ef_search=256``).
        **backend_params: the backend's parameters.

    Example:
        >>> index = ItemIndex(2, metric="ip")
        >>> index.add([10, 20, 30], np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
        >>> scores, ids = index.search(np.array([[2, 1]], dtype=np.float32), k=2)
        >>> scores.tolist(), ids.tolist()  # 2*1+1*1 = 3 for item 30, 2*1+1*0 = 2 for item 10
        ([[3.0, 2.0]], [[30, 10]])
    """

    def __init__(self, dim: int, metric: str = "ip", backend: str = "flat", **backend_params: Any) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ItemIndexError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("ip", "l2"):
            raise ItemIndexError(f"unknown metric {metric!r}; expected 'ip' or 'l2'")
        self.dim, self.metric, self.backend = dim, metric, backend
        self.backend_params = resolve_params(backend, backend_params)
        self._fingerprint: str | None = None
        self._id_type: str | None = None
        self._key_of: dict[Id, int] = {}  # external id -> key, live items only
        self._next_key = 0
        self._n_rows = 0  # rows in use in the store, removed ones included
        self._vecs = np.empty((0, dim), dtype=np.float32)  # (capacity, D)
        self._sq_norms = np.empty(0, dtype=np.float64)  # (capacity,) |x|^2 of each row, for flat search
        self._keys = np.empty(0, dtype=np.int64)  # (capacity,) key of each row, ascending
        self._live = np.empty(0, dtype=bool)  # (capacity,)
        self._ext = np.empty(0, dtype=object)  # (capacity,) external id of each row
        self._backend = self._new_backend()

    def _new_backend(self, centroids: np.ndarray | None = None) -> IVFBackend | HNSWBackend | None:
        """The FAISS structure; ``None`` for flat, which searches the store itself."""
        if self.backend == "flat":
            return None
        if self.backend == "ivf":
            return IVFBackend(self.dim, self.metric, centroids=centroids, **self.backend_params)
        return HNSWBackend(self.dim, self.metric, **self.backend_params)

    # ----------------------------------------------------------------- catalog
    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, item_id: object) -> bool:
        try:
            return normalize_id(item_id) in self._key_of
        except TypeError:  # unhashable
            return False

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.backend_params.items())
        head = f"ItemIndex(dim={self.dim}, metric={self.metric!r}, backend={self.backend!r}"
        return f"{head}, {params}) with {len(self)} items"

    @property
    def ids(self) -> list[Id]:
        """The live external ids in insertion order (a replaced id keeps its place)."""
        self._compact()
        return self._ext[: self._n_rows].tolist()

    @property
    def id_type(self) -> str | None:
        """``"int"`` or ``"str"``, fixed by the first ``add``; ``None`` before it."""
        return self._id_type

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint last given to ``save`` or read by ``load`` (``None`` if neither)."""
        return self._fingerprint

    def _known(self, ids: Any, what: str, unique: bool) -> tuple[list[Id], np.ndarray]:
        """Check that ``ids`` are present (and distinct if ``unique``); return them and their keys (N,)."""
        ids, _ = as_ids(ids, self._id_type, what)
        dup = duplicates(ids) if unique else []
        if dup:
            raise ItemIndexError(f"{what}: duplicate ids {show(dup)}")
        missing = [i for i in ids if i not in self._key_of]
        if missing:
            raise ItemIndexError(f"{what}: unknown ids {show(missing)}")
        return ids, np.array([self._key_of[i] for i in ids], dtype=np.int64)

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """(N,) store rows of live keys (N,)."""
        return np.searchsorted(self._keys[: self._n_rows], keys)

    def add(self, ids: Any, vectors: Any) -> None:
        """Add new items.

        Args:
            ids: N new external ids (int or str, the index's type, none already present, no repeats).
            vectors: (N, D) float32 array or tensor, finite.
        """
        ids, id_type = as_ids(ids, self._id_type, "add")
        dup = duplicates(ids) + [i for i in ids if i in self._key_of]
        if dup:
            raise ItemIndexError(f"add: duplicate ids (already present or repeated) {show(dup)}")
        vectors = as_vectors(vectors, self.dim, len(ids), "add", ids)
        if not ids:
            return
        self._set_id_type(id_type)
        n, start = len(ids), self._n_rows
        self._reserve(start + n)
        keys = np.arange(self._next_key, self._next_key + n, dtype=np.int64)  # (N,)
        self._vecs[start : start + n] = vectors
        self._sq_norms[start : start + n] = np.square(vectors, dtype=np.float64).sum(axis=1)
        self._keys[start : start + n] = keys
        self._live[start : start + n] = True
        self._ext[start : start + n] = ids
        self._key_of.update(zip(ids, keys.tolist(), strict=True))
        self._n_rows += n
        self._next_key += n
        if self._backend is not None:
            self._backend.add(keys, vectors)

    def remove(self, ids: Any) -> None:
        """Remove items. Args: ids: N present external ids, no repeats."""
        ids, keys = self._known(ids, "remove", unique=True)
        for i in ids:
            del self._key_of[i]
        self._live[self._rows(keys)] = False
        if self._backend is not None:
            self._backend.remove(keys)
        if self._n_rows - len(self) > max(len(self), 1024):
            self._compact()

    def replace(self, ids: Any, vectors: Any) -> None:
        """Give present items new vectors; each keeps its id, key and place in ``ids``.

        Args:
            ids: N present external ids, no repeats.
            vectors: (N, D) float32 array or tensor, finite.
        """
        ids, keys = self._known(ids, "replace", unique=True)
        vectors = as_vectors(vectors, self.dim, len(ids), "replace", ids)
        rows = self._rows(keys)
        self._vecs[rows] = vectors
        self._sq_norms[rows] = np.square(vectors, dtype=np.float64).sum(axis=1)
        if self._backend is not None:
            self._backend.remove(keys)
            self._backend.add(keys, vectors)

    def vectors_for(self, ids: Any) -> np.ndarray:
        """Args: ids: N present external ids. Returns: (N, D) float32, a copy of the stored vectors."""
        _, keys = self._known(ids, "vectors_for", unique=False)
        return self._vecs[self._rows(keys)]

    def position_of(self, ids: Any) -> np.ndarray:
        """Args: ids: N present external ids. Returns: (N,) int64 row of each in ``ids`` / ``as_tensor``."""
        _, keys = self._known(ids, "position_of", unique=False)
        self._compact()
        return self._rows(keys).astype(np.int64)

    def as_tensor(self, device: Any = None, dtype: Any = None) -> Any:
        """All vectors as a new torch tensor (N, D), rows in ``ids`` order (for a training-time item head).

        Args:
            device: torch device (CPU when ``None``).
            dtype: torch dtype, ``torch.float32`` when ``None``.
        """
        import torch

        self._compact()
        table = torch.from_numpy(self._vecs[: self._n_rows])  # (N, D) view of the store
        return table.to(device=device or "cpu", dtype=dtype or torch.float32, copy=True)

    def _set_id_type(self, id_type: str | None) -> None:
        """Fix the id type on the first add (int ids are then kept in an int64 array)."""
        if self._id_type is None and id_type is not None:
            self._id_type = id_type
            self._ext = np.empty(0, dtype=np.int64 if id_type == "int" else object)

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._vecs):
            return
        cap = max(rows, int(1.5 * len(self._vecs)), 16)
        n = self._n_rows
        for name in ("_vecs", "_sq_norms", "_keys", "_live", "_ext"):
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), dtype=old.dtype)
            new[:n] = old[:n]
            setattr(self, name, new)

    def _compact(self) -> None:
        """Drop removed rows from the store (keys stay; FAISS is untouched)."""
        if self._n_rows == len(self):
            return
        live = np.flatnonzero(self._live[: self._n_rows])  # (N,)
        n = len(live)
        self._vecs, self._sq_norms = self._vecs[live], self._sq_norms[live]
        self._keys, self._ext = self._keys[live], self._ext[live]
        self._live = np.ones(n, dtype=bool)
        self._n_rows = n

    def _refresh(self) -> None:
        """Rebuild the backend from the store when it asks to (HNSW after many removals)."""
        if self._backend is not None and self._backend.wants_rebuild:
            self._compact()
            backend = self._new_backend()
            backend.add(self._keys[: self._n_rows], self._vecs[: self._n_rows])
            self._backend = backend

    # ----------------------------------------------------------------- search
    def search(self, xq: Any, k: int, exclude: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query, best first.

        Scores are inner products for ``"ip"`` and negated squared L2 distances for ``"l2"`` (higher is
        better for both). Equal scores are ordered by insertion order (a replaced item keeps its place).
        ``flat`` is exact over the whole catalog: the top ``k`` by the float64 score of the float32
        vectors, ties by insertion order, also at the cut (see :mod:`item_index.exact`); ``ivf`` and
        ``hnsw`` apply the tie rule to the candidates FAISS returns. When fewer than ``k`` items are left
        (small catalog, exclusions, or an approximate backend that found fewer), the row is padded with
        score ``-inf`` and id ``-1`` (int ids) or ``None`` (str ids).

        Args:
            xq: (Q, D) float32 numpy array or torch tensor on any device (copied to the CPU).
            k: K, results per query.
            exclude: optional list of Q iterables of ids to leave out for each query (``None`` entries
                allowed); ids not in the index are ignored. K results still come back when the catalog
                has enough items (``ivf`` / ``hnsw`` fetch K + (number excluded) candidates).

        Returns:
            ``(scores, ids)``: (Q, K) float32 and (Q, K) ids, int64 when the index holds int ids and an
            object array of str otherwise.
        """
        xq = as_vectors(xq, self.dim, None, "search")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ItemIndexError(f"search: k must be a positive int, got {k!r}")
        excluded = excluded_keys(exclude, len(xq), self._key_of)
        self._refresh()
        fetch = min(int(k) + max((len(e) for e in excluded), default=0), len(self))
        if self._backend is None:  # flat: exact search over the store
            n = self._n_rows
            ex_rows = [self._rows(np.fromiter(e, np.int64, len(e))) for e in excluded]
            scores, rows = exact.top_k(
                self._vecs[:n], self._sq_norms[:n], self._live[:n], xq, int(k), self.metric, ex_rows
            )
        elif fetch == 0:
            scores, rows = np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1)
        else:
            dist, keys = self._backend.search(xq, fetch)  # (Q, F), F = fetch
            scores, rows = rank_candidates(dist, keys, self._rows, self.metric, int(k), excluded)  # (Q, K)
        ids = np.full(rows.shape, -1 if self._id_type == "int" else None, dtype=self._ext.dtype)
        ids[rows >= 0] = self._ext[rows[rows >= 0]]
        return scores, ids

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path, fingerprint: str | None = None) -> None:
        """Write the index to the directory ``path`` atomically (see :func:`item_index.storage.save`).

        Args:
            path: target directory; an existing item index there is replaced only once the new one is
                complete.
            fingerprint: a string describing what the vectors were computed from (model, data, item
                prompt); ``None`` keeps the current :attr:`fingerprint`.
        """
        self._compact()
        fingerprint = fingerprint if fingerprint is not None else self._fingerprint
        centroids = self._backend.centroids() if isinstance(self._backend, IVFBackend) else None
        state = storage.IndexState(
            dim=self.dim,
            metric=self.metric,
            backend=self.backend,
            backend_params=self.backend_params,
            fingerprint=fingerprint,
            id_type=self._id_type,
            ids=self._ext[: self._n_rows].tolist(),
            vectors=self._vecs[: self._n_rows],
            centroids=centroids,
        )
        storage.save(Path(path), state)
        self._fingerprint = fingerprint

    @classmethod
    def load(
        cls, path: str | Path, expected_fingerprint: str | None = None, expected_dim: int | None = None
    ) -> ItemIndex:
        """Read an index written by :meth:`save`, verifying checksums, and rebuild its FAISS structure.

        The rebuild costs what building costs: a copy for flat, assigning every vector to the saved
        centroids for ivf, a full graph build for hnsw (minutes per 100k items on 2 cores).

        Args:
            path: the directory given to ``save``.
            expected_fingerprint: if given, the saved fingerprint must equal it.
            expected_dim: if given, the saved dim must equal it.

        Raises:
            ItemIndexError: a missing, truncated, corrupted or foreign file, or a mismatch; the message
                names the file.
        """
        path = Path(path)
        state = storage.load(path, expected_fingerprint, expected_dim)
        try:
            index = cls(state.dim, state.metric, state.backend, **state.backend_params)
        except ItemIndexError as err:
            raise ItemIndexError(f"{path / 'meta.json'}: {err}") from err
        if state.centroids is not None:
            index._backend = index._new_backend(centroids=state.centroids)
        index._set_id_type(state.id_type)
        index.add(state.ids, state.vectors)
        index._fingerprint = state.fingerprint
        return index
