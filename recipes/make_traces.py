"""Cold-start reasoning traces for RecOne, written by a teacher model, with rationalisation.

Launch: ``python -m recipes.make_traces recipes/configs/make_traces_ml100k.yaml teacher=<HF folder>
[key=value ...]`` -> ``<out_dir>/traces.jsonl`` (fields ``prompt``, ``trace``, ``rating``, ``user_id``,
``target``, ``source``) and ``<out_dir>/result.json`` (the counts).

For each of ``num_samples`` training samples (a seeded draw), the teacher writes one sampled answer to
the RecZero prompt (``rrec.tasks.rating``). It is kept (``source: first_try``) when it follows the
template and its rate, rounded half up, equals the true rating rounded half up. Otherwise, with
``rationalise``, the teacher is asked again with the true rating given in the user turn and told to
explain it; that answer is kept (``source: rationalised``) when it now parses to the truth. The stored
``prompt`` is always the plain user turn, without the hint, so SFT learns to reach the rating without
being told (the STaR recipe). Everything else is dropped and counted.

Where we depart from the paper (Kong et al. 2025, arXiv 2510.23077): its teacher is a large model and
its filtering is not described in enough detail to copy; any local HF folder is accepted here (the
default, the embedded SmolLM2-135M-Instruct, rarely follows the template, so expect many drops).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rrec import atomic_files, text_rollout
from rrec.config import config_from_argv, to_dict
from rrec.tasks import rating


@dataclass
class MakeTracesConfig:
    teacher: str = ""  # HF folder of the teacher; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal
    amazon_reviews: str = ""  # an Amazon Reviews 2023 file; with amazon_meta, replaces prepared
    amazon_meta: str = ""
    out_dir: str = "runs/traces"
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    history: int = 10  # as recipes/reczero.py
    low: float = 1.0
    high: float = 5.0
    split: str = "train"
    num_samples: int | None = 256  # a seeded draw from split; None: all
    batch_size: int = 8
    temperature: float = 0.7  # ours: some diversity, mostly on-template
    top_p: float | None = 0.95
    max_new_tokens: int = 512
    rationalise: bool = True


def rationale_prompt(user: str, truth: float) -> str:
    """The user turn with the true rating given, asking for an explanation that ends in it.

    Example:
        >>> print(rationale_prompt("Target item: Heat (1995)", 4.0))
        Target item: Heat (1995)
        <BLANKLINE>
        The user actually rated the target item 4. Explain why in the four steps, ending with <rate>4</rate>.
    """
    return (
        f"{user}\n\nThe user actually rated the target item {truth:g}. "
        f"Explain why in the four steps, ending with <rate>{truth:g}</rate>."
    )


def half_up(x: float) -> int:
    """Round half up (4.5 -> 5), unlike Python's round (round(4.5) = 4)."""
    return math.floor(x + 0.5)


def collect_traces(
    generate: Callable[[list[str]], list[str]],
    rows: pd.DataFrame,
    *,
    low: float = 1,
    high: float = 5,
    rationalise: bool = True,
) -> tuple[list[dict], dict[str, int]]:
    """Ask ``generate`` (user turns -> answers) for traces of ``rows``; keep the right ones.

    Returns:
        (records in row order, counts ``first_try``, ``rationalised``, ``dropped``, ``samples``).
    """
    users = [
        rating.user_prompt(t, r, target)
        for t, r, target in zip(
            rows["history_titles"], rows["history_ratings"], rows["target_title"], strict=True
        )
    ]
    truths = [float(y) for y in rows["rating"]]

    def right(text: str, y: float) -> bool:
        pred = rating.parse_rating(text, low, high)
        return pred is not None and half_up(pred) == half_up(y)

    def ask(turns: list[str]) -> list[str]:
        answers = generate(turns)
        if len(answers) != len(turns):
            raise ValueError(f"the teacher gave {len(answers)} answers to {len(turns)} prompts")
        return answers

    first = ask(users)
    kept: dict[int, tuple[str, str]] = {
        i: (t, "first_try") for i, t in enumerate(first) if right(t, truths[i])
    }
    retry = [i for i in range(len(users)) if i not in kept]
    if rationalise and retry:
        second = ask([rationale_prompt(users[i], truths[i]) for i in retry])
        kept.update(
            {i: (t, "rationalised") for i, t in zip(retry, second, strict=True) if right(t, truths[i])}
        )
    records = [
        {
            "prompt": users[i],
            "trace": kept[i][0].strip(),
            "rating": truths[i],
            "user_id": str(rows["user_id"].iloc[i]),
            "target": str(rows["target"].iloc[i]),
            "source": kept[i][1],
        }
        for i in sorted(kept)
    ]
    sources = [r["source"] for r in records]
    counts = {
        "samples": len(users),
        "first_try": sources.count("first_try"),
        "rationalised": sources.count("rationalised"),
        "dropped": len(users) - len(records),
    }
    return records, counts


def main(argv: Sequence[str] | None = None) -> dict:
    from rrec.backbone import parse_dtype
    from rrec.data import load_prepared

    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = config_from_argv(MakeTracesConfig, argv)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_files.atomic_write_json(out / "config.json", to_dict(cfg))
    if cfg.amazon_reviews:
        data = rating.load_amazon2023_rating(cfg.amazon_reviews, cfg.amazon_meta, max_history=cfg.history)
    else:
        from rrec.data import ensure_default

        data = load_prepared(cfg.prepared or ensure_default())
    rows = rating.rating_view(data.splits[cfg.split], data.items, history=cfg.history)
    if cfg.num_samples is not None and cfg.num_samples < len(rows):
        rows = rows.sample(n=cfg.num_samples, random_state=cfg.seed).sort_index().reset_index(drop=True)
    lm, tok = text_rollout.load_policy(cfg.teacher, dtype=cfg.dtype, device=cfg.device, lora=False)
    # load_policy keeps float32 without LoRA (for training); a teacher only generates
    lm = lm.to(parse_dtype(cfg.dtype, next(lm.parameters()).device.type))
    system = rating.system_prompt(cfg.low, cfg.high)
    gen = torch.Generator(device=next(lm.parameters()).device).manual_seed(cfg.seed)

    def generate(users: list[str]) -> list[str]:
        prompts = [text_rollout.chat_prompt(tok, u, system=system) for u in users]
        return text_rollout.generate_texts(
            lm, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=True,
            do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, generator=gen,
        )  # fmt: skip

    t0 = time.time()
    records, counts = collect_traces(generate, rows, low=cfg.low, high=cfg.high, rationalise=cfg.rationalise)
    atomic_files.atomic_write_text(out / "traces.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    result = {**counts, "wall_s": time.time() - t0, "config": to_dict(cfg)}
    atomic_files.atomic_write_json(out / "result.json", result)
    print(
        f"{counts['samples']} samples: kept {counts['first_try']} first try, {counts['rationalised']} "
        f"rationalised, dropped {counts['dropped']} -> {out / 'traces.jsonl'}"
    )
    return result


if __name__ == "__main__":
    main()
