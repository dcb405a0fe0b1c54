"""Training at scale: the device rule, batches cut to their longest row and batched by length,
sampled softmax with the logQ correction, bf16 autocast, and chunked full-ranking evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmemb.backbones import BackboneConfig, FixedItemEmbedding, build_backbone, build_id_backbone
from llmemb.devices import autocast, resolve_device
from llmemb.losses import NegativeSampler, full_softmax_ce, recommendation_loss, sampled_softmax_ce
from llmemb.metrics import EvalConfig, Evaluator, SeenItems, chunked_full_ranks, compute_ranks, full_ranks
from tests.test_train import cyclic_dataset, quick, small
from trainer.stages.train import fit, seed_everything, training_rows


# -------------------------------------------------------------------- device
def test_the_device_rule_resolves_cpu_and_auto_and_refuses_what_is_absent():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match=r"train\.device: unknown device 'gpu'"):
        resolve_device("gpu", "train.device")
    if not torch.cuda.is_available():
        for asked in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match=r"train\.device: .*sees no CUDA device"):
                resolve_device(asked, "train.device")


def test_fit_refuses_cuda_without_a_gpu_and_unknown_settings():
    ds = cyclic_dataset(n_users=20)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device"):
            fit(small("sasrec", ds), ds, quick(epochs=1, device="cuda"), evaluator=Evaluator(ds))
    with pytest.raises(ValueError, match="train.precision"):
        fit(small("sasrec", ds), ds, quick(epochs=1, precision="fp8"), evaluator=Evaluator(ds))
    with pytest.raises(ValueError, match="train.batching"):
        fit(small("sasrec", ds), ds, quick(epochs=1, batching="random"), evaluator=Evaluator(ds))
    with pytest.raises(ValueError, match="backbone.loss"):
        fit(small("sasrec", ds, loss="bpr"), ds, quick(epochs=1), evaluator=Evaluator(ds))


# ------------------------------------------------------- trimmed, length batches
def test_a_trimmed_batch_is_the_full_batch_without_its_all_padding_columns():
    train = [np.arange(1, 24), np.array([105, 106]), np.array([107, 108, 109])]
    rows = training_rows(train, max_len=5)
    index = torch.tensor([len(rows) - 1, len(rows) - 2])   # the two short users' windows
    full, trimmed = rows.batch(index), rows.batch(index, trim=True)
    assert trimmed.shape == (2, 3)
    assert torch.equal(full[:, -3:], trimmed) and (full[:, :-3] == 0).all()
    assert rows.batch(torch.arange(len(rows)), trim=True).shape[1] == 6   # a full window keeps the width


@pytest.mark.parametrize("batching", ["shuffle", "length"])
def test_every_sample_is_in_exactly_one_batch_and_length_batches_carry_less_padding(batching):
    rng = np.random.default_rng(0)
    train = [np.arange(1, rng.integers(2, 60)) for _ in range(300)]
    rows = training_rows(train, max_len=20)
    batches = rows.order(np.random.default_rng(1), batching, 16)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(rows)))
    width = sum(rows.batch(b, trim=True).numel() for b in batches)
    if batching == "length":
        shuffled = rows.order(np.random.default_rng(1), "shuffle", 16)
        assert width < 0.8 * sum(rows.batch(b, trim=True).numel() for b in shuffled)


def test_bert4rec_masks_a_trimmed_batch_as_it_masks_the_full_one():
    ds = cyclic_dataset(n_users=20)
    model = small("bert4rec", ds)
    rows = training_rows([np.array([1, 2, 3, 4]), np.array([5, 6, 7])], max_len=10)
    index = torch.arange(len(rows))
    full = model.training_pairs(rows.batch(index), torch.Generator().manual_seed(3))
    trimmed = model.training_pairs(rows.batch(index, trim=True), torch.Generator().manual_seed(3))
    width = trimmed[0].shape[1]
    assert width == 3   # the longest row (4 items) less the column that is never an input
    assert torch.equal(full[0][:, -width:], trimmed[0]) and torch.equal(full[1][:, -width:], trimmed[1])


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_trimming_leaves_the_states_at_real_positions_unchanged(name):
    ds = cyclic_dataset(n_users=20)
    model = small(name, ds).eval()
    inputs = torch.tensor([[0, 0, 0, 0, 0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7, 8, 9, 10, 11]])
    full, trimmed = model.hidden_states(inputs), model.hidden_states(inputs[:, -5:])
    assert torch.allclose(full[:, -5:], trimmed, atol=1e-5)


# ------------------------------------------------------------------ sampled CE
def test_sampled_ce_is_a_softmax_over_the_target_and_logq_corrected_shared_negatives():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, generator=g)
    states = torch.randn(2, 3, 4, generator=g)
    targets = torch.tensor([[0, 2, 5], [1, 0, 3]])
    pop = np.array([0, 5, 1, 2, 8, 3, 1, 1, 4])
    sampler = NegativeSampler(8, 6, "popularity", pop)
    loss = sampled_softmax_ce(states, targets, table, sampler, torch.Generator().manual_seed(7))
    negatives = sampler.draw(torch.Generator().manual_seed(7))
    q = pop / pop.sum()
    expected = []
    for b, t in [(0, 1), (0, 2), (1, 0), (1, 2)]:
        h, y = states[b, t], int(targets[b, t])
        logits = [float(h @ table[y])]                       # the target's own logit is not corrected
        logits += [float(h @ table[j]) - math.log(6 * q[j]) for j in negatives.tolist() if j != y]
        expected.append(-logits[0] + math.log(sum(math.exp(x) for x in logits)))
    assert math.isclose(float(loss), sum(expected) / 4, rel_tol=1e-5)


def test_the_sampler_draws_by_popularity_only_among_allowed_items():
    pop = np.array([0, 10, 0, 30, 60, 100])
    allowed = torch.tensor([False, True, True, True, True, False])
    sampler = NegativeSampler(5, 20000, "popularity", pop, allowed)
    counts = torch.bincount(sampler.draw(torch.Generator().manual_seed(0)), minlength=6).double() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.1, 0.3, 0.6], dtype=torch.double), atol=0.02)
    uniform = NegativeSampler(5, 20000, "uniform", allowed=allowed)
    counts = torch.bincount(uniform.draw(torch.Generator().manual_seed(0)), minlength=6).double() / 20000
    assert counts[[0, 5]].sum() == 0 and torch.allclose(counts[1:5], torch.full((4,), 0.25, dtype=torch.double),
                                                        atol=0.02)
    with pytest.raises(ValueError, match="loss_sampler"):
        NegativeSampler(5, 10, "zipf")


def test_sampled_ce_with_many_negatives_approaches_full_ce():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(31, 8, generator=g)
    states = torch.randn(4, 5, 8, generator=g)
    targets = torch.randint(1, 31, (4, 5), generator=g)
    full = float(full_softmax_ce(states, targets, table))
    sampler = NegativeSampler(30, 4000, "uniform")
    sampled = np.mean([float(recommendation_loss("sampled_ce", states, targets, table,
                                                 torch.Generator().manual_seed(s), sampler=sampler))
                       for s in range(5)])
    assert abs(sampled - full) < 0.05 * full


def test_fit_learns_with_sampled_ce_and_with_bf16_autocast():
    ds = cyclic_dataset()
    ev = Evaluator(ds, EvalConfig(n_negatives=20))
    for loss, precision in (("sampled_ce", "fp32"), ("ce", "bf16")):
        seed_everything(0)
        cfg = BackboneConfig(name="sasrec", hidden=32, max_len=10, n_heads=2, dropout=0.1, loss=loss,
                             loss_negatives=16, loss_sampler="popularity")
        model = build_id_backbone(cfg, ds.n_items)
        fit(model, ds, quick(epochs=30, precision=precision, batching="length"), evaluator=ev)
        assert ev.evaluate(model, "test")["full"]["overall"]["hr@10"] > 0.9, (loss, precision)


def test_bf16_autocast_runs_matmuls_in_bf16():
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32


# -------------------------------------------------------------- chunked ranks
@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 1000])
def test_chunked_full_ranks_equal_the_whole_matrix_count(chunk):
    g = torch.Generator().manual_seed(0)
    n_items, d = 40, 6
    table = torch.randn(n_items + 1, d, generator=g)
    table[5] = table[6]                        # ties count against the target
    user = torch.randn(12, d, generator=g)
    user[3] = float("nan")                     # a NaN target score ranks last
    targets = torch.randint(1, n_items + 1, (12,), generator=g)
    targets[0] = 5
    histories = [np.unique(torch.randint(1, n_items + 1, (int(k),), generator=g).numpy())
                 for k in torch.randint(0, 15, (12,), generator=g)]
    histories[1] = np.append(histories[1], int(targets[1]))   # the target may be in the history
    expected = full_ranks(user @ table.T, targets, histories)
    seen = SeenItems.build(histories, targets.numpy(), "cpu")
    for start in (0, 5):
        got = chunked_full_ranks(user[start:], table, targets[start:], seen_from(seen, start), 0, chunk)
        assert got.tolist() == expected[start:].tolist()
    assert expected[3] == n_items - len(set(histories[3].tolist()) | {int(targets[3])})


def seen_from(seen: SeenItems, start: int) -> SeenItems:
    return SeenItems(seen.ptr[start:] - seen.ptr[start], seen.ids[int(seen.ptr[start]):])


def test_evaluation_in_small_chunks_gives_the_same_ranks():
    torch.manual_seed(0)
    table = torch.randn(26, 8)
    model = build_backbone(BackboneConfig(name="sasrec", hidden=8, max_len=6, n_heads=1), FixedItemEmbedding(table))
    histories = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9, 10, 11]), np.array([12])]
    targets = np.array([20, 21, 22])
    whole = compute_ranks(model.eval(), histories, targets, "full", batch_size=2)
    assert compute_ranks(model, histories, targets, "full", batch_size=2, chunk_items=4).tolist() == whole.tolist()


def test_the_chunked_ce_gives_the_plain_loss_and_gradients(monkeypatch):
    from llmemb import losses

    monkeypatch.setattr(losses, "CE_CHUNK_ROWS", 4)   # several chunks over the 14-odd predictions
    g = torch.Generator().manual_seed(2)
    table = torch.randn(50, 8, generator=g, requires_grad=True)
    states = torch.randn(3, 7, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    allowed = torch.rand(50, generator=g) > 0.3
    allowed[targets[targets > 0]] = True
    allowed[0] = False
    for mask in (None, allowed):
        loss = full_softmax_ce(states, targets, table * 1.5, mask) * 3.0   # the table may be any graph
        loss.backward()
        got = (float(loss.detach()), states.grad.clone(), table.grad.clone())
        states.grad = table.grad = None
        keep = targets > 0
        h, y = states[keep], targets[keep]
        cols = torch.arange(1, 50) if mask is None else torch.nonzero(mask).squeeze(1)
        slot = {int(c): i for i, c in enumerate(cols)}
        plain = torch.nn.functional.cross_entropy(h @ (table * 1.5)[cols].T,
                                                  torch.tensor([slot[int(v)] for v in y])) * 3.0
        plain.backward()
        assert math.isclose(got[0], float(plain), rel_tol=1e-6)
        assert torch.allclose(got[1], states.grad, atol=1e-6) and torch.allclose(got[2], table.grad, atol=1e-6)
        states.grad = table.grad = None


# ------------------------------------------------------------------- dropout
def test_torch_masks_are_nn_dropouts_and_fast_masks_keep_the_expected_share():
    from llmemb.backbones.layers import Dropout, SelfAttention, fast_keep_mask

    x = torch.randn(64, 50, 64)
    torch.manual_seed(3)
    plain = torch.nn.Dropout(0.2)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.2)(x), plain)
    keep = fast_keep_mask((200_000,), 0.2, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.8) < 0.005
    out = Dropout(0.2, "fast")(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.8) and abs(kept.float().mean().item() - 0.8) < 0.01
    assert torch.equal(Dropout(0.2, "fast").eval()(x), x)
    with pytest.raises(ValueError, match="dropout_masks"):
        Dropout(0.2, "numpy")
    # the spelt-out attention (fast masks) is scaled_dot_product_attention when nothing is dropped
    attention = SelfAttention(16, 2, 0.5, "fast").train()
    attention.weights_dropout.p = 0.0
    h = torch.randn(3, 7, 16)
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool).tril()
    spelt = attention(h, mask)
    attention.weights_dropout = None
    attention.dropout = 0.0
    assert torch.allclose(spelt, attention(h, mask), atol=1e-6)


def test_fit_learns_with_fast_dropout_masks():
    ds = cyclic_dataset()
    ev = Evaluator(ds, EvalConfig(n_negatives=20))
    for name in ("sasrec", "gru4rec"):
        seed_everything(0)
        cfg = BackboneConfig(name=name, hidden=32, max_len=10, n_heads=2, dropout=0.1, dropout_masks="fast")
        model = build_id_backbone(cfg, ds.n_items)
        fit(model, ds, quick(epochs=30), evaluator=ev)
        assert ev.evaluate(model, "test")["full"]["overall"]["hr@10"] > 0.9, name


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_cases_stored_by_length_give_each_user_the_rank_of_its_own_evaluation(name):
    # Cases are evaluated shortest history first in trimmed batches; every user's rank must be the
    # one its history gets alone (a batch of one, nothing else to trim against).
    from llmemb.metrics import EvalCases, ranks_of_cases
    torch.manual_seed(0)
    table = torch.randn(31, 8)
    model = build_backbone(BackboneConfig(name=name, hidden=8, max_len=7, n_heads=1), FixedItemEmbedding(table)).eval()
    rng = np.random.default_rng(0)
    histories = [rng.choice(np.arange(1, 25), size=n, replace=False) for n in (9, 1, 4, 2, 7, 3, 1, 6)]
    targets = rng.integers(25, 31, size=len(histories))
    negatives = rng.integers(1, 31, size=(len(histories), 5))
    cases = EvalCases.build(histories, targets, 7, "cpu", negatives)
    assert cases.order.tolist() != list(range(len(histories)))           # the order did change
    for protocol in ("full", "sampled"):
        batched = ranks_of_cases(model, cases, protocol, batch_size=3)
        alone = [int(ranks_of_cases(model, EvalCases.build([h], [t], 7, "cpu", n[None]), protocol)[0])
                 for h, t, n in zip(histories, targets, negatives)]
        assert batched.tolist() == alone
