"""BERT4Rec (Sun et al., 2019): bidirectional self-attention trained by cloze masking.

The mask token is a parameter of this model, not a row of the item table: the
table comes from outside (ID table, Adapter(PCA(E_llm)), or the service's
growing catalogue), and any id past N would collide with items added later.
Inside inputs the mask is written as MASK_ID = -1.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import BackboneConfig, ItemEmbedding, SequentialBackbone
from .layers import encoder_from_config, init_weights

MASK_ID = -1


class BERT4Rec(SequentialBackbone):
    causal = False

    def __init__(self, config: BackboneConfig, item_embedding: ItemEmbedding):
        super().__init__(config, item_embedding)
        if not 0.0 < config.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {config.mask_ratio}")
        self.mask_embedding = nn.Parameter(torch.empty(config.hidden))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02, a=-0.04, b=0.04)
        self.encoder = encoder_from_config(config, causal=False)
        # BERT's output transform before the dot product with the item table.
        self.head = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.LayerNorm(config.hidden))
        self.head.apply(init_weights)

    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        masked = inputs == MASK_ID
        items = self.item_embedding(inputs.clamp(min=0))
        items = torch.where(masked.unsqueeze(-1), self.mask_embedding.to(items.dtype), items)
        valid = (inputs != 0).unsqueeze(-1).to(items.dtype)
        return self.head(self.encoder(items, inputs != 0)) * valid

    def training_pairs(
        self, sequences: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloze task on the last max_len items: each real item is masked with
        probability mask_ratio (at least one per non-empty sequence), the last
        one also with probability mask_last_prob; targets only at masked positions."""
        seq = sequences[:, 1:]
        valid = seq != 0
        # Drawn over the whole window (max_len columns) and cut to the batch's width, so a batch
        # trimmed to its longest sequence masks exactly what the full-width batch would.
        width = max(self.config.max_len, seq.shape[1])
        draw = torch.rand((seq.shape[0], width), generator=generator, device=seq.device)[:, width - seq.shape[1]:]
        masked = valid & (draw < self.config.mask_ratio)
        if self.config.mask_last_prob > 0:
            last = torch.rand(seq.shape[0], generator=generator, device=seq.device) < self.config.mask_last_prob
            masked[:, -1] |= last & valid[:, -1]
        # Sequences with nothing masked get their real position with the lowest draw masked.
        empty = ~masked.any(1) & valid.any(1)
        forced = torch.where(valid, draw, torch.full_like(draw, 2.0)).argmin(1)
        masked[empty, forced[empty]] = True
        inputs = torch.where(masked, torch.full_like(seq, MASK_ID), seq)
        targets = torch.where(masked, seq, torch.zeros_like(seq))
        return inputs, targets

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """Append the mask token after the most recent item (dropping the oldest
        item if the history is full) and return the state at the mask."""
        mask_column = torch.full_like(history[:, :1], MASK_ID)
        inputs = torch.cat([history, mask_column], dim=1)[:, -self.config.max_len:]
        return self.hidden_states(inputs)[:, -1, :]
