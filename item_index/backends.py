"""The FAISS search structures behind :class:`item_index.ItemIndex`'s approximate backends.

``flat`` needs none: it searches the index's own float32 store (:mod:`item_index.exact`). Here:
:class:`IVFBackend` and :class:`HNSWBackend`, and :class:`FlatBackend`, the FAISS flat index that an IVF
answers through until it is trained. Each stores (key, vector) pairs, where a key is the index's internal
int64 id of an item, and answers ``search(xq, k) -> (distances, keys)`` with FAISS conventions: distances
are inner products (higher is better) for ``"ip"`` and squared L2 distances (lower is better) for
``"l2"``; missing results have key ``-1``. They share no base class; each has ``add``, ``remove``,
``search``, ``ntotal`` and ``wants_rebuild``. Shapes: N items, D dim, Q queries, K results per query.

Defaults. Approximate search only pays where the data has cluster structure; random Gaussian data has
none and is the worst case. Each default is stated with the recall@10 against exact search it gives;
measure on your own vectors with ``bench/item_index_scale.py`` (``--nprobe`` sweeps the IVF setting).

- ``ivf``: ``nlist=1024`` lists; ``nprobe=None`` meaning ``min(nlist, max(8, ceil(nlist / 16)))`` lists
  probed (64 of 1,024). The rule comes from a sweep on clustered synthetic data, 100,000 x 576 vectors,
  nlist=1024, batch 64 (BENCHMARKS.md, "IVF nprobe sweep"). On the six settings with clusters the lists
  can follow (4,096, 256, 64 or 16 centres, noise of norm 0.5 to 2), the smallest nprobe with recall@10
  >= 0.95 was 1, 1, 4, 16, 16 and 64 (16 large noisy clusters), and nprobe=64 gave 0.997 to 1.000 on all
  six, at about 1/15 of the time of probing every list. Probing more does not pay: from about nlist / 16
  to nlist / 8 lists an IVF search at batch 64 costs as much as an exact ``flat`` one (a single query
  stays about 10x cheaper). Where the clusters are too weak for the lists (4,096 centres, noise of norm 2)
  or absent (random data) the default gives 0.37 and 0.24: use ``flat`` for such data, or raise
  ``nprobe`` (see the sweep). The floor of 8 lists is for small ``nlist``: at 5,000 x 64 with
  ``nlist=64``, 8 lists gave 0.97 to 1.00 on three clustered settings and 0.85 on the weakest
  (tests/test_item_index_ann.py checks one). The IVF is trained on the ``add`` that brings the item
  count to ``39 * nlist`` (FAISS's minimum of 39 training points per list; 39,936 items for the
  default), on all vectors present then (FAISS subsamples to 256 per list); until then search is exact
  (a FAISS flat index). The centroids are kept afterwards, also across removals and through
  ``save``/``load``; they are not retrained as the catalog grows (build a new index to retrain).
- ``hnsw``: ``M=32`` links per node, ``ef_construction=100``, ``ef_search=256``. Recall@10: 1.00 at
  5,000 x 64 (tests); on random dim-576 data it falls with size (0.33 at 150k items, 0.69 with
  ``ef_search=1024``; BENCHMARKS.md), where no practical ``ef_search`` reaches 0.95: use flat or ivf for
  such data. FAISS cannot remove from an HNSW graph, so removed and replaced items stay in the graph,
  marked stale, and are filtered out during search with an ``IDSelectorBitmap`` (they still serve as
  stepping stones); when stale nodes outnumber live ones, ``wants_rebuild`` turns true and the owner
  rebuilds the graph from its vectors at the next search (a full build: minutes at 100k+ items on 2 cores).
- Exact settings (used by the tests): ``flat``; ``ivf`` with ``nprobe == nlist``; ``hnsw`` with
  ``ef_search`` at least the number of graph nodes (every node reachable from the entry point is then
  visited; FAISS's graphs on small catalogs are connected in practice: 1,500 random churn sequences of
  up to a few hundred items matched brute force).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from item_index.errors import ItemIndexError

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
IVF_DEFAULTS: dict[str, int | None] = {"nlist": 1024, "nprobe": None}
HNSW_DEFAULTS: dict[str, int | None] = {"M": 32, "ef_construction": 100, "ef_search": 256}
MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per centroid


def resolve_params(backend: str, params: dict[str, Any]) -> dict[str, Any]:
    """The backend's parameters with defaults filled in; unknown names or non-positive ints raise."""
    if backend == "flat":
        defaults: dict[str, Any] = {}
    elif backend == "ivf":
        defaults = IVF_DEFAULTS
    elif backend == "hnsw":
        defaults = HNSW_DEFAULTS
    else:
        raise ItemIndexError(f"unknown backend {backend!r}; expected 'flat', 'ivf' or 'hnsw'")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ItemIndexError(f"backend {backend!r} has no parameters {unknown}; it takes {sorted(defaults)}")
    out = {**defaults, **params}
    for name, value in out.items():
        optional = name == "nprobe" and value is None
        if not optional and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ItemIndexError(f"backend parameter {name}={value!r} must be a positive int")
    if backend == "ivf" and out["nprobe"] is not None and out["nprobe"] > out["nlist"]:
        raise ItemIndexError(f"nprobe={out['nprobe']} is larger than nlist={out['nlist']}")
    return out


def default_nprobe(nlist: int) -> int:
    """IVF lists probed when ``nprobe`` is not given: ``min(nlist, max(8, ceil(nlist / 16)))`` (module
    docstring: the sweep it comes from).

    Example:
        >>> default_nprobe(1024), default_nprobe(64), default_nprobe(4)
        (64, 8, 4)
    """
    return min(nlist, max(8, math.ceil(nlist / 16)))


class FlatBackend:
    """Exact search for an IVF not yet trained: ``IndexFlatIP`` / ``IndexFlatL2`` plus a node -> key array.

    Not ``IndexIDMap``: its label translation opens an OpenMP region on every search, which costs
    milliseconds per single-query search when the cores are busy (measured: 16 ms vs 0.26 ms at 3k items
    on a loaded 2-core machine). FAISS's ``remove_ids`` on a flat index keeps the order of the remaining
    rows, so deleting the same positions from ``node_keys`` keeps the two aligned.
    """

    def __init__(self, dim: int, metric: str) -> None:
        self.index = faiss.IndexFlat(dim, METRICS[metric])
        self.node_keys = np.empty(0, dtype=np.int64)  # (nodes,) key of each stored row
        self.wants_rebuild = False

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Args: keys (N,) int64, vectors (N, D) float32."""
        self.index.add(vectors)
        self.node_keys = np.concatenate([self.node_keys, np.asarray(keys, dtype=np.int64)])

    def remove(self, keys: np.ndarray) -> None:
        gone = np.flatnonzero(np.isin(self.node_keys, keys))  # (R,) positions, ascending
        self.index.remove_ids(gone.astype(np.int64))
        self.node_keys = np.delete(self.node_keys, gone)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Args: xq (Q, D) float32. Returns: distances (Q, K) float32, keys (Q, K) int64."""
        dist, nodes = self.index.search(xq, k)
        return dist, np.where(nodes >= 0, self.node_keys[np.maximum(nodes, 0)], -1)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys (N,), vectors (N, D)) in FAISS's storage order."""
        return self.node_keys.copy(), self.index.reconstruct_n(0, self.ntotal)


class IVFBackend:
    """``IndexIVFFlat``, exact through a :class:`FlatBackend` until it holds ``39 * nlist`` items."""

    def __init__(
        self,
        dim: int,
        metric: str,
        nlist: int = 1024,
        nprobe: int | None = None,
        centroids: np.ndarray | None = None,
    ) -> None:
        """Args:
        dim, metric: as for the index.
        nlist: number of inverted lists (k-means centroids).
        nprobe: lists scanned per query; ``None`` means :func:`default_nprobe` of ``nlist``.
        centroids: (nlist, D) float32 trained centroids to start from (used by ``load``); ``None``
            to train lazily.
        """
        self.dim, self.metric, self.nlist = dim, metric, nlist
        self.nprobe = nprobe if nprobe is not None else default_nprobe(nlist)
        self.train_at = MIN_POINTS_PER_LIST * nlist
        self.wants_rebuild = False
        self.flat: FlatBackend | None = FlatBackend(dim, metric)
        self.ivf: faiss.IndexIVFFlat | None = None
        if centroids is not None:
            self._make_ivf(centroids)

    @property
    def is_trained(self) -> bool:
        return self.ivf is not None

    @property
    def ntotal(self) -> int:
        return self.flat.ntotal if self.ivf is None else int(self.ivf.ntotal)

    def _make_ivf(self, centroids: np.ndarray | None, train: np.ndarray | None = None) -> None:
        quantizer = faiss.IndexFlat(self.dim, METRICS[self.metric])
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, METRICS[self.metric])
        if centroids is not None:
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            ivf.is_trained = True
        else:
            ivf.train(train)
        ivf.nprobe = self.nprobe
        self._quantizer = quantizer  # the IVF does not own it from Python; keep it alive
        self.ivf = ivf
        if self.flat is not None and self.flat.ntotal:
            keys, vectors = self.flat.contents()
            ivf.add_with_ids(vectors, keys)
        self.flat = None

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Args: keys (N,) int64, vectors (N, D) float32. Trains the IVF when the count reaches the rule."""
        if self.ivf is None and self.flat.ntotal + len(keys) >= self.train_at:
            _, held = self.flat.contents()
            self._make_ivf(None, train=np.concatenate([held, vectors]))
        if self.ivf is None:
            self.flat.add(keys, vectors)
        else:
            self.ivf.add_with_ids(vectors, keys)

    def remove(self, keys: np.ndarray) -> None:
        if self.ivf is None:
            self.flat.remove(keys)
        else:
            self.ivf.remove_ids(np.ascontiguousarray(keys, dtype=np.int64))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Args: xq (Q, D) float32. Returns: distances (Q, K) float32, keys (Q, K) int64."""
        return self.flat.search(xq, k) if self.ivf is None else self.ivf.search(xq, k)

    def centroids(self) -> np.ndarray | None:
        """(nlist, D) float32 centroids once trained, else ``None``."""
        return None if self.ivf is None else self._quantizer.reconstruct_n(0, self.nlist)


class HNSWBackend:
    """``IndexHNSWFlat`` with removal by marking: stale graph nodes are filtered out at search time."""

    def __init__(self, dim: int, metric: str, M: int = 32, ef_construction: int = 100, ef_search: int = 256):
        """Args:
        dim, metric: as for the index.
        M: graph links per node (2 * M on the bottom layer).
        ef_construction: candidate list size while inserting.
        ef_search: candidate list size while searching (raised to K when K is larger).
        """
        self.index = faiss.IndexHNSWFlat(dim, M, METRICS[metric])
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.ef_search = ef_search
        self.node_keys = np.empty(0, dtype=np.int64)  # (nodes,) key of each graph node, -1 when stale
        self.n_stale = 0

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - self.n_stale

    @property
    def wants_rebuild(self) -> bool:
        return self.n_stale > self.ntotal

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Args: keys (N,) int64, vectors (N, D) float32; appended as new graph nodes."""
        self.index.add(vectors)
        self.node_keys = np.concatenate([self.node_keys, np.asarray(keys, dtype=np.int64)])

    def remove(self, keys: np.ndarray) -> None:
        stale = np.isin(self.node_keys, keys) & (self.node_keys >= 0)  # (nodes,)
        self.node_keys[stale] = -1
        self.n_stale += int(stale.sum())

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Args: xq (Q, D) float32. Returns: distances (Q, K) float32, keys (Q, K) int64."""
        if self.n_stale == 0:
            dist, nodes = self.index.search(xq, k)
        else:
            live_bits = np.packbits(self.node_keys >= 0, bitorder="little")  # bit i: node i is live
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.ef_search
            params.sel = faiss.IDSelectorBitmap(len(self.node_keys), faiss.swig_ptr(live_bits))
            dist, nodes = self.index.search(xq, k, params=params)
        keys = np.where(nodes >= 0, self.node_keys[np.maximum(nodes, 0)], -1)  # (Q, K)
        return dist, keys
