"""The item table, built by the model itself: each item's prompt ends with ``<answer>``, and the item
state is the final hidden state there (the same pooling rule as the user state, so both live in one
space).

Letters: N items, L tokens, D hidden.

Encoding is a length-sorted batched loop under ``torch.inference_mode``: sorting by token count keeps
padding to a minimum, and results are scattered back to the caller's order. Item prompts share a long
chat-template prefix (system turn, user header: about a third of an ML-100K item prompt), so that prefix
is run once and its KV cache reused by every batch; only the item-specific suffix is computed per item.
Positions continue from the prefix, so the states equal those of the full prompts (tested). States are
returned in float32 whatever the compute dtype.

Catalog checks (:func:`catalog_records`, :func:`check_update`): ids follow
:func:`rrec.prompts.item_id_of` (``str``, or ``int`` converted), must be unique, and an item without a
title is kept with a warning (its prompt says "Untitled item").
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import Counter
from collections.abc import Callable, Container, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrec.backbone import final_hidden, last_token_states
from rrec.prompts import item_id_of, text_of
from rrec.rollout import left_pad


def _show(ids: Sequence, limit: int = 5) -> str:
    return f"{list(ids[:limit])}{' ...' if len(ids) > limit else ''} ({len(ids)} in all)"


def catalog_records(frame: pd.DataFrame, what: str = "catalog") -> dict[str, dict]:
    """Item records by ``str`` id, in frame order, from a DataFrame with ``item_id`` and ``title``.

    Raises:
        ValueError: not a DataFrame, a missing column, an id that is neither str nor int, or a repeated
            id (ids are compared after conversion, so ``50`` and ``"50"`` repeat). ``what`` names the
            frame in the message.

    Warns:
        UserWarning: items without a title (missing, NaN or blank): their prompts say "Untitled item".
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    if "item_id" not in frame.columns or "title" not in frame.columns:
        raise ValueError(f"{what} needs columns 'item_id' and 'title', got {list(frame.columns)}")
    out: dict[str, dict] = {}
    repeated, untitled = [], []
    for r in frame.to_dict("records"):
        try:
            iid = item_id_of(r["item_id"])
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        if iid in out:
            repeated.append(iid)
        if not text_of(r["title"]):
            untitled.append(iid)
        out[iid] = {**r, "item_id": iid}
    if repeated:
        raise ValueError(f"{what}: duplicate item ids {_show(repeated)}")
    if untitled:
        msg = f"{what}: items without a title are written 'Untitled item': {_show(untitled)}"
        warnings.warn(msg, UserWarning, stacklevel=3)
    return out


def check_update(
    present: Container[str],
    added: pd.DataFrame | None,
    removed: Sequence | None,
    changed: pd.DataFrame | None,
) -> tuple[dict[str, dict], list[str], dict[str, dict]]:
    """Check a catalog change against the ids ``present`` in the item table, before anything is encoded.

    Returns:
        (added records by id, removed ids, changed records by id), ids as ``str``.

    Raises:
        ValueError: a repeated id; an added id already present; a removed or changed id absent; an id
            in more than one of ``added``, ``removed``, ``changed``.
    """
    new = catalog_records(added, "added") if added is not None else {}
    upd = catalog_records(changed, "changed") if changed is not None else {}
    if isinstance(removed, str | bytes):
        raise ValueError(f"removed must be a list of item ids, got the string {removed!r}")
    gone = [item_id_of(i) for i in removed] if removed is not None else []
    problems = [
        ("removed: duplicate item ids", [i for i, n in Counter(gone).items() if n > 1]),
        ("added: already in the item table", [i for i in new if i in present]),
        ("removed: not in the item table", [i for i in gone if i not in present]),
        ("changed: not in the item table", [i for i in upd if i not in present]),
        ("in more than one of added / removed / changed", [i for i in gone if i in new or i in upd]),
    ]
    for message, ids in problems:
        if ids:
            raise ValueError(f"update_items: {message}: {_show(ids)}")
    return new, gone, upd


def tokenize_prompts(tokenizer, texts: Sequence[str], answer_id: int) -> list[list[int]]:
    """Tokenize chat-templated prompts that end with ``<answer>`` (checked: that is where we read)."""
    ids = tokenizer(list(texts), add_special_tokens=False).input_ids
    for i, seq in enumerate(ids):
        if not seq or seq[-1] != answer_id:
            raise ValueError(f"prompt {i} does not end with the <answer> token: {texts[i][-60:]!r}")
    return ids


def encode_token_lists(
    lm: nn.Module,
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "encode items",
    grad: bool = False,
    share_prefix: bool = True,
) -> Tensor:
    """(N, D) float32 final hidden state at the last token of each sequence, in input order.

    With ``grad=True`` the forward keeps the graph (training the item side through the batch targets);
    otherwise it runs in inference mode and, with ``share_prefix``, the common prefix is computed once.
    """
    if len(token_lists) == 0:
        raise ValueError("no items to encode")
    device = next(lm.parameters()).device
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    out: list[Tensor | None] = [None] * len(token_lists)
    bar = tqdm(total=len(order), desc=desc, unit="item", disable=not progress, leave=False)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    n_prefix = common_prefix_len(token_lists) if share_prefix and not grad else 0
    with ctx:
        prefix_cache = None
        if n_prefix >= 4:
            prefix = torch.tensor([list(token_lists[0][:n_prefix])], device=device)
            _, prefix_cache = final_hidden(lm, prefix, torch.ones_like(prefix), use_cache=True)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if prefix_cache is None:
                ids, mask = left_pad([token_lists[i] for i in chunk], pad_id, device=device)
                states = last_token_states(lm, ids, mask).float()  # (b, D)
            else:
                states = _suffix_states(lm, [token_lists[i][n_prefix:] for i in chunk], prefix_cache,
                                        n_prefix, pad_id)  # fmt: skip
            for j, i in enumerate(chunk):
                out[i] = states[j]
            bar.update(len(chunk))
    bar.close()
    return torch.stack(out)  # type: ignore[arg-type]


def common_prefix_len(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the prefix all sequences share, leaving at least one token of each as suffix."""
    first, n = token_lists[0], min(len(t) for t in token_lists) - 1
    for seq in token_lists[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _suffix_states(lm: nn.Module, suffixes: list, prefix_cache, n_prefix: int, pad_id: int) -> Tensor:
    """(b, D) states at the last token of ``prefix + suffix`` rows, reusing the prefix's KV cache."""
    device = next(lm.parameters()).device
    ids, smask = left_pad(suffixes, pad_id, device=device)  # (b, S): padding sits between prefix and suffix
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(ids.shape[0])
    mask = torch.cat([torch.ones(ids.shape[0], n_prefix, dtype=smask.dtype, device=device), smask], 1)
    pos = n_prefix + (smask.cumsum(1) - 1).clamp(min=0)  # positions continue after the prefix
    hidden, _ = final_hidden(lm, ids, mask, position_ids=pos, cache=cache, use_cache=True)
    return hidden[:, -1].float()


def cached_states(cache: Path | None, key: object, compute: Callable[[], Tensor]) -> Tensor:
    """``compute()`` (an (N, D) float32 tensor), read from / written to ``cache`` under a hash of ``key``.

    For item states that only a frozen model produces (``item_encoder="base"``): the key holds everything
    they depend on (the base weights' checksum, the dtype, every prompt's token ids), so a hit is exact.
    ``cache=None`` computes every time. The file is written atomically; a corrupt file is recomputed."""
    if cache is None:
        return compute()
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(cache) / f"states-{digest}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except (RuntimeError, OSError, EOFError):
            pass
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out.detach().cpu(), tmp)
    os.replace(tmp, path)
    return out
