"""Recommendation losses over backbone states and the item layer.

Every loss takes states [B, L, d], targets [B, L] (0 = no loss at that position)
and the items: an ItemEmbedding (or a plain [N+1, d] table, row 0 = padding).
Only positions with a target are scored, so padding costs nothing, and the
losses that score a few items (bce, sampled_ce) look up only those rows, so an
adapter or a residual is never run over the whole catalogue for them.

- ce: cross-entropy of the target against all N items (or the `allowed` ones).
- sampled_ce: cross-entropy against the target plus `negatives` items shared by
  the whole batch, drawn uniformly or by training popularity (NegativeSampler),
  with the logQ correction (Bengio & Senecal 2008; Yi et al., RecSys 2019):
  each negative's logit s_j becomes s_j - log(n * q_j), q_j the probability of
  drawing j in one draw, so the sampled normaliser exp(s_y) + sum_S exp(s_j) / (n q_j)
  is an unbiased estimate of the full one (the target's own logit is kept as it
  is) and the loss tends to full CE as n grows, whatever the sampler. Without the
  correction, popularity sampling would over-penalise popular items. A sampled
  negative equal to a row's target ("accidental hit") is masked for that row.
- bce: -log sigmoid(s_pos) - log(1 - sigmoid(s_neg)) with one uniform negative
  per position (the paper's and SASRec's loss).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("ce", "sampled_ce", "bce")
SAMPLERS = ("uniform", "popularity")

class ItemLayer(Protocol):
    """What the losses need of an item-embedding layer (llmemb.backbones.ItemEmbedding)."""

    def __call__(self, ids: torch.Tensor) -> torch.Tensor: ...

    def table(self) -> torch.Tensor: ...


Items = torch.Tensor | ItemLayer


def _positions(states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = targets > 0
    return states[keep], targets[keep]


def item_rows(items: Items, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of a table tensor, or the layer's vectors of `ids`."""
    return items[ids] if isinstance(items, torch.Tensor) else items(ids)


def item_table(items: Items) -> torch.Tensor:
    return items if isinstance(items, torch.Tensor) else items.table()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of h [P, d] against table [C, d] (targets y: column indices) with its
    gradients computed in the same pass, `chunk` rows at a time: the [P, C] logits never exist
    whole (at 12k items and 900 predictions a batch they are 43 MB, written and read five times by
    the plain form), only a [C, chunk] block that stays in the last-level cache. The block is laid
    out item-major (table @ h.T), which keeps every matmul on contiguous operands, and the softmax
    takes one exp per logit (max, exp in place, sum; the log-sum-exp is max + log(sum)). The
    backward pass scales the stored gradients by the incoming one. Matmuls run in autocast's
    dtype when autocast is on, the softmax in fp32."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else torch.float32
        with torch.autocast(h.device.type, enabled=False):
            hm, tm = h.to(dtype), table.to(dtype)
            tm_t = tm.T.contiguous()
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
            grad_t = torch.zeros(table.shape, dtype=torch.float32, device=h.device)
            total = torch.zeros((), dtype=torch.float64, device=h.device)
            # One block buffer for every chunk: a fresh [C, rows] tensor per chunk is megabytes that the
            # CPU allocator may map and unmap (page faults) at each chunk.
            block = torch.empty(table.shape[0] * min(chunk, h.shape[0]), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk):
                hc, yc = hm[start:start + chunk], y[start:start + chunk]
                z = block[:table.shape[0] * len(yc)].view(table.shape[0], len(yc))   # [C, rows]
                if dtype == torch.float32:
                    torch.mm(tm, hc.T, out=z)
                else:
                    z.copy_(tm @ hc.T)
                rows = torch.arange(len(yc), device=h.device)
                top = z.amax(0, keepdim=True)
                target = z[yc, rows]
                z.sub_(top).exp_()
                norm = z.sum(0, keepdim=True)
                total += (top.squeeze(0) + norm.squeeze(0).log() - target).sum()
                z.div_(norm)
                z[yc, rows] -= 1.0                             # softmax minus one-hot: dL/dlogits
                zd = z.to(dtype)
                grad_h[start:start + chunk] = (tm_t @ zd).T.float()
                grad_t.addmm_(zd, hc) if dtype == torch.float32 else grad_t.add_((zd @ hc).float())
        n = h.shape[0]
        ctx.save_for_backward(grad_h.div_(n), grad_t.div_(n))
        ctx.dtypes = (h.dtype, table.dtype)
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_t = ctx.saved_tensors
        return (grad_h * grad).to(ctx.dtypes[0]), (grad_t * grad).to(ctx.dtypes[1]), None, None


CE_CHUNK_ROWS = 128


def _softmax_ce(h: torch.Tensor, table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean CE of rows h against the columns of table (y = the target's column): the chunked
    fused form while training, the plain one otherwise."""
    if torch.is_grad_enabled() and (h.requires_grad or table.requires_grad):
        return _ChunkedSoftmaxCE.apply(h, table, y, CE_CHUNK_ROWS)
    return F.cross_entropy((h @ table.T).float(), y)


def full_softmax_ce(
    states: torch.Tensor, targets: torch.Tensor, items: Items, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the target against all N items (column 0 excluded), or only
    against the `allowed` ones (bool [N+1]). The logits are computed over the
    candidate columns only (no [P, N+1] mask written over them), in row chunks while training."""
    h, y = _positions(states, targets)
    if y.numel() == 0:
        return states.sum() * 0.0
    table = item_table(items)
    if allowed is None:
        return _softmax_ce(h, table[1:], y - 1)
    allowed = allowed.to(table.device)
    columns = torch.nonzero(allowed).squeeze(1)
    slot = torch.cumsum(allowed.long(), 0) - 1          # item id -> its column among the allowed
    inside = allowed[y]
    if bool(inside.all()):
        return _softmax_ce(h, table[columns], slot[y])
    # A target outside the allowed items (never the case in training): scored against the
    # allowed items plus itself.
    own = (h * item_rows(items, y)).sum(-1, keepdim=True)
    logits = torch.cat([h @ table[columns].T, own], 1)
    return F.cross_entropy(logits, torch.where(inside, slot[y], torch.full_like(y, columns.numel())))


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
    items: Items,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
    n_items: int | None = None,
) -> torch.Tensor:
    """-log sigmoid(s_pos) - log(1 - sigmoid(s_neg)) with one uniform negative per position.
    n_items: N (default: the table's rows less padding)."""
    h, y = _positions(states, targets)
    if y.numel() == 0:
        return states.sum() * 0.0
    n = n_items if n_items is not None else item_table(items).shape[0] - 1
    negatives = training_negatives(y, n, generator, allowed)
    rows = item_rows(items, torch.cat([y, negatives]))
    positive = (h * rows[: y.numel()]).sum(-1)
    negative = (h * rows[y.numel():]).sum(-1)
    return (F.softplus(-positive) + F.softplus(negative)).mean()


class NegativeSampler:
    """Draws the shared negatives of sampled_ce: `n` items with replacement from the
    allowed items (default 1..N), uniformly or in proportion to their training
    popularity, and knows log q_j, the probability of drawing item j in one draw."""

    def __init__(self, n_items: int, n: int, kind: str = "uniform", popularity: np.ndarray | None = None,
                 allowed: np.ndarray | torch.Tensor | None = None, device: torch.device | str = "cpu"):
        if kind not in SAMPLERS:
            raise ValueError(f"backbone.loss_sampler: unknown sampler {kind!r}; known: {', '.join(SAMPLERS)}")
        if n < 1:
            raise ValueError(f"backbone.loss_negatives must be >= 1, got {n}")
        weight = np.ones(n_items + 1, dtype=np.float64)
        if kind == "popularity":
            if popularity is None or len(popularity) != n_items + 1:
                raise ValueError("the popularity sampler needs the training popularity of every item ([N+1])")
            weight = np.asarray(popularity, dtype=np.float64).copy()
        weight[0] = 0.0
        if allowed is not None:
            weight = weight * np.asarray(torch.as_tensor(allowed).cpu().numpy(), dtype=bool)
        if (weight > 0).sum() < 2:
            raise ValueError("sampled_ce needs at least two items it may draw")
        q = weight / weight.sum()
        self.n = n
        self.kind = kind
        self.device = torch.device(device)
        self.probs = torch.as_tensor(q, dtype=torch.float32, device=self.device)
        with np.errstate(divide="ignore"):
            # log of the expected count of j among n draws; -inf where j is never drawn.
            self.log_expected = torch.as_tensor(np.log(n * q), dtype=torch.float32, device=self.device)
        self.pool = torch.as_tensor(np.flatnonzero(weight > 0), dtype=torch.long, device=self.device)

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n] item ids."""
        if self.kind == "uniform":
            slots = torch.randint(0, self.pool.numel(), (self.n,), generator=generator, device=self.device)
            return self.pool[slots]
        return torch.multinomial(self.probs, self.n, replacement=True, generator=generator)


def sampled_softmax_ce(
    states: torch.Tensor,
    targets: torch.Tensor,
    items: Items,
    sampler: NegativeSampler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of each target against itself and the batch's shared negatives,
    logQ-corrected, accidental hits masked."""
    h, y = _positions(states, targets)
    if y.numel() == 0:
        return states.sum() * 0.0
    negatives = sampler.draw(generator)
    rows = item_rows(items, torch.cat([y, negatives]))
    positive = (h * rows[: y.numel()]).sum(-1, keepdim=True)
    negative = h @ rows[y.numel():].T
    logits = torch.cat([positive.float(), negative.float() - sampler.log_expected.to(h.device)[negatives]], 1)
    hits = torch.cat([torch.zeros_like(y, dtype=torch.bool).unsqueeze(1), negatives.unsqueeze(0) == y.unsqueeze(1)], 1)
    return F.cross_entropy(logits.masked_fill(hits, float("-inf")), torch.zeros_like(y))


def recommendation_loss(
    name: str,
    states: torch.Tensor,
    targets: torch.Tensor,
    items: Items,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
    sampler: NegativeSampler | None = None,
    n_items: int | None = None,
) -> torch.Tensor:
    """`allowed` (bool [N+1]): the items the loss may score; None = all. sampled_ce draws
    from `sampler` (built with the same allowed items). n_items: N, so that bce need not
    build the whole table to know it (default: from the table)."""
    if name == "ce":
        return full_softmax_ce(states, targets, items, allowed)
    if name == "bce":
        return sampled_bce(states, targets, items, generator, allowed, n_items)
    if name == "sampled_ce":
        if sampler is None:
            raise ValueError("loss sampled_ce needs a NegativeSampler")
        return sampled_softmax_ce(states, targets, items, sampler, generator)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
