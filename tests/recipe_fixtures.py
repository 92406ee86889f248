"""A tiny saved model and a tiny prepared dataset for recipe tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rrec.data import prepare, save_prepared
from tests.conftest import make_tiny_lm

GENRES = ["Comedy", "Drama", "Action", "Horror", "Romance"]


def tiny_prepared(directory, n_users: int = 12, n_items: int = 30, per_user: int = 8, seed: int = 0):
    """Synthetic interactions: user u watches items (u + 3 j) mod n_items at increasing times."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(n_items)],
            "title": [f"Film {i}" for i in range(n_items)],
            "year": [str(1980 + i) for i in range(n_items)],
            "genres": [GENRES[i % 5] for i in range(n_items)],
        }
    )
    rows = []
    for u in range(n_users):
        t0 = rng.integers(0, 10_000)
        for j in range(per_user):
            rows.append((str(u), str((u + 3 * j) % n_items), float(1 + (u + j) % 5), float(t0 + 1000 * j)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    data = prepare(items, inter, name="tiny", split="temporal", max_history=5)
    save_prepared(data, directory)
    return directory


def tiny_model_dir(directory, tokenizer, seed: int = 0):
    lm = make_tiny_lm(tokenizer, seed=seed)
    lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
