"""RecPO math with hand-worked values (derivations in comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rrec.metrics import rank_of_target
from rrec.ppo import clipped_surrogate
from rrec.recpo import (
    best_in_group,
    fused_reward,
    group_advantages,
    in_batch_item_logps,
    recpo_loss,
)


def test_fused_reward_known_ranks_both_modes():
    # row 0: target (col 0) has the top score -> rank 1, R_d = 1/log2(2) = 1
    # row 1: col 2 scores higher and col 1 ties with the target; ties count against the target in the
    # reward -> rank 3, R_d = 1/log2(4) = 0.5 (the evaluation's rule would give rank 2)
    # R_c = softmax(row)[target]: row 0 = e^2/(e^2+2), row 1 = 1/(e^2+2)
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    t = torch.tensor([0, 0])
    e2 = math.exp(2)
    rc = torch.tensor([e2 / (e2 + 2), 1 / (e2 + 2)])
    rd = torch.tensor([1.0, 0.5])
    torch.testing.assert_close(fused_reward(s, t, beta=0.1, mode="convex"), 0.9 * rd + 0.1 * rc)
    torch.testing.assert_close(fused_reward(s, t, beta=0.1, mode="additive"), rd + 0.1 * rc)


def test_fused_reward_cutoff_and_masked_history():
    # target at rank 3 with ndcg_k = 2 -> R_d = 0; beta = 0 leaves only R_d
    s = torch.tensor([[3.0, 2.0, 1.0]])
    assert fused_reward(s, torch.tensor([2]), beta=0.0, ndcg_k=2).item() == 0.0
    # masking the two better items (history) with -inf lifts the target to rank 1 and R_c to 1
    s = torch.tensor([[float("-inf"), float("-inf"), 1.0]])
    assert fused_reward(s, torch.tensor([2]), beta=0.5).item() == pytest.approx(1.0)


def test_grpo_advantages():
    # group [1, 0, 0, 0]: mean 0.25, unbiased std = sqrt((0.5625 + 3*0.0625)/3) = 0.5
    # advantages = (r - 0.25) / (0.5 + 1e-4)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    expected = (r - 0.25) / (0.5 + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4, "grpo"), expected)


def test_rloo_and_none_advantages():
    r = torch.tensor([3.0, 1.0, 2.0, 6.0])
    # rloo: r_i - mean of the other three: 3-3=0, 1-11/3=-8/3, 2-10/3=-4/3, 6-2=4
    torch.testing.assert_close(group_advantages(r, 4, "rloo"), torch.tensor([0.0, -8 / 3, -4 / 3, 4.0]))
    # none: r - 3
    torch.testing.assert_close(group_advantages(r, 4, "none"), torch.tensor([0.0, -2.0, -1.0, 3.0]))


@pytest.mark.parametrize("kind", ["grpo", "rloo", "none"])
def test_zero_variance_and_single_sample_groups(kind):
    r = torch.tensor([0.3, 0.3, 0.3, 1.0, 0.0, 0.5])
    adv = group_advantages(r, 3, kind)
    assert torch.equal(adv[:3], torch.zeros(3))  # identical rewards: exactly 0
    assert adv[3:].abs().sum() > 0
    assert torch.equal(group_advantages(r, 1, kind), torch.zeros(6))  # G = 1: nothing to compare


def test_best_in_group_ties_lowest_index():
    adv = torch.tensor([0.5, 0.9, 0.9, -1.0, 0.0, 0.0])
    assert best_in_group(adv, 3).tolist() == [1, 4]  # group 0: rows 1,2 tie -> 1; group 1: 4,5 tie -> 4


def test_clipping_cases():
    eps, eps_high = 0.2, 0.28
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1]))  # ratios against old_logp = 0
    old = torch.zeros(5)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    loss, _, clipped = clipped_surrogate(lp, old, adv, eps, eps_high)
    # A>0, r=1.5 > 1.28: min(1.5, 1.28) = 1.28 -> clipped, loss -1.28
    # A<0, r=1.5: min(-1.5, -1.28) = -1.5 -> unclipped branch, loss 1.5
    # A<0, r=0.5 < 0.8: min(-0.5, -0.8) = -0.8 -> clipped, loss 0.8
    # A>0, r=0.5: min(0.5, 0.8) = 0.5 -> unclipped, loss -0.5
    # A>0, r=1.1 inside the range -> unclipped, loss -1.1
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, 0.8, -0.5, -1.1]))
    assert clipped.tolist() == [True, False, True, False, False]
    # the clipped elements carry no gradient
    lp = lp.clone().requires_grad_(True)
    clipped_surrogate(lp, old, adv, eps, eps_high)[0].sum().backward()
    assert lp.grad[0] == 0 and lp.grad[2] == 0 and lp.grad[1] != 0


def _toy_batch(B=2, G=3, T=4, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B * G, T, generator=g)).requires_grad_(True)
    mask = torch.ones(B * G, T)
    mask[0, 2:] = 0
    users = torch.randn(B * G, D, generator=g, requires_grad=True)
    targets = torch.randn(B, D, generator=g)
    return logps, mask, users, targets


def test_item_loss_gradient_only_from_best_trajectory():
    B, G = 2, 3
    logps, mask, users, targets = _toy_batch(B, G)
    adv = torch.tensor([0.1, 0.7, -0.8, -1.0, 0.5, 0.5])  # best rows: 1 and 4 (tie 4/5 -> 4)
    item_lp = in_batch_item_logps(users, targets, G, temperature=0.5)
    loss, stats = recpo_loss(
        logps.detach(), logps.detach(), adv, mask, item_lp, item_lp.detach(), group_size=G
    )
    loss.backward()
    has_grad = users.grad.abs().sum(1) > 0
    assert has_grad.tolist() == [False, True, False, False, True, False]
    # ratio 1 everywhere: item term = -mean(A_best) = -(0.7 + 0.5) / 2
    assert stats.item_loss.item() == pytest.approx(-0.6)
    assert torch.isfinite(loss)


def test_policy_loss_normalisations():
    # ratio = 1 (logps == old): per-token loss = -A. Rows: A = [1, -1], masks with 2 and 4 tokens.
    logps = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    zero = torch.zeros(2)

    def policy(loss_type, **kw):
        _, st = recpo_loss(logps, logps, adv, mask, zero, zero, group_size=2, loss_type=loss_type, **kw)
        return st.policy_loss.item()

    # grpo: row means -1 and +1, mean 0
    assert policy("grpo") == pytest.approx(0.0)
    # bnpo: (-1*2 + 1*4) / 6 = 1/3
    assert policy("bnpo") == pytest.approx(1 / 3)
    # dr_grpo: 2 / (2 rows * 8) = 0.125
    assert policy("dr_grpo", max_completion_length=8) == pytest.approx(0.125)
    # dapo with a global token count of 12: 2 / 12
    assert policy("dapo", num_items_in_batch=12) == pytest.approx(1 / 6)


def test_kl_term_k3():
    # logp = log 0.5, ref = log 0.25: delta = log 0.5 = -0.6931; k3 = e^delta - delta - 1 = 0.5 + 0.6931 - 1
    logps = torch.full((2, 1), math.log(0.5))
    ref = torch.full((2, 1), math.log(0.25))
    mask = torch.ones(2, 1)
    zero = torch.zeros(2)
    _, st = recpo_loss(logps, logps, zero, mask, zero, zero, group_size=2, beta_kl=0.1, ref_logps=ref)
    assert st.kl.item() == pytest.approx(0.5 + math.log(2) - 1, rel=1e-5)
    with pytest.raises(ValueError, match="ref_logps"):
        recpo_loss(logps, logps, zero, mask, zero, zero, group_size=2, beta_kl=0.1)


def test_clip_fraction_engages_when_policy_moves():
    logps, mask, users, targets = _toy_batch()
    old = logps.detach() - 0.5  # ratio e^0.5 = 1.65 > 1.2
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    item_lp = in_batch_item_logps(users, targets, 3, 0.5)
    loss, st = recpo_loss(logps, old, adv, mask, item_lp, item_lp.detach(), group_size=3)
    # rows with A>0 and ratio 1.65 are clipped (10 of the 22 unmasked tokens: row 0 has 2, rows 1-2 have 4)
    assert st.clip_fraction.item() == pytest.approx(10 / 22)
    assert st.ratio_mean.item() == pytest.approx(math.exp(0.5), rel=1e-5)
    assert torch.isfinite(loss) and not any(torch.isnan(x).any() for x in st)


def test_rank_of_target_pessimistic_ties():
    s = torch.tensor([[0.5, 0.5, 0.1, 0.5], [0.5, 0.5, 0.1, 0.5], [0.2, 0.9, -math.inf, -math.inf]])
    t = torch.tensor([0, 0, 0])
    history = torch.tensor([[False] * 4, [False, True, False, False], [False, False, True, True]])
    # row 0: cols 1 and 3 tie with the target: optimistic rank 1, pessimistic 1 + 2 = 3
    # row 1: col 1 is history: pessimistic 1 + 1 (col 3) = 2
    # row 2: col 1 is higher; the -inf history items neither tie nor count: 2 under both rules
    assert rank_of_target(s, t, history).tolist() == [1, 1, 2]  # the evaluation's rule is unchanged
    assert rank_of_target(s, t, history, ties="pessimistic").tolist() == [3, 2, 2]
    # a target marked in the mask is still ranked (never excluded); the item it ties with counts
    assert (
        rank_of_target(s[:1], t[:1], torch.tensor([[True, False, False, False]]), ties="pessimistic").item()
        == 3
    )
    # a target at -inf: an excluded item at -inf never ties with it; a non-excluded one counts against it
    inf_t = torch.tensor([[-math.inf, 0.1, -math.inf, -math.inf]])
    excl = torch.tensor([[False, False, True, False]])
    assert rank_of_target(inf_t, t[:1], excl, ties="pessimistic").item() == 3  # cols 1 and 3, not 2
    with pytest.raises(ValueError, match="ties"):
        rank_of_target(s, t, ties="random")


def test_fused_reward_collapsed_state_gets_the_worst_rank():
    # a collapsed user state scores every item the same. N = 6, one history item masked at -inf: the 4
    # other non-excluded items all tie with the target -> pessimistic rank 5, the worst possible among 5
    # ranked items; R_d = 1/log2(6), R_c = 1/5 (uniform over the 5 unmasked items)
    s = torch.full((2, 6), 0.3)
    s[:, 5] = -math.inf
    t = torch.tensor([0, 2])
    got = fused_reward(s, t, beta=0.1)
    worst = 0.9 / math.log2(6) + 0.1 / 5
    torch.testing.assert_close(got, torch.tensor([worst, worst]))
    # the ranking term equals that of a state putting the target strictly last: ties are not rewarded
    last = torch.tensor([[0.1, 0.3, 0.3, 0.3, 0.3, -math.inf]])
    assert fused_reward(s[:1], t[:1], beta=0.0).item() == fused_reward(last, t[:1], beta=0.0).item()
    # and with ndcg_k below the worst rank, a collapsed state earns no ranking reward at all
    assert fused_reward(s, t, beta=0.0, ndcg_k=4).tolist() == [0.0, 0.0]


def test_fused_reward_exclude_mask_never_excludes_the_target():
    # exclude_mask marks the target (it is also in the history) and col 1: the target keeps its score,
    # col 1 (higher) leaves the rank and the softmax: rank 1, R_c = e^1 / (e^1 + e^0) over cols 0 and 2
    s = torch.tensor([[1.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    got = fused_reward(s, torch.tensor([0]), beta=0.5, exclude_mask=mask)
    expected = 0.5 * 1.0 + 0.5 * math.e / (math.e + 1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_in_batch_item_logps_duplicate_targets_are_not_negatives():
    # B = 3 users, G = 2; users 0 and 2 share target "a": for their rows the other copy of "a" leaves the
    # softmax (it is the positive, not a negative); user 1 ("b") keeps all three columns
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    got = in_batch_item_logps(users, items, 2, 0.5, targets=["a", "b", "a"])
    logits = (
        torch.nn.functional.normalize(users, dim=-1) @ torch.nn.functional.normalize(items, dim=-1).T / 0.5
    )
    keep = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2]}  # user -> its softmax's columns
    expected = torch.stack([
        torch.log_softmax(logits[r, keep[r // 2]], 0)[keep[r // 2].index(r // 2)] for r in range(6)
    ])  # fmt: skip
    torch.testing.assert_close(got, expected)
    # distinct targets (or none given): every other column is a negative, as before
    plain = torch.log_softmax(logits, 1)[torch.arange(6), torch.arange(3).repeat_interleave(2)]
    torch.testing.assert_close(in_batch_item_logps(users, items, 2, 0.5, targets=["a", "b", "c"]), plain)
    torch.testing.assert_close(in_batch_item_logps(users, items, 2, 0.5), plain)


def test_forced_answer_token_leaves_the_policy_gradient():
    from rrec.recpo import sampled_token_mask

    # rows of 3, 2 and 4 tokens (T = 4), rows 0 and 2 forced: only their last token (<answer>) leaves
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    forced = torch.tensor([True, False, True])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(sampled_token_mask(mask, forced), expected)
    assert torch.equal(sampled_token_mask(mask, forced, include_forced=True), mask)
    # through the loss: the forced tokens get no gradient, every other real token does
    logps = (-torch.rand(3, 4, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    adv, zero = torch.tensor([1.0, -0.5, -0.5]), torch.zeros(3)
    loss, _ = recpo_loss(
        logps, logps.detach(), adv, sampled_token_mask(mask, forced), zero, zero, group_size=3
    )
    loss.backward()
    assert torch.equal(logps.grad != 0, expected.bool())
