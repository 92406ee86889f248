"""SASRec: a causal self-attention encoder over the item history (Kang & McAuley, ICDM 2018).

Letters: B samples, L history length (<= ``max_len``), N catalog items, D hidden size, H heads.

Input histories are **left-padded** with 0 (the padding id) so the most recent item is always the last
column and always gets the last positional embedding, as in the original code. Item ids are 1-based
(id ``i + 1`` is row ``i`` of the item table). The score of item ``i`` is the final hidden state at the
last position dotted with the (tied) input embedding of that item.

Where we depart from the paper, and where the defaults come from:

* Loss: softmax cross-entropy over **all** N items (RecBole's ``loss_type: CE``), not the paper's
  binary cross-entropy with one sampled negative; CE over the full catalog is what recent work uses
  and it is cheap at N of a few thousand.
* Training positions: the prepared data already holds one sample per prefix of each user's sequence,
  so :func:`rrec.baselines.train.train_sequential` trains on the last position of every sample only.
  That sees the same (history -> target) pairs as the paper's all-position training on whole
  sequences, with each history cut to the data's window rather than to the sequence start.
* ``num_layers=2`` (paper, Sec. 4); ``num_heads=2``, ``hidden_size=64``, ``inner_size=256`` and the
  normal(0, 0.02) initialisation follow RecBole's ``sasrec.yaml`` (the paper uses one head, d = 50);
  ``dropout=0.2`` is the paper's rate for the dense MovieLens-1M (0.5 for the sparse sets);
  ``max_len=20`` is this project's history window (the paper uses 200 for ML-1M, 50 otherwise).
* Blocks are pre-LayerNorm (as in the paper's code) with GELU in the feed-forward (RecBole) instead of
  ReLU, and dropout after the feed-forward but not between its two layers (RecBole; the paper drops
  after both); the item embedding is not scaled by sqrt(D).
* Only the last position is scored, so the last block computes that one query (against all keys): the
  same output as the full block's last row, at about half the cost on CPU.
* Each position attends causally to the real items up to itself; a padding position attends only to
  itself, so no attention row is empty (an all-masked softmax would give NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.GELU(),
            nn.Linear(inner_size, hidden_size),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """Run the block for the last Q query positions.

        Args:
            x: (B, L, D) inputs, all of them used as keys and values.
            allowed: (B, 1, Q, L) bool, True where query i (of the last Q positions) may attend to key j.

        Returns:
            (B, Q, D) outputs of the last Q positions.
        """
        b, length, d = x.shape
        n_query = allowed.shape[-2]
        heads = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)  # 3 x (B, L, D)
        q = q[:, length - n_query :]  # (B, Q, D)
        q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, ., D/H)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # (B, H, Q, D/H)
        x = x[:, length - n_query :] + self.drop(self.proj(att.transpose(1, 2).reshape(b, n_query, d)))
        return x + self.drop(self.ffn(self.norm2(x)))  # (B, Q, D)


class SASRec(nn.Module):
    """Self-attentive sequential recommender with a tied item embedding.

    Args:
        num_items: N, the catalog size (ids 1..N; 0 is padding).
        max_len: longest history read; longer inputs raise. Default 20, the project's window.
        hidden_size: D. Default 64 (RecBole).
        num_layers: transformer blocks. Default 2 (paper).
        num_heads: attention heads. Default 2 (RecBole).
        inner_size: feed-forward width. Default 256 (RecBole).
        dropout: on embeddings, attention weights and block outputs. Default 0.2 (paper, ML-1M).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 20,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(hidden_size, num_heads, inner_size, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.apply(_init_weights)

    def forward(self, history: Tensor) -> Tensor:
        """Scores of every item after each history.

        Args:
            history: (B, L) int64 1-based item ids, left-padded with 0, L <= ``max_len``.

        Returns:
            (B, N) float scores in item-table order (column i is item id i + 1).
        """
        length = history.shape[1]
        if length > self.max_len:
            raise ValueError(f"history of length {length} exceeds max_len {self.max_len}")
        positions = torch.arange(self.max_len - length, self.max_len, device=history.device)  # (L,)
        x = self.drop(self.item_emb(history) + self.pos_emb(positions)[None])  # (B, L, D)
        is_item = history != 0  # (B, L)
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()  # (L, L)
        eye = torch.eye(length, dtype=torch.bool, device=history.device)  # (L, L)
        allowed = (causal[None] & is_item[:, None, :]) | eye[None]  # (B, L, L), [b, query, key]
        for i, block in enumerate(self.blocks):
            # Only the most recent position is scored, so the last block computes that query alone.
            rows = allowed[:, None] if i < len(self.blocks) - 1 else allowed[:, None, -1:]  # (B, 1, Q, L)
            x = block(x, rows)
        last = self.norm(x[:, -1])  # (B, D): the most recent position
        return last @ self.item_emb.weight[1:].T  # (B, N)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
