"""From an exported LLM table [N, D] (row r = item r+1) to the reduced tables the item layers
start from: PCA fitted on all rows or on the warm ones only (cold start), with RAT's optional
whitening and rescaling folded into the saved PCA."""
from __future__ import annotations

import numpy as np
import torch

from llmemb.item_tables import with_padding_row
from llmemb.methods.settings import RATConfig
from llmemb.projection import PCA


def fitted_rows(llm_table: torch.Tensor, fit_rows: np.ndarray | None) -> torch.Tensor:
    """The rows PCA is fitted on (and scaled by): all, or `fit_rows` (cold start: warm items)."""
    return llm_table if fit_rows is None else llm_table[torch.as_tensor(fit_rows, dtype=torch.long)]


def fit_pca(llm_table: torch.Tensor, n_components: int, fit_rows: np.ndarray | None = None) -> PCA:
    """PCA on the exported table, fitted on `fit_rows` when given."""
    return PCA.fit(fitted_rows(llm_table, fit_rows), n_components)


def rescaled(pca: PCA, llm_table: torch.Tensor, fit_rows: np.ndarray | None, entry_std: float | None) -> PCA:
    """`pca` scaled so the fitted rows' reduced entries have std `entry_std` (None: unchanged)."""
    if entry_std is None:
        return pca
    return pca.scaled(entry_std / float(pca.transform(fitted_rows(llm_table, fit_rows)).std().clamp_min(1e-12)))


def reduce_table(llm_table: torch.Tensor, k: int, fit_rows: np.ndarray | None, rat: RATConfig) -> PCA:
    """The frozen table's PCA with RAT's optional whitening and rescaling folded in."""
    pca = fit_pca(llm_table, k, fit_rows)
    if rat.whiten:
        pca = pca.whitened()
    return rescaled(pca, llm_table, fit_rows, rat.source_std)


def pca_source(llm_table: torch.Tensor, pca: PCA) -> torch.Tensor:
    """[N+1, k]: PCA of every item, zero row 0 for padding."""
    return with_padding_row(pca.transform(llm_table))


def llm2x_table(base_table: torch.Tensor, d: int, init_std: float | None, fit_rows: np.ndarray | None) -> torch.Tensor:
    """LLM2X's initial ID table: the base LLM's vectors PCA-reduced straight to d, optionally
    rescaled to entry std `init_std`."""
    source = pca_source(base_table, fit_pca(base_table, d, fit_rows))
    if init_std is not None:
        source = source * (init_std / source[1:].std().clamp_min(1e-12))
    return source
