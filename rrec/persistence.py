"""Saving and loading a ``ReasoningRecommender`` folder.

Layout of a saved folder::

    rrec_config.json   similarity, temperature, budgets, prompt style, base model reference
    model/             full weights (HF format), or
    adapter/           the LoRA adapter only (the base model is read from ``base_model``)
    tokenizer/         with the single-token <answer>
    items.parquet      the catalog (item text for prompts)
    item_index/        the item table, with the weights' fingerprint

The folder is written to a temporary sibling and renamed into place, so an interrupted save never
leaves a half-written model where a good one was. Under LoRA the ``<answer>`` embedding row is frozen at
its deterministic initialisation (mean of the pieces' rows), so it is re-created on load rather than
stored with the adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from item_index import ItemIndex, ItemIndexError
from rrec import backbone
from rrec.prompts import PromptStyle, add_answer_token

CONFIG_NAME = "rrec_config.json"


def save_model(model, directory: str | Path) -> Path:
    """Write ``model`` (a ``ReasoningRecommender``) to ``directory`` atomically; returns the path."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}-"))
    try:
        model.config.has_adapter = backbone.is_peft(model.lm)
        if model.config.has_adapter:
            model.lm.save_pretrained(tmp / "adapter", save_embedding_layers=False)
        else:
            model.lm.save_pretrained(tmp / "model")
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if model.catalog:
            pd.DataFrame(list(model.catalog.values())).to_parquet(tmp / "items.parquet")
        if model.rec_head is not None:
            model.rec_head.save(tmp / "item_index", fingerprint=backbone.weights_fingerprint(model.lm))
        (tmp / CONFIG_NAME).write_text(json.dumps(asdict(model.config), indent=2))
        os.chmod(tmp, 0o755)
        old = None
        if d.exists():
            old = d.with_name(f".{d.name}.old-{os.getpid()}")
            os.replace(d, old)
        os.replace(tmp, d)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_model(
    cls,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    catalog: pd.DataFrame | None = None,
    **overrides,
):
    """Load a folder written by ``save_model``, or wrap a plain Hugging Face model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrec.model import RecConfig

    path = Path(path)
    if not (path / CONFIG_NAME).exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: neither an rrec folder ({CONFIG_NAME}) nor a HF model folder")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        return cls(lm.to(device or "cpu"), tok, catalog, base_model=str(path), **overrides).eval()
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
    style = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.style.items()}
    kw = dict(
        similarity=cfg.similarity,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        max_history=cfg.max_history,
        style=PromptStyle(**style),
    )
    kw.update(overrides)
    model = cls(lm.to(device or "cpu"), tok, catalog, base_model=cfg.base_model, **kw)
    if (path / "item_index").exists():
        fingerprint = backbone.weights_fingerprint(model.lm)
        try:
            model.rec_head = ItemIndex.load(path / "item_index", fingerprint, model.hidden_size)
        except ItemIndexError as err:
            raise ItemIndexError(
                f"{err} (saved: the model that built the item table; expected: the weights loaded from "
                f"{path}). Rebuild the table with build_item_table() and save again."
            ) from err
    return model.eval()
