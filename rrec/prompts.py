"""User and item prompts, rendered through the tokenizer's chat template, and the ``<answer>`` token.

The control token ``<answer>`` ends the reasoning: the model's final hidden state there is the user
state that the item head scores against the catalog. It must be one token id. Most tokenizers (SmolLM2's
included) split the string into ``<``, ``answer``, ``>``, so :func:`add_answer_token` adds it as a special
token and initialises its embedding row with the mean of those pieces' rows: the model then starts from
something that "reads like" the string it replaces rather than from noise (with tied embeddings, as in
SmolLM2, the output row is the same row, so sampling ``<answer>`` starts about as likely as the string).

User prompt: a system instruction, then one line per history item, oldest first: relative time before
the target (when timestamps exist), title with attributes, and the rating (when given). With
``reasoning=False`` the assistant turn is ``<answer>`` directly (the "w/o reasoning" mode of R²ec).
Item prompt: a short system instruction, the item's title and attributes (a description truncated to a
word budget), then ``<answer>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ANSWER_TOKEN = "<answer>"

DEFAULT_SYSTEM = (
    "You are a movie recommender. Read the user's viewing history, think briefly about their tastes, "
    "then write <answer> to recommend the next item."
)
ITEM_SYSTEM = "Summarise this item for a recommender."


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


def add_answer_token(tokenizer, model=None) -> int:
    """Make ``<answer>`` a single token id; resize and initialise ``model``'s embeddings if it was added.

    Returns the token id. Idempotent: a tokenizer that already has it is left alone.
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
    """Grow ``model``'s vocabulary to hold ``new_id`` and set its rows to the mean of ``piece_ids``' rows."""
    import torch

    if model.get_input_embeddings().weight.shape[0] > new_id:
        return
    model.resize_token_embeddings(new_id + 1, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            if emb is None:
                continue
            w = emb.weight
            w[new_id] = w[list(piece_ids)].mean(0)


def _attr_text(item: Mapping, style: PromptStyle) -> str:
    parts = []
    for field in style.item_fields:
        value = item.get(field)
        if value is None or (isinstance(value, float) and value != value):
            continue
        text = str(value).strip()
        if text:
            parts.append(text)
    return "; ".join(parts)


def item_line(item: Mapping, style: PromptStyle = PromptStyle()) -> str:
    """``Title (attr; attr)`` for one item."""
    title = str(item.get("title") or "").strip() or "Untitled item"
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
    """The user turn: one line per history entry (``item_id`` and optional ``rating``/``timestamp``)."""
    lines = ["Viewing history, oldest first:"]
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


def item_content(item: Mapping, style: PromptStyle = PromptStyle()) -> str:
    """The item turn: title, attributes, and a description cut to ``style.description_words`` words."""
    lines = [f"Title: {str(item.get('title') or '').strip() or 'Untitled item'}"]
    for field in style.item_fields:
        value = item.get(field)
        if value is not None and not (isinstance(value, float) and value != value) and str(value).strip():
            lines.append(f"{field.capitalize()}: {str(value).strip()}")
    desc = item.get("description")
    if isinstance(desc, str) and desc.strip():
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
