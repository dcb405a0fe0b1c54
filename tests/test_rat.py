"""RAT: the adapted item layer, every method's model, the alignment loss, and the
`allowed` items of the losses and of fit (the cold-start restriction)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmemb.backbones import BackboneConfig, IdItemEmbedding
from llmemb.contrastive import symmetric_contrastive_loss
from llmemb.data.dataset import Dataset
from llmemb.item_tables import AdaptedItemEmbedding, with_padding_row
from llmemb.losses import full_softmax_ce, recommendation_loss, training_negatives
from llmemb.methods import METHODS, RATConfig, build_model, extra_loss, get_method
from llmemb.metrics import EvalConfig, Evaluator
from llmemb.projection import PCA, Adapter
from trainer.config import TrainConfig
from trainer.train import fit, seed_everything

N, D, HIDDEN = 20, 32, 8


def backbone(name: str = "sasrec", hidden: int = HIDDEN) -> BackboneConfig:
    return BackboneConfig(name=name, hidden=hidden, max_len=6, n_layers=1, n_heads=1, dropout=0.0)


def tables(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g) * 3 + 1, torch.randn(N, D, generator=g) - 2


def pca_of(table: torch.Tensor, k: int) -> torch.Tensor:
    """An independent PCA: centred, top-k right singular vectors, the same sign rule."""
    x = table.double()
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:k]
    pivot = comps.abs().argmax(1)
    comps = comps * torch.sign(comps[torch.arange(k), pivot]).unsqueeze(1)
    return (centred @ comps.T).float()


# --------------------------------------------------------- AdaptedItemEmbedding
def source_table(n: int = 6, k: int = 5) -> torch.Tensor:
    return with_padding_row(torch.randn(n, k, generator=torch.Generator().manual_seed(1)) + 0.5)


def test_padding_row_is_zero_even_when_the_adapter_has_a_bias():
    torch.manual_seed(0)
    adapter = Adapter(5, 4)
    torch.nn.init.constant_(adapter.W2.bias, 1.0)  # adapter(0) != 0
    layer = AdaptedItemEmbedding(source_table(), adapter)
    assert layer.dim == 4 and layer.n_items == 6
    assert adapter(torch.zeros(1, 5)).abs().sum() > 0
    table = layer.table()
    assert table.shape == (7, 4)
    assert torch.equal(table[0], torch.zeros(4))
    assert table[1:].abs().sum(1).min() > 0
    out = layer(torch.tensor([[0, 3, 0, 1]]))
    assert torch.equal(out[0, 0], torch.zeros(4)) and torch.equal(out[0, 2], torch.zeros(4))


def test_forward_equals_the_table_rows():
    torch.manual_seed(0)
    for adapter, freeze in [(Adapter(5, 4), True), (Adapter(5, 4, hidden=3), False), (None, True)]:
        layer = AdaptedItemEmbedding(source_table(), adapter, freeze=freeze)
        ids = torch.tensor([[0, 1, 2, 6], [6, 6, 0, 3]])
        assert torch.allclose(layer(ids), layer.table()[ids], atol=1e-6)


def test_frozen_source_gets_no_gradient_and_the_adapter_does():
    torch.manual_seed(0)
    src = source_table()
    layer = AdaptedItemEmbedding(src, Adapter(5, 4), freeze=True)
    assert "source" in dict(layer.named_buffers())
    assert "source" not in dict(layer.named_parameters())
    assert not layer.source.requires_grad
    (layer(torch.tensor([1, 2, 3])).sum() + layer.table().pow(2).sum()).backward()
    assert layer.source.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.adapter.parameters())
    # the layer holds a copy: the caller's tensor is not aliased
    assert layer.source.data_ptr() != src.data_ptr() and torch.equal(layer.source, src)


def test_wo_freeze_makes_the_source_a_trained_parameter():
    torch.manual_seed(0)
    layer = AdaptedItemEmbedding(source_table(), Adapter(5, 4), freeze=False)
    params = dict(layer.named_parameters())
    assert isinstance(layer.source, torch.nn.Parameter) and "source" in params
    assert "source" not in dict(layer.named_buffers())
    layer(torch.tensor([1, 2])).sum().backward()
    grad = layer.source.grad
    assert grad is not None
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[3].abs().sum() == 0   # rows not looked up get nothing


def test_without_adapter_the_source_is_the_table():
    src = source_table(k=4)
    layer = AdaptedItemEmbedding(src, None)
    assert layer.adapter is None and layer.dim == 4
    assert torch.equal(layer.table(), src)
    assert torch.equal(layer(torch.tensor([2, 0, 5])), src[[2, 0, 5]])
    assert list(layer.parameters()) == []


# ------------------------------------------------------------------ build_model
def _trainable(model) -> set[str]:
    return {n for n, p in model.item_embedding.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
def test_build_model_item_layer_of_every_method(method):
    scft, base = tables()
    seed_everything(0)
    model, pca = build_model(method, backbone(), N, RATConfig(), scft_table=scft, base_table=base)
    layer = model.item_embedding
    assert model.config.hidden == HIDDEN and layer.dim == HIDDEN
    table = layer.table()
    assert table.shape == (N + 1, HIDDEN) and torch.equal(table[0], torch.zeros(HIDDEN))
    default_k = min(1536, D, N - 1)  # = 19
    if method in ("none", "llm2x"):
        assert isinstance(layer, IdItemEmbedding) and pca is None
        assert _trainable(model) == {"embedding.weight"}
        if method == "llm2x":
            assert torch.allclose(table.detach(), with_padding_row(pca_of(base, HIDDEN)), atol=1e-4)
        return
    assert isinstance(layer, AdaptedItemEmbedding) and isinstance(pca, PCA)
    used = scft if method != "wo_scft" else base
    assert torch.allclose(pca.mean, used.mean(0), atol=1e-5)
    if method == "wo_adapter":
        assert layer.adapter is None and pca.n_components == HIDDEN
        assert _trainable(model) == set()
        assert torch.allclose(layer.source, with_padding_row(pca_of(used, HIDDEN)), atol=1e-4)
        return
    assert isinstance(layer.adapter, Adapter)
    assert pca.n_components == default_k and layer.source.shape == (N + 1, default_k)
    assert (layer.adapter.d_in, layer.adapter.d_out, layer.adapter.hidden) == (default_k, HIDDEN, default_k // 2)
    assert torch.allclose(layer.source, with_padding_row(pca_of(used, default_k)), atol=1e-4)
    adapter_params = {f"adapter.{n}" for n, _ in layer.adapter.named_parameters()}
    if method == "wo_freeze":
        assert isinstance(layer.source, torch.nn.Parameter)
        assert _trainable(model) == adapter_params | {"source"}
    else:
        assert "source" in dict(layer.named_buffers())
        assert _trainable(model) == adapter_params | ({"residual"} if method == "hybrid" else set())
    # the rest of the backbone trains in every method
    assert any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("item_embedding"))


def test_build_model_reads_the_right_table():
    scft, base = tables()
    m1, p1 = build_model("llmemb", backbone(), N, RATConfig(), scft_table=scft, base_table=base)
    m2, p2 = build_model("wo_scft", backbone(), N, RATConfig(), scft_table=scft, base_table=base)
    assert torch.allclose(p1.mean, scft.mean(0), atol=1e-5)
    assert torch.allclose(p2.mean, base.mean(0), atol=1e-5)
    # llmemb does not need the base table nor llm2x the SCFT one
    build_model("llmemb", backbone(), N, RATConfig(), scft_table=scft)
    build_model("llm2x", backbone(), N, RATConfig(), base_table=base)
    build_model("none", backbone(), N, RATConfig())


def test_build_model_sizes_follow_the_rat_config():
    scft, _ = tables()
    model, pca = build_model("llmemb", backbone(hidden=16), N, RATConfig(d_pca=10, adapter_hidden=7),
                             scft_table=scft)
    layer = model.item_embedding
    assert pca.n_components == 10 and layer.source.shape == (N + 1, 10)
    assert (layer.adapter.d_in, layer.adapter.hidden, layer.adapter.d_out) == (10, 7, 16)
    # wo_adapter ignores d_pca: PCA goes straight to the backbone's size
    model, pca = build_model("wo_adapter", backbone(hidden=16), N, RATConfig(d_pca=10), scft_table=scft)
    assert pca.n_components == 16 and model.item_embedding.dim == 16


def test_llm2x_init_std_rescales_the_initial_table():
    _, base = tables()
    plain, _ = build_model("llm2x", backbone(), N, RATConfig(), base_table=base)
    scaled, _ = build_model("llm2x", backbone(), N, RATConfig(llm2x_init_std=0.02), base_table=base)
    a, b = plain.item_embedding.table().detach(), scaled.item_embedding.table().detach()
    assert torch.equal(b[0], torch.zeros(HIDDEN))
    assert abs(float(b[1:].std()) - 0.02) < 1e-5
    assert abs(float(a[1:].std()) - 0.02) > 0.1      # without it, PCA's own scale
    ratio = b[1:] / a[1:]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-3)  # one common factor


@pytest.mark.parametrize("method", ["llmemb", "wo_adapter", "wo_freeze"])
def test_source_std_rescales_the_frozen_table_and_the_saved_pca(method):
    scft, _ = tables()
    plain_model, plain_pca = build_model(method, backbone(), N, RATConfig(d_pca=10), scft_table=scft)
    model, pca = build_model(method, backbone(), N, RATConfig(d_pca=10, source_std=0.5), scft_table=scft)
    a, b = plain_model.item_embedding.source.detach(), model.item_embedding.source.detach()
    assert torch.equal(b[0], torch.zeros(b.shape[1]))
    assert abs(float(b[1:].std()) - 0.5) < 1e-4
    ratio = b[1:] / a[1:]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-3)  # one common factor
    # the factor lives in the returned PCA, so PCA(E) rebuilds the source the model trains on
    assert torch.allclose(pca.transform(scft), b[1:], atol=1e-5)
    assert torch.allclose(plain_pca.transform(scft), a[1:], atol=1e-5)


def test_whiten_gives_each_frozen_coordinate_unit_variance_and_keeps_it_in_the_pca():
    scft, _ = tables()
    model, pca = build_model("llmemb", backbone(), N, RATConfig(d_pca=10, whiten=True), scft_table=scft)
    source = model.item_embedding.source.detach()
    assert torch.allclose(source[1:].double().var(dim=0), torch.ones(10, dtype=torch.float64), rtol=1e-3)
    assert torch.allclose(pca.transform(scft), source[1:], atol=1e-5)
    # whitening then an overall rescale
    model, pca = build_model("llmemb", backbone(), N, RATConfig(d_pca=10, whiten=True, source_std=0.1), scft_table=scft)
    source = model.item_embedding.source.detach()
    assert abs(float(source[1:].std()) - 0.1) < 1e-4
    assert torch.allclose(pca.transform(scft), source[1:], atol=1e-5)


def test_source_std_and_llm2x_init_std_must_be_positive():
    for key in ("source_std", "llm2x_init_std"):
        with pytest.raises(ValueError, match=f"rat.{key} must be positive"):
            RATConfig.from_dict({key: 0.0})
    assert RATConfig.from_dict({"source_std": None}).source_std is None


def test_build_model_errors():
    scft, base = tables()
    with pytest.raises(ValueError, match="unknown method 'said'"):
        build_model("said", backbone(), N, RATConfig(), scft, base)
    for method in ("llmemb", "wo_adapter", "wo_freeze", "wo_align"):
        with pytest.raises(ValueError, match="needs the SCFT export table"):
            build_model(method, backbone(), N, RATConfig(), scft_table=None, base_table=base)
    for method in ("llm2x", "wo_scft"):
        with pytest.raises(ValueError, match="needs the base-LLM export table"):
            build_model(method, backbone(), N, RATConfig(), scft_table=scft, base_table=None)
    for method in [n for n, m in METHODS.items() if m.table is not None]:
        with pytest.raises(ValueError, match=f"19 rows, the dataset {N} items"):
            build_model(method, backbone(), N, RATConfig(), scft_table=scft[:-1], base_table=base[:-1])
    with pytest.raises(ValueError, match="unknown key"):
        RATConfig.from_dict({"alpah": 0.1})
    with pytest.raises(ValueError, match="align_loss"):
        RATConfig.from_dict({"align_loss": "triplet"})


@pytest.mark.parametrize("method", ["llm2x", "llmemb", "wo_adapter", "wo_scft"])
def test_fit_rows_restrict_the_pca_fit(method):
    scft, base = tables()
    rows = np.array([0, 2, 3, 5, 7, 8, 11, 13, 17, 19])
    table = base if method in ("llm2x", "wo_scft") else scft
    model, pca = build_model(method, backbone(), N, RATConfig(), scft, base, fit_rows=rows)
    if method == "llm2x":
        # the fit is on the rows, the transform on every item
        x = table.double()
        mean = x[rows].mean(0)
        _, _, vh = torch.linalg.svd(x[rows] - mean, full_matrices=False)
        comps = vh[:HIDDEN]
        comps = comps * torch.sign(comps[torch.arange(HIDDEN), comps.abs().argmax(1)]).unsqueeze(1)
        expected = with_padding_row(((x - mean) @ comps.T).float())
        assert torch.allclose(model.item_embedding.table().detach(), expected, atol=1e-4)
        return
    assert torch.allclose(pca.mean, table[rows].mean(0), atol=1e-5)
    assert not torch.allclose(pca.mean, table.mean(0), atol=1e-2)
    if method != "wo_adapter":
        assert pca.n_components == len(rows) - 1        # the default rule counts the fitted rows
    # every item, fitted or not, has a PCA row
    assert torch.allclose(model.item_embedding.source[1:], pca.transform(table), atol=1e-5)


# --------------------------------------------------------------- alignment loss
def test_uses_alignment_truth_table():
    on = RATConfig(alpha=0.01)
    off = RATConfig(alpha=0.0)
    expected = {"none": False, "llm2x": False, "llmemb": True, "hybrid": True, "wo_scft": True, "wo_adapter": True,
                "wo_freeze": True, "wo_align": False}
    assert {m: get_method(m).uses_alignment(on) for m in METHODS} == expected
    assert not any(get_method(m).uses_alignment(off) for m in METHODS)


def alignment_loss(id_table, rat):
    return extra_loss("llmemb", id_table, rat)


def _aligned_model():
    scft, _ = tables()
    seed_everything(0)
    model, _ = build_model("llmemb", backbone(), N, RATConfig(), scft_table=scft)
    id_table = torch.randn(N + 1, HIDDEN, generator=torch.Generator().manual_seed(3), requires_grad=True)
    return model, id_table


@pytest.mark.parametrize("variant", ["paper", "infonce"])
def test_alignment_loss_value_over_distinct_targets(variant):
    model, id_table = _aligned_model()
    rat = RATConfig(alpha=0.3, align_temperature=2.0, align_similarity="dot", align_loss=variant)
    extra = alignment_loss(id_table, rat)
    targets = torch.tensor([[0, 4, 7, 4], [0, 0, 12, 7]])
    inputs = torch.ones_like(targets)
    value = extra(model, inputs, targets)
    ids = torch.tensor([4, 7, 12])
    with torch.no_grad():
        e = model.item_embedding.table()[ids]
        direct = 0.3 * symmetric_contrastive_loss(e, id_table[ids].detach(), 2.0, "dot",
                                                  exclude_positive=(variant == "paper"))
        # duplicates counted: a different (wrong) value
        dup = torch.tensor([4, 7, 4, 12, 7])
        with_dups = 0.3 * symmetric_contrastive_loss(model.item_embedding.table()[dup], id_table[dup].detach(),
                                                     2.0, "dot", exclude_positive=(variant == "paper"))
    assert torch.isclose(value, direct, atol=1e-6)
    assert not torch.isclose(value, with_dups, atol=1e-4)
    # the order of targets in the batch does not matter
    assert torch.isclose(extra(model, inputs, targets.flip(1)), value, atol=1e-6)


def test_align_max_items_aligns_on_a_uniform_draw_of_that_many_distinct_targets():
    model, id_table = _aligned_model()
    targets = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 2, 3]])   # 10 distinct items
    inputs = torch.ones_like(targets)
    rat = RATConfig(alpha=1.0, align_max_items=4)
    torch.manual_seed(5)
    capped = alignment_loss(id_table, rat)(model, inputs, targets)
    torch.manual_seed(5)   # the draw the hook makes, from torch's generator
    chosen = torch.unique(targets)[torch.randperm(10)[:4]]
    with torch.no_grad():
        e = model.item_embedding.table()[chosen]
        direct = symmetric_contrastive_loss(e, id_table[chosen].detach(), 2.0, "dot", exclude_positive=True)
    assert torch.isclose(capped, direct, atol=1e-6)
    full = alignment_loss(id_table, RATConfig(alpha=1.0))(model, inputs, targets)
    assert not torch.isclose(capped, full, atol=1e-4)
    # at or under the cap nothing is drawn: the loss is the uncapped one
    small = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(alignment_loss(id_table, rat)(model, small, small),
                       alignment_loss(id_table, RATConfig(alpha=1.0))(model, small, small))
    for bad in (1, 0, 2.5, "8"):
        with pytest.raises(ValueError, match="rat.align_max_items"):
            RATConfig.from_dict({"align_max_items": bad})


def test_alignment_loss_paper_and_infonce_differ_and_alpha_scales():
    model, id_table = _aligned_model()
    targets = torch.tensor([[1, 2, 3, 5]])
    paper = alignment_loss(id_table, RATConfig(alpha=1.0))(model, targets, targets)
    infonce = alignment_loss(id_table, RATConfig(alpha=1.0, align_loss="infonce"))(model, targets, targets)
    small = alignment_loss(id_table, RATConfig(alpha=0.01))(model, targets, targets)
    assert not torch.isclose(paper, infonce)
    assert torch.isclose(small, 0.01 * paper, rtol=1e-5)


def test_alignment_loss_does_not_train_the_id_table():
    model, id_table = _aligned_model()
    extra = alignment_loss(id_table, RATConfig(alpha=1.0))
    loss = extra(model, torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 2, 3, 9]]))
    assert loss.requires_grad and loss.item() != 0
    loss.backward()
    assert id_table.grad is None
    grads = [p.grad for p in model.item_embedding.adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_alignment_loss_is_zero_with_fewer_than_two_distinct_targets():
    model, id_table = _aligned_model()
    extra = alignment_loss(id_table, RATConfig(alpha=1.0))
    for targets in (torch.tensor([[0, 5, 5, 0]]), torch.zeros(2, 3, dtype=torch.long)):
        value = extra(model, torch.ones_like(targets), targets)
        assert value.item() == 0.0 and value.dtype == torch.float32
    assert extra(model, torch.ones(1, 2, dtype=torch.long), torch.tensor([[5, 6]])).item() != 0.0


# --------------------------------------------------------------- allowed items
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


# ---------------------------------------------------------------- fit + loss_items
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
                 item_ids=[f"i{i}" for i in range(1, N + 1)], sequences=sequences,
                 attributes=[{} for _ in range(N)])
    allowed = np.ones(N + 1, dtype=bool)
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
                                                      n_heads=1, dropout=0.0, loss=loss), N, RATConfig())
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


def test_soft_variant_reaches_the_extra_loss_and_differs_from_paper():
    model, id_table = _aligned_model()
    targets = torch.tensor([[1, 2, 3, 5]])
    soft = alignment_loss(id_table, RATConfig(alpha=1.0, align_loss="soft"))(model, targets, targets)
    paper = alignment_loss(id_table, RATConfig(alpha=1.0))(model, targets, targets)
    assert torch.isfinite(soft) and not torch.isclose(soft, paper)
    with pytest.raises(ValueError, match="align_loss"):
        RATConfig.from_dict({"align_loss": "clip"})


# ------------------------------------------------------------ the hybrid layer
def _hybrid(trained=None, **rat):
    scft, _ = tables()
    seed_everything(0)
    return build_model("hybrid", backbone(), N, RATConfig(**rat), scft_table=scft, trained_items=trained)


def test_hybrid_starts_as_llmemb_and_untrained_items_keep_a_zero_residual():
    from llmemb.item_tables import HybridItemEmbedding
    trained = np.ones(N + 1, dtype=bool)
    trained[[0, 3, 7]] = False
    model, _ = _hybrid(trained)
    layer = model.item_embedding
    assert isinstance(layer, HybridItemEmbedding)
    with torch.no_grad():
        assert torch.equal(layer.table(), layer.adapted_table())   # r starts at zero
        layer.residual.add_(1.0)                                    # as if trained
        table = layer.table()
        base = layer.adapted_table()
    assert torch.equal(table[[0, 3, 7]], base[[0, 3, 7]])           # padding and untrained: exactly LLMEmb
    assert torch.allclose(table[[1, 2, 4]] - base[[1, 2, 4]], torch.ones(3, HIDDEN))
    ids = torch.tensor([[0, 3, 4]])
    assert torch.allclose(layer(ids)[0], table[[0, 3, 4]])


def test_a_text_residual_gives_untrained_items_the_prediction_and_learns_from_swapped_ones():
    trained = np.ones(N + 1, dtype=bool)
    trained[[0, 3, 7]] = False
    model, _ = _hybrid(trained, text_residual=0.5)
    layer = model.item_embedding
    with torch.no_grad():
        assert torch.equal(layer.table(), layer.adapted_table())      # g starts at zero: Hybrid's first step
        layer.residual.add_(1.0)
        layer.residual_from_text.bias.fill_(0.25)
        layer.eval()
        table, base = layer.table(), layer.adapted_table()
    assert torch.equal(table[0], base[0])                              # padding: never a residual
    assert torch.allclose(table[[3, 7]] - base[[3, 7]], torch.full((2, HIDDEN), 0.25))   # untrained: g(x)
    assert torch.allclose(table[[1, 2]] - base[[1, 2]], torch.ones(2, HIDDEN))           # trained: r, in eval
    ids = torch.tensor([[0, 3, 4]])
    assert torch.allclose(layer(ids)[0], table[[0, 3, 4]])
    layer.train()
    torch.manual_seed(0)
    rows = layer.residual_rows()
    swapped = (rows[1:] - 0.25).abs().sum(1) < 1e-6                     # trained rows that took g(x) this pass
    assert 0 < int(swapped.sum()) < N                                   # about half of them
    rows.sum().backward()
    assert layer.residual_from_text.weight.grad.abs().sum() > 0         # g learns through swapped and cold rows
    with pytest.raises(ValueError, match="text_residual"):
        RATConfig.from_dict({"text_residual": 1.0})


def test_hybrid_residual_trains_only_for_trained_items_and_is_penalised():
    trained = np.ones(N + 1, dtype=bool)
    trained[[0, 9]] = False
    model, _ = _hybrid(trained, alpha=0.1, residual_l2=0.5)
    id_table = torch.randn(N + 1, HIDDEN, generator=torch.Generator().manual_seed(1))
    extra = extra_loss("hybrid", id_table, RATConfig(alpha=0.1, residual_l2=0.5))
    layer = model.item_embedding
    with torch.no_grad():
        layer.residual.fill_(0.1)
    inputs, targets = torch.tensor([[1, 2, 9]]), torch.tensor([[2, 9, 4]])
    loss = extra(model, inputs, targets)
    loss.backward()
    grad = layer.residual.grad
    assert grad[9].abs().sum() == 0 and grad[0].abs().sum() == 0   # no residual, no gradient
    assert grad[1].abs().sum() > 0 and grad[4].abs().sum() > 0     # penalised rows of the batch
    assert grad[5].abs().sum() == 0                                 # not in the batch
    # the penalty alone: mean squared norm over the batch's trained items
    no_align = extra_loss("hybrid", None, RATConfig(alpha=0.0, residual_l2=0.5))
    seen = torch.tensor([1, 2, 4, 9])
    expected = 0.5 * (layer.residual[seen] * layer.trained[seen, None]).pow(2).sum(-1).mean()
    assert torch.isclose(no_align(model, inputs, targets), expected)
    assert extra_loss("hybrid", None, RATConfig(alpha=0.0)) is None


def test_hybrid_alignment_reads_the_llmemb_part_not_the_residual():
    model, _ = _hybrid()
    id_table = torch.randn(N + 1, HIDDEN, generator=torch.Generator().manual_seed(2))
    extra = extra_loss("hybrid", id_table, RATConfig(alpha=1.0))
    targets = torch.tensor([[1, 2, 3, 5]])
    before = extra(model, targets, targets)
    with torch.no_grad():
        model.item_embedding.residual.add_(3.0)
    assert torch.isclose(extra(model, targets, targets), before)


def _residual_diffs(**rat) -> torch.Tensor:
    """r filled with ones: the residual part of the table in eval mode (checked: all of r), then in
    one training pass (returned, [N, HIDDEN])."""
    model, _ = _hybrid(**rat)
    layer = model.item_embedding
    with torch.no_grad():
        layer.residual.fill_(1.0)
    layer.eval()
    assert torch.allclose(layer.table()[1:] - layer.adapted_table()[1:], torch.ones(N, HIDDEN))
    layer.train()
    torch.manual_seed(0)
    return (layer.table() - layer.adapted_table())[1:]


def test_hybrid_residual_dropout_only_while_training():
    diff = _residual_diffs(residual_dropout=0.5)
    assert set(torch.unique(diff.round(decimals=4)).tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match="residual_dropout"):
        RATConfig.from_dict({"residual_dropout": 1.0})


def test_hybrid_residual_item_drop_zeroes_whole_rows_only_while_training():
    diff = _residual_diffs(residual_item_drop=0.5)
    # each item keeps all of r (no rescaling) or none of it, and some of each happen
    assert set(diff.sum(-1).round(decimals=4).tolist()) == {0.0, float(HIDDEN)}
    whole = diff.abs().lt(1e-5).all(-1) | (diff - 1).abs().lt(1e-5).all(-1)
    assert bool(whole.all())
    with pytest.raises(ValueError, match="residual_item_drop"):
        RATConfig.from_dict({"residual_item_drop": 1.0})
