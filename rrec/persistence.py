"""Saving and loading a ``ReasoningRecommender`` folder.

Layout of a saved folder::

    rrec_config.json   similarity, temperature (score), budgets, prompt style, base model reference
    model/             full weights (HF format), or
    adapter/           the LoRA adapter only (the base model is read from ``base_model``)
    tokenizer/         with the single-token <answer> (optional with an adapter: the base's, plus <answer>)
    items.parquet      the catalog (item text for prompts)
    removed_items.parquet  items removed by ``update_items``: their text, for histories that hold them
    item_index/        the item table, with the weights' fingerprint
    id_vectors/        the learned per-item vectors of a hybrid table (``id_vectors=True``), with their ids

The folder is written to a temporary sibling and renamed into place, so an interrupted save never
leaves a half-written model where a good one was. ``base_model`` is stored as an absolute path when it
names a local folder, so the saved model loads from any working directory; the embedded SmolLM2 base
(``rrec.assets.model_dir()``) is stored as ``EMBEDDED_BASE``, so the folder loads on any machine that has
fetched it. With an adapter, ``base_checksum`` (sha256 of the base's weight files) is stored and checked on
load: an adapter on other base weights is refused with a ``ValueError`` naming both checksums.

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
ID_VECTORS_DIR = "id_vectors"
EMBEDDED_BASE = "embedded:SmolLM2-135M-Instruct.Q4_1"


def base_checksum(folder: str | Path) -> str:
    """sha256 over the ``*.safetensors`` / ``*.bin`` weight files of a HF folder (names and bytes, sorted);
    "" when the folder is not local (a hub id) or holds no weight file."""
    import hashlib

    d = Path(folder)
    files = sorted([*d.glob("*.safetensors"), *d.glob("*.bin")]) if d.is_dir() else []
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def resolve_base(base_model: str) -> str:
    """The folder of ``base_model`` (``EMBEDDED_BASE`` -> the fetched embedded SmolLM2, fetched if absent)."""
    if base_model != EMBEDDED_BASE:
        return base_model
    from rrec.assets import fetch_model, model_dir

    return str(model_dir() if model_dir().exists() else fetch_model())


def portable_base(base_model: str) -> str:
    """``EMBEDDED_BASE`` for the embedded model's folder, else ``absolute_base``."""
    from rrec.assets import model_dir

    path = absolute_base(base_model)
    if path == EMBEDDED_BASE or (
        path and Path(path).exists() and Path(path).resolve() == model_dir().resolve()
    ):
        return EMBEDDED_BASE
    return path


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
        model.config.base_model = portable_base(model.config.base_model)
        if model.config.has_adapter:
            model.config.base_checksum = model.config.base_checksum or base_checksum(
                resolve_base(model.config.base_model)
            )
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
        if model.id_vectors is not None:
            model.id_vectors.save(tmp / ID_VECTORS_DIR)
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
    from rrec.pretrained import resolve

    path = resolve(path)  # "rrec:<name>": a model shipped with the package
    device, dtype = resolve_device_dtype(device, dtype)
    if not (path / CONFIG_NAME).exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: neither an rrec folder ({CONFIG_NAME}) nor a HF model folder")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
        return cls(lm.to(device), tok, catalog, base_model=absolute_base(str(path)), **overrides).eval()
    cfg = RecConfig(**json.loads((path / CONFIG_NAME).read_text()))
    tokenizer_dir = path / "tokenizer"
    if cfg.has_adapter and not tokenizer_dir.exists():  # a compact folder: the base's, <answer> added below
        tokenizer_dir = Path(resolve_base(cfg.base_model))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if cfg.has_adapter:
        from peft import PeftModel

        base = resolve_base(cfg.base_model)
        if cfg.base_checksum:
            found = base_checksum(base)
            if found != cfg.base_checksum:
                raise ValueError(
                    f"{path}: its adapter was trained on base weights with sha256 "
                    f"{cfg.base_checksum[:16]}..., "
                    f"but {base} has {found[:16] or 'no local weight file'}...: another version of the base "
                    "model. Fetch the base it names (rrec fetch) or retrain the adapter."
                )
        lm = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        add_answer_token(AutoTokenizer.from_pretrained(base), lm)  # same rows as at training
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
        user_format=cfg.user_format,
        item_encoder=cfg.item_encoder,
        id_vectors=cfg.id_vectors,
        reasoning_format=cfg.reasoning_format,
    )
    kw.update(overrides)
    model = cls(lm.to(device), tok, catalog, base_model=cfg.base_model, **kw)
    model.config.base_checksum = cfg.base_checksum
    if model.id_vectors is not None and (path / ID_VECTORS_DIR).exists():
        from rrec.id_vectors import ItemIDVectors

        model.id_vectors = ItemIDVectors.load(path / ID_VECTORS_DIR).to(device)
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
