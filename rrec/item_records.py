"""The item records that prompts read: the live catalog, plus the text of items removed from it.

``ReasoningRecommender.update_items(removed=...)`` drops items from the item table, so they are never
recommended again, but users' histories still hold them. Their records move from the catalog to a
separate store (``removed``) that only prompts read: a history with a removed item is still written out,
and ``build_item_table`` (which encodes the catalog) never brings them back. An id that is added again
leaves the store.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Mapping


def retire(catalog: dict[str, dict], removed: dict[str, dict], ids: Iterable[str]) -> None:
    """Move the records of ``ids`` from ``catalog`` to ``removed`` (in place; absent ids are skipped)."""
    for i in ids:
        record = catalog.pop(i, None)
        if record is not None:
            removed[i] = record


def revive(removed: dict[str, dict], ids: Iterable[str]) -> None:
    """Forget the removed records of ``ids``: they are live again (added back, or in a new catalog)."""
    if not removed:
        return
    for i in ids:
        removed.pop(i, None)


def prompt_records(catalog: Mapping[str, Mapping], removed: Mapping[str, Mapping]) -> Mapping[str, Mapping]:
    """The records a history may name: the catalog's first, then the removed items' (a view, not a copy)."""
    return ChainMap(catalog, removed) if removed else catalog
