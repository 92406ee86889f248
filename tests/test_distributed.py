"""Several processes train like one: the gather helpers on 2 gloo processes, the loss normalisation by
hand, and a RecPO step launched on 2 CPU processes against the same step on 1.

Tolerance of the recipe comparisons (tests/tolerance.py): both runs do the same float32 arithmetic on
the same sampled tokens (per-row seeds), but in batches of other shapes (B/2 vs B prompts, padded to
other widths; catalog shards of 15 vs 30 items) and with sums over processes added in another order. A
step's gradient sums over the batch's tokens, so logged statistics agree to K_STEP * eps32 *
sqrt(tokens) relative (2e-4 for 8 rows of ~106 tokens), the averaged gradient to that much of its
scale, and the parameters to what Adam's first update makes of that (see the test).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rrec import distributed, recpo, training
from tests.tolerance import K_STEP, assert_f32_close, f32_tol

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "recipes" / "configs" / "accelerate_ddp.yaml"
DS_CONFIG = REPO / "recipes" / "configs" / "accelerate_deepspeed_zero2.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helpers_worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        assert distributed.rank_and_world() == (rank, world)
        # unequal shards: 5 rows as 3 + 2, gathered in rank order
        lo, hi = distributed.shard_bounds(5, rank, world)
        rows = torch.arange(5.0)[lo:hi, None] * torch.ones(1, 2)
        assert distributed.gather_rows(rows)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert distributed.gather_objects(f"r{rank}") == ["r0", "r1"]
        assert distributed.any_process(rank == 1) and not distributed.any_process(False)
        # a shared weight maps features to user / item states; B = 4 users x G = 2, item action loss.
        # One process: L = mean over the 8 rows of -log p(own target | all 4 targets).
        # Two processes: each the mean over its 4 rows, negatives gathered with gradient, grads averaged.
        torch.manual_seed(0)
        w0 = torch.randn(3, 3, dtype=torch.float64)
        xu, xt = torch.randn(8, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
        w = w0.clone().requires_grad_()
        (-recpo.in_batch_item_logps(xu @ w, xt @ w, 2, 0.5).mean()).backward()
        full_grad = w.grad.clone()
        mine = distributed.batch_slice(4, rank, world)
        w = torch.nn.Parameter(w0.clone())
        users = distributed.gather_rows_with_grad(xu[mine.start * 2 : mine.stop * 2] @ w)  # (8, 3)
        items = distributed.gather_rows_with_grad(xt[mine] @ w)  # (4, 3)
        lp = recpo.in_batch_item_logps(users, items, 2, 0.5)[mine.start * 2 : mine.stop * 2]
        (-lp.mean()).backward()
        distributed.average_gradients([w])
        # in_batch_item_logps computes in float32: the gradient sums 8 rows x 4 items in another order
        assert_f32_close(w.grad, full_grad, n=8 * 4, k=K_STEP)
        # without the backward sum (gradient kept for the local chunk only) the result would differ:
        w_local = w0.clone().requires_grad_()
        u_all = (xu @ w0).clone()
        u_all[mine.start * 2 : mine.stop * 2] = xu[mine.start * 2 : mine.stop * 2] @ w_local
        t_all = (xt @ w0).clone()
        t_all[mine] = xt[mine] @ w_local
        lp = recpo.in_batch_item_logps(u_all, t_all, 2, 0.5)[mine.start * 2 : mine.stop * 2]
        (-lp.mean()).backward()
        distributed.average_gradients([w_local])
        assert (w_local.grad - full_grad).abs().max() > 1e-3
        # the broadcast makes process 1 start from process 0's weights
        p = torch.nn.Parameter(torch.full((2,), float(rank)))
        distributed.broadcast_parameters([p])
        assert p.tolist() == [0.0, 0.0]
    finally:
        dist.destroy_process_group()


def test_gather_helpers_on_two_processes():
    torch.multiprocessing.spawn(_helpers_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_helpers_are_no_ops_on_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.rank_and_world() == (0, 1)
    assert distributed.gather_rows(x) is x and distributed.gather_rows_with_grad(x) is x
    assert distributed.gather_objects(7) == [7] and distributed.any_process(True)
    assert distributed.batch_slice(4, 0, 1) == slice(0, 4)
    with pytest.raises(ValueError, match="does not split into 3"):
        distributed.batch_slice(4, 0, 3)
    assert [distributed.shard_bounds(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_normalisation_two_halves_average_to_the_whole(loss_type):
    # B = 4 users, G = 2, T = 3; the halves hold 2 users each with different token counts
    # (rows 0-3: 3+1+2+3 = 9 tokens, rows 4-7: 1+1+2+1 = 5), so a per-half token mean would weight the
    # 5 tokens of half 2 like the 9 of half 1: only the gathered count gives the whole batch's mean.
    torch.manual_seed(1)
    lens = torch.tensor([3, 1, 2, 3, 1, 1, 2, 1])
    mask = (torch.arange(3)[None, :] < lens[:, None]).long()  # (8, 3)
    logps, old = torch.randn(8, 3) * 0.1, torch.randn(8, 3) * 0.1
    adv = torch.randn(8)
    item, old_item = torch.randn(8) * 0.1, torch.randn(8) * 0.1
    kw = dict(group_size=2, epsilon=0.2, max_completion_length=3)

    def loss(rows, world):
        lt, n = training.loss_normalisation(loss_type, float(mask.sum()), world)
        out, _ = recpo.recpo_loss(logps[rows], old[rows], adv[rows], mask[rows], item[rows], old_item[rows],
                                  loss_type=lt, num_items_in_batch=n, **kw)  # fmt: skip
        return out

    whole = loss(slice(0, 8), 1)
    halves = (loss(slice(0, 4), 2) + loss(slice(4, 8), 2)) / 2
    # float32 sums over the 24 token slots in another grouping; each term is ratio * adv, ratio ~ 1
    assert_f32_close(halves, whole, n=mask.numel(), scale=adv.abs().max().item())
    # and one process is the plain recpo_loss with the type asked for
    plain, _ = recpo.recpo_loss(logps, old, adv, mask, item, old_item, loss_type=loss_type, **kw)
    assert_f32_close(whole, plain, n=mask.numel(), scale=adv.abs().max().item())


def test_rollout_seeds_depend_on_the_user_not_the_process():
    # users 2, 3 of step 5 get the same seeds whether a process holds users 0-3 or only 2-3
    all4 = training.rollout_seeds(0, 5, range(4), 2)
    assert training.rollout_seeds(0, 5, range(2, 4), 2) == all4[4:]
    assert len(set(all4)) == 8 and all(0 <= s < 2**63 for s in all4)
    assert training.rollout_seeds(0, 6, range(4), 2) != all4


def _launch_two(module: str, args: dict, out: Path, script: Path | None = None) -> None:
    """``accelerate launch`` a recipe (or ``script``) on 2 CPU processes (gloo) with the DDP config."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
           "--main_process_port", str(_free_port()), *(["-m", module] if script is None else [str(script)]),
           *[f"{k}={v}" for k, v in {**args, "out_dir": out}.items()]]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _step_state(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat parameters, flat Adam exp_avg) after step 1, from the run's checkpoint-1."""
    params = torch.load(run / "checkpoint-1" / "trainable.pt")
    opt = torch.load(run / "checkpoint-1" / "optimizer.pt")["state"]
    flat = torch.cat([p.flatten() for p in params.values()])
    exp_avg = torch.cat([opt[i]["exp_avg"].flatten() for i in range(len(params))])
    return flat, exp_avg


def test_recpo_step_on_two_processes_equals_one(tmp_path, tokenizer):
    """One RecPO step (dapo: gathered token count; item action over gathered targets with gradient) on
    2 gloo processes x 2 users vs 1 process x 4 users.

    Advantages are RLOO here, not the default z-score: groups are local to a process either way, and the
    z-score divides by the group's std, which for near-equal rewards (the tiny model's samples often
    land on the same rank) turns float32 rounding of the scores into 1e-4 relative differences that say
    nothing about the distribution. Parameters are compared where Adam is well conditioned: its first
    update lr * g / (|g| + eps), eps = 1e-8, turns a rounding difference d in g into
    lr * d * eps / (|g| + eps)^2, at most 1e2 lr * d for |g| >= 1e-5, but of order lr for gradients
    that are zero up to rounding (|g| < 1e-8), where the sign is noise.
    """
    from recipes import train_recpo
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

    lr = 1e-2
    args = {
        "model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
        "prepared": str(tiny_prepared(tmp_path / "data")),
        "steps": 1,
        "save_every": 1,
        "users_per_step": 4,
        "num_generations": 2,
        "max_completion_length": 6,
        "row_seeds": True,
        "loss_type": "dapo",
        "advantage": "rloo",
        "eval_users": 3,  # 2 + 1 samples: unequal evaluation shards
        "eval_max_new_tokens": 3,
        "warmup_steps": 0,
        "lr": lr,
        "dtype": "float32",
        "tensorboard": False,
    }
    one = train_recpo.main([f"{k}={v}" for k, v in {**args, "out_dir": tmp_path / "one"}.items()])
    _launch_two("recipes.train_recpo", args, tmp_path / "two")
    two_log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(two_log) == 1  # process 0 alone wrote it
    rec1, rec2 = one["history"][0], two_log[0]
    assert rec2["train/reasoning_len"] == rec1["train/reasoning_len"]  # the same tokens were sampled
    n_tokens = 4 * 2 * (105 + 6)  # B x G rows of prompt (tiny_prepared: <= 105 tokens) + completion
    for key in ("train/loss", "train/item_loss", "train/reward_mean", "train/ndcg", "train/grad_norm"):
        assert_f32_close(rec2[key], rec1[key], n=n_tokens, k=K_STEP, msg=key)
    # RLOO advantages sum to 0 per group and the ratio is 1: the policy term is 0 up to rounding of a
    # sum over the tokens of terms ratio * adv, |adv| <= 1 (rewards lie in [0, 1])
    for rec in (rec1, rec2):
        assert abs(rec["train/policy_loss"]) <= f32_tol(n_tokens, 1.0), rec["train/policy_loss"]
    (p1, m1), (p2, m2) = _step_state(tmp_path / "one"), _step_state(tmp_path / "two")
    g1, g2 = m1 / 0.1, m2 / 0.1  # exp_avg = 0.1 g after Adam's first step: the averaged gradient
    grad_tol = f32_tol(n_tokens, g1.abs().max().item(), K_STEP)
    assert_f32_close(g2, g1, n=n_tokens, k=K_STEP, msg="gradient")
    well = g1.abs() >= 1e-5  # |g| >= 1000 eps
    assert well.float().mean() > 0.3  # LoRA A has g = 0 at step 1 (B = 0); B has g from 0 to 1e-2
    param_err = (p1 - p2)[well].abs().max().item() / lr
    grad_err = (g1 - g2).abs().max().item() / g1.abs().max().item()
    print(f"1 vs 2 processes: gradient {grad_err:.1e} of its scale, parameters {param_err:.1e} lr")
    assert param_err <= 1e2 * grad_tol, (param_err, grad_tol)  # the 1e2 lr * d bound above
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())
    assert r2["after"]["n_samples"] == one["after"]["n_samples"] == 3
    assert r2["after"]["ndcg@10"] == pytest.approx(one["after"]["ndcg@10"], abs=1e-6)


def test_contrastive_step_on_two_processes_equals_one(tmp_path, tokenizer):
    """6 users as 2 x 3: every user's softmax runs over all 6 targets (gathered with gradient)."""
    from recipes import train_contrastive
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

    args = {"model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
            "prepared": str(tiny_prepared(tmp_path / "data")), "steps": 1, "save_every": 1,
            "users_per_step": 6, "eval_users": 3, "warmup_steps": 0, "lr": 1e-2,
            "dtype": "float32"}  # fmt: skip
    one = train_contrastive.main([f"{k}={v}" for k, v in {**args, "out_dir": tmp_path / "one"}.items()])
    _launch_two("recipes.train_contrastive", args, tmp_path / "two")
    rec2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    n_tokens = 6 * 105  # 6 user prompts of <= 105 tokens (tiny_prepared); the targets' prompts are shorter
    for key in ("train/loss", "train/grad_norm"):
        assert_f32_close(rec2[key], one["history"][0][key], n=n_tokens, k=K_STEP, msg=key)
    (_, m1), (_, m2) = _step_state(tmp_path / "one"), _step_state(tmp_path / "two")
    assert_f32_close(m2, m1, n=n_tokens, k=K_STEP, msg="averaged gradient")


@pytest.mark.parametrize("config", [DDP_CONFIG, DS_CONFIG], ids=["ddp", "deepspeed_zero2"])
def test_accelerate_configs_parse(config):
    # the launch configs load as accelerate's own config class (DeepSpeed itself cannot run here)
    from accelerate.commands.config.config_args import load_config_from_file

    text = config.read_text()
    assert text.startswith("# ") and "accelerate launch --config_file" in text.splitlines()[1]
    cfg = load_config_from_file(str(config))
    assert cfg.num_processes == 2 and cfg.main_process_ip == "127.0.0.1"
    if config == DS_CONFIG:
        assert cfg.distributed_type == "DEEPSPEED" and cfg.deepspeed_config["zero_stage"] == 2


SHORTNESS_RUNNER = """
import sys
from rrec.tasks import like_dislike as ld
from recipes import grpo_like_dislike


def shortness(completions, **_):  # the tiny model never writes the tags: a reward that varies
    return [-float(len(c)) for c in completions]


ld.REWARD_FUNCS = (shortness, ld.strict_format_reward, ld.soft_format_reward)
grpo_like_dislike.main(sys.argv[1:])
"""


def test_like_dislike_grpo_step_on_two_processes_equals_one(tmp_path, tokenizer, monkeypatch):
    """A sibling system through ``rrec.grpo``: 4 prompts x 2 completions as 2 x 2 prompts, dapo (the
    gathered token count), per-row seeds; the merged final weights after one step agree to float32
    rounding of that step (Adam's first step moves each LoRA weight by about lr: scale lr), the logged loss
    and rewards to rounding relative (tests/tolerance.py), and the evaluation (3 samples: shards of 2 and 1)
    exactly."""
    from safetensors.torch import load_file

    from recipes import grpo_like_dislike
    from rrec.tasks import like_dislike as ld
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

    args = {"model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
            "prepared": str(tiny_prepared(tmp_path / "data")), "steps": 1, "prompts_per_step": 4,
            "num_generations": 2, "max_completion_length": 6, "row_seeds": True, "loss_type": "dapo",
            "eval_samples": 3, "eval_max_new_tokens": 4, "warmup_steps": 0, "lr": 1e-2, "dtype": "float32",
            "history": 3}  # fmt: skip
    script = tmp_path / "run_shortness.py"
    script.write_text(SHORTNESS_RUNNER)
    ns: dict = {}
    exec(SHORTNESS_RUNNER.split("ld.REWARD_FUNCS")[0], ns)  # the same reward, in this process
    monkeypatch.setattr(ld, "REWARD_FUNCS", (ns["shortness"], ld.strict_format_reward, ld.soft_format_reward))
    one = grpo_like_dislike.main([f"{k}={v}" for k, v in {**args, "out_dir": tmp_path / "one"}.items()])
    _launch_two("", args, tmp_path / "two", script=script)
    rec1 = one["history"][0]
    rec2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())  # one line: process 0 alone wrote
    assert (
        rec1["train/zero_std_groups"] < 1.0 and rec2["train/completion_len"] == rec1["train/completion_len"]
    )
    n_tokens = 4 * 2 * (154 + 6)  # 4 prompts (<= 154 tokens, history 3) x 2 completions of <= 6 tokens
    for key in ("train/loss", "train/reward_mean", "train/correctness_mean", "train/grad_norm"):
        assert_f32_close(rec2[key], rec1[key], n=n_tokens, k=K_STEP, msg=key)
    w1 = load_file(tmp_path / "one" / "final" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "final" / "model.safetensors")
    moved = max(
        (w1[k] - load_file(tmp_path / "base" / "model.safetensors")[k]).abs().max().item() for k in w1
    )
    assert moved > 1e-4  # the step did something
    for k in w1:
        assert_f32_close(w2[k], w1[k], n=n_tokens, k=K_STEP, scale=1e-2, msg=k)  # scale: lr, one step
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())
    assert r2["after"] == one["after"]


def test_recllm_r1_runs_on_two_processes(tmp_path, tokenizer):
    """SFT + GRPO of RecLLM-R1 on 2 gloo processes: one step each, the logs of process 0 only, and the
    GRPO statistics of the whole batch (4 samples x 2 completions gathered from 2 x 2); the random tiny
    model maps no titles, so its rewards are 0 and only the plumbing is checked here (the arithmetic of
    several processes is checked on like/dislike above and on RecPO)."""
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

    args = {"model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
            "prepared": str(tiny_prepared(tmp_path / "data")), "sft_steps": 1, "sft_batch_size": 4,
            "steps": 1, "users_per_step": 4, "num_generations": 2, "max_completion_length": 6,
            "eval_users": 3, "eval_max_new_tokens": 6, "warmup_steps": 0, "row_seeds": True,
            "dtype": "float32"}  # fmt: skip
    _launch_two("recipes.recllm_r1", args, tmp_path / "two")
    log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("sft", 1), ("grpo", 1)]
    assert 1 <= log[1]["train/completion_len"] <= 6 and (tmp_path / "two" / "final").is_dir()
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["after"]["samples"] == 3


def test_recone_sft_then_rl_runs_on_two_processes(tmp_path, tokenizer):
    """RecOne (its SFT stage, then RecZero's RL loop) on 2 gloo processes: each takes half of every
    batch; the SFT loss logged is the mean of the two halves' and it goes down on the same 4 traces; process
    0 alone writes the logs and the result; the gathered RL statistics cover the whole batch."""
    from tests.recipe_fixtures import tiny_model_dir, tiny_prepared
    from tests.test_rating_recipes import GOOD

    traces = tmp_path / "traces.jsonl"
    lines = [
        {"prompt": f"Rate film {i}.", "trace": GOOD.format(i, 1 + i % 5), "rating": 1 + i % 5}
        for i in range(4)
    ]
    traces.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = {"model": str(tiny_model_dir(tmp_path / "base", tokenizer)),
            "prepared": str(tiny_prepared(tmp_path / "data")), "traces": str(traces), "sft_steps": 3,
            "sft_batch_size": 4, "sft_lr": 1e-2, "steps": 1, "batch_size": 2, "num_generations": 2,
            "max_completion_length": 6, "eval_samples": 3, "eval_max_new_tokens": 4, "row_seeds": True,
            "bootstrap_resamples": 50, "warmup_steps": 0, "dtype": "float32"}  # fmt: skip
    _launch_two("recipes.recone", args, tmp_path / "two")
    log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    sft = [r["sft/loss"] for r in log if r.get("stage") == "sft"]
    assert len(sft) == 3 and sft[-1] < sft[0]
    rl = [r for r in log if r.get("stage") != "sft"]
    assert len(rl) == 1 and 1 <= rl[0]["train/completion_len"] <= 6
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["after"]["n"] == 3 and (tmp_path / "two" / "final").is_dir()
