"""RAT's settings (the `rat` section of a training config): the PCA width, the adapter, the
alignment loss and Hybrid's residual. Every method reads the same settings object; each uses the
fields that concern it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmemb.sections import dataclass_from

ALIGN_LOSSES = ("paper", "infonce", "soft")


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
    # Align on at most this many of a batch's distinct target items, drawn uniformly each step; None:
    # all of them. The loss is square in that count (about 1,900 a batch on MovieLens-1M, where it
    # doubled the epoch), so large catalogues want a cap (docs/TRAINING_AT_SCALE.md).
    align_max_items: int | None = None
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
        if cfg.align_max_items is not None and not (isinstance(cfg.align_max_items, int) and cfg.align_max_items >= 2):
            raise ValueError(f"rat.align_max_items must be an integer >= 2 or null, got {cfg.align_max_items!r}")
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
