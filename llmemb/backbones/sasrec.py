"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history.

Unlike the LLMEmb reference code, the causal mask is kept: the state at
position t only sees items up to t, so training on every position of a
sequence never leaks the item it has to predict (docs/METHOD.md, Backbones).
"""
from __future__ import annotations

import torch

from .base import BackboneConfig, ItemEmbedding, SequentialBackbone
from .layers import encoder_from_config


class SASRec(SequentialBackbone):
    causal = True

    def __init__(self, config: BackboneConfig, item_embedding: ItemEmbedding):
        super().__init__(config, item_embedding)
        self.encoder = encoder_from_config(config, causal=True)

    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.item_embedding(inputs), inputs != 0)
