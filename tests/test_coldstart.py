"""The cold-start split: held-out items only ever appear as test targets; and a
cold-start RAT run that keeps them out of the loss and of the PCA fit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmemb.backbones import BackboneConfig
from llmemb.data.coldstart import cold_start_split
from llmemb.data.dataset import Dataset
from llmemb.methods import RATConfig, build_model
from llmemb.metrics import EvalConfig
from trainer.config import Config, TrainConfig
from trainer.runs.method_run import RunSplit, Tables, run_method
from trainer.runs.store import load_item_table
from trainer.stages.train import seed_everything

N_ITEMS = 30


def random_dataset(n_users: int = 40, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    sequences = [rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(3, 10)), replace=False)
                 for _ in range(n_users)]
    return Dataset(
        name="rand", domain="movie", user_ids=[f"u{u}" for u in range(n_users)],
        item_ids=[f"m{i}" for i in range(1, N_ITEMS + 1)], sequences=[s.astype(np.int64) for s in sequences],
        attributes=[{"title": f"Movie {i}", "genres": ["Drama"]} for i in range(1, N_ITEMS + 1)],
        filter_log={"user_core": 3},
    )


def expected_kept(ds: Dataset, cold: np.ndarray) -> tuple[list[str], list[list[int]]]:
    """By hand: drop cold items from all but the last position; keep users with >= 3 items."""
    users, seqs = [], []
    for user, seq in zip(ds.user_ids, ds.sequences):
        kept = [int(x) for x in seq[:-1] if not cold[x]] + [int(seq[-1])]
        if len(kept) >= 3:
            users.append(user)
            seqs.append(kept)
    return users, seqs


def test_a_fraction_of_items_is_cold_and_appears_only_as_test_targets():
    ds = random_dataset()
    split = cold_start_split(ds, fraction=0.2, seed=3)
    cold = split.cold
    assert cold.shape == (N_ITEMS + 1,) and cold.dtype == bool and not cold[0]
    assert cold.sum() == 6
    out = split.dataset
    users, seqs = expected_kept(ds, cold)
    assert out.user_ids == users
    assert [s.tolist() for s in out.sequences] == seqs
    n_dropped = ds.n_users - len(users)
    assert n_dropped > 0, "the fixture should make some users too short"
    assert out.filter_log["cold_dropped_users"] == n_dropped
    assert out.filter_log["cold_items"] == 6 and out.filter_log["cold_fraction"] == 0.2
    assert out.filter_log["user_core"] == 3   # the original log is kept
    for seq in out.sequences:
        assert len(seq) >= 3
        assert not cold[seq[:-1]].any()       # history, training and validation: warm only
    split_parts = out.split()
    for train in split_parts.train:
        assert not cold[train].any()
    assert not cold[split_parts.valid_target].any()
    assert cold[split_parts.test_target].any()     # some users test on a cold item
    assert out.popularity()[cold].sum() == 0       # no training interaction with a cold item


def test_item_ids_and_attributes_are_unchanged():
    ds = random_dataset()
    split = cold_start_split(ds, 0.1, seed=0)
    out = split.dataset
    assert out.item_ids == ds.item_ids and out.attributes == ds.attributes and out.n_items == ds.n_items
    assert out.domain == ds.domain and out.name == "rand-cold"
    # every kept user's test target is the original last item
    last = {u: int(s[-1]) for u, s in zip(ds.user_ids, ds.sequences)}
    assert all(last[u] == int(s[-1]) for u, s in zip(out.user_ids, out.sequences))
    assert int(round(0.1 * N_ITEMS)) == split.cold.sum()


def test_warm_rows_and_cold_test_users_are_consistent():
    ds = random_dataset()
    split = cold_start_split(ds, 0.25, seed=1)
    warm = split.warm_rows
    assert warm.dtype.kind == "i" and len(warm) == N_ITEMS - split.cold.sum()
    assert not split.cold[warm + 1].any()                       # row r = item r + 1
    assert set(range(N_ITEMS)) - set(warm.tolist()) == set((np.flatnonzero(split.cold) - 1).tolist())
    users = split.cold_test_users()
    assert users.shape == (split.dataset.n_users,) and users.dtype == bool
    assert users.tolist() == [bool(split.cold[s[-1]]) for s in split.dataset.sequences]
    assert 0 < users.sum() < len(users)


def test_split_is_deterministic_for_a_seed():
    ds = random_dataset()
    a, b = cold_start_split(ds, 0.2, seed=7), cold_start_split(ds, 0.2, seed=7)
    assert np.array_equal(a.cold, b.cold)
    assert [s.tolist() for s in a.dataset.sequences] == [s.tolist() for s in b.dataset.sequences]
    assert a.dataset.user_ids == b.dataset.user_ids
    others = [cold_start_split(ds, 0.2, seed=s).cold for s in (8, 9)]
    assert any(not np.array_equal(a.cold, c) for c in others)
    # the input dataset is not modified
    assert ds.n_users == 40 and ds.name == "rand"


def test_at_least_one_item_is_cold():
    split = cold_start_split(random_dataset(), 0.001, seed=0)
    assert split.cold.sum() == 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        cold_start_split(random_dataset(), fraction)


# ------------------------------------------------------- a cold-start RAT run
def tiny_config(tmp_path) -> Config:
    return Config(
        dataset={"name": "rand"},
        backbone=BackboneConfig(name="sasrec", hidden=8, max_len=6, n_layers=1, n_heads=1, dropout=0.0),
        train=TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=5, progress=False),
        eval=EvalConfig(n_negatives=5, ks=[10]),
        runs_dir=str(tmp_path / "runs"), reports_dir=str(tmp_path / "reports"),
    )


def test_cold_start_run_keeps_cold_items_out_of_training_and_pca(tmp_path):
    ds = random_dataset(n_users=60, seed=1)
    split = cold_start_split(ds, 0.2, seed=0)
    cold_ds = split.dataset
    loss_items = ~split.cold
    loss_items[0] = False
    scft = torch.randn(N_ITEMS, 24, generator=torch.Generator().manual_seed(0)) + 1.0
    config = tiny_config(tmp_path)
    users = split.cold_test_users()
    rat = RATConfig(d_pca=6)
    run_split = RunSplit(cold_ds, Tables(scft=scft), loss_items=loss_items, fit_rows=split.warm_rows,
                         user_groups={"cold_targets": users})
    none = run_method(config, run_split, "none", rat, tmp_path / "none")
    id_table = load_item_table(tmp_path / "none")
    run = run_method(config, run_split, "llmemb", rat, tmp_path / "llmemb", id_table=id_table)
    # the PCA saw only warm rows
    assert torch.allclose(run.pca.mean, scft[torch.from_numpy(split.warm_rows)].mean(0), atol=1e-5)
    # the ID model never trained the cold rows: they are still at their initial values
    seed_everything(config.train.seed)
    initial = build_model("none", config.backbone, N_ITEMS, rat)[0].item_embedding.table().detach()
    moved = (id_table - initial).abs().sum(1)
    assert torch.equal(moved[torch.from_numpy(split.cold)], torch.zeros(int(split.cold.sum())))
    assert (moved[torch.from_numpy(loss_items)] > 0).all()
    for r in (none, run):
        groups = r.metrics["test_groups"]["cold_targets"]
        assert set(groups) == {"full", "sampled"}
        assert groups["full"]["n"] == int(users.sum()) and groups["full"]["hr@10"] is not None
    saved = json.loads((tmp_path / "llmemb" / "metrics.json").read_text())
    assert saved["test_groups"] == run.metrics["test_groups"]
