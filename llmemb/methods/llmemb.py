"""LLMEmb's layer and the paper's ablations of it.

    llmemb      frozen PCA(E_scft) -> trainable adapter; loss L_SRS + alpha L_align
    wo_scft     the same on the base LLM's vectors
    wo_adapter  PCA straight to the backbone's width, no adapter
    wo_freeze   the PCA table trains too
    wo_align    alpha = 0 (no alignment with the ID model)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemb.backbones.base import ItemEmbedding
from llmemb.item_tables import AdaptedItemEmbedding
from llmemb.methods.base import Method
from llmemb.methods.reduction import pca_source, reduce_table
from llmemb.methods.settings import RATConfig
from llmemb.projection import PCA, Adapter, default_n_components


def adapter_parts(table: torch.Tensor, d: int, fit_rows: np.ndarray | None,
                  rat: RATConfig) -> tuple[torch.Tensor, Adapter, PCA]:
    """What an adapter layer is built from: its frozen source, the table's PCA to rat.d_pca components
    (default: min(1536, D, N-1) over the fitted rows), [N+1, k] with a zero padding row; a fresh
    adapter from k to d; and the PCA."""
    k = rat.d_pca or default_n_components(table.shape[0] if fit_rows is None else len(fit_rows), table.shape[1])
    pca = reduce_table(table, k, fit_rows, rat)
    source = pca_source(table, pca)
    return source, Adapter(pca.n_components, d, hidden=rat.adapter_hidden), pca


@dataclass(frozen=True)
class LLMEmb(Method):
    """Adapter(PCA(E_llm)); `adapter=False` reduces straight to d, `freeze=False` trains the table."""

    adapter: bool = True
    freeze: bool = True

    def build_layer(self, n_items: int, d: int, rat: RATConfig, table: torch.Tensor | None,
                    fit_rows: np.ndarray | None, trained: torch.Tensor) -> tuple[ItemEmbedding, PCA | None]:
        assert table is not None
        if not self.adapter:
            pca = reduce_table(table, d, fit_rows, rat)
            return AdaptedItemEmbedding(pca_source(table, pca), None, freeze=True), pca
        source, adapter, pca = adapter_parts(table, d, fit_rows, rat)
        return AdaptedItemEmbedding(source, adapter, freeze=self.freeze), pca


LLMEMB = LLMEmb("llmemb", "LLMEmb", table="scft", aligns=True, has_pca=True, served=True, colour="tab:red")
ABLATIONS = (
    LLMEmb("wo_scft", "w/o SCFT", table="base", aligns=True, has_pca=True),
    LLMEmb("wo_adapter", "w/o adapter", table="scft", aligns=True, has_pca=True, adapter=False),
    LLMEmb("wo_freeze", "w/o freeze", table="scft", aligns=True, has_pca=True, freeze=False),
    LLMEmb("wo_align", "w/o align", table="scft", aligns=False, has_pca=True),
)
