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
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from item_index import ItemIndex
from rrec import backbone
from rrec.items import encode_token_lists, tokenize_prompts
from rrec.prompts import PromptStyle, add_answer_token, render_item_prompt, render_user_prompt
from rrec.rollout import generate_reasoning, left_pad

CONFIG_NAME = "rrec_config.json"


@dataclass
class Recommendation:
    """One user's recommendation: ``item_ids`` (K, best first), their ``scores`` and the ``reasoning``."""

    item_ids: list
    scores: list[float]
    reasoning: str
    forced_answer: bool = False


@dataclass
class RecConfig:
    """What ``save_pretrained`` writes next to the weights (``rrec_config.json``)."""

    base_model: str
    similarity: str = "cosine"
    temperature: float = 0.02
    max_new_tokens: int = 128
    max_history: int = 20
    style: dict = field(default_factory=lambda: asdict(PromptStyle()))
    has_adapter: bool = False


def _records(history: Sequence) -> list[dict]:
    """History as records: a bare id becomes ``{"item_id": id}``."""
    out = []
    for h in history:
        if isinstance(h, Mapping):
            if "item_id" not in h:
                raise ValueError(f"history record without 'item_id': {h!r}")
            out.append(dict(h))
        else:
            out.append({"item_id": h})
    return out


class ReasoningRecommender(nn.Module):
    """Wraps any Hugging Face causal LM (optionally PEFT-wrapped) with an item table.

    Args:
        lm: the causal LM; ``<answer>`` is added to ``tokenizer`` (and ``lm`` resized) if missing.
        tokenizer: its tokenizer.
        catalog: items DataFrame (``item_id``, ``title``, attributes), used to write prompts.
        similarity: ``"cosine"`` (default, R²ec) or ``"dot"``.
        temperature: score divisor (R²ec official code: 0.02).
        max_new_tokens: reasoning budget for ``recommend`` (``<answer>`` included).
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
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
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
        )
        self.style = style
        self.catalog: dict[str, dict] = {}
        if catalog is not None:
            self.set_catalog(catalog)
        self.rec_head: ItemIndex | None = None
        self._table: Tensor | None = None  # cached (N, D) torch copy of rec_head for exact scoring

    # ------------------------------------------------------------------ heads and states
    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

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
        """(B, D) user states -> (B, N) float32 scores against the whole table (columns in ``item_ids``)."""
        table = self.item_table()  # (N, D), already normalised for cosine
        u = self._normalise(user_states).to(table.device)  # (B, D)
        return (u @ table.T) / self.config.temperature  # (B, N)

    # ------------------------------------------------------------------ catalog and item table
    def set_catalog(self, catalog: pd.DataFrame) -> None:
        if "item_id" not in catalog.columns or "title" not in catalog.columns:
            raise ValueError("catalog needs columns 'item_id' and 'title'")
        recs = catalog.to_dict("records")
        self.catalog = {str(r["item_id"]): r for r in recs}

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
        return encode_token_lists(self.lm, ids, pad_id=self.pad_id, batch_size=batch_size, progress=progress)

    def build_item_table(
        self, catalog: pd.DataFrame | None = None, batch_size: int = 64, backend: str = "flat", **params
    ) -> ItemIndex:
        """Encode the whole catalog into a fresh ``rec_head``."""
        if catalog is not None:
            self.set_catalog(catalog)
        if not self.catalog:
            raise ValueError("no catalog: pass a DataFrame with item_id and title")
        ids = list(self.catalog)
        vecs = self._normalise(self.encode_items([self.catalog[i] for i in ids], batch_size=batch_size))
        index = ItemIndex(vecs.shape[1], metric="ip", backend=backend, **params)
        index.add(ids, vecs.cpu().numpy())
        self.rec_head, self._table = index, None
        return index

    def update_items(
        self,
        added: pd.DataFrame | None = None,
        removed: Sequence | None = None,
        changed: pd.DataFrame | None = None,
        batch_size: int = 64,
    ) -> None:
        """Incremental catalog change: re-encode only ``added`` and ``changed`` items, drop ``removed``."""
        if self.rec_head is None:
            raise ValueError("no item table yet: call build_item_table first")
        if removed:
            ids = [str(i) for i in removed]
            self.rec_head.remove(ids)
            for i in ids:
                self.catalog.pop(i, None)
        for frame, op in ((changed, self.rec_head.replace), (added, self.rec_head.add)):
            if frame is None or len(frame) == 0:
                continue
            recs = frame.to_dict("records")
            vecs = self._normalise(self.encode_items(recs, batch_size=batch_size, progress=False))
            ids = [str(r["item_id"]) for r in recs]
            op(ids, vecs.cpu().numpy())
            for i, r in zip(ids, recs, strict=True):
                self.catalog[i] = r
        self._table = None

    def item_table(self) -> Tensor:
        """(N, D) float32 tensor of ``rec_head`` on the model's device, rows in ``item_ids`` order."""
        if self.rec_head is None:
            raise ValueError("no item table yet: call build_item_table first")
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
        recs = _records(history)[-self.config.max_history :]
        unknown = [r["item_id"] for r in recs if str(r["item_id"]) not in self.catalog]
        if unknown:
            raise KeyError(f"history items not in the catalog: {unknown[:10]}")
        recs = [{**r, "item_id": str(r["item_id"])} for r in recs]
        return render_user_prompt(self.tokenizer, recs, self.catalog, target_time, reasoning, self.style)

    @torch.no_grad()
    def reason(
        self,
        histories: Sequence[Sequence],
        target_times: Sequence[float | None] | None = None,
        reasoning: bool = True,
        max_new_tokens: int | None = None,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
    ) -> tuple[Tensor, list[str], list[bool]]:
        """Write the reasoning for each history and read the user state at ``<answer>``.

        Returns ((B, D) float32 user states, reasoning texts, whether ``<answer>`` was forced).
        """
        times = list(target_times) if target_times is not None else [None] * len(histories)
        prompts = [self.user_prompt(h, t, reasoning) for h, t in zip(histories, times, strict=True)]
        ids = self.tokenizer(prompts, add_special_tokens=False).input_ids
        prompt_ids, prompt_mask = left_pad(ids, self.pad_id, device=self.device)
        if not reasoning:
            return self.user_states(prompt_ids, prompt_mask), [""] * len(ids), [False] * len(ids)
        eos = self.tokenizer.eos_token_id
        roll = generate_reasoning(
            self.lm,
            prompt_ids,
            prompt_mask,
            answer_id=self.answer_id,
            pad_id=self.pad_id,
            eos_ids=[eos] if eos is not None else [],
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
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
        temperature: float = 1.0,
    ) -> list[Recommendation]:
        """Greedy (default) reasoning for each history, then the top-``k`` items by ``score``.

        ``histories``: lists of item ids, or of records with ``item_id`` and optional ``rating`` /
        ``timestamp``. ``exclude_history`` leaves the history's items out of the ranking.
        """
        if not histories:
            return []
        states, texts, forced = self.reason(
            histories, target_times, reasoning, max_new_tokens, do_sample=do_sample, temperature=temperature
        )
        scores = self.score(states)  # (B, N)
        columns = {iid: j for j, iid in enumerate(self.item_ids)}
        if exclude_history:
            for b, h in enumerate(histories):
                cols = [columns[str(r["item_id"])] for r in _records(h) if str(r["item_id"]) in columns]
                scores[b, cols] = float("-inf")
        kk = min(k, scores.shape[1])
        top = scores.topk(kk, dim=1)
        all_ids = self.item_ids
        return [
            Recommendation(
                item_ids=[all_ids[j] for j in top.indices[b].tolist()],
                scores=top.values[b].tolist(),
                reasoning=texts[b],
                forced_answer=bool(forced[b]),
            )
            for b in range(len(histories))
        ]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Weights (or the LoRA adapter plus the base reference), tokenizer, catalog, item table, config."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.has_adapter = backbone.is_peft(self.lm)
        if self.config.has_adapter:
            # the <answer> row is re-initialised identically on load (frozen under LoRA): no embedding copy
            self.lm.save_pretrained(d / "adapter", save_embedding_layers=False)
        else:
            self.lm.save_pretrained(d / "model")
        self.tokenizer.save_pretrained(d / "tokenizer")
        if self.catalog:
            pd.DataFrame(list(self.catalog.values())).to_parquet(d / "items.parquet")
        if self.rec_head is not None:
            self.rec_head.save(d / "item_index", fingerprint=backbone.weights_fingerprint(self.lm))
        (d / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

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
        """Load a folder written by ``save_pretrained``, or wrap a plain HF model folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / CONFIG_NAME).exists():
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"{path}: neither an rrec folder ({CONFIG_NAME}) nor a HF model folder"
                )
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
            tok = AutoTokenizer.from_pretrained(path)
            model = cls(lm.to(device or "cpu"), tok, catalog, base_model=str(path), **overrides)
            return model.eval()
        cfg = RecConfig(**json.loads((path / CONFIG_NAME).read_text()))
        tok = AutoTokenizer.from_pretrained(path / "tokenizer")
        if cfg.has_adapter:
            from peft import PeftModel

            lm = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype or torch.float32)
            add_answer_token(AutoTokenizer.from_pretrained(cfg.base_model), lm)  # same rows as at training
            lm = PeftModel.from_pretrained(lm, path / "adapter")
        else:
            lm = AutoModelForCausalLM.from_pretrained(path / "model", dtype=dtype or torch.float32)
        if catalog is None and (path / "items.parquet").exists():
            catalog = pd.read_parquet(path / "items.parquet")
        kw = dict(
            similarity=cfg.similarity,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            max_history=cfg.max_history,
            style=PromptStyle(**{**cfg.style, **_tuple_fields(cfg.style)}),
        )
        kw.update(overrides)
        model = cls(lm.to(device or "cpu"), tok, catalog, base_model=cfg.base_model, **kw)
        if (path / "item_index").exists():
            model.rec_head = ItemIndex.load(
                path / "item_index", expected_fingerprint=backbone.weights_fingerprint(model.lm)
            )
        return model.eval()


def _tuple_fields(style: dict) -> dict:
    return {k: tuple(v) for k, v in style.items() if isinstance(v, list)}
