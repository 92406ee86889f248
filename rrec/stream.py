"""All-position user sequences for models without reasoning: one causal pass scores every item boundary.

A *stream* prompt is a head (the chat template's system turn and the opening of the user turn) followed,
for each history item, by the item's line and the ``<answer>`` token::

    <|im_start|>system ...<|im_end|> <|im_start|>user Viewing history, oldest first:
    \\nToy Story (1995)<answer>\\nGoldenEye (1995)<answer>\\nFour Rooms (1995)<answer>

The final hidden state at the ``<answer>`` after item j is the user state that predicts item j+1. Token ids
are built by concatenating separately tokenized pieces (head, then each line, then ``<answer>``), so the ids
of a history are *exactly* a prefix of the ids of any longer history that starts the same way: the state at
the k-th boundary of a chunk equals the state of the per-sample prompt over the chunk's first k items
(causal attention; tested). Training (``rrec.allpos``) cuts a user's time-ordered sequence into chunks of at
most ``max_history + 1`` items that overlap by one item, so every item but the user's first is a target
exactly once, at ~10 tokens per target instead of a ~200-token prompt per target. Inference builds the
per-sample prompt over the last ``max_history`` items of a history.

Differences from the chat prompt of ``rrec.prompts`` (deliberate, for cost): no closing of the user turn and
no assistant header (no reasoning is written in this format), no relative times (the target's time is not
known at a boundary), and a short item line (title and the style's ``item_fields``, ``year`` by default).

Letters: C chunks, L tokens, M boundaries (targets) in a batch, N items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from rrec.prompts import PromptStyle, history_records, item_line

STREAM_HEAD = "Viewing history, oldest first:"


class StreamPrompter:
    """Token ids of stream prompts for one tokenizer, ``<answer>`` id, catalog and style (lines cached)."""

    def __init__(self, tokenizer, answer_id: int, catalog: Mapping[str, Mapping], style: PromptStyle):
        self.tokenizer, self.answer_id, self.catalog, self.style = tokenizer, answer_id, catalog, style
        messages = [{"role": "system", "content": style.system}, {"role": "user", "content": STREAM_HEAD}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        head = text[: text.rindex(STREAM_HEAD) + len(STREAM_HEAD)]  # the user turn stays open
        self.head_ids: list[int] = tokenizer(head, add_special_tokens=False).input_ids
        self._lines: dict[tuple[str, float | None], list[int]] = {}

    def line_ids(self, item_id: str, rating: float | None = None) -> list[int]:
        """Ids of one history line, ``<answer>`` included."""
        key = (item_id, rating if self.style.show_rating else None)
        if key not in self._lines:
            text = "\n" + item_line(self.catalog[item_id], self.style)
            if key[1] is not None and key[1] == key[1]:
                text += f", rated {key[1]:g}/{self.style.rating_scale:g}"
            self._lines[key] = [*self.tokenizer(text, add_special_tokens=False).input_ids, self.answer_id]
        return self._lines[key]

    def ids(self, history: Sequence, ratings: Sequence[float] | None = None) -> tuple[list[int], list[int]]:
        """(token ids, position of the ``<answer>`` after each item) of a history, oldest first.

        ``history`` holds ids or records (``item_id``, optional ``rating``); ``ratings`` overrides them.
        Raises ``KeyError`` for ids absent from the catalog and ``ValueError`` for an empty history.
        """
        recs = history_records(history)
        if not recs:
            raise ValueError("a stream prompt needs at least one history item (its state is read there)")
        unknown = [r["item_id"] for r in recs if r["item_id"] not in self.catalog]
        if unknown:
            raise KeyError(f"{len(unknown)} history items not in the catalog: {unknown[:10]}")
        out, bounds = list(self.head_ids), []
        for j, r in enumerate(recs):
            rating = ratings[j] if ratings is not None else r.get("rating")
            out += self.line_ids(r["item_id"], None if rating is None else float(rating))
            bounds.append(len(out) - 1)
        return out, bounds

    def prompt_ids(self, history: Sequence, max_history: int) -> list[int]:
        """Ids of the per-sample prompt: the last ``max_history`` items; the state is read at the end."""
        recs = history_records(history)
        return self.ids(recs[max(len(recs) - max_history, 0) :])[0]

    def user_prompt_ids(self, history: Sequence, max_history: int) -> tuple[list[int], int]:
        """(ids, number of items cut) of the inference prompt; an empty history is a cold start: the head
        followed directly by ``<answer>``."""
        recs = history_records(history)
        if not recs:
            return [*self.head_ids, self.answer_id], 0
        cut = max(len(recs) - max_history, 0)
        return self.ids(recs[cut:])[0], cut


class Chunk(NamedTuple):
    """One training sequence: a window of a user's items, with its targets."""

    user_id: str
    items: list[str]  # (n,) item ids, oldest first
    ratings: list[float | None]  # (n,)
    positions: list[int]  # (n,) positions of the items in the user's sequence


def user_sequences(samples: pd.DataFrame) -> dict[str, tuple[list[str], list[float | None], list[int]]]:
    """Each user's time-ordered (items, ratings, positions) rebuilt from next-item samples.

    A sample at ``position`` p with target t and a history of the items before it (the last ones) gives
    item t at p and the history's items at p - len(history) .. p - 1. Users keep only their positions that
    the samples cover; a gap (positions missing in the middle) splits nothing here, but chunks never span
    one (``chunk_sequences``).
    """
    seqs: dict[str, dict[int, tuple[str, float | None]]] = {}
    ratings_col = "history_ratings" in samples.columns
    for row in samples.itertuples(index=False):
        seq = seqs.setdefault(str(row.user_id), {})
        p = int(row.position)
        seq[p] = (str(row.target), float(row.rating) if hasattr(row, "rating") else None)
        hist = list(row.history)
        hr = list(row.history_ratings) if ratings_col else [None] * len(hist)
        for k, (iid, r) in enumerate(zip(hist, hr, strict=True)):
            q = p - len(hist) + k
            if q >= 0 and q not in seq:
                seq[q] = (str(iid), None if r is None else float(r))
    out = {}
    for u, seq in seqs.items():
        pos = sorted(seq)
        out[u] = ([seq[q][0] for q in pos], [seq[q][1] for q in pos], pos)
    return out


def chunk_sequences(samples: pd.DataFrame, max_history: int) -> list[Chunk]:
    """Windows of at most ``max_history + 1`` consecutive items, overlapping by one item.

    Every item of a user's sequence except the first is the target of exactly one boundary, whose context is
    the 1 .. ``max_history`` items before it in the same window. Only targets that are targets of ``samples``
    are trained (``targets_of``); windows never span a gap in positions.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    chunks = []
    for u, (items, ratings, pos) in user_sequences(samples).items():
        runs, start = [], 0
        for k in range(1, len(pos) + 1):  # split at gaps
            if k == len(pos) or pos[k] != pos[k - 1] + 1:
                runs.append((start, k))
                start = k
        for lo, hi in runs:
            for s in range(lo, hi - 1, max_history):
                e = min(s + max_history + 1, hi)
                chunks.append(Chunk(u, items[s:e], ratings[s:e], pos[s:e]))
    return chunks


class StreamBatch(NamedTuple):
    """Right-padded chunks and the boundaries that carry a training target."""

    input_ids: Tensor  # (C, L)
    attention_mask: Tensor  # (C, L)
    rows: Tensor  # (M,) chunk of each boundary
    cols: Tensor  # (M,) token position of each boundary's <answer>
    targets: list[str]  # (M,) the next item's id
    exclude: list[list[str]]  # (M,) items to leave out of the ranking (history before the target)


def stream_batch(
    prompter: StreamPrompter,
    chunks: Sequence[Chunk],
    target_keys: set[tuple[str, int]] | None,
    exclude_of: Mapping[tuple[str, int], list[str]] | None = None,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> StreamBatch:
    """Token ids of ``chunks`` and their scored boundaries.

    Args:
        target_keys: (user, position) of the targets to train; None trains every boundary.
        exclude_of: (user, position) -> ids to exclude from that target's ranking (e.g. the sample's
            history, as the evaluator masks it); the target itself is never excluded.
    """
    seqs, rows, cols, targets, exclude = [], [], [], [], []
    for c, ch in enumerate(chunks):
        ids, bounds = prompter.ids(ch.items, ratings=ch.ratings)
        seqs.append(ids)
        for j in range(len(ch.items) - 1):  # the state after item j predicts item j+1
            key = (ch.user_id, ch.positions[j + 1])
            if target_keys is not None and key not in target_keys:
                continue
            rows.append(c)
            cols.append(bounds[j])
            targets.append(ch.items[j + 1])
            ex = exclude_of.get(key, []) if exclude_of is not None else []
            exclude.append([i for i in ex if i != ch.items[j + 1]])
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for c, s in enumerate(seqs):
        input_ids[c, : len(s)] = torch.tensor(s)
        mask[c, : len(s)] = 1
    return StreamBatch(
        input_ids.to(device), mask.to(device), torch.tensor(rows, device=device),
        torch.tensor(cols, device=device), targets, exclude,
    )  # fmt: skip


def sample_keys(samples: pd.DataFrame) -> dict[tuple[str, int], list[str]]:
    """(user, position) of each sample -> its history ids (what the evaluator masks)."""
    return {
        (str(u), int(p)): [str(i) for i in h]
        for u, p, h in zip(samples["user_id"], samples["position"], samples["history"], strict=True)
    }
