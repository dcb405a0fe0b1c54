"""The symmetric contrastive loss against hand computations, and its DDP gather."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llmemb.contrastive import (
    gather_with_grad,
    similarity_matrix,
    symmetric_contrastive_loss,
)

A = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]]
B = [[0.8, 0.6], [1.0, 1.0], [-1.0, 3.0]]


def cos(u, v):
    return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))


def dot(u, v):
    return sum(x * y for x, y in zip(u, v))


def reference(a, b, t, sim, exclude_positive):
    """Literal docs/METHOD.md formula with Python floats: L^1 + L^2."""

    def one_way(x, y):
        total = 0.0
        for i in range(len(x)):
            denom = sum(math.exp(sim(x[i], y[k]) / t) for k in range(len(y)) if not (exclude_positive and k == i))
            total += -math.log(math.exp(sim(x[i], y[i]) / t) / denom)
        return total / len(x)

    return one_way(a, b) + one_way(b, a)


@pytest.mark.parametrize("exclude_positive", [True, False])
@pytest.mark.parametrize("similarity,fn", [("cos", cos), ("dot", dot)])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_matches_the_hand_computed_formula(exclude_positive, similarity, fn, temperature):
    got = symmetric_contrastive_loss(torch.tensor(A), torch.tensor(B), temperature, similarity, exclude_positive)
    want = reference(A, B, temperature, fn, exclude_positive)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_the_variants_differ_by_the_positive_term():
    a, b = torch.tensor(A), torch.tensor(B)
    paper = symmetric_contrastive_loss(a, b, 1.0, "cos", exclude_positive=True)
    infonce = symmetric_contrastive_loss(a, b, 1.0, "cos", exclude_positive=False)
    assert infonce > paper  # adding the positive to the denominator can only raise the loss
    assert infonce.item() == pytest.approx(reference(A, B, 1.0, cos, False), rel=1e-6)


def test_symmetric_in_its_arguments():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    for exclude in (True, False):
        assert torch.allclose(
            symmetric_contrastive_loss(a, b, 0.1, "cos", exclude),
            symmetric_contrastive_loss(b, a, 0.1, "cos", exclude),
        )


def test_temperature_sharpens_the_loss():
    # Well separated pairs: a lower temperature makes the positive dominate.
    a = torch.eye(4) + 0.1
    b = torch.eye(4) - 0.05
    losses = [symmetric_contrastive_loss(a, b, t, "cos").item() for t in (1.0, 0.3, 0.05)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 1e-3  # almost no loss left


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=gen, requires_grad=True)
    b = torch.randn(4, 3, generator=gen, requires_grad=True)
    # The loss computes in fp32: a central difference with eps 1e-3 is good to ~1e-4.
    loss = lambda x, y: symmetric_contrastive_loss(x, y, 0.7, "cos", True)  # noqa: E731
    grads = torch.autograd.grad(loss(a, b), (a, b))
    eps = 1e-3
    for tensor, grad in zip((a, b), grads):
        for idx in [(0, 0), (2, 1), (3, 2)]:
            with torch.no_grad():
                tensor[idx] += eps
                up = loss(a, b).item()
                tensor[idx] -= 2 * eps
                down = loss(a, b).item()
                tensor[idx] += eps
            assert grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-2, abs=1e-4)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        symmetric_contrastive_loss(torch.ones(1, 3), torch.ones(1, 3), 0.1, exclude_positive=True)
    with pytest.raises(ValueError):
        symmetric_contrastive_loss(torch.ones(2, 3), torch.ones(3, 3), 0.1)
    with pytest.raises(ValueError):
        similarity_matrix(torch.ones(2, 3), torch.ones(2, 3), "l2")


def test_gather_is_a_no_op_without_a_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


# ------------------------------------------------------------------------- DDP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_batch(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 4, generator=gen), torch.randn(n, 4, generator=gen)


def _ddp_worker(rank: int, world: int, port: int, bounds: list[int], exclude: bool, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a, b = full_batch()
        lo, hi = bounds[rank], bounds[rank + 1]
        a_local = a[lo:hi].clone().requires_grad_(True)
        b_local = b[lo:hi].clone().requires_grad_(True)
        loss = symmetric_contrastive_loss(gather_with_grad(a_local), gather_with_grad(b_local), 0.2, "cos", exclude)
        loss.backward()
        torch.save({"loss": loss.detach(), "ga": a_local.grad, "gb": b_local.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.process
@pytest.mark.parametrize("bounds", [[0, 4, 7], [0, 2, 7]])  # equal-ish and uneven shards
def test_gathered_loss_and_gradients_equal_the_single_process_ones(tmp_path, bounds):
    exclude = True
    mp.spawn(_ddp_worker, args=(2, free_port(), bounds, exclude, str(tmp_path)), nprocs=2, join=True)
    a, b = full_batch()
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss = symmetric_contrastive_loss(a, b, 0.2, "cos", exclude)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        lo, hi = bounds[rank], bounds[rank + 1]
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        # Each rank's backward yields exactly its rows of the full-batch gradient.
        assert torch.allclose(got["ga"], a.grad[lo:hi], atol=1e-6)
        assert torch.allclose(got["gb"], b.grad[lo:hi], atol=1e-6)


# ------------------------------------------------- the reference's soft alignment
def test_soft_alignment_matches_its_definition_and_prefers_aligned_pairs():
    from llmemb.contrastive import soft_target_alignment_loss
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = 2.0
    logits = x @ y.T / t
    targets = torch.softmax((x @ x.T + y @ y.T) / 2 * t, dim=-1)
    by_hand = 0.0
    for i in range(6):
        by_hand += -(targets[i] * torch.log_softmax(logits[i], 0)).sum()
        by_hand += -(targets[:, i] * torch.log_softmax(logits[:, i], 0)).sum()
    assert torch.isclose(soft_target_alignment_loss(x, y, t), by_hand / 12, atol=1e-5)
    # an aligned pair set scores lower than the same rows shuffled
    assert soft_target_alignment_loss(x, x, t) < soft_target_alignment_loss(x, x[torch.randperm(6, generator=g)], t)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_alignment_loss(x, y, 0.0)


