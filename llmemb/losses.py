"""Recommendation losses over backbone states and an item table.

Both take states [B, L, d], targets [B, L] (0 = no loss at that position) and
the item table [N+1, d] (row 0 = padding), and average over the positions that
have a target. Only those positions are scored, so padding costs nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce")


def _positions(states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = targets > 0
    return states[keep], targets[keep]


def full_softmax_ce(
    states: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the target against all N items (column 0 excluded), or only
    against the `allowed` ones (bool [N+1])."""
    h, y = _positions(states, targets)
    if y.numel() == 0:
        return states.sum() * 0.0
    logits = h @ table.T
    logits[:, 0] = float("-inf")
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    return F.cross_entropy(logits, y)


def training_negatives(
    targets: torch.Tensor, n_items: int, generator: torch.Generator | None = None, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """One item per target, uniform over 1..N (or the `allowed` items) without the target itself."""
    if allowed is not None:
        pool = torch.nonzero(allowed[1:].to(targets.device)).squeeze(1) + 1
        if pool.numel() < 2:
            raise ValueError("negative sampling needs at least two allowed items")
        # Uniform over the pool minus the target: when the target is in the pool,
        # draw among the other slots by skipping the target's own slot.
        slot = torch.searchsorted(pool, targets)
        in_pool = (slot < pool.numel()) & (pool[slot.clamp_max(pool.numel() - 1)] == targets)
        choices = pool.numel() - in_pool.long()
        u = torch.rand(targets.shape, generator=generator, device=targets.device)
        draw = (u * choices).long().clamp_max(choices - 1)
        draw = draw + (in_pool & (draw >= slot)).long()
        return pool[draw]
    if n_items < 2:
        raise ValueError("negative sampling needs at least two items")
    draw = torch.randint(1, n_items, targets.shape, generator=generator, device=targets.device)
    return draw + (draw >= targets).long()


def sampled_bce(
    states: torch.Tensor,
    targets: torch.Tensor,
    table: torch.Tensor,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log sigmoid(s_pos) - log(1 - sigmoid(s_neg)) with one uniform negative per position."""
    h, y = _positions(states, targets)
    if y.numel() == 0:
        return states.sum() * 0.0
    negatives = training_negatives(y, table.shape[0] - 1, generator, allowed)
    positive = (h * table[y]).sum(-1)
    negative = (h * table[negatives]).sum(-1)
    return (F.softplus(-positive) + F.softplus(negative)).mean()


def recommendation_loss(
    name: str,
    states: torch.Tensor,
    targets: torch.Tensor,
    table: torch.Tensor,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """`allowed` (bool [N+1]): the items the loss may score; None = all."""
    if name == "ce":
        return full_softmax_ce(states, targets, table, allowed)
    if name == "bce":
        return sampled_bce(states, targets, table, generator, allowed)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
