"""The interface every sequential backbone shares.

Conventions:
- internal item ids 1..N, 0 = padding; histories are LEFT-padded so the last
  column is the most recent item;
- the item-embedding layer is given from outside (`ItemEmbedding`), so RAT can
  swap the ID table for Adapter(PCA(E_llm)) and the service for a fixed table
  that grows with new items. Scores are dot products with that layer's table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from llmemb.sections import dataclass_from


@dataclass
class BackboneConfig:
    name: str = "sasrec"            # sasrec | gru4rec | bert4rec
    hidden: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    dropout_masks: str = "torch"    # torch (nn.Dropout's random stream) | fast (2.4x cheaper masks on the CPU,
                                    # other random numbers: llmemb/backbones/layers.py)
    mask_ratio: float = 0.2         # BERT4Rec cloze masking
    loss: str = "ce"                # ce (full softmax) | sampled_ce (shared negatives, logQ-corrected)
                                    # | bce (one sampled negative per position)
    loss_negatives: int = 256       # sampled_ce: negatives shared by a batch
    loss_sampler: str = "uniform"   # sampled_ce: uniform | popularity (training interactions)
    inner_size: int = 0             # FFN width (transformers) / GRU state (gru4rec); 0 = 4 * hidden / hidden
    activation: str = "gelu"        # FFN activation: gelu | relu
    norm_first: bool = False        # pre-LN blocks (False = post-LN, as in SASRec / BERT)
    mask_last_prob: float = 0.0     # BERT4Rec: also mask the last item with this probability
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        """Unknown keys are errors (a bundle or checkpoint written by other code is refused, not misread)."""
        return dataclass_from(cls, d, "backbone")


class ItemEmbedding(nn.Module):
    """Maps internal item ids to d-vectors; `table()` is the full [N+1, d] matrix."""

    dim: int

    def table(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table()[ids]

    @property
    def n_items(self) -> int:
        return self.table().shape[0] - 1


class IdItemEmbedding(ItemEmbedding):
    """Plain trainable ID embeddings (the 'None' baseline)."""

    def __init__(self, n_items: int, dim: int, init: torch.Tensor | None = None, trainable: bool = True):
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        if init is None:
            nn.init.normal_(self.embedding.weight, std=0.02)
        else:
            if init.shape != (n_items + 1, dim):
                raise ValueError(f"init table has shape {tuple(init.shape)}, expected {(n_items + 1, dim)}")
            self.embedding.weight.data.copy_(init)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding.weight.requires_grad_(trainable)

    def table(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)


class FixedItemEmbedding(ItemEmbedding):
    """A precomputed table used as it is: no copy, no gradient. The service swaps in each
    catalogue snapshot (the bundle's table plus the items added since) with `use`."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.dim = int(table.shape[1])
        self.register_buffer("weight", table.detach(), persistent=False)

    def use(self, table: torch.Tensor) -> None:
        self.weight = table.detach()

    def table(self) -> torch.Tensor:
        return self.weight


def left_pad(sequences: Sequence, length: int) -> torch.Tensor:
    """Item-id sequences -> [B, length] LongTensor, keeping the last `length` items, zeros in front."""
    out = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tail = torch.as_tensor(seq[-length:] if length > 0 else seq[:0], dtype=torch.long)
        if len(tail):
            out[row, length - len(tail):] = tail
    return out


class SequentialBackbone(nn.Module):
    """Encodes a left-padded history into a user vector and scores items by dot product.

    `causal` says whether the state at position t depends only on items <= t;
    position-wise (prefix-materialised) training needs a causal model.
    """

    causal: bool = True

    def __init__(self, config: BackboneConfig, item_embedding: ItemEmbedding):
        super().__init__()
        if item_embedding.dim != config.hidden:
            raise ValueError(
                f"item embedding dim {item_embedding.dim} != backbone hidden {config.hidden}"
            )
        self.config = config
        self.item_embedding = item_embedding

    # --- to be implemented by each backbone -------------------------------
    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, L] item ids (left-padded) -> [B, L, d] states, one per position."""
        raise NotImplementedError

    def training_pairs(
        self, sequences: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From left-padded sequences [B, L+1] make (inputs [B, L], targets [B, L]).

        targets[b, t] is the item the state at position t must predict; 0 = no loss.
        Causal models: inputs = seq[:, :-1], targets = seq[:, 1:], except that the
        first item of a sequence is no target (its state would see only padding).
        """
        inputs = sequences[:, :-1]
        return inputs, sequences[:, 1:] * (inputs != 0)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded history -> [B, d] user vector (state at the last position).

        Histories wider than max_len keep their most recent max_len items.
        """
        return self.hidden_states(history[:, -self.config.max_len:])[:, -1, :]

    # --- shared ----------------------------------------------------------
    def score_all(self, user: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, N+1] scores against the whole item table (column 0 = padding)."""
        return user @ self.item_embedding.table().T

    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, d], [B, C] ids -> [B, C] scores."""
        return torch.einsum("bd,bcd->bc", user, self.item_embedding(candidates))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters without the item-embedding layer (which is saved separately)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("item_embedding.")}

    def load_backbone_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("item_embedding.")]
        if missing or unexpected:
            raise ValueError(f"backbone state mismatch: missing={missing} unexpected={unexpected}")
