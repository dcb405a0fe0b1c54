"""Scores over the catalogue: top-k of table @ user with rows left out, and candidate scores.

Exact top-k over a large table is bound by reading the table once (memory
bandwidth). The single pass does one matrix-vector product into a reused score
buffer (a fresh multi-megabyte buffer per request costs page faults), writes
-inf at the few rows to leave out (padding, deleted items, the history) and
runs torch.topk. The chunked variant (score `chunk_rows` rows at a time, merge
the partial top-k) bounds the buffer for huge catalogues; bench/serve.py
measures both against a plain streaming pass (single pass: ~1.2x of it at 1M x 64).
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def top_k(
    user: torch.Tensor,
    table: torch.Tensor,
    k: int,
    drop_rows: torch.Tensor | None = None,
    chunk_rows: int = 0,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """user [d], table [R, d] -> (scores [<=k], rows [<=k]), best first.

    drop_rows: row ids never returned (padding, deleted items, the history).
    out: an optional float buffer of at least R entries for the scores.
    Fewer than k rows come back when fewer are allowed.
    """
    n = table.shape[0]
    if chunk_rows <= 0 or n <= chunk_rows:
        scores = torch.mv(table, user, out=out[:n]) if out is not None and out.shape[0] >= n else torch.mv(table, user)
        if drop_rows is not None and drop_rows.numel():
            scores.index_fill_(0, drop_rows, NEG_INF)
        values, rows = torch.topk(scores, min(k, n))
    else:
        best_v, best_r = [], []
        for start in range(0, n, chunk_rows):
            part = torch.mv(table[start:start + chunk_rows], user)
            if drop_rows is not None and drop_rows.numel():
                local = drop_rows - start
                part.index_fill_(0, local[(local >= 0) & (local < part.shape[0])], NEG_INF)
            v, r = torch.topk(part, min(k, part.shape[0]))
            best_v.append(v)
            best_r.append(r + start)
        merged = torch.cat(best_v)
        values, order = torch.topk(merged, min(k, merged.shape[0]))
        rows = torch.cat(best_r)[order]
    keep = values > NEG_INF
    return values[keep], rows[keep]


class TopK:
    """top_k with a score buffer kept between calls; use from one thread only."""

    def __init__(self, chunk_rows: int = 0):
        self.chunk_rows = chunk_rows
        self._buffer = torch.empty(0)

    def __call__(self, user: torch.Tensor, table: torch.Tensor, k: int,
                 drop_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunk_rows <= 0 and (self._buffer.shape[0] < table.shape[0] or self._buffer.device != table.device):
            self._buffer = torch.empty(table.shape[0], dtype=table.dtype, device=table.device)
        return top_k(user, table, k, drop_rows, self.chunk_rows, self._buffer if self.chunk_rows <= 0 else None)


def score_rows(user: torch.Tensor, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """user [d], rows [C] -> scores [C]. Each distinct row is scored once and gathered back, so a
    candidate asked for twice gets the same score (a matmul's rounding depends on the row's position)."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return (table[unique] @ user)[inverse]


def best_items(user: torch.Tensor, table: torch.Tensor, k: int, blocked_rows: torch.Tensor, topk: TopK,
               history: list[int] | None = None, candidates: list[int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best rows for `user`, best first: over the whole table less `blocked_rows` (and less
    `history` when given), or over the distinct `candidates` (less `history`)."""
    seen = torch.tensor(history, dtype=torch.long, device=table.device) if history is not None else None
    if candidates is None:
        blocked_rows = blocked_rows.to(table.device)
        drop = blocked_rows if seen is None else torch.cat([blocked_rows, seen])
        return topk(user, table, k, drop)
    cand = torch.tensor(list(dict.fromkeys(candidates)), dtype=torch.long, device=table.device)
    scores = score_rows(user, table, cand)
    if seen is not None:
        scores = scores.masked_fill(torch.isin(cand, seen), NEG_INF)
    values, order = torch.topk(scores, min(k, scores.shape[0]))
    keep = values > NEG_INF
    return values[keep], cand[order][keep]
