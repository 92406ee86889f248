"""One benchmark run on the current machine -> bench/results/<device>-<date>.json and a BENCHMARKS.md table.

    .venv/bin/python bench/run.py --write BENCHMARKS.md  # GPU: SmolLM2-135M + random Qwen2-0.5B/1.5B
    .venv/bin/python bench/run.py --quick           # CPU smoke run: a tiny Llama, short lengths
    .venv/bin/python bench/run.py --trl ...         # item d also times TRL (pip install -e '.[bench]')

Measured, each after a warm-up, as medians of ``--repeats`` runs:
  a. rollout tokens/s, batch 1 / 8 / 64, prompt ~300 tokens, 256 new tokens: HF ``generate`` (length forced
     with ``min_new_tokens``) vs ``rrec.rollout.generate_reasoning`` on the HF path and with
     ``rrec.engine.StaticDecoder`` (CUDA-graph decode on GPU); ours counts the tokens actually sampled
     (a row stops at ``<answer>``, which random weights almost never pick);
  b. item-table rebuild (ML-100K catalog, ``ReasoningRecommender.build_item_table``): items/s and achieved
     TFLOP/s (2 x non-embedding parameters x tokens computed, the shared prefix once; attention left
     out: a lower bound) against the bf16
     matmul ceiling measured in the same run (8192^3 GEMMs);
  c. ``recommend_batch`` latency at batch 1 / 8 / 64 with 128 reasoning tokens;
  d. one RecPO step (G=4) in trajectories/s, and with ``--trl`` TRL's ``GRPOTrainer`` on the same model,
     LoRA, prompts, group size, lengths and dtype, neither using vLLM (``bench/trl_step.py`` says what is
     matched; TRL is the ``bench`` extra, ``pip install -e '.[bench]'``; without ``--trl`` the JSON says
     "not measured"); ``recpo_speedup_vs_trl`` = ours / TRL's trajectories/s on SmolLM2 (else the first
     model); each side's mean completion length is recorded beside it;
  e. peak GPU memory of a RecPO step with LoRA on the 1.5B-class config (G=4, 4 users, 512 new tokens).
Random-init models: speed does not depend on the weight values. Not yet run on a GPU (written in a
session without one): its first GPU run is the check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from sections import write_section
from trl_step import TRL_MISSING, TRL_NOT_MEASURED, speedup_vs_trl, trl_available, trl_grpo_step

from rrec.rollout import generate_reasoning, left_pad

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true", help="tiny model, short lengths (a CPU smoke run)")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--models", default="smollm2,0p5b,1p5b")
p.add_argument("--out", type=Path, default=Path("bench/results"))
p.add_argument("--write", type=Path, default=None, help="markdown file to put the results table into")
p.add_argument("--trl", action="store_true", help="also time TRL's GRPOTrainer steps (item d)")
p.add_argument(
    "--merge", type=Path, nargs="+", default=None, help="measure nothing: join the JSONs of one device's runs"
)
args = p.parse_args()
if args.trl and not trl_available():
    p.exit(2, TRL_MISSING + "\n")
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
QUICK = args.quick
BATCHES = (1, 2) if QUICK else (1, 8, 64)
PROMPT, NEW, REC_NEW = (24, 8, 4) if QUICK else (300, 256, 128)


def sync() -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int = args.repeats) -> float:
    fn()  # warm-up (and CUDA-graph capture)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def qwen2(hidden: int, inter: int, layers: int, heads: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=2, tie_word_embeddings=hidden < 1536,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


def load(name: str):
    """(model, tokenizer): SmolLM2 real weights, or random Qwen2 shapes with SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rrec.assets import model_dir
    from rrec.backbone import quiet_weight_loading

    tok = AutoTokenizer.from_pretrained(
        model_dir() if model_dir().exists() else "tests/assets/smollm2-tokenizer"
    )
    if QUICK:
        cfg = LlamaConfig(vocab_size=len(tok) + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
        lm = LlamaForCausalLM(cfg)
    elif name == "smollm2":
        with quiet_weight_loading():  # main() loads each model of its list in turn
            lm = AutoModelForCausalLM.from_pretrained(model_dir())
    elif name == "0p5b":
        lm = qwen2(896, 4864, 24, 14)
    elif name == "1p5b":
        lm = qwen2(1536, 8960, 28, 12)
    else:
        raise ValueError(f"unknown model {name!r}")
    return lm.to(dev, dtype).eval(), tok


def matmul_ceiling() -> float:
    n = 1024 if QUICK else 8192
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    return 2 * n**3 / median_time(lambda: a @ b, 10) / 1e12


def prompts(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    rows = [
        torch.randint(100, min(vocab, 49000), (PROMPT - (i % 7),), generator=g).tolist() for i in range(batch)
    ]
    return left_pad(rows, 0, dev)


def rollout_batch(lm, B: int) -> dict:
    """Tokens/s of HF generate, our loop on the HF path, and our loop on the static decoder, batch B."""
    from rrec.engine import StaticDecoder

    V = lm.config.vocab_size
    ids, mask = prompts(B, V)
    answer = V - 1  # never a prompt token; random weights sample it with probability ~1/V per step
    kw = dict(answer_id=answer, pad_id=0, max_new_tokens=NEW, do_sample=True, temperature=1.0, top_k=200)
    hf_kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_k=200, pad_token_id=0)
    hf_s = median_time(lambda: lm.generate(ids, attention_mask=mask, **hf_kw))
    n = {}

    def ours(engine=None):
        n["tokens"] = int(generate_reasoning(lm, ids, mask, engine=engine, **kw).completion_mask.sum())

    ours_s = median_time(ours)
    engine = StaticDecoder(lm, rows=B, max_len=ids.shape[1] + NEW + 1, cuda_graph=dev.type == "cuda")
    eng_s = median_time(lambda: ours(engine))
    row = {"hf_tok_s": B * NEW / hf_s, "ours_hf_path_tok_s": n["tokens"] / ours_s}
    row["ours_engine_tok_s"] = n["tokens"] / eng_s
    row["speedup_vs_hf"] = row["ours_engine_tok_s"] / row["hf_tok_s"]
    return row


def rollout(lm, name: str, out: dict) -> None:
    for B in BATCHES:
        row = out[f"rollout_b{B}_{name}"] = rollout_batch(lm, B)
        print(f"rollout {name} b{B}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)


def recommender(lm, tok, items):
    from rrec.model import ReasoningRecommender

    return ReasoningRecommender(lm, tok, items, max_new_tokens=REC_NEW)


def item_encoding(model, name: str, ceiling: float, out: dict) -> None:
    from rrec.items import common_prefix_len

    n_items = len(model.catalog)
    lists = model.item_prompt_ids(list(model.catalog.values()))
    # the tokens computed: the shared chat prefix once, then each item's own suffix
    prefix = common_prefix_len(lists)
    tokens = prefix + sum(len(ids) - prefix for ids in lists)
    secs = median_time(lambda: model.build_item_table(batch_size=256 if not QUICK else 16), 1)
    emb = model.lm.get_input_embeddings().weight.numel()
    head = 0 if model.lm.config.tie_word_embeddings else model.lm.get_output_embeddings().weight.numel()
    params = sum(p.numel() for p in model.lm.parameters()) - emb - head
    tflops = 2 * params * tokens / secs / 1e12
    out[f"item_encode_{name}"] = {"items_s": n_items / secs, "tflop_s": tflops, "mfu": tflops / ceiling}
    print(
        f"items {name}: {n_items / secs:.0f} items/s, {tflops:.1f} TFLOP/s = {tflops / ceiling:.1%}",
        flush=True,
    )


def recommend_latency(model, histories, name: str, out: dict) -> None:
    for B in BATCHES:
        key = f"recommend_latency_b{B}_s_{name}"
        out[key] = median_time(lambda b=(histories * B)[:B]: model.recommend_batch(b, k=20))
        print(f"recommend {name} b{B}: {out[key]:.3f} s", flush=True)


def recpo_settings(users: int, new_tokens: int) -> list[str]:
    """The RecPOConfig overrides of item d, ours and TRL's: 1 warm-up + ``--repeats`` timed steps."""
    return [f"steps={1 + args.repeats}", f"users_per_step={users}", "num_generations=4",
            f"max_completion_length={new_tokens}", "warmup_steps=0"]  # fmt: skip


def recpo_step(name: str, out: dict, users: int, new_tokens: int) -> None:
    """RecPO training steps of the recipe on a fresh output folder: trajectories/s (median of the steps
    after the first) and peak memory."""
    import tempfile

    from recipes import train_recpo

    with tempfile.TemporaryDirectory() as tmp:
        lm, tok = load(name)
        lm.save_pretrained(tmp + "/model")
        tok.save_pretrained(tmp + "/model")
        del lm
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res = train_recpo.main([
            f"model={tmp}/model", f"out_dir={tmp}/run", *recpo_settings(users, new_tokens), "eval_users=1",
            "eval_max_new_tokens=4", "tensorboard=false",
        ])  # fmt: skip
        warm = res["history"][1:]  # the first step is the warm-up
        step_s = statistics.median(h["train/step_s"] for h in warm)
        out[f"recpo_traj_s_{name}"] = users * 4 / step_s
        out[f"recpo_completion_len_{name}"] = statistics.mean(h["train/reasoning_len"] for h in warm)
        if dev.type == "cuda":
            out[f"peak_mem_gib_{name}"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"recpo {name}: {users * 4 / step_s:.2f} trajectories/s", flush=True)


def trl_step(name: str, data, out: dict, users: int, new_tokens: int) -> None:
    """TRL's GRPOTrainer on the setup of ``recpo_step`` (same RecPOConfig): ``bench/trl_step.py``."""
    from recipes.train_recpo import RecPOConfig
    from rrec.config import config_from_argv

    cfg = config_from_argv(RecPOConfig, recpo_settings(users, new_tokens))
    lm, tok = load(name)
    res = trl_grpo_step(lm, tok, data.items, data.splits["train"], cfg, args.repeats)
    out[f"trl_grpo_step_traj_s_{name}"] = res["traj_s"]
    out[f"trl_completion_len_{name}"] = res["completion_len"]
    if "peak_mem_gib" in res:
        out[f"trl_peak_mem_gib_{name}"] = res["peak_mem_gib"]
    out["trl"] = f"trl {res['trl']}"
    print(f"trl grpo {name}: {res['traj_s']:.2f} trajectories/s (trl {res['trl']})", flush=True)


def markdown(out: dict, command: str) -> str:
    """The run as a BENCHMARKS.md section: one row per measured key, the acceptance targets beside."""
    targets = {"rollout_speedup_vs_hf_b64_smollm2": ">= 25", "rollout_speedup_vs_hf_b64_0p5b": ">= 25",
               "item_encode_mfu_smollm2": ">= 0.25", "item_encode_mfu_0p5b": ">= 0.40",
               "recommend_latency_b1_s_smollm2": "<= 0.15", "recommend_latency_b1_s_0p5b": "<= 0.25",
               "recpo_speedup_vs_trl": ">= 5", "peak_mem_gib_1p5b": "<= 22"}  # fmt: skip
    ceiling = out["matmul_ceiling_tflop_s"]
    lines = [
        f"## bench/run.py on {out['device']} ({out['date']}{', --quick' if out['quick'] else ''})", "",
        f"- Command: `{command}`; torch {out['torch']}; matmul ceiling in the run: {ceiling:.3g} TFLOP/s.",
        "", "| key | value | target |", "|---|---:|---|",
    ]  # fmt: skip
    for key, value in out.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                lines.append(f"| {key}.{sub} | {v:.4g} | |")
        elif key == "trl":
            lines.append(f"| trl | {value} | |")
        elif isinstance(value, float) or (value is None and key in targets):
            shown = "not measured" if value is None else f"{value:.4g}"
            lines.append(f"| {key} | {shown} | {targets.get(key, '')} |")
    return "\n".join(lines) + "\n"


def merge(paths: list[Path]) -> None:
    """One JSON (and table) from several runs on the same device: later files add their keys."""
    parts = [json.loads(path.read_text()) for path in paths]
    if len({part["device"] for part in parts}) != 1:
        raise SystemExit(f"--merge: runs from different devices: {[part['device'] for part in parts]}")
    out = {k: v for part in parts for k, v in part.items() if v is not None}
    names = [m for m in ("smollm2", "0p5b", "1p5b") if any(k.endswith("_" + m) for k in out)]
    out["merged_from"] = [path.name for path in paths]
    out["matmul_ceiling_tflop_s_runs"] = [part.get("matmul_ceiling_tflop_s") for part in parts]  # MFUs: own
    save(summary(out, names))


def main() -> None:
    if args.merge:
        return merge(args.merge)
    from recipes.prepare import ensure_default
    from rrec.data import load_prepared

    data = load_prepared(ensure_default())
    items = data.items
    histories = data.splits["test"]["history"].head(8).tolist()
    out: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "quick": QUICK,
                 "date": datetime.date.today().isoformat(), "torch": torch.__version__}  # fmt: skip
    out["matmul_ceiling_tflop_s"] = ceiling = matmul_ceiling()
    print(f"ceiling {ceiling:.1f} TFLOP/s ({dtype})", flush=True)
    names = args.models.split(",") if not QUICK else ["smollm2"]
    for name in names:
        lm, tok = load(name)
        if name != "1p5b":
            rollout(lm, name, out)
            model = recommender(lm, tok, items)
            item_encoding(model, name, ceiling, out)
            recommend_latency(model, histories, name, out)
            del model
        del lm
    out["trl"] = TRL_NOT_MEASURED
    runs = [(names[0], 2 if QUICK else 8, NEW)] + (
        [("1p5b", 4, 512)] if "1p5b" in names and dev.type == "cuda" else []
    )
    for name, users, new_tokens in runs:
        recpo_step(name, out, users, new_tokens)
        if args.trl:
            trl_step(name, data, out, users, new_tokens)
    save(summary(out, names))


def summary(out: dict, names: list[str]) -> dict:
    """``out`` with the issue's headline keys filled from the per-model rows (None where not measured)."""
    keys = {"rollout_speedup_vs_hf_b64_smollm2": ("rollout_b64_smollm2", "speedup_vs_hf"),
            "rollout_speedup_vs_hf_b64_0p5b": ("rollout_b64_0p5b", "speedup_vs_hf"),
            "item_encode_mfu_smollm2": ("item_encode_smollm2", "mfu"),
            "item_encode_mfu_0p5b": ("item_encode_0p5b", "mfu")}  # fmt: skip
    for key, (a, b) in keys.items():
        out[key] = out.get(a, {}).get(b)
    out["recommend_latency_b1_s_smollm2"] = out.get("recommend_latency_b1_s_smollm2")
    out["recommend_latency_b1_s_0p5b"] = out.get("recommend_latency_b1_s_0p5b")
    out["recpo_speedup_vs_trl"] = speedup_vs_trl(out, names)
    out["peak_mem_gib_1p5b"] = out.get("peak_mem_gib_1p5b")
    return out


def save(out: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{out['device'].replace(' ', '_')}-{out['date']}{'-quick' if QUICK else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    if args.write:
        import sys

        write_section(args.write, markdown(out, " ".join([".venv/bin/python", *sys.argv])))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
