"""The symmetric contrastive loss of SCFT and RAT's alignment, and its DDP gather.

L = L^1 + L^2 over a batch of B pairs (a_i, b_i):
    L^1 = -1/B sum_i log( exp(s(a_i, b_i)/t) / sum_k exp(s(a_i, b_k)/t) )
and L^2 the same with a and b swapped. The paper's denominator leaves the
positive out (k != i, `exclude_positive=True`); standard InfoNCE keeps it.
`soft_target_alignment_loss` is the third form, the one the reference code uses
for RAT's alignment.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

SIMILARITIES = ("cos", "dot")


def similarity_matrix(a: torch.Tensor, b: torch.Tensor, similarity: str = "cos") -> torch.Tensor:
    """[B, H], [B, H] -> [B, B] with entry (i, k) = s(a_i, b_k), in fp32."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    a, b = a.float(), b.float()
    if similarity == "cos":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a @ b.T


def _directional_loss(logits: torch.Tensor, exclude_positive: bool) -> torch.Tensor:
    positive = logits.diagonal()
    if exclude_positive:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def symmetric_contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    similarity: str = "cos",
    exclude_positive: bool = False,
) -> torch.Tensor:
    """Row i of `a` and row i of `b` are a positive pair; every other row is a negative."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [B, H] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if exclude_positive and a.shape[0] < 2:
        raise ValueError("exclude_positive needs at least two pairs: the denominator would be empty")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = similarity_matrix(a, b, similarity) / temperature
    return _directional_loss(logits, exclude_positive) + _directional_loss(logits.T, exclude_positive)


def soft_target_alignment_loss(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The LLMEmb reference's alignment loss (docs/METHOD.md, RAT step 4), CLIP-style with
    soft targets: logits X·Yᵀ/t; the target of row i is softmax over k of
    t·(x_i·x_k + y_i·y_k)/2, so rows that are alike on both sides share the credit
    instead of counting as negatives; cross-entropy in both directions, averaged."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"expected two [B, H] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    x, y = x.float(), y.float()
    logits = x @ y.T / temperature
    targets = F.softmax((x @ x.T + y @ y.T) / 2 * temperature, dim=-1)
    forward = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    backward = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
    return (forward + backward).mean() / 2


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order); only the local rows carry gradient.

    Each rank then computes the loss over the global batch, and the backward
    pass gives the gradient of that loss through the local rows; summing the
    parameter gradients over ranks (all-reduce SUM) yields exactly the gradient
    of the single-process loss on the whole batch. Ranks may hold different
    numbers of rows. A no-op when torch.distributed is not initialised.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    local = x.detach().contiguous()
    size = torch.tensor([local.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if local.shape[0] < longest:  # all_gather needs equal shapes: pad, then trim
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad])
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    parts = [p[:n] for p, n in zip(parts, counts)]
    parts[rank] = x
    return torch.cat(parts, dim=0)
