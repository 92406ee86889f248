"""RecPO training: rollout -> fused reward -> group advantages -> num_iterations x (loss, step).

Launch: ``rrec train-recpo recipes/configs/recpo_smollm2_ml100k.yaml [key=value ...]`` (one process), or
several processes: ``accelerate launch --config_file recipes/configs/accelerate_ddp.yaml -m
recipes.train_recpo <config> [key=value ...]`` (see the config's first lines; DeepSpeed ZeRO-2:
``accelerate_deepspeed_zero2.yaml``, valid but untested here: no GPU and no deepspeed on the dev machine).

Several processes (W): each takes ``users_per_step / W`` users of the global batch (a user's G samples stay
together, so advantages stay local); the batch targets' item states are gathered (in-batch negatives of
the item action, with gradient: ``rrec.distributed.gather_rows_with_grad``); the item table is encoded in
shards and gathered; the token count of dapo/bnpo and the logged statistics are global
(``training.loss_normalisation``); gradients are averaged over processes (DDP's rule) by
``distributed.average_gradients``, explicitly, because the policy passes call the decoder directly
(``final_hidden``, never the LM's forward), which a ``DistributedDataParallel`` wrapper would not see.
Under DeepSpeed the engine reduces, clips and steps inside ``accelerator.backward``. Files are written
by process 0 only. With ``row_seeds=true`` each sample draws from a seed of (seed, step, user, g), and
W processes x B/W users reproduce one process x B users (tested on 2 CPU processes: the loss and the
averaged gradient agree to 1e-5 relative, float32 rounding of batches of other shapes).

Checkpoints (``rrec.checkpoint``): every ``save_every`` steps and on SIGTERM (saved at the next step
boundary, then the run returns with exit code 0; under ``accelerate launch`` the launcher forwards the
signal to every process, kills them after its grace period, torchrun's 30 s, and itself exits non-zero);
``resume_from=<folder>`` or ``resume_from=latest`` continues exactly: the resumed steps' losses equal
the uninterrupted run's bit for bit (tested). Not under DeepSpeed (refused).

Per step, in the order of the paper's Algorithm 1:
  1. every ``refresh_every`` steps rebuild the whole item table; every step re-encode the batch's
     target items and write them into the table (before sampling and rewarding);
  2. sample G reasonings per user (temperature / top-k / top-p), keeping the sampled ids;
  3. score the user states at ``<answer>`` against the full table (history masked, never the target),
     fused reward (ties count against the target);
  4. group advantages;
  5. ``num_iterations`` PPO epochs over the rollout batch, each one teacher-forced pass on exactly the
     sampled ids: token-level clipped loss on the sampled reasoning tokens (a forced ``<answer>`` is left
     out unless ``train_forced_answer``) plus the item action on each group's best trajectory
     (``rrec.recpo.recpo_loss``); the old log-probs, tokens and item action, are the first epoch's,
     detached (the ratio is exactly 1 there, ``train/ratio_mean_first``).

Evaluations: every ``eval_every`` steps on a fixed subset of ``valid_split`` (``valid/...`` lines of
metrics.jsonl); ``eval_split`` (test) is touched only before and after training, on the same samples:
the "before" evaluation of the untrained model is reported beside the "after" one (nothing in training
reads it). ``beta_kl`` > 0: the k3 KL to the starting policy (``rrec.training.reference_policy``: the
adapter-disabled model with LoRA, a frozen copy with full fine-tuning).

Departures from the paper, all deliberate: see ``rrec/recpo.py`` (real old log-probs, correct RLOO,
float32 ranking, no re-tokenisation). Defaults follow the paper (G=4, temperature 1.5, top-k 200, 512
new tokens, LoRA rank 4 on all linear projections, lr 1e-5 with 32 warm-up steps); the demo config
shortens the run to fit a 2-core CPU. Validated: the unit tests and short CPU runs; the paper-scale GPU
run is not reproduced here.

``rollout_engine=vllm`` (optional, one process, ``pip install -e .[vllm]``) samples the reasonings with
vLLM (``rrec.vllm_backend``; the weights synced before every rollout, the states and log-probs from our
HF model); the evaluations then decode with ``auto``. It has NOT been run against a real vLLM in this
project: it is tested on CPU through a fake vLLM only (``tests/test_recipe_recpo_vllm.py``).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rrec import atomic_files, checkpoint, decoding, distributed, recpo, training, vllm_backend
from rrec.config import config_from_argv, to_dict
from rrec.metrics import rank_of_target


@dataclass
class RecPOConfig:
    model: str = ""  # HF folder or rrec folder; "" = the embedded SmolLM2-135M-Instruct
    prepared: str = ""  # prepared dataset folder; "" = ML-100K temporal (prepared on demand)
    out_dir: str = "runs/recpo"
    seed: int = 0
    dtype: str = (
        "auto"  # auto: bf16 where fast (GPU, CPUs with AVX512-BF16/AMX) else float32; LoRA stays fp32
    )
    device: str = "auto"  # auto: cuda if available, else cpu
    max_history: int = 20  # history items shown in the prompt (R²ec: 20)
    lora: bool = True
    lora_rank: int = 4  # R²ec
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    reasoning_format: str = ""  # "" = the model's own; "stream" writes the reasoning after the last item line
    id_lr: float = 0.05  # hybrid table (a model with ID vectors): SGD of the item action's ID-vector grads
    id_momentum: float = 0.9  # (train_allpos's optimiser and values); id_lr 0 keeps them fixed
    gradient_checkpointing: bool = False
    steps: int = 200
    max_train_minutes: float | None = None  # stop after the step that crosses it (then eval + save)
    users_per_step: int = 4  # B
    num_generations: int = 4  # G (R²ec)
    temperature: float = 1.5  # R²ec sampling temperature
    top_k: int = 200  # R²ec
    top_p: float = 1.0
    max_completion_length: int = 512  # R²ec
    lr: float = 1e-5  # R²ec
    warmup_steps: int = 32  # R²ec; really applied (linear from 0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1  # mu, PPO epochs per rollout batch
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon
    loss_type: str = "grpo"
    advantage: str = "grpo"  # grpo | rloo | none
    reward_beta: float = 0.05  # weight of the softmax-similarity term (R²ec)
    reward_mode: str = "convex"  # convex (official code) | additive (paper text)
    ndcg_k: int = 1000
    beta_kl: float = 0.0
    train_forced_answer: bool = False  # keep forced <answer> tokens (not sampled) in the token term
    item_weight: float = 1.0
    item_grad: bool = True  # the batch targets' item states carry gradient in the item action
    refresh_every: int = 50  # full item-table rebuild period (steps)
    eval_every: int = 0  # mid-training evaluations on valid_split; 0: only before and after training
    eval_split: str = "test"  # before and after training only
    valid_split: str = "valid"
    valid_users: int | None = 32
    valid_samples_per_user: int | None = 1
    eval_users: int | None = 32
    eval_samples_per_user: int | None = 1
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 16
    save_every: int = 0  # 0: no resumable checkpoints, only the final model (and one on SIGTERM)
    keep_checkpoints: int = 0  # 0 keeps all; n: the newest n (older ones removed after a new one is complete)
    resume_from: str = ""  # a checkpoint folder, or "latest" (the newest in out_dir; none: a fresh start)
    row_seeds: bool = False  # one sampling seed per (step, user, g): independent of the process count
    # rollouts: auto (rrec.engine with CUDA graphs on GPU, HF forward on CPU) | static | hf | vllm (optional,
    # one process, untested against a real vLLM; the evaluations then use auto)
    rollout_engine: str = "auto"
    log_every: int = 1
    tensorboard: bool = True


def setup(cfg: RecPOConfig, device: torch.device | str | None = None):
    """Model (+LoRA), prepared data, evaluation subset: shared with the contrastive recipe.

    ``device`` is the accelerator's (one GPU per process) and applies when ``cfg.device`` is auto. With
    ``lora``, the ``<answer>`` rows train with the adapter; a ``model`` folder that already holds a LoRA
    adapter (a saved rrec model) continues that adapter, with its own rank and alpha, rather than
    wrapping a second one."""
    from rrec.assets import fetch, model_dir
    from rrec.backbone import apply_lora, continue_adapter, is_peft, parse_dtype
    from rrec.data import ensure_default, load_prepared
    from rrec.evaluation import select_samples
    from rrec.model import ReasoningRecommender

    torch.manual_seed(cfg.seed)
    data = load_prepared(cfg.prepared or ensure_default())
    path = cfg.model or str(fetch(datasets=())["model"] if not model_dir().exists() else model_dir())
    if cfg.device != "auto":
        device = cfg.device
    elif device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = parse_dtype(cfg.dtype, device)
    if dtype != torch.float32 and not cfg.lora:
        dtype = torch.float32  # full fine-tuning keeps float32 master weights (lr 1e-5 vanishes in bf16)
    fmt = getattr(cfg, "reasoning_format", "")  # the contrastive recipe shares this setup, without the key
    extra = {"reasoning_format": fmt} if fmt else {}
    model = ReasoningRecommender.from_pretrained(
        path, dtype=dtype, device=device, catalog=data.items, max_history=cfg.max_history, **extra
    )
    if is_peft(model.lm) and not cfg.lora:
        raise ValueError(f"{path} holds a LoRA adapter: continue it with lora=true, or merge it first")
    if model.id_vectors is not None:  # a hybrid table: the item action trains the ID vectors (id_lr > 0)
        model.id_vectors.ensure(list(model.catalog))
        model.id_vectors.float().requires_grad_(getattr(cfg, "id_lr", 0.0) > 0)
    if model.config.item_encoder == "base":  # a frozen item side: its states are kept between runs
        from rrec.assets import cache_dir

        model.text_cache = cache_dir() / "tables"
    if is_peft(model.lm):
        model.lm = continue_adapter(model.lm)
    elif cfg.lora:
        model.lm = apply_lora(model.lm, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                              trainable_tokens=[model.answer_id])  # fmt: skip
    if cfg.gradient_checkpointing:
        model.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.lm.enable_input_require_grads()
    eval_df = select_samples(data.splits[cfg.eval_split], cfg.eval_users, cfg.eval_samples_per_user, cfg.seed)
    return model, data, eval_df


def run_eval(model, eval_df, cfg, reasoning: bool = True) -> tuple[dict, list[dict]]:
    """Rebuild the item table, evaluate (each process a shard of the samples), gather on every process."""
    from rrec.evaluation import evaluate_samples, per_user_rows, summarize

    model.lm.eval()
    training.build_item_table(model, batch_size=64)
    rank, world = distributed.rank_and_world()
    lo, hi = distributed.shard_bounds(len(eval_df), rank, world)
    rows = []
    if hi > lo:
        res = evaluate_samples(
            model, eval_df.iloc[lo:hi].reset_index(drop=True), reasoning=reasoning,
            batch_size=cfg.eval_batch_size, max_new_tokens=cfg.eval_max_new_tokens, progress=rank == 0,
        )  # fmt: skip
        rows = per_user_rows(res)
    rows = [r for part in distributed.gather_objects(rows) for r in part]  # sample order
    ranks, users = torch.tensor([r["rank"] for r in rows]), [r["user_id"] for r in rows]
    return summarize(ranks, users, tied=[bool(r["tied"]) for r in rows]), rows


def prepare(acc, model, opt, per_process_batch: int, max_grad_norm: float):
    """The optimiser through ``acc.prepare``; under DeepSpeed the model too (the engine owns the step).

    The scheduler stays outside: accelerate would step it once per process per step.
    """
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return acc.prepare(opt)
    ds_config = acc.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = per_process_batch  # bookkeeping: no DataLoader here
    ds_config["gradient_clipping"] = max_grad_norm  # one source of truth: the recipe config
    _engine, opt = acc.prepare(model.lm, opt)  # model.lm stays the module the engine wraps
    return opt


def start_vllm(model, out: Path, seed: int):
    """rollout_engine=vllm: the model (LoRA merged) saved to ``out/vllm_model``, and a ``vllm.LLM`` on it.

    ``max_model_len`` is the HF model's own context: a longer prompt + completion is out of its range too.
    """
    path = vllm_backend.save_for_vllm(model.lm, model.tokenizer, out / "vllm_model")
    return vllm_backend.make_llm(path, max_model_len=model.lm.config.max_position_embeddings, seed=seed)


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import get_constant_schedule_with_warmup

    from rrec.evaluation import select_samples
    from rrec.rollout import generate_reasoning

    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_argv(RecPOConfig, argv)
    acc = Accelerator()
    rank, world = distributed.rank_and_world()
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    vllm = cfg.rollout_engine == "vllm"  # the rollouts only: the evaluations decode with auto
    decoder = decoding.check_engine("auto" if vllm else cfg.rollout_engine)
    if vllm and not vllm_backend.available():
        raise ValueError(
            "rollout_engine=vllm needs vllm, which is optional and has not been run against a real vLLM in "
            "this project: pip install -e .[vllm] (on a CUDA machine), or use rollout_engine=auto"
        )
    if vllm and world > 1:
        raise ValueError(
            f"rollout_engine=vllm runs in one process only (one vLLM per process is not designed here), "
            f"got {world} processes: launch without accelerate, or use rollout_engine=auto"
        )
    if deepspeed and (cfg.save_every or cfg.resume_from):
        raise ValueError(
            "checkpoints are not implemented under DeepSpeed (ZeRO-2 shards the optimiser state)"
        )
    G, B = cfg.num_generations, cfg.users_per_step
    mine = distributed.batch_slice(B, rank, world)  # this process's users in each global batch
    mine_rows = slice(mine.start * G, mine.stop * G)  # and their B/W*G rollout rows
    out = Path(cfg.out_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_files.atomic_write_json(out / "config.json", to_dict(cfg))
    with acc.main_process_first():  # process 0 fetches / prepares the default data first, once
        model, data, eval_df = setup(cfg, acc.device)
    valid_df = None
    if cfg.eval_every:
        valid_df = select_samples(data.splits[cfg.valid_split], cfg.valid_users, cfg.valid_samples_per_user,
                                  cfg.seed)  # fmt: skip
    reference = training.reference_policy(model.lm, cfg.beta_kl)  # before a checkpoint loads
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    params = training.trainable_parameters(model.lm)
    distributed.broadcast_parameters(params)  # every process starts from process 0's weights
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    id_params = [model.id_vectors.weight] if model.id_vectors is not None and cfg.id_lr > 0 else []
    if id_params and (deepspeed or cfg.save_every or cfg.resume_from):
        raise ValueError(
            "training ID vectors (a hybrid model with id_lr > 0) is not checkpointed and not under "
            "DeepSpeed: set id_lr=0, or save_every=0 and no resume_from"
        )
    distributed.broadcast_parameters(id_params)
    id_opt = torch.optim.SGD(id_params, lr=cfg.id_lr, momentum=cfg.id_momentum) if id_params else None
    sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    resume = training.resume_path(cfg.resume_from, out)
    start, state = 0, None
    if resume is not None:
        state = checkpoint.load_checkpoint(resume, model=model, optimizer=opt, scheduler=sched, rank=rank,
                                           world=world)  # fmt: skip
        start = state.step
        acc.print(f"resumed from {resume} at step {start}")
    opt = prepare(acc, model, opt, B // world, cfg.max_grad_norm)
    llm = start_vllm(model, out, cfg.seed) if vllm else None  # one process (checked above)
    writer = None
    if cfg.tensorboard and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)
    log_lines = training.kept_log(out / "metrics.jsonl", start) if start else []

    model.rollout_engine = decoder  # the evaluations' decoder
    t0 = time.time()
    if state is None:
        before, before_rows = run_eval(model, eval_df, cfg)
        if acc.is_main_process:
            atomic_files.atomic_write_text(
                out / "per_user_before.jsonl", "".join(json.dumps(r) + "\n" for r in before_rows)
            )
    else:
        before = state.extra["before"]
    acc.print(f"eval before: ndcg@10={before['ndcg@10']:.4f} hit@10={before['hit@10']:.4f}")
    batches = training.sample_batches(data.splits["train"], B, cfg.seed, start=start)
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed + rank)
    if state is not None:
        checkpoint.set_rng_state(state.rng, gen)

    history: list[dict] = []
    static = not vllm and decoding.use_static(decoder, model.lm, model.device)
    decoders = decoding.DecoderPool()
    sampling = dict(
        answer_id=model.answer_id, pad_id=model.pad_id, eos_ids=[model.tokenizer.eos_token_id],
        max_new_tokens=cfg.max_completion_length, num_generations=G, do_sample=True,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
    )  # fmt: skip
    done, timed_out, t_train = cfg.steps, False, time.time()
    with checkpoint.sigterm_flag() as sigterm:
        for step in range(start, cfg.steps):
            t_step = time.time()
            batch = next(batches)  # the global batch, the same on every process
            rows = batch.iloc[mine].reset_index(drop=True)
            targets_all = batch["target"].astype(str).tolist()
            targets = targets_all[mine]
            model.lm.eval()
            if step > 0 and cfg.refresh_every and step % cfg.refresh_every == 0:
                training.build_item_table(model, batch_size=64)
            with torch.no_grad():  # 1. refresh the batch targets before sampling and rewarding
                target_states_old = distributed.gather_rows(
                    training.encode_targets(model, targets, grad=False)
                )
            training.refresh_targets(model, targets_all, target_states_old)  # (B, D), every process
            prompt_ids, prompt_mask = training.prompt_batch(model, rows)  # (B/W, P)
            seeds = (
                training.rollout_seeds(cfg.seed, step, range(mine.start, mine.stop), G)
                if cfg.row_seeds
                else None
            )
            if llm is None:  # 2. G reasonings per user, ids kept
                need = prompt_ids.shape[1] + cfg.max_completion_length + 1
                engine = decoders.get(model.lm, len(rows) * G, need) if static else None  # current weights
                roll = generate_reasoning(
                    model.lm, prompt_ids, prompt_mask, generator=gen, row_seeds=seeds, engine=engine,
                    **sampling,
                )  # fmt: skip
            else:  # vLLM gets the weights of the last optimiser step; row i of step s draws with vLLM seed
                # seed * 2**32 + s*B*G + i (no two (seed, step, row) share one below 2**32 rows), or its
                # row seed (row_seeds=true)
                vllm_backend.sync_weights(llm, model.lm)
                roll = vllm_backend.generate_reasoning_vllm(
                    llm, model.lm, prompt_ids, prompt_mask, seed=cfg.seed * 2**32 + step * B * G,
                    row_seeds=seeds, **sampling,
                )  # fmt: skip
            with torch.no_grad():  # 3. reward against the full table, history masked
                scores = model.score(roll.user_states)  # (B/W*G, N)
                hist = training.history_mask(
                    model, rows["history"].tolist(), scores.shape[1], targets=targets
                )
                scores = scores.masked_fill(hist.repeat_interleave(G, 0), float("-inf"))  # target never
                tcol = training.target_columns(model, targets).repeat_interleave(G)  # (B/W*G,)
                rewards = recpo.fused_reward(
                    scores, tcol, beta=cfg.reward_beta, ndcg_k=cfg.ndcg_k, mode=cfg.reward_mode
                )
                ranks = rank_of_target(scores, tcol, ties="pessimistic")  # the reward's rank
                adv = recpo.group_advantages(rewards, G, cfg.advantage)  # 4. groups are local
                policy_args = (roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask,
                               cfg.temperature)  # fmt: skip
                ref_logps = reference.logps(*policy_args) if reference is not None else None
            pg_mask = recpo.sampled_token_mask(roll.completion_mask, roll.forced, cfg.train_forced_answer)
            n_tok_local = pg_mask.sum().float()
            n_tok = float(distributed.sum_over_processes(n_tok_local))  # tokens of the global batch
            loss_type, n_items = training.loss_normalisation(cfg.loss_type, n_tok, world)
            model.lm.train()
            old_logps = old_item = None
            ratio_means = []  # per epoch: exactly 1 in the first
            for _ in range(cfg.num_iterations):  # 5. PPO epochs over this rollout batch
                logps, states = training.policy_forward(model.lm, *policy_args)
                tstates = target_states_old  # (B, D): every process's targets are negatives
                if cfg.item_grad:
                    tstates = distributed.gather_rows_with_grad(
                        training.encode_targets(model, targets, grad=True)
                    )
                item_lp = recpo.in_batch_item_logps(
                    distributed.gather_rows_with_grad(states), tstates, G, model.config.temperature,
                    targets=targets_all,
                )[mine_rows]  # fmt: skip  # (B/W*G,): the softmax runs over all B targets
                if old_logps is None:  # epoch 1: the behaviour policy's log-probs, the ratio exactly 1
                    old_logps, old_item = logps.detach(), item_lp.detach()
                loss, st = recpo.recpo_loss(
                    logps, old_logps, adv, pg_mask, item_lp, old_item, group_size=G,
                    epsilon=cfg.epsilon, epsilon_high=eps_high, loss_type=loss_type,
                    max_completion_length=cfg.max_completion_length, num_items_in_batch=n_items,
                    beta_kl=cfg.beta_kl, ref_logps=ref_logps, item_weight=cfg.item_weight,
                )  # fmt: skip
                if distributed.any_process(not bool(torch.isfinite(loss)), model.device):
                    raise FloatingPointError(f"step {step}: non-finite loss on some process")
                acc.backward(loss)
                if not deepspeed:
                    distributed.average_gradients(params + id_params)
                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)  # LoRA only, as in train_allpos
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if id_opt is not None:  # only the batch targets' rows have a gradient
                    id_opt.step()
                    id_opt.zero_grad(set_to_none=True)
                ratio_means.append(st.ratio_mean)
            if id_opt is not None:  # the table follows the targets' new ID vectors at once
                with torch.no_grad():
                    fresh = distributed.gather_rows(training.encode_targets(model, targets, grad=False))
                training.refresh_targets(model, targets_all, fresh)
            with torch.no_grad():  # global statistics: per-row values gathered, sums reduced
                ndcg = recpo.fused_reward(scores, tcol, beta=0.0, ndcg_k=cfg.ndcg_k)
                per_row = distributed.gather_rows(torch.stack([
                    rewards, ndcg, ranks.float(), roll.completion_mask.sum(1).float(), roll.forced.float()
                ], 1))  # fmt: skip  # (B*G, 5)
                sums = distributed.sum_over_processes(torch.stack([
                    loss.detach(), st.policy_loss, st.item_loss, st.item_loss_share,
                    st.clip_fraction * n_tok_local, st.ratio_mean * n_tok_local, st.kl * n_tok_local,
                    ratio_means[0] * n_tok_local,
                ]).float())  # fmt: skip
            r_all = per_row[:, 0]
            dt = time.time() - t_step
            zero_std = (r_all.view(-1, G).std(1) == 0).float().mean().item() if G > 1 else 1.0
            rec = {
                "step": step + 1,
                "train/reward_mean": r_all.mean().item(),
                "train/reward_std": r_all.std().item() if r_all.numel() > 1 else 0.0,
                "train/ndcg": per_row[:, 1].mean().item(),
                "train/rank_median": per_row[:, 2].median().item(),
                "train/zero_std_groups": zero_std,
                "train/clip_fraction": sums[4].item() / max(n_tok, 1.0),
                "train/ratio_mean": sums[5].item() / max(n_tok, 1.0),  # the last epoch's
                "train/ratio_mean_first": sums[7].item() / max(n_tok, 1.0),
                "train/kl": sums[6].item() / max(n_tok, 1.0),
                "train/item_loss_share": sums[3].item() / world,  # mean over processes
                "train/loss": sums[0].item() / world,  # = the one-process loss (loss_normalisation)
                "train/policy_loss": sums[1].item() / world,
                "train/item_loss": sums[2].item() / world,
                "train/reasoning_len": per_row[:, 3].mean().item(),
                "train/forced_answer": per_row[:, 4].mean().item(),
                "train/grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                "train/lr": sched.get_last_lr()[0],
                "train/tokens_per_s": per_row[:, 3].sum().item() / dt,
                "train/step_s": dt,
                "train/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
            history.append(rec)
            if acc.is_main_process and (step + 1) % cfg.log_every == 0:
                log_lines.append(json.dumps(rec) + "\n")
                atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step" and math.isfinite(v):
                            writer.add_scalar(k, v, step + 1)
                acc.print(
                    f"step {step + 1}/{cfg.steps} reward {rec['train/reward_mean']:.4f} "
                    f"ndcg {rec['train/ndcg']:.4f} clip {rec['train/clip_fraction']:.3f} "
                    f"rss {rec['train/peak_rss_gib']:.1f}G "
                    f"len {rec['train/reasoning_len']:.0f} {dt:.1f}s"
                )
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                mid, _ = run_eval(model, valid_df, cfg)  # valid: test is touched before and after only
                if acc.is_main_process:
                    evals = {f"valid/{k}": v for k, v in mid.items() if isinstance(v, float)}
                    log_lines.append(json.dumps({"step": step + 1, **evals}) + "\n")
                    atomic_files.atomic_write_text(out / "metrics.jsonl", "".join(log_lines))
            if training.out_of_time(t_train, cfg.max_train_minutes, model.device):
                done, timed_out = step + 1, step + 1 < cfg.steps
                if timed_out:
                    acc.print(f"max_train_minutes={cfg.max_train_minutes} reached after step {done}")
                    break
            stop = distributed.any_process(sigterm(), model.device)
            if stop and deepspeed:
                acc.print(f"SIGTERM: stopping after step {step + 1} (no checkpoint under DeepSpeed)")
                return {"stopped_at": step + 1, "history": history}
            if stop or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                where = checkpoint.save_from_every_process(
                    out, step + 1, model=model, optimizer=opt, scheduler=sched, generator=gen,
                    extra={"before": before}, keep=cfg.keep_checkpoints,
                )  # fmt: skip
                if stop:
                    if writer is not None:
                        writer.close()
                    acc.print(
                        f"SIGTERM: saved {where} after step {step + 1}; resume with resume_from={where}"
                    )
                    return {"stopped_at": step + 1, "checkpoint": str(where), "history": history}

    train_s = time.time() - t0
    after, after_rows = run_eval(model, eval_df, cfg)
    acc.print(f"eval after: ndcg@10={after['ndcg@10']:.4f} hit@10={after['hit@10']:.4f}")
    result = {"before": before, "after": after, "steps": done, "stopped_by_time": timed_out,
              "resumed_from": start or None,
              "wall_s": time.time() - t0, "train_and_eval_s": train_s, "config": to_dict(cfg)}  # fmt: skip
    if acc.is_main_process:
        with atomic_files.atomic_folder(out / "final") as tmp:
            model.save_pretrained(tmp)
        atomic_files.atomic_write_json(out / "result.json", result)
        atomic_files.atomic_write_text(
            out / "per_user_after.jsonl", "".join(json.dumps(r) + "\n" for r in after_rows)
        )
        if writer is not None:
            writer.close()
    result["history"] = history
    result["examples"] = after_rows
    return result


if __name__ == "__main__":
    main()
