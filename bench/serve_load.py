"""Loopback load test of ``rrec serve`` for longer runs -> one JSON line (and a file under bench/results/).

    .venv/bin/python bench/serve_load.py                                  # the tiny random model, 200 items
    .venv/bin/python bench/serve_load.py --model ~/.cache/rrec/models/SmolLM2-135M-Instruct \\
        --data ~/.cache/rrec/prepared/ml-100k-temporal --items 300 --seconds 60

A server on 127.0.0.1 (``rrec.serve.server.start_in_thread``), ``--clients`` clients sending
``/recommend`` back to back for ``--seconds``; midway one change replaces 10% of the catalog and removes
1% (``rrec.serve.loadtest.run_load``, which also checks every response). Exits 1 when a check fails. The
tiny model is a random 2-layer Llama (hidden 32) with SmolLM2's tokenizer (tests/assets): its numbers
measure the service's own overhead (HTTP, batching, swaps), not a model's speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from rrec.data import load_prepared
from rrec.machine import machine_info
from rrec.model import ReasoningRecommender
from rrec.serve.app import ServeOptions, Service
from rrec.serve.loadtest import run_load
from rrec.serve.server import load_model, start_in_thread

ROOT = Path(__file__).resolve().parents[1]
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="tiny", help="'tiny', or a model folder served with --data's items")
p.add_argument("--data", default=None, help="a prepared dataset (rrec prepare) for the catalog")
p.add_argument("--items", type=int, default=200, help="the catalog's first N items (tiny: N synthetic films)")
p.add_argument("--clients", type=int, default=8)
p.add_argument("--seconds", type=float, default=30.0)
p.add_argument("--k", type=int, default=50)
p.add_argument("--reasoning", action="store_true", help="reason before ranking (--max-new-tokens)")
p.add_argument("--max-new-tokens", type=int, default=8)
p.add_argument("--max-batch", type=int, default=16)
p.add_argument("--max-wait-ms", type=float, default=5.0)
p.add_argument("--out", default=str(ROOT / "bench" / "results"))


def tiny_model(n_items: int, max_new_tokens: int) -> ReasoningRecommender:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "smollm2-tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    items = pd.DataFrame(
        {"item_id": [f"m{i}" for i in range(n_items)], "title": [f"Film {i}" for i in range(n_items)]}
    )
    return ReasoningRecommender(LlamaForCausalLM(cfg).eval(), tok, items, max_new_tokens=max_new_tokens)


def main() -> int:
    args = p.parse_args()
    if args.model == "tiny":
        model = tiny_model(args.items, args.max_new_tokens)
        model.build_item_table()
    else:
        if args.data is None:
            model = load_model(args.model, device="cpu")  # its saved catalog and table
        else:
            items = load_prepared(args.data).items.head(args.items)
            model = ReasoningRecommender.from_pretrained(args.model, catalog=items, device="cpu")
            model.build_item_table()
    ids = [str(i) for i in model.item_ids]
    options = ServeOptions(args.max_batch, args.max_wait_ms, max(args.k, 1), args.max_new_tokens)
    service = Service(model, options)
    server, url = start_in_thread(service)
    try:
        request = {"k": args.k, "reasoning": args.reasoning, "max_new_tokens": args.max_new_tokens}
        report = run_load(url, ids, clients=args.clients, seconds=args.seconds, request=request)
    finally:
        server.should_exit = True
    result = {
        "model": args.model, "items": len(ids), "k": args.k, "reasoning": args.reasoning,
        "max_new_tokens": args.max_new_tokens, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "batches": service.stats.snapshot()["batches"], **dataclasses.asdict(report),
        "machine": machine_info(), "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "tiny" if args.model == "tiny" else Path(args.model).name
    kind = "-reasoning" if args.reasoning else ""
    (out / f"serve_load-{name}{kind}-{result['date']}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
