"""Item vectors under stable external ids, with exact (flat) or approximate (IVF, HNSW) FAISS search.

``item_index`` knows nothing of models or prompts (it never imports ``rrec``): it keeps an exact float32
copy of each item's vector under an int or str id, searches it through a FAISS backend, saves it
atomically with checksums, and hands the table to torch for training-time scoring.

Example:
    >>> import numpy as np
    >>> from item_index import ItemIndex
    >>> index = ItemIndex(2, metric="ip", backend="flat")
    >>> index.add(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    >>> index.search(np.array([[0.2, 0.9]], dtype=np.float32), k=1)[1].tolist()
    [['b']]
"""

from item_index.errors import ItemIndexError
from item_index.index import ItemIndex

__all__ = ["ItemIndex", "ItemIndexError"]
