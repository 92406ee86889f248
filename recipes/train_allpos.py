"""All-position training of the no-reasoning model: every item boundary of a user's sequence is a target.

Launch: ``python -m recipes.train_allpos recipes/configs/allpos_smollm2_ml100k.yaml [key=value ...]``
(one process; CPU or one GPU).

Per step: ``chunks_per_step`` windows of users' train sequences (``rrec.stream``) -> one causal pass ->
the state at each ``<answer>`` boundary -> cross-entropy over the full catalog (``rrec.allpos``; history
masked as the evaluator masks it) -> one optimiser step on LoRA (and the ID vectors of the hybrid table).
Every ``eval_every_minutes`` of training, NDCG@10 on a fixed subset of the *valid* split (``valid.jsonl``:
the curve against training minutes); the test split is evaluated once, at the end, beside most-popular on
the same samples with a paired user bootstrap of the difference.

Departures from R²ec's "w/o reasoning" baseline (per-sample prompts, in-batch negatives): one pass per
chunk instead of one prompt per target; a full-catalog softmax; a short item text (title and year); the
stream prompt of ``rrec.stream``; optionally a frozen base-model item side and learned ID vectors
(``rrec.id_vectors``). Eval and test-time prompts use the same stream format over the last ``max_history``
items (exactly a prefix of a training chunk's format).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rrec import allpos, atomic_files
from rrec.config import config_from_argv, to_dict

# Optimisers of the ID vectors. Every row gets a gradient every step (the full-catalog softmax pushes all
# non-targets down a little); Adam normalises those small, consistent pushes into full-size steps, so the
# rarely-seen rows drift together (measured on ML-100K, Adam lr 3e-3: train loss flat at ~7.5 over 70 steps,
# valid NDCG@10 0.008 at 10 minutes). SGD keeps each row's step proportional to its gradient. Its lr matters:
# 0.02 learned slowly (loss 7.6 -> 6.8 in 70 steps; after 38 steps the median ID-vector norm was 0.05),
# 0.25 diverged (loss 7.8 -> 8.7 in 60 steps); the config uses 0.05. The base model's text states of the
# items are nearly parallel (mean pairwise cosine 0.97), so small ID vectors already move the ranking.
ID_OPTIMIZERS = ("sgd", "adam")


@dataclass
class AllPosConfig:
    model: str = ""  # HF folder, or an rrec folder whose adapter (and ID vectors) train on; "" = embedded
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal
    out_dir: str = "runs/allpos"
    seed: int = 0
    threads: int = 0  # 0: torch's default
    max_history: int = 10  # items in a prompt (a training chunk holds max_history + 1)
    item_fields: list[str] = field(default_factory=lambda: ["year"])  # item text: title + these
    title_words: int | None = None  # cut titles to this many words (Amazon's run to 30+ tokens)
    system: str = ""  # the user prompt's system line; "" = rrec.prompts.DEFAULT_SYSTEM (movies)
    show_rating: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    id_vectors: bool = True  # the hybrid table: text state + a learned per-item vector
    item_side: str = "frozen"  # frozen | cached | in_batch (rrec.allpos)
    refresh_every: int = 25  # item_side=cached: rebuild the detached table every n steps
    chunks_per_step: int = 8
    lr: float = 2e-4
    id_optimizer: str = "sgd"  # sgd | adam (for the ID vectors; LoRA always uses AdamW)
    id_lr: float = 0.02
    id_momentum: float = 0.9  # sgd only
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    temperature: float = 0.02  # cosine / temperature (R²ec)
    steps: int = 100_000
    max_train_minutes: float | None = 45.0  # training time only (evaluations excluded)
    eval_every_minutes: float = 5.0  # valid NDCG@10 curve; 0: none
    eval_at_steps: list[int] = field(default_factory=list)  # also after these steps (equal-step comparisons)
    valid_users: int | None = 64
    valid_samples_per_user: int | None = 4
    test_users: int | None = None  # None: the whole test split
    test_samples_per_user: int | None = None
    test_before: bool = True  # also evaluate the untrained model on the test samples (zero-shot)
    eval_batch_size: int = 32
    log_every: int = 10


def _table_text(model, lm, use_base: bool, cache: Path | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, D) float32 text states of the catalog, by the base model (adapter off) or the current one.

    With ``cache`` (a folder), the base model's table is kept under a key of the base model's path, the
    compute dtype and every item prompt's token ids, and read back by the next run with the same key."""
    import hashlib

    from rrec.fast_eval import autocast_context
    from rrec.items import encode_token_lists

    ids = model.item_prompt_ids(list(model.catalog.values()))
    from rrec.backbone import cpu_has_fast_bf16

    bf16 = model.device.type == "cuda" or cpu_has_fast_bf16()
    key = hashlib.sha256(json.dumps([model.config.base_model, bf16, ids]).encode()).hexdigest()[:16]
    path = cache / f"text-{key}.pt" if cache is not None and use_base else None
    if path is not None and path.exists():
        return torch.load(path).to(model.device)
    ctx = lm.disable_adapter() if use_base else torch.no_grad()
    with ctx, torch.no_grad(), autocast_context(model.device):
        text = encode_token_lists(lm, ids, pad_id=model.pad_id, batch_size=batch_size, progress=True).float()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(text.cpu(), path)
    return text


def evaluate(model, lm, prompter, samples, table, cfg, progress=False) -> dict:
    from rrec.evaluation import summarize
    from rrec.fast_eval import rank_samples

    lm.eval()
    res = rank_samples(
        lm,
        lambda h, _t: prompter.prompt_ids(h, cfg.max_history),
        samples,
        table,
        list(model.catalog),
        pad_id=model.pad_id,
        batch_size=cfg.eval_batch_size,
        progress=progress,
    )
    out = summarize(res["ranks"], res["user_ids"])
    out["tied_frac"] = float(res["tied"].float().mean())
    return {"metrics": out, **res}


def main(argv: list[str] | None = None) -> dict:
    from transformers import get_constant_schedule_with_warmup

    from item_index import ItemIndex
    from rrec.assets import fetch, model_dir
    from rrec.backbone import apply_lora, continue_adapter, is_peft
    from rrec.data import load_prepared
    from rrec.evaluation import select_samples
    from rrec.fast_eval import autocast_context
    from rrec.id_vectors import hybrid_rows
    from rrec.model import ReasoningRecommender
    from rrec.prompts import PromptStyle
    from rrec.stream import StreamPrompter, chunk_sequences, sample_keys, stream_batch

    cfg = config_from_argv(AllPosConfig, sys.argv[1:] if argv is None else argv)
    if cfg.id_optimizer not in ID_OPTIMIZERS:
        raise ValueError(f"id_optimizer must be one of {ID_OPTIMIZERS}, got {cfg.id_optimizer!r}")
    if cfg.item_side not in allpos.ITEM_SIDES:
        raise ValueError(f"item_side must be one of {allpos.ITEM_SIDES}, got {cfg.item_side!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_files.atomic_write_json(out / "config.json", to_dict(cfg))
    if cfg.prepared:
        data = load_prepared(cfg.prepared)
    else:
        from rrec.data import ensure_default

        data = load_prepared(ensure_default())
    path = cfg.model or str(fetch(datasets=())["model"] if not model_dir().exists() else model_dir())
    style = PromptStyle(
        item_fields=tuple(cfg.item_fields),
        show_rating=cfg.show_rating,
        title_words=cfg.title_words,
        **({"system": cfg.system} if cfg.system else {}),
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ReasoningRecommender.from_pretrained(
        path,
        dtype=torch.float32,
        device=device,
        catalog=data.items,
        max_history=cfg.max_history,
        style=style,
        temperature=cfg.temperature,
        user_format="stream",
        item_encoder="base" if cfg.item_side == "frozen" else "self",
        id_vectors=cfg.id_vectors,
    )
    if is_peft(model.lm):  # an rrec folder with an adapter (e.g. rrec:ml100k-allpos): train it on
        model.lm = continue_adapter(model.lm)
    else:
        model.lm = apply_lora(
            model.lm, rank=cfg.lora_rank, alpha=cfg.lora_alpha, trainable_tokens=[model.answer_id]
        )
    lm, ids = model.lm, list(model.catalog)
    columns = {i: j for j, i in enumerate(ids)}
    prompter = StreamPrompter(model.tokenizer, model.answer_id, model.catalog, style)
    train = data.splits["train"]
    chunks = chunk_sequences(train, cfg.max_history)
    keys, exclude_of = set(sample_keys(train)), sample_keys(train)
    valid_df = select_samples(data.splits["valid"], cfg.valid_users, cfg.valid_samples_per_user, cfg.seed)
    idv = model.id_vectors  # zero-initialised, one per catalog item (None without the hybrid table)
    if idv is not None:
        idv.to(device)
    step = 0  # read by table_now()
    lora_params = [p for p in lm.parameters() if p.requires_grad]
    opts = [torch.optim.AdamW(lora_params, lr=cfg.lr, weight_decay=0.0)]
    if idv is not None:  # see ID_OPTIMIZERS: sgd keeps each row's step proportional to its gradient
        if cfg.id_optimizer == "sgd":
            opts.append(torch.optim.SGD([idv.weight], lr=cfg.id_lr, momentum=cfg.id_momentum))
        else:
            opts.append(torch.optim.Adam([idv.weight], lr=cfg.id_lr))
    scheds = [get_constant_schedule_with_warmup(o, cfg.warmup_steps) for o in opts]
    cosine = model.config.similarity == "cosine"

    t0 = time.time()
    from rrec.assets import cache_dir

    text = _table_text(model, lm, use_base=cfg.item_side == "frozen", cache=cache_dir() / "tables")  # (N, D)
    print(f"item table: {len(ids)} items in {time.time() - t0:.0f} s; {len(chunks)} chunks", flush=True)

    def table_now() -> torch.Tensor:
        """(N, D) rows for evaluation: text states of the *current* model unless the item side is frozen."""
        nonlocal text
        if cfg.item_side != "frozen" and step > 0:
            text = _table_text(model, lm, use_base=False)
        with torch.no_grad():
            return hybrid_rows(text, idv.weight if idv is not None else None, cosine)

    test_df = select_samples(data.splits["test"], cfg.test_users, cfg.test_samples_per_user, cfg.seed)
    before = (
        evaluate(model, lm, prompter, test_df, table_now(), cfg, progress=True) if cfg.test_before else None
    )
    if before is not None:
        print(f"test before training: ndcg@10 {before['metrics']['ndcg@10']:.4f}", flush=True)
    log, curve = [], []
    train_s, next_eval, step = 0.0, 0.0, 0
    rng = np.random.default_rng(cfg.seed)
    order, pos = rng.permutation(len(chunks)), 0
    n_targets = 0

    def valid_point() -> None:
        ev = evaluate(model, lm, prompter, valid_df, table_now(), cfg)["metrics"]
        point = {"step": step, "train_minutes": train_s / 60, "targets": n_targets}
        curve.append(point | {k: ev[k] for k in ("ndcg@10", "hit@10", "ndcg@10_ci95")})
        print(f"valid @ {train_s / 60:.1f} min (step {step}): ndcg@10 {ev['ndcg@10']:.4f}", flush=True)
        atomic_files.atomic_write_text(out / "valid.jsonl", "".join(json.dumps(c) + "\n" for c in curve))

    while step < cfg.steps:
        if cfg.eval_every_minutes and train_s >= next_eval:
            valid_point()
            next_eval += cfg.eval_every_minutes * 60
        elif step in cfg.eval_at_steps and step > 0:
            valid_point()
        if cfg.max_train_minutes is not None and train_s >= cfg.max_train_minutes * 60:
            break
        t_step = time.time()
        if pos + cfg.chunks_per_step > len(order):
            order, pos = rng.permutation(len(chunks)), 0
        picked = [chunks[i] for i in order[pos : pos + cfg.chunks_per_step]]
        pos += cfg.chunks_per_step
        batch = stream_batch(prompter, picked, keys, exclude_of, pad_id=model.pad_id, device=device)
        if len(batch.targets) == 0:
            continue
        lm.train()
        if cfg.item_side == "cached" and step > 0 and step % cfg.refresh_every == 0:
            text = _table_text(model, lm, use_base=False)
        with autocast_context(device):
            users = allpos.boundary_states(lm, batch.input_ids, batch.attention_mask, batch.rows, batch.cols)
            uniq = list(dict.fromkeys(batch.targets))
            if cfg.item_side == "frozen":
                cand, col = text, columns
            else:
                fresh = allpos.encode_items_with_grad(
                    lm, model.item_prompt_ids([model.catalog[i] for i in uniq]), model.pad_id
                )  # (U, D)
                if cfg.item_side == "cached":
                    at = torch.tensor([columns[i] for i in uniq], device=device)
                    cand, col = text.index_copy(0, at, fresh.to(text.dtype)), columns
                else:
                    cand, col = fresh, {i: j for j, i in enumerate(uniq)}
        cand_ids = ids if col is columns else uniq
        id_rows = (idv.weight if col is columns else idv.rows(uniq)) if idv is not None else None
        table = hybrid_rows(cand, id_rows, cosine)  # (K, D)
        target_cols = torch.tensor([col[t] for t in batch.targets], device=device)
        excl = allpos.exclusion_mask(batch.exclude, col, len(cand_ids), device)
        loss, ranks = allpos.catalog_loss(users, table, target_cols, excl, cfg.temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: non-finite loss")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(lora_params, cfg.max_grad_norm)  # LoRA only
        for o, s in zip(opts, scheds, strict=True):
            o.step()
            s.step()
            o.zero_grad(set_to_none=True)
        dt = time.time() - t_step
        train_s += dt
        step += 1
        n_targets += len(batch.targets)
        rec = {
            "step": step,
            "train/loss": loss.item(),
            "train/rank_median": ranks.float().median().item(),
            "train/targets": len(batch.targets),
            "train/tokens": int(batch.attention_mask.sum()),
            "train/grad_norm": float(grad_norm),
            "train/step_s": dt,
            "train/minutes": train_s / 60,
            "train/targets_per_s": n_targets / train_s,
        }
        log.append(rec)
        if step % cfg.log_every == 0:
            print(
                f"step {step} loss {rec['train/loss']:.3f} rank~{rec['train/rank_median']:.0f} "
                f"{dt:.1f}s {rec['train/targets_per_s']:.1f} targets/s",
                flush=True,
            )
            atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    if step in cfg.eval_at_steps and not any(c["step"] == step for c in curve):
        valid_point()  # the last requested step ends the loop before its evaluation
    final_table = table_now()
    model.rec_head = ItemIndex(final_table.shape[1], metric="ip")
    model.rec_head.add(ids, final_table.cpu().numpy())
    model.save_pretrained(out / "model")  # adapter (+ trained <answer> rows), ID vectors, table, config
    after = evaluate(model, lm, prompter, test_df, final_table, cfg, progress=True)
    report = _report(data, test_df, after, before, out)
    from rrec.machine import machine_info

    result = {
        "command": "python -m recipes.train_allpos " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "config": to_dict(cfg),
        "steps": step,
        "train_s": train_s,
        "targets": n_targets,
        "targets_per_train_s": n_targets / max(train_s, 1e-9),
        "valid_curve": curve,
        "valid_pop_ndcg@10": _pop_ndcg(data, valid_df),
        **report,
    }
    atomic_files.atomic_write_json(out / "result.json", result)
    _plot_curve(curve, out, result["valid_pop_ndcg@10"])
    return {**result, "log": log, "model": model, "prompter": prompter, "table": final_table, "data": data}


def _report(data, test_df, after: dict, before: dict | None, out: Path) -> dict:
    """Test metrics of the trained model, most-popular (and the untrained model) on the same samples, with
    paired bootstraps of the NDCG@10 differences; per-sample rows written beside."""
    from rrec.baselines.popularity import popularity_sample_rows
    from rrec.evaluation import paired_ndcg, paired_verdict, summarize
    from rrec.fast_eval import sample_rows

    ids = data.items["item_id"].astype(str).tolist()
    pop_ranks, pop_tied, pop_rows = popularity_sample_rows(data.splits["train"], ids, test_df)
    rows = {"trained": sample_rows(after), "pop": pop_rows}
    metrics = {
        "trained": after["metrics"],
        "pop": summarize(pop_ranks, [r["user_id"] for r in pop_rows], tied=pop_tied),
    }
    if before is not None:
        rows["zero_shot"], metrics["zero_shot"] = sample_rows(before), before["metrics"]
    for name, rs in rows.items():
        atomic_files.atomic_write_text(
            out / f"per_user_test_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rs)
        )
    paired = {"trained_vs_pop": paired_ndcg(rows["trained"], pop_rows)._asdict()}
    print(
        f"test: trained ndcg@10 {metrics['trained']['ndcg@10']:.4f}, "
        f"most-popular {metrics['pop']['ndcg@10']:.4f}"
    )
    from rrec.metrics import PairedDifference

    print(
        "trained vs most-popular: "
        + paired_verdict(
            PairedDifference(**paired["trained_vs_pop"]), "above most-popular", "below most-popular"
        )
    )
    if before is not None:
        paired["trained_vs_zero_shot"] = paired_ndcg(rows["trained"], rows["zero_shot"])._asdict()
        print(
            "trained vs untrained: "
            + paired_verdict(PairedDifference(**paired["trained_vs_zero_shot"]), "improved", "got worse")
        )
    from rrec.evaluation import sample_set_hash

    return {"test": metrics, "paired_ndcg@10": paired, "sample_set": sample_set_hash(test_df)}


def _pop_ndcg(data, samples) -> float:
    """Most-popular's NDCG@10 on ``samples`` (the valid subset the curve is measured on)."""
    from rrec.baselines.popularity import popularity_sample_rows
    from rrec.evaluation import summarize

    ranks, tied, rows = popularity_sample_rows(
        data.splits["train"], data.items["item_id"].astype(str), samples
    )
    return summarize(ranks, [r["user_id"] for r in rows], tied=tied)["ndcg@10"]


def _plot_curve(curve: list[dict], out: Path, pop_valid: float | None = None) -> None:
    """valid_ndcg.png: NDCG@10 on the valid subset against training minutes (most-popular's as a line)."""
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    x = [c["train_minutes"] for c in curve]
    ax.plot(x, [c["ndcg@10"] for c in curve], marker="o", label="valid NDCG@10")
    ax.fill_between(
        x,
        [c["ndcg@10_ci95"][0] for c in curve],
        [c["ndcg@10_ci95"][1] for c in curve],
        alpha=0.2,
        label="95% CI (users)",
    )
    if pop_valid is not None:
        ax.axhline(pop_valid, color="grey", linestyle="--", label="most-popular, same samples")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("NDCG@10 (valid subset)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out / "valid_ndcg.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
