"""Methods whose layer is a trainable ID table: ID-only (the alignment target of RAT) and LLM2X
(the table initialised from the base LLM's vectors, PCA-reduced straight to the backbone's width)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemb.backbones import IdItemEmbedding
from llmemb.backbones.base import ItemEmbedding
from llmemb.methods.base import Method
from llmemb.methods.reduction import llm2x_table
from llmemb.methods.settings import RATConfig
from llmemb.projection import PCA


@dataclass(frozen=True)
class IdOnly(Method):
    """A trainable ID table, randomly initialised."""

    def build_layer(self, n_items: int, d: int, rat: RATConfig, table: torch.Tensor | None,
                    fit_rows: np.ndarray | None, trained: torch.Tensor) -> tuple[ItemEmbedding, PCA | None]:
        return IdItemEmbedding(n_items, d), None


@dataclass(frozen=True)
class LLM2X(Method):
    """A trainable ID table whose initial rows are the base LLM's vectors, PCA-reduced to d."""

    def build_layer(self, n_items: int, d: int, rat: RATConfig, table: torch.Tensor | None,
                    fit_rows: np.ndarray | None, trained: torch.Tensor) -> tuple[ItemEmbedding, PCA | None]:
        assert table is not None
        return IdItemEmbedding(n_items, d, init=llm2x_table(table, d, rat.llm2x_init_std, fit_rows)), None


NONE = IdOnly("none", "None (ID only)", is_id=True, colour="tab:gray")
LLM2X_METHOD = LLM2X("llm2x", "LLM2X", table="base", colour="tab:blue")
