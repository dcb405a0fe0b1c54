"""Recommendation Adaptation Training (RAT) and the rows of the paper's tables.

A "method" decides the backbone's item-embedding layer:

    none         trainable ID table (also the alignment target of RAT)
    llm2x        base-LLM vectors, PCA-reduced straight to d, as the initial
                 trainable ID table
    llmemb       frozen PCA(E_scft) -> trainable adapter, loss L_SRS + alpha L_align
    wo_scft      llmemb on the base LLM's vectors
    wo_adapter   llmemb with PCA straight to d and no adapter
    wo_freeze    llmemb with the PCA table trainable
    wo_align     llmemb with alpha = 0
    hybrid       beyond the paper: llmemb's layer plus a trainable per-item residual r_i
                 (zero for items without training interactions), same loss, plus
                 residual_l2 * ||r||^2 over the batch's items

Every method trains with the same loop (trainer.train.fit) and is evaluated by
the same Evaluator, so the rows differ only in the item layer and the loss.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from llmemb.backbones import (
    BackboneConfig,
    IdItemEmbedding,
    SequentialBackbone,
    build_backbone,
)
from llmemb.contrastive import soft_target_alignment_loss, symmetric_contrastive_loss
from llmemb.item_tables import (
    AdaptedItemEmbedding,
    HybridItemEmbedding,
    with_padding_row,
)
from llmemb.projection import PCA, Adapter, default_n_components
from llmemb.sections import dataclass_from

METHODS = ("none", "llm2x", "llmemb", "hybrid", "wo_scft", "wo_adapter", "wo_freeze", "wo_align")
# Which exported table each method reads: the SCFT-tuned LLM or the base LLM.
USES_SCFT_TABLE = {"llmemb", "hybrid", "wo_adapter", "wo_freeze", "wo_align"}
ALIGN_LOSSES = ("paper", "infonce", "soft")
USES_BASE_TABLE = {"llm2x", "wo_scft"}
USES_PCA = set(METHODS) - {"none", "llm2x"}   # build_model returns a PCA for every other method


@dataclass
class RATConfig:
    d_pca: int | None = None           # None: min(1536, D, N-1)
    adapter_hidden: int | None = None  # None: Adapter's default (d_pca // 2)
    alpha: float = 0.01                # weight of L_align
    align_temperature: float = 2.0     # reference: tau = 2 with dot products
    align_similarity: str = "dot"
    # paper: SCFT form, positive left out of the denominator | infonce: positive kept |
    # soft: the reference code's CLIP-style loss with soft targets
    align_loss: str = "paper"
    llm2x_init_std: float | None = None  # rescale LLM2X's initial table to this entry std; None: as PCA gives
    # Rescale the frozen PCA table (LLMEmb and its ablations) to this entry std; None: as PCA gives.
    # A single scalar, folded into the saved PCA, so the function class is unchanged: it only
    # changes how the adapter's optimisation starts.
    source_std: float | None = None
    # Divide each PCA component by its deviation (unit variance per coordinate; docs/METHOD.md's PCA
    # does not whiten, so off by default). Also folded into the saved PCA: the adapter is
    # linear, so this preconditions its optimisation without changing what it can express.
    whiten: bool = False
    # Hybrid only: L2 weight on the residual (mean squared norm of r over the batch's items),
    # dropout on r's entries while training, and the probability that an item's whole r is
    # zeroed in a training pass (it is then scored by its text path alone, as a cold item is).
    residual_l2: float = 0.0
    residual_dropout: float = 0.0
    residual_item_drop: float = 0.0
    # Hybrid only, an experiment (bundles refuse it: the service cannot apply it yet): a residual
    # predicted from text for items without one, learnt by swapping trained items' r for the
    # prediction with this probability (llmemb/item_tables.py: HybridItemEmbedding).
    text_residual: float = 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RATConfig:
        cfg = dataclass_from(cls, values, "rat")
        for name in ("source_std", "llm2x_init_std"):
            value = getattr(cfg, name)
            if value is not None and not value > 0:
                raise ValueError(f"rat.{name} must be positive or null, got {value!r}")
        if cfg.align_loss not in ALIGN_LOSSES:
            raise ValueError(f"rat.align_loss must be one of {', '.join(ALIGN_LOSSES)}, got {cfg.align_loss!r}")
        if not cfg.residual_l2 >= 0:
            raise ValueError(f"rat.residual_l2 must be >= 0, got {cfg.residual_l2!r}")
        if not 0 <= cfg.residual_dropout < 1:
            raise ValueError(f"rat.residual_dropout must be in [0, 1), got {cfg.residual_dropout!r}")
        if not 0 <= cfg.residual_item_drop < 1:
            raise ValueError(f"rat.residual_item_drop must be in [0, 1), got {cfg.residual_item_drop!r}")
        if not 0 <= cfg.text_residual < 1:
            raise ValueError(f"rat.text_residual must be in [0, 1), got {cfg.text_residual!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_pca(llm_table: torch.Tensor, n_components: int, fit_rows: np.ndarray | None = None) -> PCA:
    """PCA on the exported [N, D] table (row r = item r+1); `fit_rows` restricts the
    rows it is fitted on (cold-start: warm items only)."""
    return PCA.fit(fitted_rows(llm_table, fit_rows), n_components)


def fitted_rows(llm_table: torch.Tensor, fit_rows: np.ndarray | None) -> torch.Tensor:
    """The rows PCA is fitted on (and scaled by): all, or `fit_rows` (cold start: warm items)."""
    return llm_table if fit_rows is None else llm_table[torch.as_tensor(fit_rows, dtype=torch.long)]


def reduce_table(llm_table: torch.Tensor, k: int, fit_rows: np.ndarray | None, rat: RATConfig) -> PCA:
    """The frozen table's PCA with RAT's optional whitening and rescaling folded in."""
    pca = fit_pca(llm_table, k, fit_rows)
    if rat.whiten:
        pca = pca.whitened()
    return rescaled(pca, llm_table, fit_rows, rat.source_std)


def rescaled(pca: PCA, llm_table: torch.Tensor, fit_rows: np.ndarray | None, entry_std: float | None) -> PCA:
    """`pca` scaled so the fitted rows' reduced entries have std `entry_std` (None: unchanged)."""
    if entry_std is None:
        return pca
    return pca.scaled(entry_std / float(pca.transform(fitted_rows(llm_table, fit_rows)).std().clamp_min(1e-12)))


def pca_source(llm_table: torch.Tensor, pca: PCA) -> torch.Tensor:
    """[N+1, k]: PCA of every item, zero row 0 for padding."""
    return with_padding_row(pca.transform(llm_table))


def llm2x_table(base_table: torch.Tensor, d: int, init_std: float | None, fit_rows: np.ndarray | None) -> torch.Tensor:
    source = pca_source(base_table, fit_pca(base_table, d, fit_rows))
    if init_std is not None:
        source = source * (init_std / source[1:].std().clamp_min(1e-12))
    return source


def build_model(
    method: str,
    backbone: BackboneConfig,
    n_items: int,
    rat: RATConfig,
    scft_table: torch.Tensor | None = None,
    base_table: torch.Tensor | None = None,
    fit_rows: np.ndarray | None = None,
    trained_items: np.ndarray | None = None,
) -> tuple[SequentialBackbone, PCA | None]:
    """The backbone of `method` with its item layer; the PCA used (None for ID-only).

    trained_items: bool [N+1], the items with training interactions; only they get a
    hybrid residual (default: all but padding)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    d = backbone.hidden
    if method == "none":
        return build_backbone(backbone, IdItemEmbedding(n_items, d)), None
    table = scft_table if method in USES_SCFT_TABLE else base_table
    if table is None:
        which = "SCFT" if method in USES_SCFT_TABLE else "base-LLM"
        raise ValueError(f"method {method} needs the {which} export table")
    if table.shape[0] != n_items:
        raise ValueError(f"export table has {table.shape[0]} rows, the dataset {n_items} items")
    if method == "llm2x":
        init = llm2x_table(table, d, rat.llm2x_init_std, fit_rows)
        return build_backbone(backbone, IdItemEmbedding(n_items, d, init=init)), None
    if method == "wo_adapter":
        pca = reduce_table(table, d, fit_rows, rat)
        return build_backbone(backbone, AdaptedItemEmbedding(pca_source(table, pca), None, freeze=True)), pca
    k = rat.d_pca or default_n_components(table.shape[0] if fit_rows is None else len(fit_rows), table.shape[1])
    pca = reduce_table(table, k, fit_rows, rat)
    adapter = Adapter(pca.n_components, d, hidden=rat.adapter_hidden)
    source = pca_source(table, pca)
    if method == "hybrid":
        trained = torch.ones(n_items + 1, dtype=torch.bool) if trained_items is None else torch.as_tensor(trained_items)
        layer = HybridItemEmbedding(source, adapter, trained, rat.residual_dropout, rat.residual_item_drop,
                                    rat.text_residual)
    else:
        layer = AdaptedItemEmbedding(source, adapter, freeze=(method != "wo_freeze"))
    return build_backbone(backbone, layer), pca


def uses_alignment(method: str, rat: RATConfig) -> bool:
    return method in {"llmemb", "hybrid", "wo_scft", "wo_adapter", "wo_freeze"} and rat.alpha > 0


def align(e: torch.Tensor, target: torch.Tensor, rat: RATConfig) -> torch.Tensor:
    """L_align between adapted vectors and the ID model's, in rat.align_loss's form."""
    if rat.align_loss == "soft":
        return soft_target_alignment_loss(e, target, rat.align_temperature)
    return symmetric_contrastive_loss(e, target, rat.align_temperature, rat.align_similarity,
                                      exclude_positive=(rat.align_loss == "paper"))


def rat_extra_loss(method: str, id_table: torch.Tensor | None, rat: RATConfig):
    """fit's extra_loss hook for `method`, or None: alpha * L_align between the
    adapted vectors e_i and the ID model's e~_i over the distinct target items of the
    batch, plus, for hybrid, residual_l2 * ||r||^2 over the batch's items."""
    aligned = uses_alignment(method, rat)
    penalised = method == "hybrid" and rat.residual_l2 > 0
    if aligned and id_table is None:
        raise ValueError(f"method {method} aligns with the ID model's table: train 'none' first")
    if not (aligned or penalised):
        return None
    target_table = id_table.detach() if id_table is not None else None
    on_device: dict[torch.device, torch.Tensor] = {}   # the target table copied once to the training device

    def extra(model: SequentialBackbone, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = targets.new_zeros((), dtype=torch.float32)
        ids = torch.unique(targets[targets > 0])
        if aligned and ids.numel() >= 2:
            # The LLMEmb part is what aligns: the residual is free to hold what text lacks.
            layer = model.item_embedding
            e = layer.adapted_table()[ids] if isinstance(layer, HybridItemEmbedding) else layer(ids)
            if ids.device not in on_device:
                on_device[ids.device] = target_table.to(ids.device)
            loss = loss + rat.alpha * align(e, on_device[ids.device][ids], rat)
        if penalised:
            seen = torch.unique(torch.cat([inputs[inputs > 0], ids]))
            loss = loss + rat.residual_l2 * model.item_embedding.residual_penalty(seen)
        return loss

    return extra
