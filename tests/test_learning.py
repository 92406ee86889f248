"""Learning tests: on a toy catalog whose next item is fixed by the last one, RecPO and the contrastive
baseline, run through their recipes, must lift the held-out NDCG@10 (and RecPO its training reward)
clearly above the start. They fail when an advantage sign or a state/target alignment is wrong.

The toy: 32 items whose titles are distinct words; every user walks the cycle i -> i + 1 (mod 32) from a
random start, so the last history item alone names the target. Leave-one-out split: each user's last
step is held out (test), the earlier steps train. The prompt shows one history item (``max_history=1``)
and the tiny random-init decoder (``tests.conftest.make_tiny_lm``) is saved as an rrec folder with a
short prompt style, so the title is a visible part of a ~20-token prompt.

Thresholds, from chance: a model that ranks the 31 candidate items (the history item is masked) at random
has E[NDCG@10] = (1/31) sum_{r<=10} 1/log2(r+1) = 0.147 (``CHANCE_NDCG10``), with a standard deviation of
the mean over 32 test users of 0.243 / sqrt(32) = 0.043: NDCG@10 after must exceed NDCG@10 before by at
least the chance level (2.4 standard deviations of a before/after difference). The RecPO reward (NDCG
with cut-off 1000) of a random ranking has mean 0.302 and standard deviation 0.159 per sample; the mean
reward of the last 10 steps must exceed that of the first 10 by 3 standard deviations of such a
difference over 10 x B users (``reward_margin``).

Measured on the shared 2-core dev machine, one torch thread (seeds 0, 1, 2 of model, data and training;
seed 0 is fixed below): RecPO NDCG@10 0.127 -> 0.560, 0.168 -> 0.508, 0.103 -> 0.362 and reward (first
-> last 10 steps) 0.265 -> 0.534, 0.319 -> 0.519, 0.233 -> 0.466 in 60 steps (~30 s CPU); contrastive
0.109 -> 0.832, 0.156 -> 0.889, 0.133 -> 0.589 in 100 steps (~8 s CPU). Mutations of ``rrec/recpo.py``
(seed 0): advantages negated in ``recpo_loss``, NDCG@10 0.127 -> 0.164 and reward 0.257 -> 0.283 (fails);
each user state scored against the previous user's target in ``in_batch_item_logps``, 0.127 -> 0.136
(fails). A permutation of the best rows' positive weights (``best.roll(1)``, the official code's
batch-mean broadcast) still learns here (0.127 -> 0.497, 0.692): the last test pins that alignment.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recipes import train_contrastive, train_recpo
from rrec import recpo
from rrec.data import prepare, save_prepared
from rrec.model import ReasoningRecommender
from rrec.prompts import PromptStyle
from tests.conftest import make_tiny_lm

N_ITEMS, N_USERS, LENGTH, SEED = 32, 32, 8, 0
WORDS = [
    "Apple", "River", "Stone", "Tiger", "Cloud", "Piano", "Candle", "Forest", "Mirror", "Rocket",
    "Violin", "Desert", "Garden", "Castle", "Island", "Button", "Dragon", "Pencil", "Window", "Ocean",
    "Bridge", "Lemon", "Falcon", "Silver", "Winter", "Harbor", "Marble", "Copper", "Shadow", "Thunder",
    "Velvet", "Saddle",
]  # fmt: skip
CHANCE_NDCG10 = sum(1 / math.log2(r + 1) for r in range(1, 11)) / (N_ITEMS - 1)  # 0.147
CHANCE_REWARD_SD = 0.159  # sd of 1/log2(r+1), r uniform on 1..31


def successor_dataset(directory, seed: int = SEED):
    """Users walk i -> (i + 1) mod N from a random start, one step a day; titles are distinct words."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [str(i) for i in range(N_ITEMS)], "title": WORDS[:N_ITEMS]})
    rows = []
    for u in range(N_USERS):
        start, t0 = int(rng.integers(N_ITEMS)), int(rng.integers(10_000))
        rows += [(f"u{u}", str((start + j) % N_ITEMS), 4.0, float(t0 + 86_400 * j)) for j in range(LENGTH)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    save_prepared(prepare(items, inter, name="successor", split="loo", max_history=1), directory)
    return directory


def short_prompt_model(directory, tokenizer, seed: int = SEED):
    """The tiny random-init decoder as an rrec folder whose prompts are short (no rating, no time)."""
    style = PromptStyle(system="Recommend the next item.", item_system="Item.", show_rating=False,
                        show_time=False)  # fmt: skip
    ReasoningRecommender(
        make_tiny_lm(tokenizer, seed=seed), copy.deepcopy(tokenizer), style=style
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("toy")
    return successor_dataset(root / "data"), short_prompt_model(root / "model", tokenizer)


def common(toy, out) -> list[str]:
    data, model = toy
    args = {
        "model": model, "prepared": data, "out_dir": out, "seed": SEED, "dtype": "float32", "lora": "false",
        "max_history": 1, "warmup_steps": 0, "eval_split": "test", "eval_users": N_USERS,
        "eval_samples_per_user": 1, "log_every": 100,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in args.items()]


def reward_margin(users_per_step: int, window: int = 10) -> float:
    """3 standard deviations of the difference of two window means of chance-level rewards."""
    return 3 * CHANCE_REWARD_SD * math.sqrt(2 / (window * users_per_step))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine, two OpenMP threads spin on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECPO = {
    "steps": 60, "users_per_step": 16, "num_generations": 4, "max_completion_length": 2,
    "eval_max_new_tokens": 2, "lr": 5e-4, "refresh_every": 5, "row_seeds": "true", "tensorboard": "false",
}  # fmt: skip
CONTRASTIVE = {"steps": 100, "users_per_step": 16, "lr": 3e-3}


def test_recpo_learns_the_successor_rule(toy, tmp_path):
    result = train_recpo.main(common(toy, tmp_path / "recpo") + [f"{k}={v}" for k, v in RECPO.items()])
    before, after = result["before"]["ndcg@10"], result["after"]["ndcg@10"]
    rewards = [h["train/reward_mean"] for h in result["history"]]
    first, last = float(np.mean(rewards[:10])), float(np.mean(rewards[-10:]))
    summary = f"NDCG@10 {before:.3f} -> {after:.3f}; reward (first/last 10 steps) {first:.3f} -> {last:.3f}"
    assert after >= before + CHANCE_NDCG10, summary
    assert last >= first + reward_margin(RECPO["users_per_step"]), summary
    assert result["after"]["tied_frac"] == 0.0, summary  # not a collapse scoring every item alike


def test_contrastive_learns_the_successor_rule(toy, tmp_path):
    argv = common(toy, tmp_path / "contrastive") + [f"{k}={v}" for k, v in CONTRASTIVE.items()]
    result = train_contrastive.main(argv)
    before, after = result["before"]["ndcg@10"], result["after"]["ndcg@10"]
    summary = f"NDCG@10 {before:.3f} -> {after:.3f}"
    assert after >= before + CHANCE_NDCG10, summary
    assert result["after"]["tied_frac"] == 0.0, summary


def test_item_action_trains_each_best_row_with_its_own_advantage():
    """What the toy cannot see: the learning test passes when the item action's positive weights are
    permuted among correctly paired (state, own target) rows, e.g. ``best.roll(1)`` or the official
    code's batch-mean broadcast (both measured). Pin the alignment by hand instead.

    B = 2 users, G = 3. Group 0 advantages (0.5, -1.0, 0.5): best row 0 (tie -> lowest index); group 1
    (-0.2, 1.5, -1.3): best row 4. With old = current log-probs the ratio is 1, inside the clip, so the
    item term is mean_b(-A_best(b) * ratio) and d/d item_logps = -A_best / B at the best rows, 0 elsewhere.
    """
    adv = torch.tensor([0.5, -1.0, 0.5, -0.2, 1.5, -1.3])
    item_logps = torch.zeros(6, requires_grad=True)
    logps = torch.zeros(6, 2, requires_grad=True)
    loss, _ = recpo.recpo_loss(
        logps, logps.detach(), adv, torch.ones(6, 2), item_logps, item_logps.detach(), group_size=3
    )
    loss.backward()
    assert item_logps.grad.tolist() == [-0.25, 0.0, 0.0, 0.0, -0.75, 0.0]
