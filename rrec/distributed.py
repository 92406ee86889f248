"""Collectives for data-parallel recipes: who holds which rows, gathers, gradient averaging.

Every function works without ``torch.distributed`` (or with a single process) and is then a no-op: the
recipes run the same code on one process or many.

Letters: B rows of the global batch, W processes, r this process's rank, D feature size.

Layout: the global batch of B users is cut into W equal contiguous slices, process r holding rows
``[r B/W, (r+1) B/W)``; a user's G samples stay with the user. Losses that are means over the local
rows, averaged over processes (``average_gradients``), are then the mean over the global batch.

``gather_rows_with_grad`` is the differentiable all-gather of in-batch negatives: the forward
concatenates every process's rows (its own chunk is the local tensor itself), the backward sums the
incoming gradient over processes and returns this process's chunk. With losses averaged over W, that
gives each local row the gradient of the global loss, including the terms of other processes' users
that use it as a negative (a gather that only kept the local chunk's gradient would drop those terms).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """(r, W); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_slice(batch_size: int, rank: int, world: int) -> slice:
    """Rows of the global batch that process ``rank`` holds; the batch must split into equal slices.

    Example:
        >>> batch_slice(8, 1, 2)
        slice(4, 8, None)
    """
    if batch_size % world:
        raise ValueError(f"a batch of {batch_size} does not split into {world} equal slices")
    n = batch_size // world
    return slice(rank * n, (rank + 1) * n)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of a contiguous near-equal shard of n rows; the first ``n % W`` shards get one more.

    Example:
        >>> [shard_bounds(5, r, 2) for r in range(2)]
        [(0, 3), (3, 5)]
    """
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def gather_rows(x: Tensor) -> Tensor:
    """(n_r, ...) on each process -> (sum_r n_r, ...) in rank order, on every process; no gradient.

    Shards may differ in size (padded for the collective, then trimmed).
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    x = x.detach().contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(s) for s in sizes]
    width = max(counts)
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, world = rank_and_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        parts[rank] = x  # the local chunk is the local tensor (bitwise the same values)
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)  # (W n, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every process's loss terms that used our rows
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_rows_with_grad(x: Tensor) -> Tensor:
    """(n, ...) on each process (same n everywhere) -> (W n, ...) in rank order, differentiable.

    The backward returns to each process the sum over processes of the gradient of its own rows (see the
    module docstring). Identity on one process.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` on one process)."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def sum_over_processes(x: Tensor) -> Tensor:
    """A new tensor: the elementwise sum of ``x`` over processes (a copy of ``x`` on one process)."""
    out = x.detach().clone()
    if rank_and_world()[1] > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when ``flag`` is true on at least one (e.g. a SIGTERM seen by one)."""
    return bool(sum_over_processes(torch.tensor([float(flag)], device=device)).item() > 0)


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def _buckets(tensors: list[Tensor], max_numel: int) -> Iterable[list[Tensor]]:
    """Consecutive groups of same-dtype tensors with at most ``max_numel`` elements (one if larger)."""
    bucket: list[Tensor] = []
    numel = 0
    for t in tensors:
        if bucket and (numel + t.numel() > max_numel or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, numel = [], 0
        bucket.append(t)
        numel += t.numel()
    if bucket:
        yield bucket


def average_gradients(params: Iterable[torch.nn.Parameter], bucket_numel: int = 1 << 24) -> None:
    """Replace each ``p.grad`` by its mean over processes (DDP's averaging), in flat buckets.

    A parameter without a gradient counts as a zero gradient, as DDP does for unused parameters.
    """
    _, world = rank_and_world()
    if world == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params], bucket_numel):
        flat = torch.cat([g.reshape(-1) for g in bucket])  # (numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_parameters(params: Iterable[torch.nn.Parameter]) -> None:
    """Copy process 0's values into every process's ``params`` (DDP's start-of-training broadcast)."""
    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def start_run(out_dir: str | Path, config: dict, device: str = "auto") -> tuple[torch.device, bool]:
    """(this process's device, whether it is process 0) at the start of a recipe.

    Under ``accelerate launch`` it joins the process group (accelerate's ``PartialState``); process 0
    creates ``out_dir`` and writes ``config.json`` there (atomically). ``device`` other than auto wins.
    """
    from accelerate import PartialState

    from rrec.atomic_files import atomic_write_json

    state = PartialState()
    main = rank_and_world()[0] == 0
    if main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out_dir) / "config.json", config)
    return (state.device if device == "auto" else torch.device(device)), main
