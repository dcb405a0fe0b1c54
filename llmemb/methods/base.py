"""What an item-layer method is: one object that says which exported table it reads, builds the
backbone's item-embedding layer, adds its terms to the training loss, and tells the bundle and the
service how a served item gets its vector.

Every method trains with the same loop and is evaluated by the same evaluator, so methods differ
only in what this object decides. A new method is a subclass (or an instance with other fields) in
a module of this package, registered by name in `llmemb/methods/__init__.py`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from llmemb.backbones import SequentialBackbone
from llmemb.backbones.base import ItemEmbedding
from llmemb.contrastive import soft_target_alignment_loss, symmetric_contrastive_loss
from llmemb.methods.settings import RATConfig
from llmemb.projection import PCA

# fit's extra_loss hook: (model, inputs, targets) -> a scalar added to the recommendation loss
ExtraLoss = Callable[[SequentialBackbone, torch.Tensor, torch.Tensor], torch.Tensor]
TABLES = ("scft", "base")   # the exported tables: the SCFT-tuned LLM's, the base LLM's


@dataclass(frozen=True)
class Method:
    """One row of the paper's tables (or one beyond them).

    name: the registry key, used in configs, run directories, reports and bundle manifests.
    label: how reports print it.
    table: the exported table the layer starts from ("scft", "base"), None for ID-only layers.
    aligns: trained with alpha * L_align towards the ID run's item table (when rat.alpha > 0).
    has_pca: its layer keeps a PCA of the table (saved with the run, needed by a bundle).
    served: a bundle may carry it (the service embeds new items through PCA -> adapter).
    residual: a bundle of it stores a per-item residual beside the item table.
    is_id: the ID-only run, the alignment target of the methods that align.
    colour: its colour in the report's figures (None: not drawn).
    """

    name: str
    label: str
    table: str | None = None
    aligns: bool = False
    has_pca: bool = False
    served: bool = False
    residual: bool = False
    is_id: bool = False
    colour: str | None = None

    def __post_init__(self) -> None:
        if self.table is not None and self.table not in TABLES:
            raise ValueError(f"method {self.name}: table must be one of {', '.join(TABLES)} or None")

    # ------------------------------------------------------------------ training
    def build_layer(self, n_items: int, d: int, rat: RATConfig, table: torch.Tensor | None,
                    fit_rows: np.ndarray | None, trained: torch.Tensor) -> tuple[ItemEmbedding, PCA | None]:
        """The item layer over items 1..n_items of width d, and the PCA it keeps (None if none).

        table: the exported table named by `self.table` ([n_items, D], checked by the caller);
        fit_rows: the rows PCA is fitted on (cold start: warm items only);
        trained: bool [N+1], the items with training interactions."""
        raise NotImplementedError

    def uses_alignment(self, rat: RATConfig) -> bool:
        return self.aligns and rat.alpha > 0

    def aligned_rows(self, layer: ItemEmbedding, ids: torch.Tensor) -> torch.Tensor:
        """The vectors L_align pulls towards the ID model's: the layer's rows of `ids`."""
        return layer(ids)

    def penalised(self, rat: RATConfig) -> bool:
        """Whether `penalty` adds anything to the loss under `rat`."""
        return False

    def penalty(self, layer: ItemEmbedding, seen: torch.Tensor, rat: RATConfig) -> torch.Tensor:
        """A regulariser over the batch's distinct items `seen` (only called when `penalised`)."""
        raise NotImplementedError

    def extra_loss(self, id_table: torch.Tensor | None, rat: RATConfig) -> ExtraLoss | None:
        """fit's extra_loss hook, or None: alpha * L_align between the layer's vectors and the ID
        model's table over the distinct target items of the batch (at most rat.align_max_items of them,
        drawn uniformly), plus the method's penalty."""
        aligned, penalised = self.uses_alignment(rat), self.penalised(rat)
        if aligned and id_table is None:
            raise ValueError(f"method {self.name} aligns with the ID model's table: train the ID run first")
        if not (aligned or penalised):
            return None
        target_table = id_table.detach() if id_table is not None else None
        on_device: dict[torch.device, torch.Tensor] = {}   # the target table copied once to the training device

        def extra(model: SequentialBackbone, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = targets.new_zeros((), dtype=torch.float32)
            ids = torch.unique(targets[targets > 0])
            if aligned and ids.numel() >= 2:
                assert target_table is not None   # checked above: aligning needs the ID table
                if ids.device not in on_device:
                    on_device[ids.device] = target_table.to(ids.device)
                chosen = ids
                if rat.align_max_items is not None and ids.numel() > rat.align_max_items:
                    chosen = ids[torch.randperm(ids.numel(), device=ids.device)[:rat.align_max_items]]
                e = self.aligned_rows(model.item_embedding, chosen)
                loss = loss + rat.alpha * align(e, on_device[ids.device][chosen], rat)
            if penalised:
                seen = torch.unique(torch.cat([inputs[inputs > 0], ids]))
                loss = loss + self.penalty(model.item_embedding, seen, rat)
            return loss

        return extra

    # ------------------------------------------------------------------- serving
    def check_servable(self, rat: RATConfig) -> None:
        """Raise ValueError when a run of this method under `rat` cannot become a bundle."""
        if not self.served:
            raise ValueError(f"method {self.name} cannot be served: its layer has no text path for new items")

    def catalogue_vector(self, adapted: np.ndarray, residual_row: np.ndarray | None) -> np.ndarray:
        """A served item's catalogue vector from its text-path vector Adapter(PCA(E_llm(x))) and, for
        a bundle item of a method with a residual, its stored residual row (None otherwise)."""
        return adapted


def align(e: torch.Tensor, target: torch.Tensor, rat: RATConfig) -> torch.Tensor:
    """L_align between adapted vectors and the ID model's, in rat.align_loss's form."""
    if rat.align_loss == "soft":
        return soft_target_alignment_loss(e, target, rat.align_temperature)
    return symmetric_contrastive_loss(e, target, rat.align_temperature, rat.align_similarity,
                                      exclude_positive=(rat.align_loss == "paper"))

