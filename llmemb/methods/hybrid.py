"""Hybrid, beyond the paper: LLMEmb's layer plus a trainable per-item residual r_i (zero for items
without training interactions, so a new item's vector is LLMEmb's), the same loss, plus
rat.residual_l2 * ||r||^2 over the batch's items. L_align pulls the LLMEmb part alone: the residual
is free to hold what the text lacks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemb.backbones.base import ItemEmbedding
from llmemb.item_tables import HybridItemEmbedding
from llmemb.methods.base import Method
from llmemb.methods.llmemb import adapter_parts
from llmemb.methods.settings import RATConfig
from llmemb.projection import PCA


@dataclass(frozen=True)
class Hybrid(Method):
    def build_layer(self, n_items: int, d: int, rat: RATConfig, table: torch.Tensor | None,
                    fit_rows: np.ndarray | None, trained: torch.Tensor) -> tuple[ItemEmbedding, PCA | None]:
        assert table is not None
        source, adapter, pca = adapter_parts(table, d, fit_rows, rat)
        return HybridItemEmbedding(source, adapter, trained, rat.residual_dropout, rat.residual_item_drop,
                                   rat.text_residual), pca

    def aligned_rows(self, layer: ItemEmbedding, ids: torch.Tensor) -> torch.Tensor:
        assert isinstance(layer, HybridItemEmbedding)
        return layer.adapted_table()[ids]

    def penalised(self, rat: RATConfig) -> bool:
        return rat.residual_l2 > 0

    def penalty(self, layer: ItemEmbedding, seen: torch.Tensor, rat: RATConfig) -> torch.Tensor:
        assert isinstance(layer, HybridItemEmbedding)
        return rat.residual_l2 * layer.residual_penalty(seen)

    def check_servable(self, rat: RATConfig) -> None:
        super().check_servable(rat)
        if rat.text_residual > 0:
            raise ValueError("rat.text_residual is an experiment the service cannot apply to new items yet; "
                             "a bundle of it would serve them differently from the run")

    def catalogue_vector(self, adapted: np.ndarray, residual_row: np.ndarray | None) -> np.ndarray:
        """A bundle item keeps its residual when its attributes are replaced; any other item has none."""
        if residual_row is None:
            return adapted
        return (adapted + residual_row).astype(np.float32)


HYBRID = Hybrid("hybrid", "Hybrid", table="scft", aligns=True, has_pca=True, served=True, residual=True,
                colour="tab:green")
