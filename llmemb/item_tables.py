"""Item-embedding layers built from LLM vectors (RAT and its ablations).

`AdaptedItemEmbedding` is LLMEmb's layer: a PCA-reduced LLM table, frozen by
default, followed by the trainable adapter. Row 0 (padding) of the source table
is zero, and the output row 0 is forced to zero too so padding never scores.
"""
from __future__ import annotations

import torch
from torch import nn

from llmemb.backbones.base import ItemEmbedding
from llmemb.projection import Adapter


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

    def _adapt(self, rows: torch.Tensor) -> torch.Tensor:
        """The adapter over many rows at once, in its one-matrix form when it has one (training
        computes the whole table each step under full-softmax CE: the form is 2-3x fewer
        multiply-adds forward and backward, with the same parameters and gradients)."""
        if self.adapter is None:
            return rows
        if isinstance(self.adapter, Adapter):
            m, c = self.adapter.affine()
            return torch.addmm(c, rows, m)
        return self.adapter(rows)

    def table(self) -> torch.Tensor:
        out = self._adapt(self.source)
        # Zero the padding row without an in-place write on a graph tensor.
        keep = torch.ones(out.shape[0], 1, dtype=out.dtype, device=out.device)
        keep[0] = 0
        return out * keep

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.source[ids]
        out = self._adapt(rows.reshape(-1, rows.shape[-1])).reshape(*ids.shape, -1)
        return out * (ids != 0).unsqueeze(-1).to(out.dtype)


class HybridItemEmbedding(AdaptedItemEmbedding):
    """Beyond the paper (docs/METHOD.md): e_i = Adapter(PCA(E_llm))_i + r_i.

    `r` is a trainable per-item residual, zero at the start. Only items marked in
    `trained` (those with training interactions) carry one; for every other item
    (cold start, or added later through the API) r_i is exactly 0 and the vector is
    LLMEmb's. `residual_dropout` drops entries of r while training;
    `residual_item_drop` zeroes the whole r_i of each item with that probability in
    each training forward pass (no rescaling), so that the model also learns to rank
    items that have only their text path, as cold items do at test time. The weight
    decay on r is `residual_penalty`, added to the loss by the trainer.

    `text_residual` > 0 (an experiment, not served yet): a linear map g from the PCA source
    predicts a residual from text. Items without training interactions take g(x_i) instead of
    0, and in each training pass every trained item's r_i is replaced by g(x_i) with that
    probability (in the spirit of DropoutNet), so that g learns the residual a trained item
    would get. g starts at zero: at the first step the layer is Hybrid's.
    """

    trained: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, source: torch.Tensor, adapter: nn.Module, trained: torch.Tensor,
                 residual_dropout: float = 0.0, residual_item_drop: float = 0.0, text_residual: float = 0.0):
        super().__init__(source, adapter, freeze=True)
        if trained.shape != (source.shape[0],):
            raise ValueError(f"trained mask has shape {tuple(trained.shape)}, expected ({source.shape[0]},)")
        if not 0.0 <= residual_dropout < 1.0:
            raise ValueError(f"residual_dropout must be in [0, 1), got {residual_dropout}")
        mask = trained.detach().clone().bool()
        mask[0] = False
        self.register_buffer("trained", mask)
        if not 0.0 <= residual_item_drop < 1.0:
            raise ValueError(f"residual_item_drop must be in [0, 1), got {residual_item_drop}")
        self.residual = nn.Parameter(torch.zeros(source.shape[0], self.dim))
        self.residual_dropout = residual_dropout
        self.residual_item_drop = residual_item_drop
        if not 0.0 <= text_residual < 1.0:
            raise ValueError(f"text_residual must be in [0, 1), got {text_residual}")
        self.text_residual = text_residual
        self.residual_from_text: nn.Linear | None = None
        if text_residual > 0:
            self.residual_from_text = nn.Linear(source.shape[1], self.dim)
            nn.init.zeros_(self.residual_from_text.weight)
            nn.init.zeros_(self.residual_from_text.bias)

    def residual_rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        r = self.residual if ids is None else self.residual[ids]
        keep = self.trained if ids is None else self.trained[ids]
        if self.training and self.residual_item_drop > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.residual_item_drop)
        r = r * keep.unsqueeze(-1).to(r.dtype)
        if self.training and self.residual_dropout > 0:
            r = nn.functional.dropout(r, self.residual_dropout)
        if self.residual_from_text is not None:
            trained = self.trained if ids is None else self.trained[ids]
            real = (ids != 0) if ids is not None else torch.arange(len(trained), device=trained.device) > 0  # not padding
            predict = ~trained
            if self.training:
                predict = predict | (trained & (torch.rand(trained.shape, device=trained.device) < self.text_residual))
            predicted = self.residual_from_text(self.source if ids is None else self.source[ids])
            r = torch.where((predict & real).unsqueeze(-1), predicted, r)
        return r

    def adapted_table(self) -> torch.Tensor:
        """The LLMEmb part alone, Adapter(PCA(E_llm)), row 0 zero."""
        return super().table()

    def table(self) -> torch.Tensor:
        return super().table() + self.residual_rows()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) + self.residual_rows(ids)

    def residual_penalty(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of r over `ids` (the L2 weight decay on r, per batch item)."""
        r = self.residual[ids] * self.trained[ids].unsqueeze(-1).to(self.residual.dtype)
        return r.pow(2).sum(-1).mean()
