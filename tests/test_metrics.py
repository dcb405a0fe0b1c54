"""Ranks, HR/NDCG, protocols, fixed sampled negatives and user/item groups."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmemb import metrics
from llmemb.backbones import (
    BackboneConfig,
    FixedItemEmbedding,
    build_backbone,
    build_id_backbone,
    left_pad,
)
from llmemb.data.dataset import Dataset
from llmemb.metrics import (
    EvalConfig,
    EvalGroups,
    Evaluator,
    compute_ranks,
    draw_negatives,
    evaluation_negatives,
    full_ranks,
    hit_ndcg,
    sampled_ranks,
    summarize,
)


def dataset_from_sequences(sequences: list[list[str]]) -> Dataset:
    rows = [(f"u{u}", item, float(t)) for u, seq in enumerate(sequences) for t, item in enumerate(seq)]
    return Dataset.from_interactions("toy", "item", rows, {}, user_core=3, item_core=1)


def random_dataset(n_users=40, n_items=60, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    seqs = [[f"i{x}" for x in rng.choice(n_items, size=rng.integers(4, 25), replace=False)] for _ in range(n_users)]
    seqs[0] = [f"i{x}" for x in range(n_items)]  # makes every item exist
    return dataset_from_sequences(seqs)


# -------------------------------------------------------------------- ranks
def test_known_ranks_give_known_hr_and_ndcg():
    ranks = torch.tensor([0, 1, 9, 10, 50])
    hit, ndcg = hit_ndcg(ranks, 10)
    assert hit.tolist() == [1, 1, 1, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0]
    assert np.allclose(ndcg.numpy(), expected)
    assert hit_ndcg(ranks, 1)[0].tolist() == [1, 0, 0, 0, 0]


def test_full_ranks_count_better_items_and_mask_history():
    #                       pad   1    2    3    4    5
    scores = torch.tensor([[9.0, 0.5, 0.9, 0.7, 0.1, 0.8]])
    target = torch.tensor([3])
    assert full_ranks(scores, target, [np.array([], dtype=np.int64)]).item() == 2  # items 2 and 5
    assert full_ranks(scores, target, [np.array([2])]).item() == 1                 # 2 is history
    assert full_ranks(scores, target, [np.array([2, 5, 3])]).item() == 0           # target stays a target


def test_ties_count_against_the_target():
    n_items = 20
    scores = torch.zeros(3, n_items + 1)
    ranks = full_ranks(scores, torch.tensor([1, 5, 20]), [np.array([2, 3]), np.array([], dtype=np.int64), np.array([7])])
    assert ranks.tolist() == [n_items - 1 - 2, n_items - 1, n_items - 1 - 1]  # worst possible
    assert hit_ndcg(ranks, 10)[0].sum() == 0
    neg = torch.tensor([[4, 5, 6], [4, 0, 0]])
    assert sampled_ranks(torch.zeros(2), torch.zeros(2, 3), neg).tolist() == [3, 1]  # empty slots skipped


def test_nan_target_score_ranks_last():
    scores = torch.tensor([[0.0, float("nan"), 0.3, 0.2]])
    assert full_ranks(scores, torch.tensor([1]), [np.array([], dtype=np.int64)]).item() == 2


def test_compute_ranks_matches_a_direct_computation():
    torch.manual_seed(0)
    n_items = 25
    table = torch.randn(n_items + 1, 8)
    model = build_backbone(BackboneConfig(name="sasrec", hidden=8, max_len=6, n_heads=1), FixedItemEmbedding(table))
    model.eval()
    histories = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9, 10, 11]), np.array([12])]
    targets = np.array([20, 21, 22])
    ranks = compute_ranks(model, histories, targets, "full", batch_size=2)
    scores = model.score_all(model.encode(left_pad(histories, 6)))
    for u, hist in enumerate(histories):
        s = scores[u].clone()
        t = s[targets[u]].item()
        others = [i for i in range(1, n_items + 1) if i not in set(hist.tolist()) | {targets[u]}]
        assert ranks[u].item() == sum(1 for i in others if s[i] >= t)
    negatives = np.array([[1, 2, 24], [3, 0, 0], [5, 6, 7]])
    ranks = compute_ranks(model, histories, targets, "sampled", negatives)
    for u in range(3):
        t = scores[u, targets[u]].item()
        assert ranks[u].item() == sum(1 for i in negatives[u] if i and scores[u, i] >= t)
    with pytest.raises(ValueError, match="negatives"):
        compute_ranks(model, histories, targets, "sampled")


# ---------------------------------------------------------------- negatives
def test_evaluation_negatives_avoid_every_item_of_the_user_and_are_fixed(tmp_path):
    ds = random_dataset()
    metrics._NEGATIVES.clear()
    neg = evaluation_negatives(ds, "test", n=20, seed=3, cache_dir=tmp_path)
    assert neg.shape == (ds.n_users, 20)
    assert (neg[0] == 0).all()  # user 0 interacted with every item: nothing to sample
    for u, seq in enumerate(ds.sequences[1:], start=1):
        row = neg[u][neg[u] != 0]
        assert not set(row.tolist()) & set(seq.tolist())             # never a user's item, target included
        assert len(set(row.tolist())) == len(row)                    # distinct
        assert row.min() >= 1 and row.max() <= ds.n_items
    assert evaluation_negatives(ds, "test", n=20, seed=3, cache_dir=tmp_path) is neg  # cached in memory
    metrics._NEGATIVES.clear()
    from_disk = evaluation_negatives(ds, "test", n=20, seed=3, cache_dir=tmp_path)
    assert np.array_equal(from_disk, neg)
    metrics._NEGATIVES.clear()
    assert np.array_equal(evaluation_negatives(ds, "test", n=20, seed=3), neg)  # and the draw itself is seeded
    valid = evaluation_negatives(ds, "valid", n=20, seed=3)
    assert not np.array_equal(valid, neg)                            # separate draws for valid and test
    assert not np.array_equal(evaluation_negatives(ds, "test", n=20, seed=4), neg)


def test_negatives_are_padded_when_a_user_saw_almost_everything():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([1, 2])]
    neg = draw_negatives(seqs, n_items=7, n=4, seed=0, stream=0)
    assert sorted(neg[0].tolist()) == [0, 0, 6, 7]
    assert len(set(neg[1].tolist())) == 4 and not set(neg[1].tolist()) & {0, 1, 2}


def test_stale_disk_cache_is_not_reused(tmp_path):
    metrics._NEGATIVES.clear()
    a = evaluation_negatives(random_dataset(seed=0), "valid", n=10, seed=1, cache_dir=tmp_path)
    metrics._NEGATIVES.clear()
    other = random_dataset(seed=5)
    b = evaluation_negatives(other, "valid", n=10, seed=1, cache_dir=tmp_path)
    for u, seq in enumerate(other.sequences):
        assert not set(b[u].tolist()) & set(seq.tolist())
    assert a.shape[0] == b.shape[0] and not np.array_equal(a, b)


# ------------------------------------------------------------------- groups
def test_groups_split_tail_head_short_long_and_popularity():
    ds = random_dataset(n_users=60)
    groups = EvalGroups.from_dataset(ds, head_fraction=0.2, length_threshold=10, n_buckets=5)
    assert np.array_equal(groups.tail, ds.tail_mask(0.2))
    train_len = np.array([len(s) - 2 for s in ds.sequences])
    assert np.array_equal(groups.long_user, train_len > 10)
    pop = ds.popularity()
    buckets = groups.item_bucket[1:]
    n = len(groups.bucket_pop)
    assert 1 < n <= 5 and set(buckets.tolist()) == set(range(n)) and groups.item_bucket[0] == -1
    for b in range(n - 1):                  # ordered by popularity, disjoint: a count never spans two
        assert pop[1:][buckets == b].max() < pop[1:][buckets == b + 1].min()
        assert groups.bucket_pop[b][1] < groups.bucket_pop[b + 1][0]
    for b, (low, high) in enumerate(groups.bucket_pop):                            # the labels are true
        assert pop[1:][buckets == b].min() == low and pop[1:][buckets == b].max() == high
    median = EvalGroups.from_dataset(ds).length_threshold
    assert median == float(np.median(train_len))


def test_popularity_buckets_are_disjoint_and_near_equal():
    from llmemb.metrics import popularity_buckets
    # no ties: five buckets of four items
    assert popularity_buckets(np.arange(20), 5) == [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]
    # a heavy tie (half the items seen once) stays in one bucket instead of spilling into two
    pop = np.array([1] * 10 + [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    ranges = popularity_buckets(pop, 5)
    assert ranges[0] == (1, 1) and all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
    assert sum(((pop >= lo) & (pop <= hi)).sum() for lo, hi in ranges) == len(pop)


def test_the_fixed_count_rule_marks_rare_items():
    ds = random_dataset(n_users=60)
    pop = ds.popularity()
    groups = EvalGroups.from_dataset(ds, tail_count=3)
    assert np.array_equal(groups.rare[1:], pop[1:] <= 3) and not groups.rare[0]
    targets = ds.split().test_target
    out = summarize(torch.zeros(len(targets), dtype=torch.long), targets, groups)
    assert out["rare"]["n"] == int((pop[targets] <= 3).sum()) and out["rare"]["n"] + out["frequent"]["n"] == len(targets)
    assert "rare" not in summarize(torch.zeros(len(targets), dtype=torch.long), targets, EvalGroups.from_dataset(ds))


def test_summarize_reports_each_group():
    ds = random_dataset(n_users=60)
    groups = EvalGroups.from_dataset(ds, length_threshold=10)
    targets = ds.split().test_target
    ranks = torch.where(torch.from_numpy(groups.tail[targets]), torch.tensor(50), torch.tensor(0))
    out = summarize(ranks, targets, groups, ks=(10, 20))
    assert out["overall"]["n"] == ds.n_users
    assert out["tail"]["hr@10"] == 0.0 and out["head"]["hr@10"] == 1.0 and out["head"]["ndcg@20"] == 1.0
    assert out["tail"]["n"] + out["head"]["n"] == ds.n_users
    assert out["short"]["n"] + out["long"]["n"] == ds.n_users
    assert sum(row["n"] for row in out["popularity"]) == ds.n_users
    assert np.isclose(out["overall"]["hr@10"], out["head"]["n"] / ds.n_users)
    empty = summarize(ranks, targets, EvalGroups.from_dataset(ds, length_threshold=10_000))
    assert empty["long"] == {"n": 0, "hr@10": None, "ndcg@10": None}


def test_evaluator_selection_score_matches_the_summary(tmp_path):
    ds = random_dataset()
    torch.manual_seed(0)
    model = build_id_backbone(BackboneConfig(name="gru4rec", hidden=8, max_len=10), ds.n_items)
    ev = Evaluator(ds, EvalConfig(n_negatives=15, select_protocol="sampled"), cache_dir=tmp_path)
    report = ev.evaluate(model, "valid")
    assert set(report) == {"full", "sampled"}
    assert np.isclose(ev.selection_score(model), report["sampled"]["overall"]["ndcg@10"])
    with pytest.raises(ValueError, match="protocol"):
        Evaluator(ds, EvalConfig(protocols=["full", "popular"]))


def test_the_papers_tail_rule_counts_distinct_users_over_whole_sequences():
    # item 1: three users, one of them twice; item 2: two users (one only as a test target);
    # item 3: one user, only in validation; items 4, 5: filler. Training counts would say otherwise.
    sequences = [np.array(s) for s in ([1, 1, 4, 5, 2], [1, 4, 5, 3, 4], [1, 2, 5, 4, 5])]
    ds = Dataset("toy", "toys", ["a", "b", "c"], [str(i) for i in range(1, 6)], sequences, [{}] * 5)
    assert ds.user_counts().tolist() == [0, 3, 2, 1, 3, 3]
    groups = EvalGroups.from_dataset(ds, paper_tail_below=3)   # strictly fewer than 3 users
    assert groups.paper_tail.tolist() == [False, False, True, True, False, False]
    targets = ds.split().test_target                            # 2, 4, 5
    ranks = torch.tensor([0, 50, 50])
    out = summarize(ranks, targets, groups)
    assert out["paper_tail"] == {"n": 1, "hr@10": 1.0, "ndcg@10": 1.0}
    assert out["paper_popular"]["n"] == 2 and out["paper_popular"]["hr@10"] == 0.0
    assert "paper_tail" not in summarize(ranks, targets, EvalGroups.from_dataset(ds))
