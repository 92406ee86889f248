"""User and item prompts, rendered through the tokenizer's chat template, and the ``<answer>`` token.

The control token ``<answer>`` ends the reasoning: the model's final hidden state there is the user
state that the item head scores against the catalog. It must be one token id. Most tokenizers (SmolLM2's
included) split the string into ``<``, ``answer``, ``>``, so :func:`add_answer_token` adds it as a special
token and initialises its input and output embedding rows with the mean of those pieces' rows: the model
then starts from something that "reads like" the string it replaces rather than from noise (with tied
embeddings, as in SmolLM2, the output row is the same row, so sampling ``<answer>`` starts about as likely
as the string). The rows are set whenever the tokenizer added the token, also when the embedding table
already had room for it: Qwen2.5's table has more rows than its tokenizer has tokens, so the new id lands
on an untrained spare row and no resize happens. Under LoRA these rows can train with the adapter
(``rrec.backbone.apply_lora(..., trainable_tokens=[answer_id])``).

User prompt: a system instruction, then one line per history item, oldest first: relative time before
the target (when timestamps exist), title with attributes, and the rating (when given). With
``reasoning=False`` the assistant turn is ``<answer>`` directly (the "w/o reasoning" mode of R²ec).
Item prompt: a short system instruction, the item's title and attributes (a description truncated to a
word budget), then ``<answer>``.

Input rules (``docs/bad_inputs.md`` lists every case with its test):

* item ids are ``str``; an ``int`` (Python or numpy) is accepted and converted with ``str`` (``50`` ->
  ``"50"``); any other type (``50.0``, ``None``, ``True``) is a ``ValueError`` (:func:`item_id_of`);
* item text is cleaned by :func:`text_of`: ``None``/NaN/``pd.NA`` count as missing, ``bytes`` are decoded
  as UTF-8, and invalid bytes (or the lone surrogates ``surrogateescape`` leaves in a ``str``) become
  U+FFFD; an item with no title is written "Untitled item";
* an empty history is allowed (cold start): the prompt says "(no items yet)";
* a repeated id in a history is kept (a re-watch is an event): one line per entry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

ANSWER_TOKEN = "<answer>"

DEFAULT_SYSTEM = (
    "You are a movie recommender. Read the user's viewing history, think briefly about their tastes, "
    "then write <answer> to recommend the next item."
)
ITEM_SYSTEM = "Summarise this item for a recommender."
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: undecodable bytes under surrogateescape


class HistoryTruncatedWarning(UserWarning):
    """A history was longer than ``max_history``: only its most recent items were shown to the model."""


def warn_truncated(n_cut: int, n: int, max_history: int, stacklevel: int = 3) -> None:
    """One ``HistoryTruncatedWarning`` for ``n_cut`` of ``n`` histories cut to ``max_history``.

    ``stacklevel`` counts from here: 3 names the caller of the function that calls this one.
    """
    h = max_history
    msg = f"{n_cut} of {n} histories exceed max_history={h}: only their {h} most recent items are shown"
    warnings.warn(msg, HistoryTruncatedWarning, stacklevel=stacklevel)


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are written. Defaults suit MovieLens; set ``system`` for other domains."""

    system: str = DEFAULT_SYSTEM
    item_system: str = ITEM_SYSTEM
    item_fields: tuple[str, ...] = ("year", "genres", "category", "brand")
    description_words: int = 48
    show_rating: bool = True
    show_time: bool = True
    rating_scale: float = 5.0
    title_words: int | None = None  # cut titles to this many words (long product titles); None: whole


def add_answer_token(tokenizer, model=None) -> int:
    """Make ``<answer>`` a single token id; if it was added, initialise ``model``'s rows for it.

    Returns the token id. Idempotent: a tokenizer that already has it is left alone (and so is ``model``).
    """
    pieces = tokenizer(ANSWER_TOKEN, add_special_tokens=False).input_ids
    if len(pieces) == 1:
        return pieces[0]
    tokenizer.add_special_tokens({"additional_special_tokens": [ANSWER_TOKEN]})
    new_id = tokenizer.convert_tokens_to_ids(ANSWER_TOKEN)
    if model is not None:
        resize_for_answer_token(model, new_id, pieces)
    return new_id


def resize_for_answer_token(model, new_id: int, piece_ids: Sequence[int]) -> None:
    """Set ``model``'s input and output rows ``new_id`` to the mean of ``piece_ids``' rows, growing the
    vocabulary first only when it has no row ``new_id`` (a table with spare rows is not resized)."""
    import torch

    if model.get_input_embeddings().weight.shape[0] <= new_id:
        model.resize_token_embeddings(new_id + 1, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            if emb is None:
                continue
            w = emb.weight
            w[new_id] = w[list(piece_ids)].mean(0)


def item_id_of(value) -> str:
    """An item id as the catalog's ``str``: a ``str`` as is, an ``int`` (not ``bool``) through ``str``.

    Raises:
        ValueError: any other type, e.g. the float ``50.0`` an id column becomes when it holds a NaN.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    raise ValueError(f"item ids must be str or int, got {type(value).__name__} {value!r}")


def text_of(value) -> str:
    r"""Item text as a stripped ``str``; ``""`` when missing (``None``, NaN, ``pd.NA``).

    ``bytes`` are decoded as UTF-8; invalid bytes, and the lone surrogates that ``surrogateescape``
    leaves in a ``str`` (tokenizers refuse them), become U+FFFD.

    Example:
        >>> text_of(b"caf\xc3\xa9 \xff"), text_of(float("nan")), text_of(1995)
        ('café �', '', '1995')
    """
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    return _SURROGATE.sub("\ufffd", str(value)).strip()


def title_of(item: Mapping, words: int | None = None) -> str:
    """The item's title, or "Untitled item" when it has none (missing, NaN or blank).

    ``words`` keeps the first ``words`` words and marks the cut with `` ...`` (Amazon titles run to 30+
    tokens; every history line and item prompt repeats them).
    """
    title = text_of(item.get("title")) or "Untitled item"
    if words is None:
        return title
    if words < 1:
        raise ValueError(f"title_words must be >= 1 or None, got {words}")
    parts = title.split()
    return title if len(parts) <= words else " ".join(parts[:words]) + " ..."


def history_records(history: Sequence) -> list[dict]:
    """A history as records with ``str`` ids: a bare id ``x`` becomes ``{"item_id": item_id_of(x)}``.

    Args:
        history: item ids, or records with ``item_id`` and optional ``rating`` / ``timestamp``
            (a list, tuple, numpy array or Series; not a bare ``str``).

    Raises:
        ValueError: ``history`` is a ``str`` or not list-like, a record has no ``item_id``, or an id is
            neither ``str`` nor ``int``.
    """
    listlike = isinstance(history, Sequence | np.ndarray | pd.Series)
    if not listlike or isinstance(history, str | bytes):
        got = f"{type(history).__name__} {history!r:.60}"
        raise ValueError(f"a history must be a list of item ids or records, got {got}")
    out = []
    for h in history:
        if isinstance(h, Mapping):
            if "item_id" not in h:
                raise ValueError(f"history record without 'item_id': {h!r}")
            out.append({**h, "item_id": item_id_of(h["item_id"])})
        else:
            out.append({"item_id": item_id_of(h)})
    return out


def _attr_text(item: Mapping, style: PromptStyle) -> str:
    parts = [text_of(item.get(field)) for field in style.item_fields]
    return "; ".join(p for p in parts if p)


def item_line(item: Mapping, style: PromptStyle = PromptStyle()) -> str:
    """``Title (attr; attr)`` for one item."""
    title = title_of(item, style.title_words)
    attrs = _attr_text(item, style)
    return f"{title} ({attrs})" if attrs else title


def relative_time(seconds: float) -> str:
    """Human wording of a time gap: 'same day', '3 days before', '2 weeks before', '5 months before'."""
    days = seconds / 86400.0
    if days < 1:
        return "same day"
    for unit, size in (("year", 365.0), ("month", 30.0), ("week", 7.0), ("day", 1.0)):
        if days >= size:
            n = int(days // size)
            return f"{n} {unit}{'s' if n > 1 else ''} before"
    raise AssertionError("unreachable")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and x == x


def user_content(
    history: Sequence[Mapping],
    catalog: Mapping[str, Mapping],
    target_time: float | None = None,
    style: PromptStyle = PromptStyle(),
) -> str:
    """The user turn: one line per history entry (``item_id`` and optional ``rating``/``timestamp``).

    An empty history (cold start) gives the line "(no items yet)".
    """
    lines = ["Viewing history, oldest first:"]
    if not history:
        lines.append("(no items yet)")
    for entry in history:
        item = catalog[str(entry["item_id"])]
        ts, rating = entry.get("timestamp"), entry.get("rating")
        when = ""
        if style.show_time and _is_number(ts) and _is_number(target_time):
            when = f"[{relative_time(target_time - ts)}] "
        line = f"- {when}{item_line(item, style)}"
        if style.show_rating and _is_number(rating):
            line += f", rated {rating:g}/{style.rating_scale:g}"
        lines.append(line)
    lines.append("Which item should this user see next?")
    return "\n".join(lines)


def render_user_prompt(
    tokenizer,
    history: Sequence[Mapping],
    catalog: Mapping[str, Mapping],
    target_time: float | None = None,
    reasoning: bool = True,
    style: PromptStyle = PromptStyle(),
) -> str:
    """Chat-templated user prompt ending with the assistant header (then ``<answer>`` if not reasoning)."""
    messages = [
        {"role": "system", "content": style.system},
        {"role": "user", "content": user_content(history, catalog, target_time, style)},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text if reasoning else text + ANSWER_TOKEN


def history_prompt(
    tokenizer,
    history: Sequence,
    catalog: Mapping[str, Mapping],
    max_history: int,
    target_time: float | None = None,
    reasoning: bool = True,
    style: PromptStyle = PromptStyle(),
) -> tuple[str, int]:
    """``render_user_prompt`` for a raw history: checked, every id looked up, cut to ``max_history``.

    Returns:
        (the prompt of the last ``max_history`` entries, how many older entries were cut).

    Raises:
        ValueError: a malformed history (see :func:`history_records`).
        KeyError: ids absent from ``catalog`` (anywhere in the history, also among the cut entries).
    """
    recs = history_records(history)
    unknown = list(dict.fromkeys(r["item_id"] for r in recs if r["item_id"] not in catalog))
    if unknown:
        raise KeyError(f"{len(unknown)} history items not in the catalog: {unknown[:10]}")
    cut = max(len(recs) - max_history, 0)
    return render_user_prompt(tokenizer, recs[cut:], catalog, target_time, reasoning, style), cut


def item_content(item: Mapping, style: PromptStyle = PromptStyle()) -> str:
    """The item turn: title, attributes, and a description cut to ``style.description_words`` words."""
    lines = [f"Title: {title_of(item, style.title_words)}"]
    for field in style.item_fields:
        value = text_of(item.get(field))
        if value:
            lines.append(f"{field.capitalize()}: {value}")
    desc = text_of(item.get("description"))
    if desc:
        words = desc.split()
        cut = " ".join(words[: style.description_words])
        lines.append(f"Description: {cut}{' ...' if len(words) > style.description_words else ''}")
    return "\n".join(lines)


def render_item_prompt(tokenizer, item: Mapping, style: PromptStyle = PromptStyle()) -> str:
    """Chat-templated item prompt followed by ``<answer>``: the item state is read at that token."""
    messages = [
        {"role": "system", "content": style.item_system},
        {"role": "user", "content": item_content(item, style)},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_TOKEN
