"""The one exception type of ``item_index``."""

from __future__ import annotations


class ItemIndexError(ValueError):
    """Bad input or a bad file: the message names what is wrong (the id, the dims, the file path)."""
