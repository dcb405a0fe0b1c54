"""llmemb.losses: the full-softmax CE and the sampled negatives under `allowed` items (the cold-start restriction)."""
from __future__ import annotations

import pytest
import torch

from llmemb.losses import full_softmax_ce, recommendation_loss, training_negatives


def test_full_softmax_ce_ignores_disallowed_columns():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, generator=g)
    states = torch.randn(2, 3, 4, generator=g)
    targets = torch.tensor([[0, 2, 5], [1, 0, 2]])
    allowed = torch.tensor([False, True, True, False, False, True, True, False, True])
    loss = full_softmax_ce(states, targets, table, allowed)
    # a direct computation over the allowed columns only
    cols = torch.nonzero(allowed).squeeze(1)
    h, y = states[targets > 0], targets[targets > 0]
    logits = h @ table[cols].T
    expected = (torch.logsumexp(logits, 1) - (h * table[y]).sum(1)).mean()
    assert torch.isclose(loss, expected, atol=1e-5)
    # scores of disallowed items do not matter, those of allowed ones do
    changed = table.clone()
    changed[[3, 4, 7]] = 100 * torch.randn(3, 4, generator=g)
    assert torch.isclose(full_softmax_ce(states, targets, changed, allowed), loss, atol=1e-6)
    assert not torch.isclose(full_softmax_ce(states, targets, changed), full_softmax_ce(states, targets, table))
    changed = table.clone()
    changed[6] = 10 * torch.randn(4, generator=g)
    assert not torch.isclose(full_softmax_ce(states, targets, changed, allowed), loss)
    # no gradient ever reaches a disallowed row
    t = table.clone().requires_grad_(True)
    recommendation_loss("ce", states, targets, t, allowed=allowed).backward()
    assert t.grad[~allowed].abs().sum() == 0 and t.grad[allowed].abs().sum() > 0


def test_negatives_with_allowed_stay_in_the_pool_without_the_target():
    allowed = torch.zeros(11, dtype=torch.bool)
    allowed[[2, 4, 5, 7, 10]] = True
    pool = [2, 4, 5, 7, 10]
    n = 30000
    for target, others in [(4, [2, 5, 7, 10]), (2, [4, 5, 7, 10]), (10, [2, 4, 5, 7]),
                           (3, pool), (1, pool), (8, pool)]:
        neg = training_negatives(torch.full((n,), target), 10, torch.Generator().manual_seed(target), allowed)
        assert set(neg.unique().tolist()) == set(others), target
        freq = torch.bincount(neg, minlength=11)[others].double() / n
        assert torch.allclose(freq, torch.full_like(freq, 1 / len(others)), atol=0.015), (target, freq)
    # targets past either end of a pool that lacks the last item
    small = torch.zeros(11, dtype=torch.bool)
    small[[1, 3, 4]] = True
    for target, others in [(9, [1, 3, 4]), (10, [1, 3, 4]), (1, [3, 4]), (4, [1, 3])]:
        neg = training_negatives(torch.full((n,), target), 10, torch.Generator().manual_seed(0), small)
        assert set(neg.unique().tolist()) == set(others), target
        freq = torch.bincount(neg, minlength=11)[others].double() / n
        assert torch.allclose(freq, torch.full_like(freq, 1 / len(others)), atol=0.015), (target, freq)
    # a batch of mixed targets: per position, never itself, never outside the pool
    targets = torch.randint(1, 11, (4, 5000), generator=torch.Generator().manual_seed(1))
    neg = training_negatives(targets, 10, torch.Generator().manual_seed(2), allowed)
    assert neg.shape == targets.shape
    assert not (neg == targets).any() and allowed[neg].all()


def test_negatives_with_allowed_need_two_items():
    allowed = torch.zeros(6, dtype=torch.bool)
    allowed[3] = True
    with pytest.raises(ValueError, match="two allowed items"):
        training_negatives(torch.tensor([1, 2]), 5, None, allowed)
    allowed[0] = True   # padding never counts
    with pytest.raises(ValueError, match="two allowed items"):
        training_negatives(torch.tensor([1, 2]), 5, None, allowed)
