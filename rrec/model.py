"""``ReasoningRecommender``: a decoder LLM with two heads.

* ``lm_head`` (the LM's own) writes a short reasoning about the user's history, ending at ``<answer>``;
* ``rec_head`` is the item table (an :class:`item_index.ItemIndex`) that the model builds from itself:
  each item's prompt followed by ``<answer>``, final hidden state there (``rrec.items``).

User state: the final hidden state (after the final norm) at ``<answer>``. Reasoning stops at
``<answer>``, which is forced when the token budget runs out (``rrec.rollout``). Scores:
``cos(user, item) / temperature`` (R²ec's official code: L2-normalised dot, temperature 0.02), always in
float32; ``similarity="dot"`` uses the raw inner product instead. For cosine, the table stores
L2-normalised vectors, so its inner product is the cosine.

Letters: B users, N items, D hidden, K cut-off.

Bad inputs give a ``ValueError`` / ``KeyError`` naming what is wrong, before any generation runs. The
documented exceptions: a history longer than ``max_history`` is cut, with one
``rrec.prompts.HistoryTruncatedWarning`` per call; an empty history is a cold start; ``k`` beyond what
is left returns fewer items. Every case has a test, listed in ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from item_index import ItemIndex
from rrec import backbone
from rrec.decoding import DecoderPool, check_engine, use_static
from rrec.id_vectors import ItemIDVectors, hybrid_rows
from rrec.inputs import check_finite, history_list, positive_int
from rrec.item_records import prompt_records, retire, revive
from rrec.items import cached_states, catalog_records, check_update, encode_token_lists, tokenize_prompts
from rrec.persistence import CONFIG_NAME  # noqa: F401  (re-exported)
from rrec.prompts import (
    PromptStyle,
    add_answer_token,
    history_prompt,
    history_records,
    render_item_prompt,
    warn_truncated,
)
from rrec.rollout import generate_reasoning, left_pad
from rrec.stream import StreamPrompter


@dataclass
class Recommendation:
    """One user's recommendation: ``item_ids`` (K, best first), their ``scores`` and the ``reasoning``."""

    item_ids: list
    scores: list[float]
    reasoning: str
    forced_answer: bool = False


@dataclass
class RecConfig:
    """What ``save_pretrained`` writes (``rrec_config.json``); ``temperature`` divides scores only."""

    base_model: str
    similarity: str = "cosine"
    temperature: float = 0.02
    max_new_tokens: int = 128
    max_history: int = 20
    style: dict = field(default_factory=lambda: asdict(PromptStyle()))
    has_adapter: bool = False
    user_format: str = "chat"  # prompt without reasoning: "chat" (rrec.prompts) or "stream" (rrec.stream)
    item_encoder: str = "self"  # item text states by "self" (the model) or "base" (adapter switched off)
    id_vectors: bool = False  # hybrid item rows: text state + a learned per-item vector (rrec.id_vectors)
    base_checksum: str = ""  # sha256 of the base model's weight files (checked when an adapter loads)
    reasoning_format: str = "chat"  # prompt with reasoning: "chat" or "stream" (needs user_format="stream")


class ReasoningRecommender(nn.Module):
    """Wraps any Hugging Face causal LM (optionally PEFT-wrapped) with an item table.

    Args:
        lm: the causal LM; ``<answer>`` is added to ``tokenizer`` (and ``lm`` resized) if missing.
        tokenizer: its tokenizer.
        catalog: items DataFrame (``item_id``, ``title``, attributes), used to write prompts.
        similarity: ``"cosine"`` (default, R²ec) or ``"dot"``.
        temperature: score divisor (R²ec official code: 0.02); not the sampling temperature.
        max_new_tokens: reasoning budget for ``recommend`` (``<answer>`` included).
        rollout_engine: the decoder that writes reasonings, ``"auto"`` (static KV cache + CUDA graphs on
            a GPU, the HF forward on CPU), ``"static"`` or ``"hf"`` (``rrec.decoding``). Not saved.
        user_format: the prompt of ``reasoning=False``: ``"chat"`` (``rrec.prompts``, the same as with
            reasoning) or ``"stream"`` (``rrec.stream``: the format all-position training uses).
        reasoning_format: the prompt with reasoning: ``"chat"`` (``rrec.prompts``: the assistant turn is
            the reasoning) or ``"stream"`` (needs ``user_format="stream"``: the stream prompt without its
            last ``<answer>``, so the reasoning follows the last item line and ends with ``<answer>``; an
            empty reasoning reads exactly the state of ``reasoning=False``).
        item_encoder: ``"self"`` (item states by this model, R²ec) or ``"base"`` (by the base model with
            the PEFT adapter switched off: the table does not move when the adapter trains).
        id_vectors: hybrid item rows ``normalise(normalise(text) + id)`` with learned, zero-initialised
            per-item vectors (``self.id_vectors``; ``rrec.id_vectors``). An item without one (e.g. added
            later) is scored by its text alone.
    """

    def __init__(
        self,
        lm: nn.Module,
        tokenizer,
        catalog: pd.DataFrame | None = None,
        *,
        base_model: str = "",
        similarity: str = "cosine",
        temperature: float = 0.02,
        max_new_tokens: int = 128,
        max_history: int = 20,
        style: PromptStyle = PromptStyle(),
        rollout_engine: str = "auto",
        user_format: str = "chat",
        item_encoder: str = "self",
        id_vectors: bool = False,
        reasoning_format: str = "chat",
    ) -> None:
        super().__init__()
        self.rollout_engine = check_engine(rollout_engine)
        self._decoders = DecoderPool()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        positive_int("max_new_tokens", max_new_tokens)
        positive_int("max_history", max_history)
        if user_format not in ("chat", "stream"):
            raise ValueError(f"user_format must be 'chat' or 'stream', got {user_format!r}")
        if reasoning_format not in ("chat", "stream"):
            raise ValueError(f"reasoning_format must be 'chat' or 'stream', got {reasoning_format!r}")
        if reasoning_format == "stream" and user_format != "stream":
            raise ValueError("reasoning_format='stream' needs user_format='stream'")
        if item_encoder not in ("self", "base"):
            raise ValueError(f"item_encoder must be 'self' or 'base', got {item_encoder!r}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.answer_id = add_answer_token(tokenizer, lm)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.config = RecConfig(
            base_model=base_model or str(getattr(lm.config, "name_or_path", "")),
            similarity=similarity,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            max_history=max_history,
            style=asdict(style),
            user_format=user_format,
            item_encoder=item_encoder,
            id_vectors=bool(id_vectors),
            reasoning_format=reasoning_format,
        )
        self.style = style
        self.catalog: dict[str, dict] = {}
        self.removed_items: dict[str, dict] = {}  # text of items update_items removed, for prompts only
        if catalog is not None:
            self.set_catalog(catalog)
        self._table: Tensor | None = None  # cached (N, D) torch copy of rec_head for exact scoring
        self.rec_head = None
        self.id_vectors = ItemIDVectors(list(self.catalog), self.hidden_size) if id_vectors else None
        # item_encoder="base": a folder where the base model's item states are kept (rrec.items.cached_states)
        self.text_cache: Path | None = None

    # ------------------------------------------------------------------ heads and states
    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def hidden_size(self) -> int:
        """D, the size of the final hidden state (the input size of ``lm_head``)."""
        return getattr(self.lm_head, "original_module", self.lm_head).weight.shape[1]  # PEFT: no merge

    @property
    def rec_head(self) -> ItemIndex | None:
        """The item table. Assigning one checks it (an ``"ip"`` ItemIndex of dim D) and drops the cache."""
        return self._rec_head

    @rec_head.setter
    def rec_head(self, index: ItemIndex | None) -> None:
        if index is not None:
            if not isinstance(index, ItemIndex):
                raise ValueError(f"rec_head must be an item_index.ItemIndex, got {type(index).__name__}")
            if index.metric != "ip":
                raise ValueError(
                    f"rec_head must use metric 'ip' (scores are inner products), got {index.metric!r}"
                )
            self._check_dim(index.dim)
        self._rec_head, self._table = index, None

    def _check_dim(self, dim: int) -> None:
        if dim != self.hidden_size:
            raise ValueError(
                f"item table dim {dim} does not match the model's hidden size {self.hidden_size}: the table "
                "was built by another model; rebuild it with build_item_table()"
            )

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw):
        """The wrapped LM's forward (logits identical to the bare HF model's)."""
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, **kw)

    def user_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, D) float32 state at the last position of left-padded sequences ending with ``<answer>``."""
        return backbone.last_token_states(self.lm, input_ids, attention_mask).float()

    def _normalise(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x.float(), dim=-1) if self.config.similarity == "cosine" else x.float()

    def score(self, user_states: Tensor) -> Tensor:
        """(B, D) user states -> (B, N) float32 scores against the whole table (columns in ``item_ids``).

        Raises:
            ValueError: states not of shape (B, D); a state or a score that is NaN or inf (never ranked).
        """
        table = self.item_table()  # (N, D), already normalised for cosine
        if user_states.ndim != 2 or user_states.shape[1] != table.shape[1]:
            raise ValueError(
                f"user states must be (B, {table.shape[1]}), got shape {tuple(user_states.shape)}"
            )
        check_finite(user_states, "user states")
        u = self._normalise(user_states).to(table.device)  # (B, D)
        scores = (u @ table.T) / self.config.temperature  # (B, N)
        check_finite(scores, f"scores ({self.config.similarity} / temperature overflowed)")
        return scores

    # ------------------------------------------------------------------ catalog and item table
    def set_catalog(self, catalog: pd.DataFrame) -> None:
        """Use ``catalog`` (``item_id``, ``title``, attributes) for prompts; checked by ``catalog_records``:
        ids ``str`` (ints converted), unique; a missing title warns and reads "Untitled item"."""
        self.catalog = catalog_records(catalog)
        revive(self.removed_items, self.catalog)

    def item_prompt_ids(self, items: Sequence[Mapping]) -> list[list[int]]:
        texts = [render_item_prompt(self.tokenizer, it, self.style) for it in items]
        return tokenize_prompts(self.tokenizer, texts, self.answer_id)

    def encode_items(
        self, items: Sequence[Mapping] | pd.DataFrame, batch_size: int = 64, progress: bool = True
    ) -> Tensor:
        """(N, D) float32 item states (not normalised) for item records (``title`` + attributes)."""
        if isinstance(items, pd.DataFrame):
            items = items.to_dict("records")
        ids = self.item_prompt_ids(list(items))
        base = self.config.item_encoder == "base" and backbone.is_peft(self.lm)

        def compute() -> Tensor:
            with self.lm.disable_adapter() if base else contextlib.nullcontext():
                return encode_token_lists(
                    self.lm, ids, pad_id=self.pad_id, batch_size=batch_size, progress=progress
                )

        if not (base and self.text_cache):
            return compute()
        dtype = str(next(self.lm.parameters()).dtype)
        key = [self.config.base_checksum or self.config.base_model, dtype, self.answer_id, ids]
        return cached_states(self.text_cache, key, compute).to(self.device)

    def _item_vectors(self, records: Mapping[str, Mapping], batch_size: int, progress: bool) -> Tensor:
        """(N, D) table rows for ``records`` (by id); NaN or inf states are refused, naming the items."""
        text = self.encode_items(list(records.values()), batch_size, progress)
        check_finite(text, "item states", labels=list(records))
        return self.table_rows(list(records), text).detach()

    def table_rows(self, ids: Sequence[str], text: Tensor) -> Tensor:
        """(N, D) float32 table rows from (N, D) item text states: normalised for cosine, plus the items'
        ID vectors when the model has them (``rrec.id_vectors.hybrid_rows``)."""
        idv = None if self.id_vectors is None else self.id_vectors.rows(ids).to(text.device)
        return hybrid_rows(text, idv, self.config.similarity == "cosine")

    def build_item_table(
        self, catalog: pd.DataFrame | None = None, batch_size: int = 64, backend: str = "flat", **params
    ) -> ItemIndex:
        """Encode the whole catalog into a fresh ``rec_head``."""
        if catalog is not None:
            self.set_catalog(catalog)
        if not self.catalog:
            raise ValueError(
                "the catalog is empty or was never given: pass a DataFrame with item_id and title"
            )
        if self.id_vectors is not None:
            self.id_vectors.ensure(list(self.catalog))
        vecs = self._item_vectors(self.catalog, batch_size, progress=True)
        index = ItemIndex(vecs.shape[1], metric="ip", backend=backend, **params)
        index.add(list(self.catalog), vecs.cpu().numpy())
        self.rec_head = index
        return index

    def update_items(
        self,
        added: pd.DataFrame | None = None,
        removed: Sequence | None = None,
        changed: pd.DataFrame | None = None,
        batch_size: int = 64,
    ) -> None:
        """Incremental catalog change: re-encode only ``added`` and ``changed`` items, drop ``removed``
        (never recommended again; their text stays in ``removed_items`` for histories that hold them).

        Everything is checked (``rrec.items.check_update``) and encoded before the table changes, so a
        bad change (repeated id, added id already present, removed/changed id absent, an id in two
        roles, NaN states) raises ``ValueError`` and leaves the table as it was.
        """
        if self.rec_head is None:
            raise ValueError("no item table yet: call build_item_table first")
        new, gone, upd = check_update(self.rec_head, added, removed, changed)
        steps = [(self.rec_head.replace, upd), (self.rec_head.add, new)]
        encoded = [
            (op, recs, self._item_vectors(recs, batch_size, progress=False)) for op, recs in steps if recs
        ]
        if gone:
            self.rec_head.remove(gone)
            retire(self.catalog, self.removed_items, gone)
            if self.id_vectors is not None:
                self.id_vectors.remove(gone)
        for op, recs, vecs in encoded:
            op(list(recs), vecs.cpu().numpy())
            self.catalog.update(recs)
            revive(self.removed_items, recs)
        if self.id_vectors is not None and new:
            self.id_vectors.add(list(new))  # zero: a new item is scored by its text alone
        self._table = None

    def item_table(self) -> Tensor:
        """(N, D) float32 tensor of ``rec_head`` on the model's device, rows in ``item_ids`` order."""
        if self.rec_head is None:
            raise ValueError("no item table yet: call build_item_table first")
        if len(self.rec_head) == 0:
            raise ValueError("the item table is empty (every item was removed): nothing to rank")
        self._check_dim(self.rec_head.dim)
        if self._table is None or self._table.device != self.device:
            self._table = self.rec_head.as_tensor(device=self.device)
        return self._table

    @property
    def item_ids(self) -> list:
        if self.rec_head is None:
            raise ValueError("no item table yet: call build_item_table first")
        return list(self.rec_head.ids)

    def invalidate_table_cache(self) -> None:
        self._table = None

    # ------------------------------------------------------------------ recommend
    def user_prompt(self, history: Sequence, target_time: float | None = None, reasoning: bool = True) -> str:
        """The chat-templated prompt for one history (its last ``max_history`` entries).

        A longer history warns (``HistoryTruncatedWarning``). Raises ``ValueError`` for a malformed
        history (see ``rrec.prompts.history_records``) and ``KeyError`` for ids not in the catalog.
        """
        text, dropped = self._prompt(history, target_time, reasoning)
        if dropped:
            warn_truncated(1, 1, self.config.max_history)
        return text

    def _prompt(self, history: Sequence, target_time: float | None, reasoning: bool) -> tuple[str, int]:
        """(prompt, number of history entries cut by ``max_history``)."""
        if not self.catalog:
            raise ValueError("no catalog: pass a DataFrame with item_id and title (set_catalog)")
        records = prompt_records(self.catalog, self.removed_items)
        return history_prompt(
            self.tokenizer, history, records, self.config.max_history, target_time, reasoning, self.style
        )

    def prompt_ids(
        self,
        histories: Sequence[Sequence],
        target_times: Sequence[float | None] | None = None,
        reasoning: bool = True,
    ) -> list[tuple[list[int], int]]:
        """Token ids of the user prompts and how many history entries ``max_history`` cut from each (no
        warning here). Without reasoning a prompt ends with ``<answer>`` (the user state is its last
        token's); with reasoning the model writes next, up to its ``<answer>``.

        Stream prompts (``rrec.stream``) where the config says so (``user_format`` without reasoning,
        ``reasoning_format`` with it), else the chat prompt of ``rrec.prompts``."""
        if not self.catalog:
            raise ValueError("no catalog: pass a DataFrame with item_id and title (set_catalog)")
        times = list(target_times) if target_times is not None else [None] * len(histories)
        fmt = self.config.reasoning_format if reasoning else self.config.user_format
        if fmt == "stream":
            records = prompt_records(self.catalog, self.removed_items)
            prompter = StreamPrompter(self.tokenizer, self.answer_id, records, self.style)
            pairs = [prompter.user_prompt_ids(h, self.config.max_history) for h in histories]
            return [(ids[:-1], cut) for ids, cut in pairs] if reasoning else pairs  # drop the last <answer>
        pairs = [self._prompt(h, t, reasoning) for h, t in zip(histories, times, strict=True)]
        ids = self.tokenizer([text for text, _ in pairs], add_special_tokens=False).input_ids
        return [(i, dropped) for i, (_, dropped) in zip(ids, pairs, strict=True)]

    @torch.no_grad()
    def reason(
        self,
        histories: Sequence[Sequence],
        target_times: Sequence[float | None] | None = None,
        reasoning: bool = True,
        max_new_tokens: int | None = None,
        *,
        do_sample: bool = False,
        sampling_temperature: float = 1.0,
        seed: int | None = None,
        engine: str | None = None,
    ) -> tuple[Tensor, list[str], list[bool]]:
        """Write the reasoning for each history and read the user state at ``<answer>``.

        Returns ((B, D) float32 user states, reasoning texts, whether ``<answer>`` was forced). Histories
        longer than ``max_history`` keep their most recent items, with one ``HistoryTruncatedWarning``
        per call. ``max_new_tokens`` (default: the config's) must be >= 1. ``engine`` overrides
        ``rollout_engine`` for this call. With ``do_sample``, ``seed`` makes the draws reproducible: row b
        samples from its own generator seeded ``seed + b`` (so a row does not depend on the others).
        """
        engine = check_engine(self.rollout_engine if engine is None else engine)
        histories = history_list(histories)
        if len(histories) == 0:
            raise ValueError("histories must be a non-empty list of histories, got an empty one")
        times = list(target_times) if target_times is not None else [None] * len(histories)
        if len(times) != len(histories):
            raise ValueError(f"{len(times)} target_times for {len(histories)} histories")
        budget = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        positive_int("max_new_tokens", budget)
        pairs = self.prompt_ids(histories, times, reasoning)
        n_cut = sum(dropped > 0 for _, dropped in pairs)
        if n_cut:
            warn_truncated(n_cut, len(pairs), self.config.max_history, stacklevel=4)  # past no_grad
        ids = [p for p, _ in pairs]
        prompt_ids, prompt_mask = left_pad(ids, self.pad_id, device=self.device)
        if not reasoning:
            return self.user_states(prompt_ids, prompt_mask), [""] * len(ids), [False] * len(ids)
        eos = self.tokenizer.eos_token_id
        decoder = None
        if use_static(engine, self.lm, self.device):
            decoder = self._decoders.get(self.lm, len(ids), prompt_ids.shape[1] + budget + 1)
        roll = generate_reasoning(
            self.lm,
            prompt_ids,
            prompt_mask,
            answer_id=self.answer_id,
            pad_id=self.pad_id,
            eos_ids=[eos] if eos is not None else [],
            max_new_tokens=budget,
            do_sample=do_sample,
            temperature=sampling_temperature,
            row_seeds=None if seed is None else [int(seed) + b for b in range(len(ids))],
            engine=decoder,
        )
        texts = self.decode_completions(roll.completion_ids, roll.completion_mask)
        return roll.user_states, texts, roll.forced.tolist()

    def decode_completions(self, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
        """Reasoning texts (``<answer>`` dropped) of right-padded completions."""
        return [
            self.tokenizer.decode(c[m.bool()][:-1], skip_special_tokens=True).strip()
            for c, m in zip(completion_ids, completion_mask, strict=True)
        ]

    def recommend(self, user_history: Sequence, k: int = 20, **kw) -> Recommendation:
        """Reason about one user's history, then rank the whole catalog. See ``recommend_batch``."""
        return self.recommend_batch([user_history], k=k, **kw)[0]

    @torch.no_grad()
    def recommend_batch(
        self,
        histories: Sequence[Sequence],
        k: int = 20,
        *,
        exclude_history: bool = True,
        reasoning: bool = True,
        max_new_tokens: int | None = None,
        target_times: Sequence[float | None] | None = None,
        do_sample: bool = False,
        sampling_temperature: float = 1.0,
        seed: int | None = None,
        engine: str | None = None,
    ) -> list[Recommendation]:
        """Greedy (default) reasoning for each history, then the top-``k`` items by ``score``.

        Args:
            histories: lists of item ids, or of records with ``item_id`` and optional ``rating`` /
                ``timestamp`` (a list, or a Series such as ``df["history"]``; see ``rrec.inputs``).
                Ids are ``str``; ``int`` ids are converted (``50`` -> ``"50"``), other
                types are a ``ValueError``; an id absent from the catalog is a ``KeyError``. An empty
                history is a cold start; a repeated id is kept (one prompt line per entry); beyond
                ``max_history`` the oldest entries are cut with a ``HistoryTruncatedWarning``.
            k: K >= 1. Fewer items come back when fewer than K are left after exclusion.
            exclude_history: leave the history's items (all of them, also those cut) out of the ranking.
            do_sample / sampling_temperature / seed: sampled reasonings (default greedy), reproducible
                with ``seed`` (see ``reason``). ``sampling_temperature`` is not the score ``temperature``.
            engine: the decoder for this call (default: ``rollout_engine``; see ``rrec.decoding``).

        A reasoning that never writes ``<answer>`` is cut at ``max_new_tokens`` with ``<answer>`` forced:
        the items still come back, with ``forced_answer=True``. The item table is checked (built, not
        empty, of dim D) before any generation; NaN or inf states or scores raise ``ValueError``.
        """
        positive_int("k", k)
        histories = history_list(histories)
        if not histories:
            return []
        self.item_table()
        states, texts, forced = self.reason(
            histories, target_times, reasoning, max_new_tokens, do_sample=do_sample,
            sampling_temperature=sampling_temperature, seed=seed, engine=engine,
        )  # fmt: skip
        scores = self.score(states)  # (B, N), all finite
        all_ids = self.item_ids
        if exclude_history:
            columns = {iid: j for j, iid in enumerate(all_ids)}
            for b, h in enumerate(histories):
                cols = [columns[r["item_id"]] for r in history_records(h) if r["item_id"] in columns]
                scores[b, cols] = float("-inf")
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        out = []
        for b in range(len(histories)):
            keep = top.values[b] > float("-inf")  # excluded items are -inf; every real score is finite
            out.append(Recommendation(
                item_ids=[all_ids[j] for j in top.indices[b][keep].tolist()],
                scores=top.values[b][keep].tolist(),
                reasoning=texts[b],
                forced_answer=bool(forced[b]),
            ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Weights (or the LoRA adapter plus the base reference), tokenizer, catalog, item table, config.

        Written to a temporary folder beside ``directory`` and renamed into place (see
        ``rrec.persistence``)."""
        from rrec.persistence import save_model

        save_model(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        catalog: pd.DataFrame | None = None,
        **overrides,
    ) -> ReasoningRecommender:
        """Load a ``save_pretrained`` folder (a training checkpoint: without its half-refreshed item table)
        or a HF model folder; by default on the GPU in bf16 if there is one, else on the CPU in float32."""
        from rrec.persistence import load_model

        return load_model(cls, path, dtype=dtype, device=device, catalog=catalog, **overrides)
