"""A static-KV-cache decoder for Llama-family models, the fast path of ``rrec.rollout``.

HF ``generate`` spends most of a decode step in Python and kernel launches (the reason RL rollouts are
slow without vLLM); transformers' own static cache + ``torch.compile(mode="reduce-overhead")`` fails in
5.17. This module runs the decoder itself, as plain tensor code over a snapshot of the model's weights
(LoRA deltas merged in), with a KV cache preallocated for ``rows x max_len``: one decode step is a fixed
sequence of kernels on fixed buffers, so on CUDA it is captured once into a CUDA graph and replayed.

Supported: ``model_type`` llama, mistral (sequences within its sliding window), qwen2 (q/k/v biases), with
SiLU MLPs and RMSNorm; linear biases are applied wherever the checkpoint has them (SmolLM2 is a Llama).
Others: :func:`supported` says why not, and ``rrec.rollout`` keeps the HF path. Semantics equal the HF
forward (tested token for token against ``final_hidden`` on CPU, float32): left-padded prompts, positions
from the attention mask, padded keys never attended to.

Letters: n rows, P prompt tokens, L = max_len cache slots, H query heads, K key/value heads, E head
dim, D hidden.

CUDA graphs: the first decode step of an engine is run both eagerly and through the freshly captured
graph; when the two hidden states differ by more than a dtype tolerance (``GRAPH_RTOL``), the engine
warns (``GraphMismatchWarning``) and decodes eagerly from then on, so a wrong capture costs speed, never
results. Status: the static cache is tested on CPU, the check's fallback on CPU through a stand-in
graph; the real capture runs only on CUDA (``gpu`` tests), which no session of this project has had yet.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrec.backbone import position_ids_from_mask

SUPPORTED = ("llama", "mistral", "qwen2")
# relative L2 error allowed between the graph's and the eager first step (the graph attends over all
# max_len slots with a mask, eager over the filled ones only: same math, other reduction lengths)
GRAPH_RTOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


class GraphMismatchWarning(UserWarning):
    """The CUDA-graph decode step disagreed with the eager one; the engine decodes eagerly instead."""


def _base(lm: nn.Module) -> nn.Module:
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def supported(lm: nn.Module) -> str | None:
    """None when the engine can run ``lm``, else the reason it cannot."""
    cfg = _base(lm).config
    if cfg.model_type not in SUPPORTED:
        return f"model_type {cfg.model_type!r} is not one of {SUPPORTED}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (only silu)"
    return None


def effective_weight(linear: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a linear layer as the forward uses it: a PEFT LoRA layer's active deltas added."""
    if not hasattr(linear, "base_layer"):
        return linear.weight, linear.bias
    base = linear.base_layer
    w = base.weight
    if not getattr(linear, "merged", False) and not getattr(linear, "disable_adapters", False):
        for name in linear.active_adapters:
            if name in linear.lora_A:
                w = w + linear.get_delta_weight(name).to(w.dtype)
    return w, base.bias


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # as HF's LlamaRMSNorm: normalise in float32, cast back, then scale
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class StaticDecoder:
    """Weights snapshot + static KV cache for ``rows`` sequences of up to ``max_len`` tokens.

    Use: ``prefill(ids, mask, repeat=G)`` once per batch, then ``decode(tokens, positions, valid)`` per
    step; both return the final normed hidden state (what the LM head reads), like
    ``rrec.backbone.final_hidden``. After an optimiser step, call ``load(lm)`` to refresh the snapshot (in
    place: a captured graph stays valid).
    """

    def __init__(
        self,
        lm: nn.Module,
        rows: int,
        max_len: int,
        *,
        cuda_graph: bool = False,
        share_weights: StaticDecoder | None = None,
    ):
        """``share_weights``: another engine of the same model whose weight snapshot this one uses (one
        merged copy for several batch shapes; ``load`` on either refreshes both)."""
        why = supported(lm)
        if why is not None:
            raise ValueError(f"the static decoder cannot run this model: {why}")
        base = _base(lm)
        cfg = base.config
        window = getattr(cfg, "sliding_window", None)
        if window and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral") and max_len > window:
            raise ValueError(
                f"max_len {max_len} exceeds the sliding window ({window}), which is not implemented"
            )
        self.eps = cfg.rms_norm_eps
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.E = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.scaling = self.E**-0.5
        self.rows, self.max_len = rows, max_len
        emb = base.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype
        rot = base.model.rotary_emb
        self.inv_freq = rot.inv_freq.float().to(self.device)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        n_layers = len(base.model.layers)
        shape = (rows, self.K, max_len, self.E)
        self.k_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_layers)]
        self.v_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_layers)]
        self.valid = torch.zeros(rows, max_len, dtype=torch.bool, device=self.device)  # (n, L) keys
        self.length = 0  # filled slots
        self.weights: dict[str, Tensor | None] = {}
        self._graph = None
        if share_weights is not None:
            self.weights, self.n_layers = share_weights.weights, share_weights.n_layers
        else:
            self.load(lm)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._io: dict[str, Tensor] = {}

    @torch.no_grad()
    def load(self, lm: nn.Module) -> None:
        """Snapshot the current weights (LoRA merged); in place after the first call."""
        base = _base(lm)
        new: dict[str, Tensor | None] = {
            "embed": base.get_input_embeddings().weight,
            "norm": base.model.norm.weight,
            "head": base.get_output_embeddings().weight,
        }
        for i, layer in enumerate(base.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            new[f"{i}.in_norm"] = layer.input_layernorm.weight
            new[f"{i}.post_norm"] = layer.post_attention_layernorm.weight
            mods = {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "o": att.o_proj,
                    "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}  # fmt: skip
            for name, mod in mods.items():
                new[f"{i}.{name}"], new[f"{i}.{name}.bias"] = effective_weight(mod)
        for key, value in new.items():
            computed = value is not None and not isinstance(value, nn.Parameter)  # a merged LoRA weight
            value = None if value is None else value.detach()
            old = self.weights.get(key)
            if old is None or value is None or old.data_ptr() == value.data_ptr():
                self.weights[key] = value  # plain parameters are referenced, not copied
            elif computed:
                old.copy_(value)  # our merged copy, refreshed in place: a captured graph stays valid
            else:  # a referenced parameter was replaced (never write into it): re-reference, recapture
                self.weights[key] = value
                self._graph = None
        self.n_layers = len(base.model.layers)

    def _linear(self, x: Tensor, name: str) -> Tensor:
        return F.linear(x, self.weights[name], self.weights.get(f"{name}.bias"))

    def _layers(self, h: Tensor, pos: Tensor, write: Tensor, keys: int, mask: Tensor) -> Tensor:
        """h (n, S, D) at positions pos (n, S); K/V written at slots ``write`` (S,); attention over the
        first ``keys`` slots with ``mask`` (n, 1, S, keys) bool. Returns the final normed (n, S, D)."""
        n, S, _ = h.shape
        freqs = pos[..., None].float() * self.inv_freq  # (n, S, E/2)
        emb = torch.cat([freqs, freqs], -1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]  # (n, 1, S, E)
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        for i in range(self.n_layers):
            x = _rms(h, self.weights[f"{i}.in_norm"], self.eps)
            q = self._linear(x, f"{i}.q").view(n, S, self.H, self.E).transpose(1, 2)  # (n, H, S, E)
            k = self._linear(x, f"{i}.k").view(n, S, self.K, self.E).transpose(1, 2)  # (n, K, S, E)
            v = self._linear(x, f"{i}.v").view(n, S, self.K, self.E).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.k_cache[i].index_copy_(2, write, k)
            self.v_cache[i].index_copy_(2, write, v)
            kk, vv = self.k_cache[i][:, :, :keys], self.v_cache[i][:, :, :keys]  # (n, K, keys, E)
            if self.K != self.H:
                kk = kk.repeat_interleave(self.H // self.K, 1)  # (n, H, keys, E)
                vv = vv.repeat_interleave(self.H // self.K, 1)
            a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=self.scaling)  # (n, H, S, E)
            h = h + self._linear(a.transpose(1, 2).reshape(n, S, self.H * self.E), f"{i}.o")
            x = _rms(h, self.weights[f"{i}.post_norm"], self.eps)
            h = h + self._linear(
                F.silu(self._linear(x, f"{i}.gate")) * self._linear(x, f"{i}.up"), f"{i}.down"
            )
        return _rms(h, self.weights["norm"], self.eps)

    @torch.no_grad()
    def prefill(self, ids: Tensor, mask: Tensor, repeat: int = 1) -> Tensor:
        """Run left-padded prompts (B, P), fill slots [0, P), repeat each row ``repeat`` times.

        Returns (B*repeat, D): the final normed hidden state at each prompt's last token."""
        B, P = ids.shape
        if B * repeat != self.rows or self.max_len <= P:
            raise ValueError(
                f"engine holds {self.rows} rows x {self.max_len} slots; got {B}x{repeat} rows, {P} tokens"
            )
        pos = position_ids_from_mask(mask)  # (B, P)
        keep = mask.bool()
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # padded keys masked; a padded query attends to itself only (no all-masked row, no NaN)
        attn = (causal & keep[:, None, :]) | torch.eye(P, dtype=torch.bool, device=ids.device)  # (B, P, P)
        h = F.embedding(ids, self.weights["embed"])  # (B, P, D)
        slots = torch.arange(P, device=ids.device)
        if repeat > 1:  # prefill into the first B rows of the cache, then spread the rows
            out = self._prefill_rows(h, pos, slots, attn, B)
            for c in (*self.k_cache, *self.v_cache):
                c[:, :, :P] = c[:B, :, :P].repeat_interleave(repeat, 0)
            out = out.repeat_interleave(repeat, 0)
        else:
            out = self._prefill_rows(h, pos, slots, attn, B)
        self.valid.zero_()
        self.valid[:, :P] = keep.repeat_interleave(repeat, 0)
        self.length = P
        return out[:, -1]

    def _prefill_rows(self, h: Tensor, pos: Tensor, slots: Tensor, attn: Tensor, B: int) -> Tensor:
        full_k, full_v = self.k_cache, self.v_cache
        self.k_cache = [c[:B] for c in full_k]  # views: writes land in the first B rows
        self.v_cache = [c[:B] for c in full_v]
        try:
            return self._layers(h, pos, slots, h.shape[1], attn[:, None])
        finally:
            self.k_cache, self.v_cache = full_k, full_v

    @torch.no_grad()
    def decode(self, tokens: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        """Feed one token per row: tokens (n,), positions (n,), valid (n,) bool (False: a finished
        row's padding, never attended to later). Returns (n, D)."""
        if self.length >= self.max_len:
            raise ValueError(f"the cache is full ({self.max_len} slots)")
        slot = self.length
        self.valid[:, slot] = valid
        self.length += 1
        if not self.cuda_graph:
            return self._eager(tokens, positions, slot)
        if self._graph is not None:
            return self._replay(tokens, positions, slot).clone()
        ref = self._eager(tokens, positions, slot)  # the check: same step, eagerly (writes the same K/V)
        got = self._replay(tokens, positions, slot).clone()  # captures, then replays
        err = ((got.float() - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1).clamp_min(1e-6)).max()
        if not bool(err <= GRAPH_RTOL.get(self.dtype, 2e-2)):
            warnings.warn(
                f"CUDA-graph decode differs from eager decode (relative error {float(err):.3g}): "
                "decoding eagerly instead",
                GraphMismatchWarning,
                stacklevel=2,
            )
            self.cuda_graph, self._graph = False, None
            return ref
        return got

    def _eager(self, tokens: Tensor, positions: Tensor, slot: int) -> Tensor:
        # the new token always sees itself, like HF's mask (its own key is valid for the query)
        mask = self.valid[:, : slot + 1].clone()
        mask[:, slot] = True
        write = torch.tensor([slot], device=self.device)
        h = F.embedding(tokens[:, None], self.weights["embed"])  # (n, 1, D)
        return self._layers(h, positions[:, None], write, slot + 1, mask[:, None, None])[:, 0]

    def _step_static(self) -> None:
        io = self._io
        mask = io["valid"].clone()
        mask.scatter_(1, io["write"].expand(self.rows)[:, None], True)
        h = F.embedding(io["tokens"][:, None], self.weights["embed"])
        io["out"].copy_(
            self._layers(h, io["pos"][:, None], io["write"], self.max_len, mask[:, None, None])[:, 0]
        )

    def _replay(self, tokens: Tensor, positions: Tensor, slot: int) -> Tensor:
        if self._graph is None:  # capture once; later calls only refill the input buffers
            D = self.weights["embed"].shape[1]
            self._io = {
                "tokens": torch.zeros(self.rows, dtype=torch.long, device=self.device),
                "pos": torch.zeros(self.rows, dtype=torch.long, device=self.device),
                "write": torch.zeros(1, dtype=torch.long, device=self.device),
                "valid": self.valid,
                "out": torch.zeros(self.rows, D, dtype=self.dtype, device=self.device),
            }
            saved = [c.clone() for c in (*self.k_cache, *self.v_cache)]
            self._io["write"].fill_(self.max_len - 1)  # warm-up writes land in the last slot, restored below
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step_static()
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._step_static()
            for c, s in zip((*self.k_cache, *self.v_cache), saved, strict=True):
                c.copy_(s)
        self._io["tokens"].copy_(tokens)
        self._io["pos"].copy_(positions)
        self._io["write"].fill_(slot)
        self._graph.replay()
        return self._io["out"]
