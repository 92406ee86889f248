"""Tolerances for two float32 computations of one quantity whose sums run in another order.

Other batch shapes or padding widths, a KV cache against a full forward, a sum split over processes,
another kernel (AVX2 or AVX512 lanes, MKL or oneDNN blocking, thread count) all regroup the same sums,
so the results agree only up to float32 rounding, by an amount that changes with the machine: a bound
tuned on one CPU fails on another (a RecPO gradient measured 1.02e-5 of its scale against a fixed 1e-5
on an AVX512-BF16 EPYC). The bound used instead is derived from the computation:

    |a - b| <= k * eps32 * sqrt(n) * scale                                            (1)

- ``eps32`` = 2**-23 ~ 1.19e-7, the spacing of float32 at 1.
- ``n``: the number of terms of the sum the compared quantity accumulates (the contraction of the
  matmul that produces it: hidden or intermediate size for a hidden state, hidden size for logits; the
  tokens of the batch for a weight gradient; the vector dimension for an item score). Each addition
  rounds by at most eps32 / 2 of the running sum and the roundings are independent with mean ~0, so
  the sum's error grows like sqrt(n), not n (Higham & Mary 2019, probabilistic rounding error
  analysis): two orders of the same sum differ by ~ eps32 * sqrt(n) of the terms' magnitude.
- ``scale``: that magnitude, taken as max |reference| of the compared tensor (or a norm product
  where the terms cancel, as in an L2 distance).
- ``k``: how many rounded stages feed the quantity, times a margin of 2: ``K_FORWARD`` = 16 for one
  forward of a tiny model (embedding, 2 x (norm, attention, norm, MLP), final norm, head: 8 stages),
  ``K_STEP`` = 64 for a training step (that forward, its backward, a loss over the batch, an all-reduce
  or Adam's first update: about 4x as many).

Checked by running every comparison that uses these bounds on an AVX2 EPYC, as is and under other
kernels (``ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 OMP_NUM_THREADS=1``;
``ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=2``): the largest error needed k = 0.34
for a forward and k = 8.9 for a step (the merged weights of a like/dislike GRPO step; the RecPO gradient
of the AVX512-BF16 report needs k = 2.9). A real bug moves the compared values by far more: a decode
position off by one needs k = 2100 (user states against a teacher-forced pass); a token left out, padding
attended to or a gradient kept on one process move them by 1e-3 to 1 of their scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS32 = float(torch.finfo(torch.float32).eps)  # 2**-23
K_FORWARD = 16.0  # one forward pass: embeddings, 2 blocks (attention, MLP, 2 norms), final norm, head
K_STEP = 64.0  # forward, backward, a loss over the batch and an all-reduce or Adam's first update
# the longest sum of a tiny test model's forward (conftest.make_tiny_lm, hidden 32): attention over up to
# 128 keys (the MLP's down projection sums 64 terms, a logit 32)
N_TINY = 128


def f32_tol(n: int, scale: float, k: float = K_FORWARD) -> float:
    """k * eps32 * sqrt(n) * scale: the bound (1) of the module docstring."""
    return k * EPS32 * math.sqrt(n) * float(scale)


def _np(x) -> np.ndarray:
    """A tensor, array, list or number as a float64 array."""
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def max_abs(x) -> float:
    """max |x| of a tensor, array or list (0-size: 0)."""
    a = _np(x)
    return float(np.abs(a).max()) if a.size else 0.0


def assert_f32_close(actual, expected, n: int, k: float = K_FORWARD, scale: float | None = None, msg=""):
    """|actual - expected| <= f32_tol(n, scale, k) elementwise; scale defaults to max |expected|."""
    a, e = _np(actual), _np(expected)
    assert a.shape == e.shape, f"{msg} shapes {a.shape} != {e.shape}"
    tol = f32_tol(n, max_abs(e) if scale is None else scale, k)
    err = float(np.abs(a - e).max()) if a.size else 0.0
    assert err <= tol, f"{msg} max |diff| {err:.3g} > {tol:.3g} = {k:g} eps32 sqrt({n}) scale"
