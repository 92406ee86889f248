"""GRU4Rec: a GRU over the item history (Hidasi et al., ICLR 2016), in its RecBole-style full-CE form.

Letters: B samples, L history length (<= ``max_len``), N catalog items, D hidden size.

Input histories are left-padded with 0 (the padding id; item ids are 1-based) like SASRec's. The GRU
reads only the real items: rows are left-aligned and packed, so padding never enters the recurrence
(a GRU's biases would otherwise move the state on a zero input). An empty history reads one padding
step (a zero vector), which gives one learned "no history" state.

Where we depart from the paper, and where the defaults come from:

* Loss: softmax cross-entropy over all N items on each (history -> target) sample, as RecBole's
  ``loss_type: CE``; not the paper's session-parallel mini-batches with TOP1/BPR over in-batch
  negatives.
* Output: the last hidden state dotted with the tied input embedding (the paper has a separate output
  layer). Tying needs the embedding and hidden sizes equal, so one ``hidden_size`` sets both.
* ``hidden_size=64`` (RecBole's embedding size; its GRU is 128 with a projection back to 64),
  ``num_layers=1`` (paper and RecBole), ``dropout=0.3`` on the input embeddings (RecBole's
  ``dropout_prob``); ``max_len=20`` is the project's history window (longer histories are cut to their
  most recent items before they reach the model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence


class GRU4Rec(nn.Module):
    """GRU sequential recommender with a tied item embedding.

    Args:
        num_items: N, the catalog size (ids 1..N; 0 is padding).
        max_len: longest history read; longer inputs raise. Default 20, the project's window.
        hidden_size: D, embedding and GRU state size. Default 64 (RecBole's embedding size).
        num_layers: stacked GRU layers. Default 1 (paper, RecBole).
        dropout: on the input embeddings, and between GRU layers when there are several. Default 0.3
            (RecBole).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 20,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, mean=0.0, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

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
        n_real = (history != 0).sum(1)  # (B,)
        # Rotate each row left by its padding count: real items first, padding after.
        cols = (torch.arange(length, device=history.device)[None] + (length - n_real)[:, None]) % length
        aligned = history.gather(1, cols)  # (B, L)
        x = self.drop(self.item_emb(aligned))  # (B, L, D)
        lengths = n_real.clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)  # (layers, B, D)
        return h_n[-1] @ self.item_emb.weight[1:].T  # (B, N)
