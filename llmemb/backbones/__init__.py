"""Sequential backbones behind one interface, built by name (RecBole style)."""
from __future__ import annotations

from .base import (
    BackboneConfig,
    FixedItemEmbedding,
    IdItemEmbedding,
    ItemEmbedding,
    SequentialBackbone,
    left_pad,
)
from .bert4rec import BERT4Rec
from .gru4rec import GRU4Rec
from .sasrec import SASRec

BACKBONES: dict[str, type[SequentialBackbone]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def build_backbone(config: BackboneConfig, item_embedding: ItemEmbedding) -> SequentialBackbone:
    try:
        cls = BACKBONES[config.name]
    except KeyError:
        raise ValueError(f"unknown backbone {config.name!r}; known: {', '.join(BACKBONES)}") from None
    return cls(config, item_embedding)


def build_id_backbone(config: BackboneConfig, n_items: int) -> SequentialBackbone:
    """A backbone on a fresh trainable ID table (the 'None' baseline)."""
    return build_backbone(config, IdItemEmbedding(n_items, config.hidden))


__all__ = [
    "BACKBONES",
    "BERT4Rec",
    "BackboneConfig",
    "FixedItemEmbedding",
    "GRU4Rec",
    "IdItemEmbedding",
    "ItemEmbedding",
    "SASRec",
    "SequentialBackbone",
    "build_backbone",
    "build_id_backbone",
    "left_pad",
]
