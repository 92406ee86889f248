"""Shared fixtures: a real tokenizer (SmolLM2's, shipped as a test asset) and a tiny random-init decoder.

Markers: ``slow`` needs the fetched embedded default (``rrec fetch``); ``gpu`` is skipped without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "smollm2-tokenizer"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def make_tiny_lm(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A 2-layer, hidden-32 Llama with the real tokenizer's vocabulary, random init, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture()
def tiny_lm(tokenizer):
    return make_tiny_lm(tokenizer)


@pytest.fixture(scope="session")
def default_model_dir():
    """The converted SmolLM2 folder; skips when `rrec fetch` has not been run."""
    from rrec.assets import cache_dir

    d = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (d / "config.json").exists():
        pytest.skip("embedded default not fetched (run `rrec fetch`)")
    return d


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} absent")
    return SHARED_DATA


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
