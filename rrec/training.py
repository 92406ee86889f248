"""Building blocks the training recipes share: batches of samples, teacher-forced policy passes, item
states for a batch's targets, history masks, the KL reference policy, and the pieces that make W
processes train like one (per-row sampling seeds, loss normalisation, the sharded item table), and where
a resumed run restarts (its checkpoint and log). The loops live in ``recipes/``.

Letters: B users, G samples per user, P prompt tokens, T completion tokens, N items, D hidden, V vocab,
W processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from item_index import ItemIndex
from rrec import checkpoint, distributed
from rrec.backbone import final_hidden, is_peft
from rrec.evaluation import histories_of
from rrec.items import encode_token_lists
from rrec.rollout import left_pad


def sample_batches(
    samples: pd.DataFrame, batch_size: int, seed: int, start: int = 0
) -> Iterator[pd.DataFrame]:
    """Endless shuffled batches of sample rows; epoch e is shuffled with ``seed + e``.

    ``start`` skips that many batches (resuming a run at a data position).
    """
    if len(samples) < batch_size:
        raise ValueError(f"{len(samples)} samples cannot fill a batch of {batch_size}")
    per_epoch = len(samples) // batch_size
    epoch, pos = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng(seed + epoch).permutation(len(samples))
        for b in range(pos, per_epoch):
            yield samples.iloc[order[b * batch_size : (b + 1) * batch_size]].reset_index(drop=True)
        epoch, pos = epoch + 1, 0


def prompt_batch(model, rows: pd.DataFrame, reasoning: bool = True) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded user-prompt ids and mask for sample rows.

    Histories longer than the model's ``max_history`` are cut to their most recent items without a
    warning here: in training that is the configured behaviour, not a surprise.
    """
    times = [float(t) for t in rows["timestamp"].tolist()]
    ids = [p for p, _ in model.prompt_ids(histories_of(rows), times, reasoning)]  # prompt_ids never warns
    return left_pad(ids, model.pad_id, device=model.device)


def target_columns(model, targets: Sequence) -> Tensor:
    """(B,) column of each target in the item table."""
    cols = {iid: j for j, iid in enumerate(model.item_ids)}
    missing = [t for t in targets if str(t) not in cols]
    if missing:
        raise KeyError(f"targets not in the item table: {missing[:5]}")
    return torch.tensor([cols[str(t)] for t in targets], device=model.device)


def history_mask(model, histories: Sequence[Sequence], n_items: int, *, targets: Sequence) -> Tensor:
    """(B, N) True at each row's history items, never at its target's column.

    A target that also appears in the history stays unmasked: the reward ranks it like any target, the
    same rule as the evaluation (``rrec.metrics.rank_of_target`` never excludes the target).
    """
    if len(targets) != len(histories):
        raise ValueError(f"{len(targets)} targets for {len(histories)} histories")
    cols = {iid: j for j, iid in enumerate(model.item_ids)}
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool, device=model.device)
    for b, (h, t) in enumerate(zip(histories, targets, strict=True)):
        mask[b, [cols[str(i)] for i in h if str(i) in cols and str(i) != str(t)]] = True
    return mask


def encode_targets(model, targets: Sequence, grad: bool) -> Tensor:
    """(B, D) float32 table rows of the batch's targets (with the graph when ``grad``): the item states,
    normalised for cosine and, for a hybrid table, plus the targets' ID vectors (``model.table_rows``).
    With ``item_encoder="base"`` the states come from the base model (adapter off), without a graph."""
    recs = [model.catalog[str(t)] for t in targets]
    ids = model.item_prompt_ids(recs)
    base = model.config.item_encoder == "base" and is_peft(model.lm)
    with model.lm.disable_adapter() if base else contextlib.nullcontext():
        states = encode_token_lists(
            model.lm, ids, pad_id=model.pad_id, batch_size=len(ids), progress=False, grad=grad and not base
        )
    return model.table_rows([str(t) for t in targets], states)


def refresh_targets(model, targets: Sequence, states: Tensor) -> None:
    """Write fresh (B, D) target states into the item table (the per-step refresh of Algorithm 1)."""
    uniq: dict[str, int] = {}
    for j, t in enumerate(targets):
        uniq.setdefault(str(t), j)
    vecs = model._normalise(states.detach()[list(uniq.values())]).cpu().numpy()
    model.rec_head.replace(list(uniq), vecs)
    model.invalidate_table_cache()


def policy_forward(
    lm: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    chunk: int = 4,
) -> tuple[Tensor, Tensor]:
    """Teacher-forced pass over prompt + completion.

    Returns:
        ((B*G, T) float32 log-probs of the completion tokens under ``softmax(logits / temperature)``,
         (B*G, D) float32 final hidden state at each row's ``<answer>``, its last completion token).
    """
    ids = torch.cat([prompt_ids, completion_ids], 1)  # (B*G, P+T)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    hidden, _ = final_hidden(lm, ids, mask)  # (B*G, P+T, D)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    h = hidden[:, P - 1 : P + T - 1]  # (B*G, T, D): the state before each completion token
    head = lm.get_output_embeddings()
    logps = []
    for s in range(0, h.shape[0], chunk):  # bound the (rows, T, V) logits to ``chunk`` rows at a time
        logits = head(h[s : s + chunk]).float() / temperature  # (c, T, V)
        tok = completion_ids[s : s + chunk, :, None]
        logps.append(logits.gather(2, tok).squeeze(2) - torch.logsumexp(logits, dim=-1))
    answer_pos = P + completion_mask.sum(1) - 1  # (B*G,)
    states = hidden[torch.arange(ids.shape[0], device=ids.device), answer_pos].float()
    return torch.cat(logps) * completion_mask, states


class ReferencePolicy:
    """The frozen reference of the k3 KL term (``beta_kl`` > 0): log-probs under the starting policy.

    LoRA (a PEFT model): the adapter-disabled model, no copy (the base weights never train). Full
    fine-tuning: a frozen copy of the weights as they are at construction (``copy.deepcopy``, eval mode,
    no gradient; one more copy of the weights in memory). Build it once, before the first update and
    before loading a checkpoint, so a resumed run keeps the starting weights as its reference.
    """

    def __init__(self, lm: nn.Module):
        self.lm = lm
        self.frozen = None
        if not hasattr(lm, "disable_adapter"):  # PEFT's context manager; a plain HF model has none
            self.frozen = copy.deepcopy(lm).eval().requires_grad_(False)

    @torch.no_grad()
    def logps(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
        temperature: float = 1.0,
    ) -> Tensor:  # fmt: skip
        """(B*G, T) reference log-probs of the completion tokens (as :func:`policy_forward`'s)."""
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
        if self.frozen is not None:
            return policy_forward(self.frozen, *args)[0]
        was_training = self.lm.training
        self.lm.eval()
        try:
            with self.lm.disable_adapter():
                return policy_forward(self.lm, *args)[0]
        finally:
            self.lm.train(was_training)


def reference_policy(lm: nn.Module, beta_kl: float) -> ReferencePolicy | None:
    """The KL reference every recipe with ``beta_kl`` builds (the one shared guard): None when
    ``beta_kl`` is 0, else a :class:`ReferencePolicy` of ``lm`` (LoRA or full fine-tuning)."""
    if not beta_kl >= 0:
        raise ValueError(f"beta_kl must be >= 0, got {beta_kl}")
    return ReferencePolicy(lm) if beta_kl > 0 else None


def rollout_seeds(seed: int, step: int, users: Sequence[int], group_size: int) -> list[int]:
    """One sampling seed per rollout row (user-major), from (seed, step, global user index, g) alone.

    ``users`` are the rows' indices in the global batch, so a user draws the same reasoning whichever
    process holds it (``generate_reasoning(..., row_seeds=...)``).
    """
    out = []
    for u in users:
        for g in range(group_size):
            hi, lo = np.random.SeedSequence([seed, step, u, g]).generate_state(2)  # two uint32 words
            out.append((int(hi) << 31) ^ int(lo))  # < 2**63
    return out


def loss_normalisation(loss_type: str, global_tokens: float, world: int) -> tuple[str, float | None]:
    """``(loss_type, num_items_in_batch)`` to pass to ``recpo.recpo_loss`` on each of W processes, so that
    the mean of the W losses (what gradient averaging optimises) is the loss of one process holding the
    whole batch. Each process holds B/W users (equal slices):

    * ``grpo`` (mean over rows of per-row token means) and ``dr_grpo`` (sum / (rows * L)): means over
      rows, so the mean over processes of the local means is the global mean: unchanged.
    * ``dapo`` (sum / tokens of the global batch): ``num_items_in_batch`` = global tokens / W, since
      mean_r sum_r / (N / W) = sum / N (TRL divides by the process count the same way).
    * ``bnpo`` (token mean of the batch): the recipes take one optimiser step per rollout batch without
      accumulation, so the batch's token mean is dapo's sum / N; computed as dapo with the gathered
      count (a per-process token mean would weight processes, not tokens, equally).

    Example:
        >>> loss_normalisation("bnpo", 30, 2)  # 30 tokens in the global batch, 2 processes
        ('dapo', 15.0)
    """
    if loss_type in ("bnpo", "dapo"):
        return "dapo", float(global_tokens) / world
    return loss_type, None


def build_item_table(model, batch_size: int = 64) -> None:
    """Encode the whole catalog into a fresh flat ``model.rec_head``, each process a contiguous shard.

    Process r encodes items ``shard_bounds(N, r, W)``; the shards are gathered in catalog order, so every
    process ends with the same (N, D) table. One process: the same table as ``model.build_item_table``.
    """
    rank, world = distributed.rank_and_world()
    ids = list(model.catalog)
    if not ids:
        raise ValueError("the catalog is empty: nothing to encode")
    lo, hi = distributed.shard_bounds(len(ids), rank, world)
    if hi > lo:
        local = model.encode_items([model.catalog[i] for i in ids[lo:hi]], batch_size, progress=rank == 0)
    else:  # more processes than items
        local = torch.zeros(0, model.lm_head.weight.shape[1], device=model.device)
    vecs = model.table_rows(ids, distributed.gather_rows(local)).detach()  # (N, D)
    index = ItemIndex(vecs.shape[1], metric="ip")
    index.add(ids, vecs.cpu().numpy())
    model.rec_head = index
    model.invalidate_table_cache()


def resume_path(resume_from: str, out: Path) -> Path | None:
    """The checkpoint to resume from: a folder, the newest in ``out`` for "latest", or None."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = checkpoint.list_checkpoints(out)
        return found[-1] if found else None
    return Path(resume_from)


def kept_log(path: Path, last_step: int) -> list[str]:
    """Lines of a metrics.jsonl up to ``last_step`` (a resumed run redoes the later ones)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                lines.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return lines


def trainable_parameters(lm: nn.Module) -> list[nn.Parameter]:
    params = [p for p in lm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def out_of_time(started: float, max_minutes: float | None, device: torch.device) -> bool:
    """True on every process once any process has trained ``max_minutes`` since ``started``
    (``time.time()``); never with ``max_minutes=None``. Checked after a step: at least one step runs."""
    import time

    if max_minutes is None:
        return False
    return distributed.any_process(time.time() - started >= max_minutes * 60, device)
