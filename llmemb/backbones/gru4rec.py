"""GRU4Rec (Hidasi et al., 2016; the RecBole variant with full-softmax training).

embedding -> dropout -> GRU (n_layers, state size inner_size or hidden) ->
linear projection back to the item space.

Left padding: a GRU run over leading padding would drift its state (the gate
biases move it even on zero inputs), so a history's vector would depend on how
much padding it got. The rows are therefore shifted to the left, packed with
their true lengths, run, and shifted back: the states at real positions are
exactly those of the unpadded history.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import BackboneConfig, ItemEmbedding, SequentialBackbone
from .layers import Dropout, inner_size


def roll_rows(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each row of x [B, L, ...] left by shifts[b] positions."""
    length = x.shape[1]
    index = (torch.arange(length, device=x.device)[None, :] + shifts[:, None]) % length
    if x.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, x.shape[2])
    return x.gather(1, index)


class GRU4Rec(SequentialBackbone):
    causal = True

    def __init__(self, config: BackboneConfig, item_embedding: ItemEmbedding):
        super().__init__(config, item_embedding)
        state = inner_size(config.inner_size, config.hidden, 1)
        self.dropout = Dropout(config.dropout, config.dropout_masks)
        self.gru = nn.GRU(config.hidden, state, num_layers=config.n_layers, batch_first=True, bias=False)
        self.projection = nn.Linear(state, config.hidden)
        for name, weight in self.gru.named_parameters():
            nn.init.xavier_uniform_(weight) if "weight_ih" in name else nn.init.orthogonal_(weight)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        b, length = inputs.shape
        valid = inputs != 0
        lengths = valid.sum(1)
        padding = length - lengths
        x = roll_rows(self.dropout(self.item_embedding(inputs)), padding)  # real items first
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        out = roll_rows(self.projection(out), (length - padding) % length)  # back to left padding
        return out * valid.unsqueeze(-1).to(out.dtype)
