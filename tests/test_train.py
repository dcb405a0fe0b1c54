"""Losses against hand computations; training rows; fit learns, stops early, restores the best."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmemb.backbones import BackboneConfig, build_id_backbone
from llmemb.data.dataset import Dataset
from llmemb.losses import (
    full_softmax_ce,
    recommendation_loss,
    sampled_bce,
    training_negatives,
)
from llmemb.methods import RATConfig, build_model
from llmemb.metrics import EvalConfig, Evaluator
from trainer.config import TrainConfig
from trainer.stages.train import fit, seed_everything, training_rows

N_ITEMS = 60


def cyclic_dataset(n_users: int = 80, seed: int = 0) -> Dataset:
    """Every user walks the item cycle 1 -> 2 -> ... -> N -> 1 from a random start: fully learnable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, length = rng.integers(N_ITEMS), rng.integers(6, 16)
        rows += [(f"u{u}", f"i{(start + t) % N_ITEMS}", float(t)) for t in range(length)]
    rows += [("all", f"i{i}", float(i)) for i in range(N_ITEMS)]  # every item exists
    return Dataset.from_interactions("cycle", "item", rows, {}, user_core=3, item_core=1)


def small(name: str, ds: Dataset, loss: str = "ce") -> torch.nn.Module:
    seed_everything(0)
    cfg = BackboneConfig(name=name, hidden=32, max_len=10, n_heads=2, dropout=0.1, loss=loss, mask_ratio=0.4)
    return build_id_backbone(cfg, ds.n_items)


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 30, "batch_size": 32, "lr": 5e-3, "patience": 30, "progress": False, **kw})


# ------------------------------------------------------------------- losses
def test_full_softmax_ce_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6, 4, generator=g)
    states = torch.randn(2, 3, 4, generator=g)
    targets = torch.tensor([[0, 2, 5], [1, 0, 0]])
    expected = []
    for b, t in [(0, 1), (0, 2), (1, 0)]:
        logits = [float(states[b, t] @ table[i]) for i in range(1, 6)]  # column 0 excluded
        y = int(targets[b, t])
        expected.append(-logits[y - 1] + math.log(sum(math.exp(x) for x in logits)))
    assert math.isclose(float(full_softmax_ce(states, targets, table)), sum(expected) / 3, rel_tol=1e-5)


def test_sampled_bce_matches_a_hand_computation_with_the_same_negatives():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(8, 4, generator=g)
    states = torch.randn(2, 3, 4, generator=g)
    targets = torch.tensor([[0, 3, 7], [1, 0, 2]])
    loss = sampled_bce(states, targets, table, torch.Generator().manual_seed(5))
    y = targets[targets > 0]
    negatives = training_negatives(y, 7, torch.Generator().manual_seed(5))
    h = states[targets > 0]
    sig = torch.sigmoid
    expected = -(torch.log(sig((h * table[y]).sum(-1))) + torch.log(1 - sig((h * table[negatives]).sum(-1)))).mean()
    assert torch.isclose(loss, expected, atol=1e-5)
    assert torch.equal(loss, sampled_bce(states, targets, table, torch.Generator().manual_seed(5)))


def test_negatives_are_uniform_and_never_the_target():
    targets = torch.full((20000,), 3)
    neg = training_negatives(targets, 5, torch.Generator().manual_seed(0))
    assert not (neg == targets).any() and neg.min() >= 1 and neg.max() <= 5
    counts = torch.bincount(neg, minlength=6)[[1, 2, 4, 5]].double() / len(neg)
    assert torch.allclose(counts, torch.full((4,), 0.25, dtype=torch.double), atol=0.02)


def test_losses_without_targets_are_zero_and_unknown_losses_fail():
    states = torch.randn(2, 3, 4, requires_grad=True)
    zero = recommendation_loss("ce", states, torch.zeros(2, 3, dtype=torch.long), torch.randn(5, 4))
    assert zero.item() == 0.0
    zero.backward()
    with pytest.raises(ValueError, match="unknown loss"):
        recommendation_loss("bpr", states, torch.ones(2, 3, dtype=torch.long), torch.randn(5, 4))


# ----------------------------------------------------------- training rows
def responsible_targets(rows) -> list[list[int]]:
    """Per row, the target items it trains on (the last `stride` positions after a real input)."""
    batch = rows.batch(np.arange(len(rows))).numpy()
    out = []
    for row in batch:
        inputs, targets = row[:-1], row[1:]
        keep = (inputs != 0) & (np.arange(len(targets)) >= len(targets) - rows.stride)
        out.append(targets[keep].tolist())
    return out


@pytest.mark.parametrize("stride", [0, 5, 3, 2, 1])
def test_training_rows_cover_every_target_exactly_once(stride):
    train = [np.arange(1, 24), np.array([105, 106]), np.array([107])]
    rows = training_rows(train, max_len=5, stride=stride)
    assert rows.batch(np.arange(len(rows))).shape[1] == 6
    assert rows.stride == (stride or 5)
    covered = sorted(x for targets in responsible_targets(rows) for x in targets)
    assert covered == [*range(2, 24), 106]       # every item after a user's first, exactly once
    assert len(rows) == 1 + -(-22 // rows.stride)  # 22 targets of the long user in stride-sized steps


def test_stride_one_is_prefix_materialisation_and_last_keeps_one_window():
    train = [np.arange(1, 24), np.array([105, 106])]
    prefix = training_rows(train, max_len=5, stride=1)
    assert len(prefix) == 22 + 1
    assert prefix.batch(np.array([0])).numpy().tolist() == [[18, 19, 20, 21, 22, 23]]
    assert prefix.batch(np.array([21])).numpy().tolist() == [[0, 0, 0, 0, 1, 2]]
    last = training_rows(train, max_len=5, windows="last").batch(np.arange(2)).numpy()
    assert last.tolist() == [[18, 19, 20, 21, 22, 23], [0, 0, 0, 0, 105, 106]]
    with pytest.raises(ValueError, match="stride"):
        training_rows(train, max_len=5, stride=6)


# --------------------------------------------------------------------- fit
@pytest.mark.parametrize("name,loss", [("sasrec", "ce"), ("sasrec", "bce"), ("gru4rec", "ce"), ("bert4rec", "ce")])
def test_fit_learns_a_pattern_far_better_than_chance(name, loss):
    ds = cyclic_dataset()
    ev = Evaluator(ds, EvalConfig(n_negatives=20))
    model = small(name, ds, loss)
    before = ev.evaluate(model, "test")["full"]["overall"]["hr@10"]
    epochs = 60 if name == "bert4rec" else 30
    result = fit(model, ds, quick(epochs=epochs), evaluator=ev)
    after = ev.evaluate(model, "test")
    assert before < 0.4
    assert after["full"]["overall"]["hr@10"] > 0.9, (before, after["full"]["overall"], result.best_epoch)
    assert after["sampled"]["overall"]["ndcg@10"] > 0.8
    assert result.history[-1].loss < result.history[0].loss


def test_early_stopping_restores_the_best_epoch_and_extra_loss_is_used():
    ds = cyclic_dataset()
    ev = Evaluator(ds, EvalConfig())
    model = small("sasrec", ds)
    state = {"sabotage": False, "calls": 0}

    def extra(m, inputs, targets):
        # nothing at first; from epoch 4 on, gradient ascent on the recommendation loss
        state["calls"] += 1
        assert inputs.shape == targets.shape and inputs.shape[1] <= m.config.max_len
        if not state["sabotage"]:
            return m.item_embedding.table().sum() * 0.0
        return -3.0 * full_softmax_ce(m.hidden_states(inputs), targets, m.item_embedding.table())

    def switch(record, m):
        state["sabotage"] = record.epoch >= 3

    result = fit(model, ds, quick(epochs=40, patience=3), extra_loss=extra, callbacks=[switch], evaluator=ev)
    scores = [r.valid_score for r in result.history]
    assert state["calls"] > 0
    assert result.history[0].extra_loss == 0.0 and result.history[-1].extra_loss < 0
    assert result.stop_reason == "patience"
    assert result.best_epoch <= 3 and result.epochs_run == result.best_epoch + 3
    assert result.best_score == max(scores) > scores[-1] + 0.1
    assert math.isclose(ev.selection_score(model), result.best_score, abs_tol=1e-9)
    assert 0 < result.seconds_to_best <= result.total_seconds
    assert all(r.predictions > 0 and r.predictions_per_s > 0 for r in result.history)


def test_fit_is_reproducible_and_callbacks_can_stop_it():
    ds = cyclic_dataset(n_users=30)
    losses = []
    for _ in range(2):
        model = small("sasrec", ds)
        result = fit(model, ds, quick(epochs=4), evaluator=Evaluator(ds))
        losses.append([r.loss for r in result.history])
    assert losses[0] == losses[1]
    seen = []
    result = fit(small("gru4rec", ds), ds, quick(epochs=10), evaluator=Evaluator(ds),
                 callbacks=[lambda record, model: seen.append(record.epoch) or record.epoch == 2])
    assert seen == [1, 2] and result.stop_reason == "callback"


@pytest.mark.parametrize("stride", [1, 4])
def test_overlapping_windows_train_causal_models_only(stride):
    ds = cyclic_dataset(n_users=30)
    result = fit(small("sasrec", ds), ds, quick(epochs=2, stride=stride), evaluator=Evaluator(ds))
    n_targets = sum(max(len(s) - 3, 0) for s in ds.sequences)
    assert result.history[0].predictions == n_targets
    with pytest.raises(ValueError, match="causal"):
        fit(small("bert4rec", ds), ds, quick(epochs=1, stride=stride), evaluator=Evaluator(ds))


# ------------------------------------------------- fit with loss_items (cold start)
HELD_N = 20


def held_out_dataset() -> tuple[Dataset, np.ndarray]:
    """Items 1..16 are trained on; 17..20 appear only as test targets (cold start)."""
    rng = np.random.default_rng(0)
    sequences = []
    for u in range(30):
        start, length = int(rng.integers(16)), int(rng.integers(5, 9))
        seq = [(start + t) % 16 + 1 for t in range(length)]
        if u % 3 == 0:
            seq[-1] = 17 + u % 4
        sequences.append(np.asarray(seq, dtype=np.int64))
    ds = Dataset(name="held", domain="item", user_ids=[f"u{u}" for u in range(30)],
                 item_ids=[f"i{i}" for i in range(1, HELD_N + 1)], sequences=sequences,
                 attributes=[{} for _ in range(HELD_N)])
    allowed = np.ones(HELD_N + 1, dtype=bool)
    allowed[0] = False
    allowed[17:] = False
    return ds, allowed


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_fit_never_moves_the_rows_of_disallowed_items(loss):
    ds, allowed = held_out_dataset()
    for s in ds.split().train:
        assert allowed[s].all()   # the premise: disallowed items are never inputs
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, patience=5, progress=False)
    ev = Evaluator(ds, EvalConfig(n_negatives=5, ks=[10]))
    moved = {}
    for mask in (torch.from_numpy(allowed), None):
        seed_everything(0)
        model, _ = build_model("none", BackboneConfig(name="sasrec", hidden=8, max_len=6, n_layers=1,
                                                      n_heads=1, dropout=0.0, loss=loss), HELD_N, RATConfig())
        before = model.item_embedding.table().detach().clone()
        fit(model, ds, cfg, evaluator=ev, loss_items=mask)
        after = model.item_embedding.table().detach()
        moved[mask is not None] = (after - before).abs().sum(1)
    with_mask, without = moved[True], moved[False]
    assert torch.equal(with_mask[17:], torch.zeros(4))          # held-out rows untouched
    assert (with_mask[1:17] > 1e-3).all()                         # trained rows moved
    assert with_mask[0] == 0
    if loss == "ce":
        assert (without[17:] > 1e-3).all()   # without the mask the softmax pushes them down

