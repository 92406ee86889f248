"""Which decoder writes the reasoning, and a small pool of static decoders for the batch shapes in use.

``engine`` (``ReasoningRecommender(rollout_engine=...)``, ``reason(engine=...)``, RecPO's
``rollout_engine``) is one of:

* ``"auto"`` (default): ``rrec.engine.StaticDecoder`` with CUDA-graph decode when the model sits on a
  CUDA device and its architecture is supported (``rrec.engine.supported``); else the HF forward (the
  CPU path, and any other architecture);
* ``"static"``: the static decoder wherever the model is (no CUDA graphs off CUDA); an unsupported
  architecture is a ``ValueError``;
* ``"hf"``: the HF forward with a dynamic cache.

Both decoders compute the same thing (greedy output token for token equal, tested on CPU); the static one
exists for speed. A static decoder is sized for a fixed number of rows and cache slots (a CUDA graph is
captured for one shape), so :class:`DecoderPool` keeps one per row count, its slots rounded up to a
multiple of ``slot_step``, all sharing one weight snapshot, which ``get`` refreshes on every call (the
LoRA deltas change at each optimiser step; unmerged weights are referenced, not copied).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import nn

from rrec.engine import StaticDecoder, supported

ENGINES = ("auto", "hf", "static")


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a ``ValueError`` naming the choices."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def use_static(engine: str, lm: nn.Module, device: torch.device) -> bool:
    """Whether ``engine`` means the static decoder for ``lm`` on ``device`` (see the module docstring)."""
    check_engine(engine)
    if engine == "hf":
        return False
    why = supported(lm)
    if engine == "static":
        if why is not None:
            raise ValueError(f"engine='static' cannot run this model: {why}; use 'auto' or 'hf'")
        return True
    return device.type == "cuda" and why is None


class DecoderPool:
    """Static decoders by row count, at most ``max_engines`` (least recently used dropped first).

    Args:
        engine: what :meth:`for_rollout` decides with (``auto`` | ``static`` | ``hf``).
        max_engines: how many batch shapes to keep (each holds its own KV cache and CUDA graph).
        slot_step: cache slots are rounded up to a multiple of this, so prompts of similar length share
            an engine (and its graph).
    """

    def __init__(self, engine: str = "auto", max_engines: int = 4, slot_step: int = 64) -> None:
        if max_engines < 1 or slot_step < 1:
            raise ValueError("max_engines and slot_step must be >= 1")
        self.engine = check_engine(engine)
        self.max_engines, self.slot_step = max_engines, slot_step
        self.engines: OrderedDict[int, StaticDecoder] = OrderedDict()
        self._model: weakref.ref | None = None  # the module the snapshot was taken from

    def clear(self) -> None:
        self.engines.clear()

    def for_rollout(self, lm: nn.Module, rows: int, need: int) -> StaticDecoder | None:
        """:meth:`get` when the pool's ``engine`` means the static decoder for ``lm``, else None (the HF
        forward), as ``rrec.rollout.generate_reasoning``'s ``engine`` argument expects."""
        if not use_static(self.engine, lm, lm.get_input_embeddings().weight.device):
            return None
        return self.get(lm, rows, need)

    def get(self, lm: nn.Module, rows: int, need: int) -> StaticDecoder:
        """An engine of ``rows`` rows and >= ``need`` slots holding ``lm``'s current weights."""
        emb = lm.get_input_embeddings().weight
        first = next(iter(self.engines.values()), None)
        same = self._model is not None and self._model() is lm
        if first is not None and (not same or first.device != emb.device or first.dtype != emb.dtype):
            self.clear()  # another model, or this one moved / changed dtype: every snapshot is stale
        self._model = weakref.ref(lm)
        engine = self.engines.get(rows)
        if engine is None or engine.max_len < need:
            size = -(-need // self.slot_step) * self.slot_step
            others = [e for r, e in self.engines.items() if r != rows]
            engine = StaticDecoder(
                lm,
                rows=rows,
                max_len=size,
                cuda_graph=emb.device.type == "cuda",
                share_weights=others[0] if others else None,
            )
            self.engines[rows] = engine
            while len(self.engines) > self.max_engines:
                self.engines.popitem(last=False)
        self.engines.move_to_end(rows)
        engine.load(lm)  # in place: every engine of the pool sees the refreshed weights
        return engine
