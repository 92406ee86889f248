"""Sequential baselines: popularity by hand, learnability, determinism, early stopping, masking."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

import rrec.baselines.train as train_module
from rrec.baselines import (
    GRU4Rec,
    Popularity,
    SASRec,
    encode_samples,
    popularity_counts,
    score_split,
    train_sequential,
)
from rrec.metrics import ndcg_at_k

N_ITEMS = 30
ITEMS = [f"i{k}" for k in range(N_ITEMS)]


def next_item(item: str) -> str:
    """The synthetic rule: the next item is a fixed permutation of the last one, k -> 7k + 3 mod 30."""
    return f"i{(7 * int(item[1:]) + 3) % N_ITEMS}"


def rule_samples(n: int, seed: int, max_len: int = 6) -> pd.DataFrame:
    """n samples with random histories (1..max_len items) whose target is next_item(last item)."""
    rng = random.Random(seed)
    rows = []
    for u in range(n):
        history = [rng.choice(ITEMS) for _ in range(rng.randint(1, max_len))]
        rows.append({"user_id": f"u{u}", "history": history, "target": next_item(history[-1])})
    return pd.DataFrame(rows)


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "sasrec":
        return SASRec(
            N_ITEMS, max_len=6, hidden_size=32, num_layers=1, num_heads=2, inner_size=64, dropout=0.1
        )
    return GRU4Rec(N_ITEMS, max_len=6, hidden_size=32, dropout=0.1)


def fit(kind: str, seed: int = 0, epochs: int = 15):
    model = make_model(kind, seed)
    return train_sequential(
        model,
        rule_samples(600, seed=1),
        rule_samples(100, seed=2),
        ITEMS,
        epochs=epochs,
        batch_size=64,
        lr=0.01,
        patience=3,
        seed=seed,
    )


# ---- popularity -------------------------------------------------------------------------------------


def toy_log() -> pd.DataFrame:
    # User u: a -> b -> c -> b (three train samples); user v: c -> a.
    return pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "v"],
            "history": [["a"], ["a", "b"], ["a", "b", "c"], ["c"]],
            "target": ["b", "c", "b", "a"],
            "timestamp": [2, 3, 4, 6],
        }
    )


def test_popularity_counts_every_train_interaction_once():
    # Targets: b, c, b, a -> a:1 b:2 c:1. Earliest history of u is [a], of v is [c] -> a:2 b:2 c:2.
    # Item d never occurs. Total 6 = the 6 interactions of the log (u: a b c b, v: c a).
    counts = popularity_counts(toy_log(), ["a", "b", "c", "d"])
    assert counts.tolist() == [2.0, 2.0, 2.0, 0.0]


def test_popularity_earliest_sample_found_by_timestamp_not_row_order():
    log = toy_log().iloc[::-1].reset_index(drop=True)  # reversed rows, same timestamps
    assert popularity_counts(log, ["a", "b", "c", "d"]).tolist() == [2.0, 2.0, 2.0, 0.0]


def test_popularity_earliest_sample_by_position_without_timestamps():
    # As amazon18-scientific: no timestamps, the earliest sample is the one of smallest position.
    log = toy_log().assign(timestamp=float("nan"), position=[1, 2, 3, 1]).iloc[[2, 1, 3, 0]]
    assert popularity_counts(log, ["a", "b", "c", "d"]).tolist() == [2.0, 2.0, 2.0, 0.0]


def test_popularity_ranking_with_and_without_history_masking():
    # Counts over items a..e: a 5, b 4, c 3, d 2, e 1. Ties are broken in the target's favour.
    model = Popularity(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))
    test = pd.DataFrame(
        {
            "history": [["a", "b"], ["a", "d"], ["e"]],
            "target": ["c", "d", "a"],
        }
    )
    items = ["a", "b", "c", "d", "e"]
    # Unmasked: c is behind a, b -> 3; d behind a, b, c -> 4; a first -> 1.
    assert score_split(model, test, items, mask_history=False).tolist() == [3, 4, 1]
    # Masked: sample 1 drops a, b -> c is 1st. Sample 2 drops a but never the target d -> b, c ahead,
    # rank 3. Sample 3 drops e, which was behind a anyway -> 1.
    assert score_split(model, test, items, mask_history=True).tolist() == [1, 3, 1]


# ---- encoding ---------------------------------------------------------------------------------------


def test_encode_samples_left_pads_and_indexes():
    df = pd.DataFrame({"history": [["c"], ["a", "b", "c"], []], "target": ["a", "b", "c"]})
    enc = encode_samples(df, ["a", "b", "c"])
    # 1-based ids a=1 b=2 c=3, left-padded to the longest history (3); targets 0-based.
    assert enc.history.tolist() == [[0, 0, 3], [1, 2, 3], [0, 0, 0]]
    assert enc.target.tolist() == [0, 1, 2]


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_padding_does_not_change_scores(kind):
    # The same history with 0, 2 and 4 padding columns must score identically (eval mode).
    model = make_model(kind).eval()
    h = torch.tensor([[4, 9]])
    out = [model(torch.cat([torch.zeros(1, p, dtype=torch.long), h], 1)) for p in (0, 2, 4)]
    # SASRec counts positions from the right and never attends to padding; GRU4Rec packs it away.
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], out[2])
    assert out[0].shape == (1, N_ITEMS)


def test_sasrec_last_query_block_equals_the_full_blocks_last_row():
    model = make_model("sasrec").eval()
    block = model.blocks[0]
    torch.manual_seed(1)
    x = torch.randn(3, 5, 32)  # (B, L, D)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(3, 1, 5, 5)  # causal
    torch.testing.assert_close(block(x, allowed)[:, -1:], block(x, allowed[:, :, -1:]))


# ---- learning, determinism, early stopping ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_learns_a_deterministic_next_item_rule(kind):
    model, _ = fit(kind)
    ranks = score_split(model, rule_samples(200, seed=3), ITEMS)
    hit_at_1 = (ranks == 1).double().mean().item()
    assert hit_at_1 >= 0.95


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_same_seed_same_weights_and_metrics(kind):
    (m1, h1), (m2, h2) = fit(kind, seed=5, epochs=2), fit(kind, seed=5, epochs=2)
    assert h1["valid_ndcg@10"] == h2["valid_ndcg@10"]
    assert h1["train_loss"] == h2["train_loss"]
    for (name, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), name


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_every_trainable_parameter_changes(kind):
    model = make_model(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, _ = train_sequential(
        model, rule_samples(64, 1), rule_samples(16, 2), ITEMS,
        epochs=1, batch_size=16, lr=0.01, patience=1, seed=0,
    )  # fmt: skip
    for name, p in model.named_parameters():
        if name == "item_emb.weight":
            assert torch.equal(p[0], before[name][0]), "the padding row must stay zero"
            p, ref = p[1:], before[name][1:]
        else:
            ref = before[name]
        assert not torch.equal(p, ref), name


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    # The valid NDCG@10 the loop sees is scripted: 0.1, 0.3, 0.2, 0.3, 0.25, ... Epoch 1 is the best
    # (epoch 3 only ties it, which is no improvement); with patience 3, epochs 2, 3, 4 fail to improve
    # and the loop stops after epoch 4, five epochs in all. The returned weights must be those after
    # epoch 1, i.e. those of the same run stopped after two epochs.
    scripted = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.2, 0.1])
    real: list[float] = []

    def fake_ndcg(ranks, k):
        real.append(ndcg_at_k(ranks, k))
        return next(scripted)

    monkeypatch.setattr(train_module, "ndcg_at_k", fake_ndcg)
    train, valid = rule_samples(128, seed=1), rule_samples(64, seed=2)
    kwargs = dict(batch_size=32, lr=0.01, patience=3, seed=0)
    model, hist = train_sequential(make_model("gru4rec"), train, valid, ITEMS, epochs=10, **kwargs)
    assert hist["valid_ndcg@10"] == [0.1, 0.3, 0.2, 0.3, 0.25]
    assert (hist["best_epoch"], hist["best_valid_ndcg@10"], hist["epochs_run"]) == (1, 0.3, 5)
    real_best = real[1]

    scripted = iter([0.1, 0.3])
    two_epochs, _ = train_sequential(make_model("gru4rec"), train, valid, ITEMS, epochs=2, **kwargs)
    for (name, p1), p2 in zip(model.state_dict().items(), two_epochs.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), name
    assert ndcg_at_k(score_split(model, valid, ITEMS), 10) == real_best
