"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history.

Unlike the LLMEmb reference code, the causal mask is kept: the state at
position t only sees items up to t, so training on every position of a
sequence never leaks the item it has to predict (METHOD.md, Backbones).
"""
from __future__ import annotations

import torch

from .base import BackboneConfig, ItemEmbedding, SequentialBackbone
from .layers import TransformerEncoder, inner_size


class SASRec(SequentialBackbone):
    causal = True

    def __init__(self, config: BackboneConfig, item_embedding: ItemEmbedding):
        super().__init__(config, item_embedding)
        self.encoder = TransformerEncoder(
            hidden=config.hidden,
            max_len=config.max_len,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            inner=inner_size(config.inner_size, config.hidden, 4),
            dropout=config.dropout,
            activation=config.activation,
            norm_first=config.norm_first,
            causal=True,
        )

    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.item_embedding(inputs), inputs != 0)
