"""The item table, built by the model itself: each item's prompt ends with ``<answer>``, and the item
state is the final hidden state there (the same pooling rule as the user state, so both live in one
space).

Letters: N items, L tokens, D hidden.

Encoding is a length-sorted batched loop under ``torch.inference_mode``: sorting by token count keeps
padding to a minimum (ML-100K item prompts are 40-90 tokens), and results are scattered back to the
caller's order. States are returned in float32 whatever the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrec.backbone import last_token_states
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
) -> Tensor:
    """(N, D) float32 final hidden state at the last token of each sequence, in input order.

    With ``grad=True`` the forward keeps the graph (training the item side through the batch targets);
    otherwise it runs in inference mode.
    """
    if len(token_lists) == 0:
        raise ValueError("no items to encode")
    device = next(lm.parameters()).device
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    out: list[Tensor | None] = [None] * len(token_lists)
    bar = tqdm(total=len(order), desc=desc, unit="item", disable=not progress, leave=False)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = left_pad([token_lists[i] for i in chunk], pad_id, device=device)
            states = last_token_states(lm, ids, mask).float()  # (b, D)
            for j, i in enumerate(chunk):
                out[i] = states[j]
            bar.update(len(chunk))
    bar.close()
    return torch.stack(out)  # type: ignore[arg-type]
