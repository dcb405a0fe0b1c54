"""Building blocks shared by the self-attention backbones (SASRec, BERT4Rec).

Masks are boolean with True = "may attend". `attention_mask` always lets a
position attend to itself, so a row whose keys are all padding (the padded
front of a left-padded history under a causal mask) still has one finite term
in its softmax instead of producing NaN; padding rows are zeroed afterwards by
the caller and real rows never see padding keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
DROPOUT_MASKS = ("torch", "fast")


def fast_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True with probability 1 - p (p rounded to a multiple of 1/65536): one 32-bit random
    word per element, its low 16 bits compared with a threshold. On the CPU this is about 2.4x as
    fast as torch's bernoulli_, which was a third of a training step (bench/results/train_speed.md)."""
    words = torch.empty(shape, dtype=torch.int32, device=device).random_()
    return (words & 0xFFFF) >= int(round(p * 65536))


class Dropout(nn.Module):
    """Dropout with torch's masks (`masks="torch"`, the default: the same random stream as nn.Dropout)
    or with fast_keep_mask (`"fast"`: other masks, so other results, from the same seed)."""

    def __init__(self, p: float, masks: str = "torch"):
        super().__init__()
        if masks not in DROPOUT_MASKS:
            raise ValueError(f"backbone.dropout_masks: unknown {masks!r}; known: {', '.join(DROPOUT_MASKS)}")
        self.p, self.fast = p, masks == "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        if not self.fast:
            return F.dropout(x, self.p, True)
        scale = fast_keep_mask(x.shape, self.p, x.device).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scale


def attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, L] True at real items -> [B, 1, L, L] attention mask (query x key)."""
    length = valid.shape[1]
    mask = valid[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    return mask | torch.eye(length, dtype=torch.bool, device=valid.device)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, dropout: float, masks: str = "torch"):
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden {hidden} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.weights_dropout = Dropout(dropout, masks) if masks == "fast" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout > 0 and self.weights_dropout is not None:
            # scaled_dot_product_attention draws its dropout with torch's masks: spelt out here.
            scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            y = self.weights_dropout(weights) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, dropout: float, activation: str, masks: str = "torch"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        self.net = nn.Sequential(
            nn.Linear(hidden, inner), ACTIVATIONS[activation](), Dropout(dropout, masks), nn.Linear(inner, hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention + feed-forward, each with dropout and a residual; pre- or post-LN."""

    def __init__(self, hidden: int, n_heads: int, inner: int, dropout: float, activation: str, norm_first: bool,
                 masks: str = "torch"):
        super().__init__()
        self.attention = SelfAttention(hidden, n_heads, dropout, masks)
        self.ffn = FeedForward(hidden, inner, dropout, activation, masks)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout, masks)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.norm1(x), mask))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attention(x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """Item + right-aligned position embeddings, then `n_layers` blocks.

    Positions count from the right (the most recent item always has position
    max_len - 1), so adding padding in front of a history changes nothing.
    """

    def __init__(self, hidden: int, max_len: int, n_layers: int, n_heads: int, inner: int,
                 dropout: float, activation: str, norm_first: bool, causal: bool, masks: str = "torch"):
        super().__init__()
        self.max_len = max_len
        self.causal = causal
        self.position = nn.Embedding(max_len, hidden)
        self.input_norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout, masks)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, n_heads, inner, dropout, activation, norm_first, masks) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(hidden) if norm_first else nn.Identity()
        self.apply(init_weights)

    def forward(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """items [B, L, d] embedded inputs, valid [B, L] -> [B, L, d], zero at padding."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} > max_len {self.max_len}")
        positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
        keep = valid.unsqueeze(-1).to(items.dtype)
        x = self.dropout(self.input_norm(items + self.position(positions))) * keep
        mask = attention_mask(valid, self.causal)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.final_norm(x) * keep


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linear and embedding weights, zero biases (BERT / RecBole style)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def inner_size(config_inner: int, hidden: int, factor: int) -> int:
    return config_inner if config_inner > 0 else factor * hidden


def encoder_from_config(config, causal: bool) -> TransformerEncoder:
    """The self-attention stack of SASRec (causal) and BERT4Rec (bidirectional) from a BackboneConfig."""
    return TransformerEncoder(
        hidden=config.hidden,
        max_len=config.max_len,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        inner=inner_size(config.inner_size, config.hidden, 4),
        dropout=config.dropout,
        activation=config.activation,
        norm_first=config.norm_first,
        causal=causal,
        masks=config.dropout_masks,
    )

