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
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrec.backbone import final_hidden, last_token_states
from rrec.rollout import left_pad


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
    hidden, _ = final_hidden(lm, ids, mask, position_ids=pos, past_key_values=cache, use_cache=True)
    return hidden[:, -1].float()
