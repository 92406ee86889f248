"""Package a trained all-position run as a compact model folder (the default that ships with rrec).

    python -m recipes.package_default runs/allpos [rrec/pretrained/ml100k-allpos] [--demo=<demo.json>]
        [--test=<rrec evaluate folder of this model>]

Reads ``<run>/model`` (written by ``recipes/train_allpos.py``), ``<run>/result.json`` and
``<run>/config.json``, and writes: ``rrec_config.json``; ``adapter/`` with its weights in bfloat16 (LoRA
and the trained ``<answer>`` rows); ``id_vectors/`` in bfloat16; ``items.parquet``; ``model_card.json``
(the command, the machine, the base checksum, the data fingerprint and the run's measured metrics). Left
out, to stay under 10 MB: the tokenizer (the base's, ``<answer>`` added on load) and the item table
(``build_item_table()`` rebuilds it from the base model and the ID vectors). The packaged folder is loaded
back and its table compared with the run's before anything is replaced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

MAX_BYTES = 10 * 1024 * 1024
TEST_KEYS = {f"{m}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)} | {"mrr", "n_samples", "n_users"}


def data_fingerprint(prepared) -> str:
    """sha256 (16 hex) of every split's (user, position, target) and the catalog's ids and titles."""
    h = hashlib.sha256()
    for name in sorted(prepared.splits):
        df = prepared.splits[name]
        rows = zip(
            df["user_id"].astype(str), df["position"].astype(int), df["target"].astype(str), strict=True
        )
        h.update(json.dumps([name, sorted(rows)]).encode())
    h.update(json.dumps(sorted(zip(prepared.items["item_id"].astype(str), prepared.items["title"].astype(str),
                                   strict=True))).encode())  # fmt: skip
    return h.hexdigest()[:16]


def _to_bf16(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path))


def _run_record(run: Path) -> dict:
    """The run's ``result.json``; for a run stopped during its final test evaluation (no result.json), the
    same training fields rebuilt from ``config.json``, ``metrics.jsonl`` and ``valid.jsonl``, without test
    metrics."""
    if (run / "result.json").exists():
        return json.loads((run / "result.json").read_text())
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run / "config.json").read_text())
    return {
        "command": "python -m recipes.train_allpos recipes/configs/allpos_smollm2_ml100k.yaml "
        f"out_dir={cfg['out_dir']} (stopped during the final test evaluation)",
        "config": cfg,
        "steps": log[-1]["step"],
        "train_s": log[-1]["train/minutes"] * 60,
        "targets": sum(r["train/targets"] for r in log),
        "targets_per_train_s": log[-1]["train/targets_per_s"],
        "valid_curve": [json.loads(x) for x in (run / "valid.jsonl").read_text().splitlines()],
        "machine": {"cpu": "not recorded (the run stopped before writing result.json)"},
        "test": None,
        "paired_ndcg@10": None,
    }


def package(run: Path, dest: Path, demo: Path | None = None, test: Path | None = None) -> dict:
    from rrec.assets import cache_dir
    from rrec.data import ensure_default, load_prepared
    from rrec.model import ReasoningRecommender

    run, dest = Path(run), Path(dest)
    result = _run_record(run)
    cfg = result["config"]
    prepared = load_prepared(cfg["prepared"] or ensure_default())
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        src = run / "model"
        shutil.copy(src / "rrec_config.json", tmp / "rrec_config.json")
        shutil.copytree(src / "adapter", tmp / "adapter", ignore=shutil.ignore_patterns("README.md"))
        shutil.copytree(src / "id_vectors", tmp / "id_vectors")
        shutil.copy(src / "items.parquet", tmp / "items.parquet")
        for f in [*(tmp / "adapter").glob("*.safetensors"), *(tmp / "id_vectors").glob("*.safetensors")]:
            _to_bf16(f)
        saved = json.loads((tmp / "rrec_config.json").read_text())
        card = {
            "name": dest.name,
            "trained_by": result.get("command", "python -m recipes.train_allpos (command not recorded)"),
            "packaged_by": f"python -m recipes.package_default {run} {dest}",
            "base_model": saved["base_model"] + " (SmolLM2-135M-Instruct, Q4_1, dequantized)",
            "base_checksum": saved["base_checksum"],
            "data": prepared.name if hasattr(prepared, "name") else "ml-100k",
            "data_fingerprint": data_fingerprint(prepared),
            "machine": result.get("machine", {}),
            "train": {k: result[k] for k in ("steps", "train_s", "targets", "targets_per_train_s")},
            "config": cfg,
            "valid_curve": result.get("valid_curve"),
            "test": result["test"],
            "paired_ndcg@10": result["paired_ndcg@10"],
            "weights_dtype": "bfloat16 (loaded into float32)",
        }
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise ValueError(f"packaged model is {size / 2**20:.1f} MiB, over the 10 MiB budget")
        ref = ReasoningRecommender.from_pretrained(src, device="cpu")
        packed = ReasoningRecommender.from_pretrained(tmp, device="cpu")
        packed.text_cache = cache_dir() / "tables"  # the base model's item states, kept for the next load
        packed.build_item_table()
        cos = torch.nn.functional.cosine_similarity(packed.item_table(), ref.item_table(), dim=-1)
        if cos.min() < 0.999:  # bf16 weights: rows agree to ~1e-3, anything else is a packaging error
            raise ValueError(f"packaged table differs from the run's: min row cosine {cos.min():.4f}")
        if test is not None:  # an `rrec evaluate` of the run's model (e.g. the whole test split)
            card["test"], card["paired_ndcg@10"] = _test_entry(Path(test))
        if demo is not None:  # the demo's paired test measurement on this very model
            d = json.loads(Path(demo).read_text())
            card["demo_test"] = {k: d[k] for k in ("samples", "sample_set", "test", "paired_ndcg@10")}
            card["demo_test"]["command"] = "rrec demo"
        card["size_bytes"] = sum(
            f.stat().st_size for f in tmp.rglob("*") if f.is_file() and f.name != "model_card.json"
        )
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"packaged {run} -> {dest} ({size / 2**20:.2f} MiB; min row cosine vs the run {cos.min():.5f})")
    return card


def _test_entry(folder: Path) -> tuple[dict, dict | None]:
    """The card's ``test`` (``trained`` and, when its ``paired_with`` names a most-popular evaluation,
    ``pop``: the shape a train_allpos run writes) and ``paired_ndcg@10`` from an ``rrec evaluate`` folder."""

    def metrics(m: dict) -> dict:
        keep = [k for k in m if k.split("_ci95")[0] in TEST_KEYS]
        return {k: m[k] for k in keep} | {k: m.get(k) for k in ("samples_sha", "command", "date")}

    m = json.loads((folder / "metrics.json").read_text())
    out = {"trained": metrics(m)}
    paired = m.get("paired_ndcg@10") or {}
    for entry in paired.values():
        other = Path(entry["file"]).parent / "metrics.json"
        if other.exists() and json.loads(other.read_text()).get("method") == "pop":
            out["pop"] = metrics(json.loads(other.read_text()))
    return out, {f"trained_vs_{k}": v for k, v in paired.items()} or None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.package_default <run_dir> [dest] [--demo=<demo.json>]")
    from rrec.pretrained import DEFAULT, HERE

    demo = [a.split("=", 1)[1] for a in argv if a.startswith("--demo=")]
    test = [a.split("=", 1)[1] for a in argv if a.startswith("--test=")]
    pos = [a for a in argv if not a.startswith("--")]
    return package(
        Path(pos[0]),
        Path(pos[1]) if len(pos) > 1 else HERE / DEFAULT,
        Path(demo[0]) if demo else None,
        Path(test[0]) if test else None,
    )


if __name__ == "__main__":
    main()
