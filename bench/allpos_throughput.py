"""Targets trained per second: all-position training vs the per-sample contrastive recipe, in one run.

    .venv/bin/python bench/allpos_throughput.py --write BENCHMARKS.md     # the embedded SmolLM2, ML-100K
    .venv/bin/python bench/allpos_throughput.py --quick                   # tiny random model: a smoke run

Both sides train the same model with the same adapter (LoRA rank 8 on q,k,v,o,gate,up,down plus the
trainable ``<answer>`` rows), optimiser (AdamW) and dtype rule (bf16 autocast where the CPU has it
natively, else float32), on ML-100K train samples, each step = forward + backward + optimiser step:

* all-position (``recipes/train_allpos.py`` as configured in ``allpos_smollm2_ml100k.yaml``): 8 chunks of
  up to ``max_history + 1`` = 11 items in the stream format; every boundary is a target; full-catalog
  softmax against the frozen base-model table plus ID vectors.
* per-sample contrastive (``recipes/train_contrastive.py`` as configured in
  ``contrastive_smollm2_ml100k.yaml``): 16 chat prompts over up to 20 history items, ``<answer>`` at the
  end, and the 16 targets' item prompts encoded with gradient (in-batch negatives).

Steps alternate (A, B, A, B, ...) after one warm-up step each, and each side's rate is the median over
``--repeats`` steps, so a load change on a shared machine hits both sides alike. Reported: targets/s,
tokens/s (tokens that carry information, padding excluded) and the ratio of targets/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sections import write_section  # noqa: E402  (bench/, the script's folder)


def load(quick: bool):
    from rrec.backbone import apply_lora
    from rrec.data import ensure_default, load_prepared
    from rrec.model import ReasoningRecommender
    from rrec.prompts import PromptStyle

    data = load_prepared(ensure_default())
    if quick:
        from transformers import AutoTokenizer

        from tests.conftest import TOKENIZER_DIR, make_tiny_lm

        tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        lm = make_tiny_lm(tok)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rrec.assets import fetch_model, model_dir

        path = model_dir() if model_dir().exists() else fetch_model()
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)

    def make(**kw):
        import copy

        m = ReasoningRecommender(copy.deepcopy(lm), copy.deepcopy(tok), data.items, **kw)
        m.lm = apply_lora(m.lm, rank=8, alpha=16, trainable_tokens=[m.answer_id])
        return m

    stream = make(max_history=10, style=PromptStyle(item_fields=("year",)), user_format="stream",
                  item_encoder="base", id_vectors=True)  # fmt: skip
    chat = make(max_history=20)
    return data, stream, chat


def allpos_step_fn(model, data, rng, chunks_per_step: int = 8):
    from rrec import allpos
    from rrec.fast_eval import autocast_context
    from rrec.stream import StreamPrompter, chunk_sequences, sample_keys, stream_batch

    train = data.splits["train"]
    chunks = chunk_sequences(train, model.config.max_history)
    keys, exclude_of = set(sample_keys(train)), sample_keys(train)
    prompter = StreamPrompter(model.tokenizer, model.answer_id, model.catalog, model.style)
    ids = list(model.catalog)
    columns = {i: j for j, i in enumerate(ids)}
    with torch.no_grad():
        text = torch.randn(len(ids), model.hidden_size)  # the frozen table's values do not change the cost
    idv = model.id_vectors
    lora = [p for p in model.lm.parameters() if p.requires_grad]
    opts = [torch.optim.AdamW(lora, lr=1e-6), torch.optim.SGD([idv.weight], lr=1e-6, momentum=0.9)]

    def step() -> tuple[int, int]:
        picked = [chunks[i] for i in rng.choice(len(chunks), chunks_per_step, replace=False)]
        batch = stream_batch(prompter, picked, keys, exclude_of, pad_id=model.pad_id)
        with autocast_context("cpu"):
            users = allpos.boundary_states(model.lm, batch.input_ids, batch.attention_mask, batch.rows,
                                           batch.cols)  # fmt: skip
        table = model.table_rows(ids, text)  # (N, D) with the ID vectors' graph
        target_cols = torch.tensor([columns[t] for t in batch.targets])
        excl = allpos.exclusion_mask(batch.exclude, columns, len(ids), "cpu")
        loss, _ = allpos.catalog_loss(users, table, target_cols, excl, model.config.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        return len(batch.targets), int(batch.attention_mask.sum())

    return step


def contrastive_step_fn(model, data, rng, users_per_step: int = 16):
    from rrec import training
    from rrec.fast_eval import autocast_context

    train = data.splits["train"]
    lora = [p for p in model.lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora, lr=1e-6)

    def step() -> tuple[int, int]:
        rows = train.iloc[rng.choice(len(train), users_per_step, replace=False)].reset_index(drop=True)
        targets = rows["target"].astype(str).tolist()
        ids, mask = training.prompt_batch(model, rows, reasoning=False)
        recs = [model.catalog[t] for t in targets]
        item_ids = model.item_prompt_ids(recs)
        with autocast_context("cpu"):
            users = model.user_states(ids, mask)  # (B, D)
            items = training.encode_targets(model, targets, grad=True)  # (B, D)
        logits = F.normalize(users, dim=-1) @ F.normalize(items.float(), dim=-1).T / model.config.temperature
        same = torch.tensor([[a == t for t in targets] for a in targets])
        logits = logits.masked_fill(same & ~torch.eye(len(targets), dtype=torch.bool), float("-inf"))
        loss = F.cross_entropy(logits, torch.arange(len(targets)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return len(targets), int(mask.sum()) + sum(len(x) for x in item_ids)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model (smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--contrastive-batch", type=int, default=16, help="samples per contrastive step (16: config)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--write", type=Path, default=None, help="markdown file to put the section into")
    args = p.parse_args()
    from rrec.machine import machine_info

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data, stream, chat = load(args.quick)
    sides = {
        "allpos": allpos_step_fn(stream, data, rng),
        "contrastive": contrastive_step_fn(chat, data, rng, args.contrastive_batch),
    }
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for rep in range(args.repeats + 1):  # the first round is the warm-up
        for name, step in sides.items():
            t0 = time.perf_counter()
            targets, tokens = step()
            dt = time.perf_counter() - t0
            if rep:
                rates[name].append((targets / dt, tokens / dt))
            print(f"{name} step {rep}: {targets} targets, {tokens} tokens, {dt:.1f} s", flush=True)
    res = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "model": "tiny random Llama" if args.quick else "SmolLM2-135M-Instruct (Q4_1, dequantized)",
        "repeats": args.repeats,
        "contrastive_batch": args.contrastive_batch,
    }
    for name, r in rates.items():
        res[f"{name}_targets_per_s"] = statistics.median(x for x, _ in r)
        res[f"{name}_tokens_per_s"] = statistics.median(y for _, y in r)
    res["allpos_targets_per_s_vs_contrastive"] = (
        res["allpos_targets_per_s"] / res["contrastive_targets_per_s"]
    )
    print(json.dumps(res, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "cpu"
    (args.out / f"allpos-throughput-{tag}-{res['date']}.json").write_text(json.dumps(res, indent=2) + "\n")
    if args.write:
        write_section(args.write, markdown(res))


def markdown(r: dict) -> str:
    m = r["machine"]
    return "\n".join(
        [
            "## All-position training throughput (CPU)",
            "",
            f"`{r['command']}` on {r['date']}: {m['cpu']}, native bf16 {m['native_bf16']}, "
            f"{m['torch_threads']} threads, torch {m['torch']}, transformers {m['transformers']}; "
            f"{r['model']}, LoRA r8 + trainable `<answer>` rows; median of {r['repeats']} alternating steps "
            "per side.",
            "",
            "| recipe | targets/s | tokens/s |",
            "|---|---|---|",
            f"| all-position (8 chunks x 11 items, full-catalog softmax) | {r['allpos_targets_per_s']:.2f} | "
            f"{r['allpos_tokens_per_s']:.0f} |",
            f"| per-sample contrastive ({r['contrastive_batch']} prompts + their item prompts) | "
            f"{r['contrastive_targets_per_s']:.2f} | {r['contrastive_tokens_per_s']:.0f} |",
            "",
            f"Ratio of targets/s: **{r['allpos_targets_per_s_vs_contrastive']:.1f}x**.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
