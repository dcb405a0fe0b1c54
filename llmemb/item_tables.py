"""Item-embedding layers built from LLM vectors (RAT and its ablations).

`AdaptedItemEmbedding` is LLMEmb's layer: a PCA-reduced LLM table, frozen by
default, followed by the trainable adapter. Row 0 (padding) of the source table
is zero, and the output row 0 is forced to zero too so padding never scores.
"""
from __future__ import annotations

import torch
from torch import nn

from llmemb.backbones.base import ItemEmbedding


def with_padding_row(table: torch.Tensor) -> torch.Tensor:
    """[N, D] item rows -> [N+1, D] with a zero row 0 for padding."""
    return torch.cat([table.new_zeros(1, table.shape[1]), table], dim=0)


class AdaptedItemEmbedding(ItemEmbedding):
    """table = Adapter(source), source = PCA(E_llm) with a zero padding row.

    freeze=False is the "w/o freeze" ablation: the source table trains too.
    adapter=None is the "w/o adapter" ablation: the source (already of the
    backbone's size) is used directly.
    """

    def __init__(self, source: torch.Tensor, adapter: nn.Module | None, freeze: bool = True):
        super().__init__()
        if freeze:
            self.register_buffer("source", source.detach().clone().float())
        else:
            self.source = nn.Parameter(source.detach().clone().float())
        self.adapter = adapter
        self.dim = adapter(self.source[:1]).shape[1] if adapter is not None else source.shape[1]

    def table(self) -> torch.Tensor:
        out = self.adapter(self.source) if self.adapter is not None else self.source
        # Zero the padding row without an in-place write on a graph tensor.
        keep = torch.ones(out.shape[0], 1, dtype=out.dtype, device=out.device)
        keep[0] = 0
        return out * keep

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.source[ids]
        out = self.adapter(rows) if self.adapter is not None else rows
        return out * (ids != 0).unsqueeze(-1).to(out.dtype)
