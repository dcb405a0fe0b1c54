"""Ranking evaluation: ranks under two protocols, HR@K / NDCG@K per user group.

Protocols (docs/METHOD.md, Evaluation):
- "full": the target against every item; column 0 and the user's history
  (except the target itself) are left out (RecBole).
- "sampled": the target against 100 negatives drawn uniformly from the items
  the user never interacted with (the paper). The draw is made once from a
  fixed seed (separately for valid and test), kept in memory and, given a
  cache directory, on disk, so every model and run sees the same candidates.

Ranks are 0-based and ties count against the target: rank = #others scoring
higher + #others scoring the same, so a model that scores everything alike
ranks every target last. A NaN target score also ranks last.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmemb.backbones.base import SequentialBackbone, left_pad
from llmemb.data.dataset import Dataset

PROTOCOLS = ("full", "sampled")


# ------------------------------------------------------------------ ranks
def rank_against(target_scores: torch.Tensor, other_scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """target [B], others [B, C], valid [B, C] (False = not a competitor) -> 0-based ranks [B]."""
    t = target_scores.unsqueeze(1)
    ranks = ((other_scores >= t) & valid).sum(1)
    return torch.where(torch.isnan(target_scores), valid.sum(1), ranks)


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["full", "sampled"])
    ks: list[int] = field(default_factory=lambda: [10, 20])
    select_protocol: str = "full"    # early stopping on valid <select_metric> under this protocol
    select_metric: str = "ndcg@10"
    n_negatives: int = 100
    negatives_seed: int = 2025
    head_fraction: float = 0.2       # head = the 20% most popular items by training interactions
    tail_count: int | None = None    # the reference's fixed-count rule: an item with at most this many
                                     # training interactions is "rare" (4 Beauty/Fashion, 13 Yelp); None = off
    paper_tail_below: int | None = None  # the paper's code's tail exactly: fewer than this many distinct
                                         # users over whole sequences (validation and test included),
                                         # reported as "paper_tail" / "paper_popular"; None = off
    length_threshold: float | None = None  # short history: train length <= this; None = median
    pop_buckets: int = 5
    batch_size: int = 512            # users scored at once
    chunk_items: int = 65536         # items scored at once: full ranking holds at most
                                     # batch_size x chunk_items scores (128 MiB at the defaults)



def full_ranks(scores: torch.Tensor, targets: torch.Tensor, histories: Sequence[np.ndarray]) -> torch.Tensor:
    """scores [B, N+1], targets [B], per-row history item ids -> ranks among all items
    except padding, the history and the target itself (the whole score matrix at once;
    `chunked_full_ranks` is the bounded-memory form evaluation uses)."""
    seen = SeenItems.build(histories, targets.cpu().numpy(), scores.device)
    target_scores = scores[torch.arange(scores.shape[0]), targets]
    ranks = _count_rank(scores, 0, scores.shape[1], targets, target_scores, seen, 0, scores.shape[0])
    return _rank_or_last(ranks, target_scores, seen, 0, scores.shape[0], scores.shape[1])


@dataclass
class SeenItems:
    """Per user, the distinct items a full-protocol rank leaves out besides padding: the
    history and the target (CSR: user u's items are ids[ptr[u]:ptr[u+1]])."""

    ptr: torch.Tensor   # [U+1]
    ids: torch.Tensor   # [sum]

    @classmethod
    def build(cls, histories: Sequence[np.ndarray], targets: np.ndarray, device: torch.device | str) -> SeenItems:
        rows = [np.unique(np.append(np.asarray(h, dtype=np.int64), np.int64(t))) for h, t in zip(histories, targets)]
        rows = [r[r > 0] for r in rows]
        lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(torch.from_numpy(ptr).to(device), torch.from_numpy(ids).to(device))

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in the batch, item id) of every left-out item of users start..stop-1."""
        lo, hi = int(self.ptr[start]), int(self.ptr[stop])
        counts = self.ptr[start + 1:stop + 1] - self.ptr[start:stop]
        rows = torch.repeat_interleave(torch.arange(stop - start, device=self.ids.device), counts)
        return rows, self.ids[lo:hi]


def _count_rank(chunk: torch.Tensor, first: int, n_cols: int, targets: torch.Tensor, target_scores: torch.Tensor,
                seen: SeenItems, start: int, stop: int) -> torch.Tensor:
    """Over columns first..first+n_cols-1 (chunk [B, n_cols]): how many items other than padding and
    the users' left-out items score at least the target's score."""
    ge = chunk >= target_scores.unsqueeze(1)
    if first == 0:
        ge[:, 0] = False
    rows, ids = seen.batch(start, stop)
    inside = (ids >= first) & (ids < first + n_cols)
    ge[rows[inside], ids[inside] - first] = False
    return ge.sum(1)


def chunked_full_ranks(user: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, seen: SeenItems,
                       start: int, chunk_items: int) -> torch.Tensor:
    """Full-protocol ranks of users start..start+B-1 (user [B, d]) with at most B x chunk_items scores
    in memory. When the table is wider than one chunk, a first pass reads each target's score
    out of the same chunked products the count uses, so the result equals the one-matrix count."""
    n = table.shape[0]
    stop = start + user.shape[0]
    step = max(1, chunk_items)
    rows = torch.arange(user.shape[0], device=user.device)
    if n <= step:
        scores = (user @ table.T).float()
        return _rank_or_last(_count_rank(scores, 0, n, targets, scores[rows, targets], seen, start, stop),
                             scores[rows, targets], seen, start, stop, n)
    target_scores = torch.empty(user.shape[0], device=user.device)
    for first in range(0, n, step):
        inside = (targets >= first) & (targets < first + step)
        if inside.any():
            part = (user[inside] @ table[first:first + step].T).float()
            target_scores[inside] = part[torch.arange(part.shape[0], device=part.device), targets[inside] - first]
    ranks = torch.zeros(user.shape[0], dtype=torch.long, device=user.device)
    for first in range(0, n, step):
        part = (user @ table[first:first + step].T).float()
        ranks += _count_rank(part, first, part.shape[1], targets, target_scores, seen, start, stop)
    return _rank_or_last(ranks, target_scores, seen, start, stop, n)


def _rank_or_last(ranks: torch.Tensor, target_scores: torch.Tensor, seen: SeenItems, start: int, stop: int,
                  n_cols: int) -> torch.Tensor:
    """A NaN target score ranks last: behind every competitor."""
    competitors = (n_cols - 1) - (seen.ptr[start + 1:stop + 1] - seen.ptr[start:stop])
    return torch.where(torch.isnan(target_scores), competitors, ranks)


def sampled_ranks(target_scores: torch.Tensor, negative_scores: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Ranks among sampled negatives [B, K]; id 0 marks an empty slot (user saw almost every item)."""
    return rank_against(target_scores, negative_scores, negatives != 0)


def hit_ndcg(ranks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row HR@k and NDCG@k (one relevant item) from 0-based ranks."""
    hit = (ranks < k).double()
    return hit, hit / torch.log2(ranks.double() + 2.0)


@dataclass
class EvalCases:
    """One split's evaluation cases, on the model's device, built once and reused every epoch.
    They are stored shortest history first, so that a batch of cases has histories of similar
    length and its padding columns can be cut (at Beauty's median of 6 items and a window of 200,
    batches in user order are nearly all padding); `order` maps them back to the caller's order."""

    inputs: torch.Tensor          # [U, max_len] left-padded histories (their last max_len items)
    targets: torch.Tensor         # [U]
    seen: SeenItems               # what the full protocol leaves out
    negatives: torch.Tensor | None = None   # [U, K] sampled-protocol candidates
    order: torch.Tensor | None = None       # [U]: stored case i is the caller's case order[i]

    @classmethod
    def build(cls, histories: Sequence[np.ndarray], targets: np.ndarray, max_len: int, device: torch.device | str,
              negatives: np.ndarray | None = None) -> EvalCases:
        order = np.argsort([min(len(h), max_len) for h in histories], kind="stable")
        histories = [histories[i] for i in order]
        targets = np.asarray(targets)[order]
        return cls(left_pad(histories, max_len).to(device),
                   torch.as_tensor(targets, dtype=torch.long).to(device),
                   SeenItems.build(histories, targets, device),
                   None if negatives is None else torch.as_tensor(np.asarray(negatives)[order], dtype=torch.long).to(device),
                   torch.as_tensor(order, dtype=torch.long))


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def ranks_of_cases(model: SequentialBackbone, cases: EvalCases, protocol: str, batch_size: int = 512,
                   chunk_items: int = 1 << 16) -> torch.Tensor:
    """0-based ranks of every case's target (on the CPU). Memory: at most batch_size x chunk_items
    scores at once; the item table is computed once per call."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "sampled" and cases.negatives is None:
        raise ValueError("the sampled protocol needs negatives")
    was_training = model.training
    model.eval()
    out = []
    try:
        table = model.item_embedding.table() if protocol == "full" else None
        for start in range(0, len(cases.targets), batch_size):
            stop = min(start + batch_size, len(cases.targets))
            target = cases.targets[start:stop]
            user = model.encode(_trimmed(cases.inputs[start:stop]))
            if table is not None:
                out.append(chunked_full_ranks(user, table, target, cases.seen, start, chunk_items))
            elif cases.negatives is not None:
                neg = cases.negatives[start:stop]
                scores = model.score_candidates(user, torch.cat([target[:, None], neg], 1)).float()
                out.append(sampled_ranks(scores[:, 0], scores[:, 1:], neg))
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, dtype=torch.long)
    ranks = torch.cat(out).cpu()
    if cases.order is None:
        return ranks
    restored = torch.empty_like(ranks)
    restored[cases.order] = ranks
    return restored


def _trimmed(inputs: torch.Tensor) -> torch.Tensor:
    """Left-padded rows without the columns that are padding in every row (never all of them)."""
    real = (inputs != 0).any(0)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else inputs.shape[1] - 1
    return inputs[:, first:]


def compute_ranks(
    model: SequentialBackbone,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    protocol: str,
    negatives: np.ndarray | None = None,
    batch_size: int = 512,
    chunk_items: int = 1 << 16,
) -> torch.Tensor:
    """Rank each user's target; histories are full (the model sees the last max_len items,
    the full protocol masks all of them)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "sampled" and negatives is None:
        raise ValueError("the sampled protocol needs negatives")
    cases = EvalCases.build(histories, targets, model.config.max_len, model_device(model), negatives)
    return ranks_of_cases(model, cases, protocol, batch_size, chunk_items)


# ------------------------------------------------------------- negatives
def sequences_fingerprint(sequences: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(np.asarray([len(s) for s in sequences], dtype=np.int64).tobytes())
    for s in sequences:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
    return h.hexdigest()


def draw_negatives(sequences: Sequence[np.ndarray], n_items: int, n: int, seed: int, stream: int) -> np.ndarray:
    """[U, n] distinct items per user, uniform over the items outside the user's whole
    sequence; 0 fills the row when fewer than n such items exist."""
    rng = np.random.default_rng([seed, stream])
    out = np.zeros((len(sequences), n), dtype=np.int64)
    for u, seq in enumerate(sequences):
        seen = np.unique(seq)
        if n_items - len(seen) <= n:
            free = np.setdiff1d(np.arange(1, n_items + 1), seen)
            out[u, : len(free)] = free
            continue
        chosen = np.zeros(0, dtype=np.int64)
        while len(chosen) < n:
            draw = rng.integers(1, n_items + 1, size=2 * n)
            draw = draw[~np.isin(draw, seen) & ~np.isin(draw, chosen)]
            _, first = np.unique(draw, return_index=True)
            chosen = np.concatenate([chosen, draw[np.sort(first)]])
        out[u] = chosen[:n]
    return out


_NEGATIVES: dict[tuple[str, str, int, int], np.ndarray] = {}
SPLIT_STREAMS = {"valid": 0, "test": 1}


def evaluation_negatives(
    dataset: Dataset, which: str, n: int = 100, seed: int = 2025, cache_dir: str | Path | None = None
) -> np.ndarray:
    """The fixed negatives of split `which` (valid | test): drawn once, then reused."""
    if which not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {which!r}; known: valid, test")
    fingerprint = sequences_fingerprint(dataset.sequences)
    key = (fingerprint, which, n, seed)
    path = Path(cache_dir) / f"negatives-{which}-n{n}-seed{seed}.npz" if cache_dir is not None else None
    if key in _NEGATIVES:
        # Drawn before in this process: still leave them in this cache directory, where
        # other processes (the grid's workers) look for them.
        if path is not None and not path.is_file():
            _save_negatives(path, _NEGATIVES[key], fingerprint)
        return _NEGATIVES[key]
    negatives = None
    if path is not None and path.is_file():
        stored = np.load(path)
        if str(stored["fingerprint"]) == fingerprint:
            negatives = stored["negatives"]
    if negatives is None:
        negatives = draw_negatives(dataset.sequences, dataset.n_items, n, seed, SPLIT_STREAMS[which])
        if path is not None:
            _save_negatives(path, negatives, fingerprint)
    _NEGATIVES[key] = negatives
    return negatives


def _save_negatives(path: Path, negatives: np.ndarray, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, negatives=negatives, fingerprint=np.asarray(fingerprint))


# ---------------------------------------------------------------- groups
def popularity_buckets(pop: np.ndarray, n_buckets: int) -> list[tuple[int, int]]:
    """Disjoint popularity ranges [(low, high), ...], least popular first, each holding
    about 1/n_buckets of the items. Items of one popularity always share a bucket, so
    a heavily tied value (many items seen once) makes fewer, uneven buckets rather
    than two buckets with overlapping labels."""
    values, counts = np.unique(pop, return_counts=True)
    target = len(pop) / max(n_buckets, 1)
    ranges: list[tuple[int, int]] = []
    low, total = None, 0
    for value, count in zip(values.tolist(), counts.tolist()):
        low = value if low is None else low
        total += count
        if total >= target * (len(ranges) + 1) or total == len(pop):
            ranges.append((int(low), int(value)))
            low = None
    return ranges


@dataclass
class EvalGroups:
    """Which targets are tail / head, which users short / long, each item's popularity bucket."""

    tail: np.ndarray            # bool [N+1]: outside the head_fraction most popular
    long_user: np.ndarray       # bool [U]: training sequence longer than length_threshold
    length_threshold: float
    item_bucket: np.ndarray     # int [N+1]: 0 = least popular bucket ... -1 for padding
    bucket_pop: list[tuple[int, int]]  # disjoint (min, max) training popularity per bucket
    rare: np.ndarray | None = None     # bool [N+1]: at most tail_count training interactions
    paper_tail: np.ndarray | None = None  # bool [N+1]: fewer than paper_tail_below users, all splits

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, head_fraction: float = 0.2, length_threshold: float | None = None, n_buckets: int = 5,
        tail_count: int | None = None, paper_tail_below: int | None = None,
    ) -> EvalGroups:
        train_lengths = np.asarray([max(len(s) - 2, 0) for s in dataset.sequences])
        threshold = float(np.median(train_lengths)) if length_threshold is None else float(length_threshold)
        pop = dataset.popularity()
        ranges = popularity_buckets(pop[1:], n_buckets)
        bucket = np.full(dataset.n_items + 1, -1, dtype=np.int64)
        for b, (low, high) in enumerate(ranges):
            inside = (pop >= low) & (pop <= high)
            inside[0] = False
            bucket[inside] = b
        rare = None
        if tail_count is not None:
            rare = pop <= tail_count
            rare[0] = False
        paper_tail = None
        if paper_tail_below is not None:
            paper_tail = dataset.user_counts() < paper_tail_below
            paper_tail[0] = False
        return cls(dataset.tail_mask(head_fraction), train_lengths > threshold, threshold, bucket, ranges, rare,
                   paper_tail)


def group_metrics(ranks: torch.Tensor, select: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    sel = torch.from_numpy(np.asarray(select, dtype=bool))
    r = ranks[sel]
    out: dict[str, Any] = {"n": int(r.numel())}
    for k in ks:
        hit, ndcg = hit_ndcg(r, k)
        out[f"hr@{k}"] = float(hit.mean()) if r.numel() else None
        out[f"ndcg@{k}"] = float(ndcg.mean()) if r.numel() else None
    return out


# The groups `summarize` reports for every run: all targets, tail and head target items,
# short and long user histories ("rare" and "frequent" too when a fixed-count rule is set,
# "paper_tail" and "paper_popular" when the paper's rule is).
GROUPS = ("overall", "tail", "head", "short", "long")
ITEM_GROUPS = ("overall", "tail", "head")  # the item-popularity view the reports lead with
# Item splits reported only when their rule is configured: (EvalGroups field, its members' group, the rest's).
OPTIONAL_SPLITS = (("rare", "rare", "frequent"), ("paper_tail", "paper_tail", "paper_popular"))


def summarize(ranks: torch.Tensor, targets: np.ndarray, groups: EvalGroups, ks: Sequence[int] = (10,)) -> dict[str, Any]:
    """HR/NDCG@k overall, on tail and head targets, short and long histories, per popularity bucket."""
    tail = groups.tail[targets]
    out: dict[str, Any] = {
        "overall": group_metrics(ranks, np.ones(len(targets), dtype=bool), ks),
        "tail": group_metrics(ranks, tail, ks),
        "head": group_metrics(ranks, ~tail, ks),
        "short": group_metrics(ranks, ~groups.long_user, ks),
        "long": group_metrics(ranks, groups.long_user, ks),
        "popularity": [],
    }
    for attribute, inside, outside in OPTIONAL_SPLITS:
        mask = getattr(groups, attribute)
        if mask is not None:
            chosen = mask[targets]
            out[inside] = group_metrics(ranks, chosen, ks)
            out[outside] = group_metrics(ranks, ~chosen, ks)
    bucket = groups.item_bucket[targets]
    for b, (low, high) in enumerate(groups.bucket_pop):
        row = {"bucket": b, "min_pop": low, "max_pop": high, "items": int((groups.item_bucket == b).sum())}
        row.update(group_metrics(ranks, bucket == b, ks))
        out["popularity"].append(row)
    return out


# ------------------------------------------------------------- evaluator
class Evaluator:
    """Valid / test evaluation of a backbone on one dataset, with fixed sampled negatives."""

    def __init__(self, dataset: Dataset, config: EvalConfig | None = None, cache_dir: str | Path | None = None):
        self.dataset = dataset
        self.config = config or EvalConfig()
        self.cache_dir = cache_dir
        for protocol in [*self.config.protocols, self.config.select_protocol]:
            if protocol not in PROTOCOLS:
                raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        self.split = dataset.split()
        self._prepared: dict[tuple[str, int, str], EvalCases] = {}
        self.groups = EvalGroups.from_dataset(
            dataset, self.config.head_fraction, self.config.length_threshold, self.config.pop_buckets,
            self.config.tail_count, self.config.paper_tail_below,
        )

    def cases(self, which: str) -> tuple[list[np.ndarray], np.ndarray]:
        if which == "valid":
            return self.split.valid_history, self.split.valid_target
        if which == "test":
            return self.split.test_history, self.split.test_target
        raise ValueError(f"unknown split {which!r}; known: valid, test")

    def negatives(self, which: str) -> np.ndarray:
        c = self.config
        return evaluation_negatives(self.dataset, which, c.n_negatives, c.negatives_seed, self.cache_dir)

    def prepared(self, which: str, max_len: int, device: torch.device) -> EvalCases:
        """Split `which` as EvalCases on `device`, built once per (split, max_len, device)."""
        key = (which, max_len, str(device))
        if key not in self._prepared:
            histories, targets = self.cases(which)
            sampled = "sampled" in (*self.config.protocols, self.config.select_protocol)
            self._prepared[key] = EvalCases.build(histories, targets, max_len, device,
                                                  self.negatives(which) if sampled else None)
        return self._prepared[key]

    def ranks(self, model: SequentialBackbone, which: str, protocol: str) -> torch.Tensor:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        cases = self.prepared(which, model.config.max_len, model_device(model))
        return ranks_of_cases(model, cases, protocol, self.config.batch_size, self.config.chunk_items)

    def evaluate(self, model: SequentialBackbone, which: str, protocols: Sequence[str] | None = None) -> dict[str, Any]:
        """{protocol: summarize(...)} for split `which`."""
        _, targets = self.cases(which)
        return {
            p: summarize(self.ranks(model, which, p), targets, self.groups, self.config.ks)
            for p in (protocols or self.config.protocols)
        }

    def selection_score(self, model: SequentialBackbone) -> float:
        """The early-stopping score: overall valid <select_metric> under select_protocol."""
        metric, _, k = self.config.select_metric.partition("@")
        if metric not in ("hr", "ndcg") or not k.isdigit():
            raise ValueError(f"select_metric must look like ndcg@10 or hr@10, got {self.config.select_metric!r}")
        ranks = self.ranks(model, "valid", self.config.select_protocol)
        hit, ndcg = hit_ndcg(ranks, int(k))
        return float((ndcg if metric == "ndcg" else hit).mean())
