"""Ties and paired comparisons, with hand-worked values: ``tied_with_target`` and ``paired_bootstrap``."""

from __future__ import annotations

import pytest
import torch

from rrec.metrics import bootstrap_ci, paired_bootstrap, rank_of_target, tied_with_target

INF = float("inf")


def test_tied_with_target_by_hand():
    scores = torch.tensor(
        [
            [1.0, 2.0, 2.0, 0.0],  # target 1 ties item 2                        -> tied, rank 1
            [1.0, 2.0, 2.0, 0.0],  # the same, item 2 in the history             -> not tied, rank 1
            [0.0, 0.0, 0.0, 0.0],  # a constant model: every target ties         -> tied, rank 1
            [5.0, 5.0, -INF, -INF],  # target 2 ties item 3 at -inf              -> tied, rank 3
            [3.0, 1.0, 1.0, 1.0],  # items 1..3 tie each other, not the target   -> not tied, rank 1
        ]
    )
    target = torch.tensor([1, 1, 3, 2, 0])
    exclude = torch.zeros(5, 4, dtype=torch.bool)
    exclude[1, 2] = True
    exclude[2, 3] = True  # the target is never excluded, so row 2 still ties items 0..2
    assert tied_with_target(scores, target, exclude).tolist() == [True, False, True, True, False]
    assert rank_of_target(scores, target, exclude).tolist() == [1, 1, 1, 3, 1]  # ties favour the target
    assert tied_with_target(scores, target).tolist() == [True, True, True, True, False]  # no mask


def test_tied_with_target_compares_in_float32():
    # 1.0 and 1.0 + 2**-10 are distinct in float32 but the same bf16 number: not a tie here
    scores = torch.tensor([[1.0, 1.0 + 2**-10]], dtype=torch.float32)
    assert tied_with_target(scores, torch.tensor([0])).tolist() == [False]
    assert tied_with_target(scores.bfloat16(), torch.tensor([0])).tolist() == [True]  # bf16 input ties


def test_tied_with_target_rejects_what_rank_of_target_rejects():
    with pytest.raises(ValueError, match="NaN"):
        tied_with_target(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="outside"):
        tied_with_target(torch.zeros(1, 2), torch.tensor([2]))


def test_paired_identical_inputs_give_exactly_zero():
    a = torch.tensor([0.3, 0.1, 0.7, 0.2, 0.0])
    assert paired_bootstrap(a, a.clone(), ["u", "u", "v", "w", "w"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("shift", [0.25, -0.125])
def test_paired_constant_shift_gives_exactly_the_shift(shift):
    # dyadic values: b + shift - b is exact in float64, so every resample's mean is exactly the shift
    b = torch.tensor([0.5, 0.25, 0.0, 0.75, 0.375, 0.625])
    d = paired_bootstrap(b + shift, b, ["u", "u", "v", "v", "v", "w"])
    assert (d.mean, d.low, d.high) == (shift, shift, shift)
    assert d.frac_positive == (1.0 if shift > 0 else 0.0)


def test_paired_two_users_by_hand():
    # user u: d = 1, 1 (two samples); user v: d = 0 (one sample). Mean over samples: 2/3.
    # A resample of two users is {u,u} (mean 1, p 1/4), {v,v} (mean 0, p 1/4) or mixed (2/3, p 1/2),
    # so the 2.5% and 97.5% percentiles are 0 and 1 and ~3/4 of the resamples are > 0.
    a = torch.tensor([1.0, 1.0, 0.0])
    b = torch.zeros(3)
    d = paired_bootstrap(a, b, ["u", "u", "v"], n_resamples=2000)
    assert d.mean == pytest.approx(2 / 3, abs=1e-15)
    assert (d.low, d.high) == (0.0, 1.0)
    assert abs(d.frac_positive - 0.75) < 0.05  # 2000 draws: sd 0.01


def test_paired_resamples_users_like_bootstrap_ci():
    """The paired interval is bootstrap_ci of the differences (the same users drawn, same seed), and it
    is narrower than either method's own interval when the methods share a per-user level."""
    gen = torch.Generator().manual_seed(0)
    users = [f"u{i % 20}" for i in range(100)]
    level = torch.tensor([(i % 20) / 20 for i in range(100)], dtype=torch.float64)  # big user effect
    b = level + 0.01 * torch.rand(100, generator=gen, dtype=torch.float64)
    a = b + 0.02
    d = paired_bootstrap(a, b, users, seed=3)
    assert (d.low, d.high) == pytest.approx(bootstrap_ci(a - b, users, seed=3), abs=1e-15)
    own = bootstrap_ci(a, users, seed=3)
    assert d.high - d.low < (own[1] - own[0]) / 10


def test_paired_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4), ["u"] * 3)
    with pytest.raises(ValueError, match="group labels"):
        paired_bootstrap(torch.zeros(3), torch.zeros(3), ["u"] * 2)
    with pytest.raises(ValueError, match="zero samples"):
        paired_bootstrap(torch.zeros(0), torch.zeros(0), [])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(torch.tensor([0.0, float("nan")]), torch.zeros(2), ["u", "v"])
