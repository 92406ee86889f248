"""Saving and loading a ``ReasoningRecommender`` folder.

Layout of a saved folder::

    rrec_config.json   similarity, temperature (score), budgets, prompt style, base model reference
    model/             full weights (HF format), or
    adapter/           the LoRA adapter only (the base model is read from ``base_model``)
    tokenizer/         with the single-token <answer>
    items.parquet      the catalog (item text for prompts)
    removed_items.parquet  items removed by ``update_items``: their text, for histories that hold them
    item_index/        the item table, with the weights' fingerprint

The folder is written to a temporary sibling and renamed into place, so an interrupted save never
leaves a half-written model where a good one was. ``base_model`` is stored as an absolute path when it
names a local folder, so the saved model loads from any working directory.

Under LoRA the ``<answer>`` rows are first set on the base model as at training (``add_answer_token``:
the mean of the pieces' rows); when the adapter trained them (``apply_lora(trainable_tokens=...)``,
PEFT's trainable tokens), the adapter holds the trained rows and they replace the initial ones on load.

A training checkpoint (``rrec.checkpoint``) loads as a model without its item table: RecPO writes fresh
target rows into the table every step, so a checkpoint's table mixes rows from different weights. It is
left out with a ``UserWarning``; ``build_item_table()`` encodes a consistent one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from item_index import ItemIndex, ItemIndexError
from rrec import backbone
from rrec.checkpoint import is_checkpoint
from rrec.items import catalog_records
from rrec.prompts import PromptStyle, add_answer_token

CONFIG_NAME = "rrec_config.json"
REMOVED_NAME = "removed_items.parquet"


def resolve_device_dtype(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """``from_pretrained``'s defaults: the GPU when there is one, else the CPU; on a GPU bf16 (fp16 where
    bf16 is unsupported: ``backbone.default_dtype``), on a CPU float32 unless ``dtype`` asks otherwise
    (emulated bf16 is slower than float32 on most CPUs). Given values are kept."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = backbone.default_dtype(device) if device.type == "cuda" else torch.float32
    return device, dtype


def absolute_base(base_model: str) -> str:
    """``base_model`` as an absolute path when it names a local folder (hub ids are kept as they are)."""
    return str(Path(base_model).resolve()) if base_model and Path(base_model).exists() else base_model


def save_model(model, directory: str | Path) -> Path:
    """Write ``model`` (a ``ReasoningRecommender``) to ``directory`` atomically; returns the path."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}-"))
    try:
        model.config.has_adapter = backbone.is_peft(model.lm)
        model.config.base_model = absolute_base(model.config.base_model)
        if model.config.has_adapter:
            model.lm.save_pretrained(tmp / "adapter", save_embedding_layers=False)
        else:
            model.lm.save_pretrained(tmp / "model")
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if model.catalog:
            pd.DataFrame(list(model.catalog.values())).to_parquet(tmp / "items.parquet")
        if model.removed_items:
            pd.DataFrame(list(model.removed_items.values())).to_parquet(tmp / REMOVED_NAME)
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
    """Load a folder written by ``save_model`` (or a training checkpoint, without its item table), or
    wrap a plain Hugging Face model folder. ``device`` / ``dtype``: see :func:`resolve_device_dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrec.model import RecConfig

    path = Path(path)
    device, dtype = resolve_device_dtype(device, dtype)
    if not (path / CONFIG_NAME).exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: neither an rrec folder ({CONFIG_NAME}) nor a HF model folder")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
        return cls(lm.to(device), tok, catalog, base_model=absolute_base(str(path)), **overrides).eval()
    cfg = RecConfig(**json.loads((path / CONFIG_NAME).read_text()))
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    if cfg.has_adapter:
        from peft import PeftModel

        lm = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype)
        add_answer_token(AutoTokenizer.from_pretrained(cfg.base_model), lm)  # same rows as at training
        lm = PeftModel.from_pretrained(lm, path / "adapter")  # trained <answer> rows, if any, replace them
    else:
        lm = AutoModelForCausalLM.from_pretrained(path / "model", dtype=dtype)
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
    model = cls(lm.to(device), tok, catalog, base_model=cfg.base_model, **kw)
    if (path / REMOVED_NAME).exists():
        model.removed_items = catalog_records(pd.read_parquet(path / REMOVED_NAME))
    if (path / "item_index").exists() and is_checkpoint(path):
        warnings.warn(
            f"{path} is a training checkpoint: its item table is half-refreshed (RecPO writes fresh target "
            "rows into it every step), so it is not loaded; call build_item_table() before recommending",
            UserWarning,
            stacklevel=3,
        )
    elif (path / "item_index").exists():
        fingerprint = backbone.weights_fingerprint(model.lm)
        try:
            model.rec_head = ItemIndex.load(path / "item_index", fingerprint, model.hidden_size)
        except ItemIndexError as err:
            raise ItemIndexError(
                f"{err} (saved: the model that built the item table; expected: the weights loaded from "
                f"{path}). Rebuild the table with build_item_table() and save again."
            ) from err
    return model.eval()
