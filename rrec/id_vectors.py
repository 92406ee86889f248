"""Learned per-item ID vectors: the ID half of the hybrid item table.

A hybrid table row is the model's text state of the item plus a learned vector of the item's id::

    row_i = normalise(normalise(text_i) + id_i)        (cosine; "dot" drops the outer normalise)

The ID vectors start at zero, so an untrained (or newly added) item is scored by its text alone; training
(the all-position loss, RecPO's item action) moves them. They can carry what text cannot: popularity and
co-occurrence. They follow catalog changes: ``add`` gives new ids a zero vector (text only), ``remove``
drops the removed ids' vectors. Saved as ``id_vectors.safetensors`` (the (N, D) weight) beside
``id_vectors.json`` (the ids in row order).

Letters: N items, D hidden.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_FILE = "id_vectors.safetensors"
IDS_FILE = "id_vectors.json"


class ItemIDVectors(nn.Module):
    """An (N, D) table of per-item vectors addressed by item id (``str``), zero-initialised."""

    def __init__(self, ids: Sequence[str], dim: int):
        super().__init__()
        self.ids: list[str] = [str(i) for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ItemIDVectors: duplicate item ids")
        self.row = {i: j for j, i in enumerate(self.ids)}
        self.weight = nn.Parameter(torch.zeros(len(self.ids), dim))

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def rows(self, ids: Sequence[str]) -> Tensor:
        """(len(ids), D) vectors; an id without a vector (never trained, e.g. added later) gives zeros."""
        idx = [self.row.get(str(i), -1) for i in ids]
        if not self.ids or not idx:
            return self.weight.new_zeros(len(idx), self.dim)
        known = torch.tensor([j >= 0 for j in idx], device=self.weight.device)
        picked = self.weight[torch.tensor([max(j, 0) for j in idx], device=self.weight.device)]
        return picked * known[:, None].to(picked.dtype)

    def forward(self, ids: Sequence[str]) -> Tensor:
        return self.rows(ids)

    @torch.no_grad()
    def add(self, ids: Sequence[str]) -> None:
        """New ids get zero vectors (scored by text alone until trained). Present ids are an error."""
        new = [str(i) for i in ids]
        dup = [i for i in new if i in self.row]
        if dup:
            raise ValueError(f"ItemIDVectors.add: ids already present: {dup[:5]}")
        extra = torch.zeros(len(new), self.dim, dtype=self.weight.dtype, device=self.weight.device)
        self._reset(self.ids + new, torch.cat([self.weight.detach(), extra]))

    def ensure(self, ids: Sequence[str]) -> None:
        """Add zero vectors for those of ``ids`` that have none (present ids are kept as they are)."""
        missing = [str(i) for i in ids if str(i) not in self.row]
        if missing:
            self.add(missing)

    @torch.no_grad()
    def remove(self, ids: Sequence[str]) -> None:
        """Drop the vectors of ``ids`` (absent ids are ignored: they never had one)."""
        gone = {str(i) for i in ids}
        keep = [j for j, i in enumerate(self.ids) if i not in gone]
        self._reset([self.ids[j] for j in keep], self.weight.detach()[keep].clone())

    def _reset(self, ids: list[str], weight: Tensor) -> None:
        self.ids = ids
        self.row = {i: j for j, i in enumerate(ids)}
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.detach().float().cpu().contiguous()}, str(d / WEIGHTS_FILE))
        (d / IDS_FILE).write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, directory: str | Path) -> ItemIDVectors:
        from safetensors.torch import load_file

        d = Path(directory)
        ids = json.loads((d / IDS_FILE).read_text())
        weight = load_file(str(d / WEIGHTS_FILE))["weight"]
        if weight.shape[0] != len(ids):
            raise ValueError(f"{d}: {weight.shape[0]} ID vectors for {len(ids)} ids")
        out = cls(ids, weight.shape[1])
        with torch.no_grad():
            out.weight.copy_(weight)
        return out

    @staticmethod
    def exists(directory: str | Path) -> bool:
        return (Path(directory) / WEIGHTS_FILE).exists()


def hybrid_rows(text_rows: Tensor, id_rows: Tensor | None, cosine: bool = True) -> Tensor:
    """(N, D) table rows from (N, D) text states and optional (N, D) ID vectors (see the module doc).

    Example:
        >>> hybrid_rows(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.4, -0.8]]))  # (0.6, 0.8) + (0.4, -0.8)
        tensor([[1., 0.]])
    """
    t = nn.functional.normalize(text_rows.float(), dim=-1) if cosine else text_rows.float()
    if id_rows is None:
        return t
    h = t + id_rows.float()
    return nn.functional.normalize(h, dim=-1) if cosine else h
