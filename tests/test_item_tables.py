"""llmemb.item_tables: the adapted layer (frozen PCA table + adapter) and Hybrid's residual layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmemb.item_tables import AdaptedItemEmbedding, with_padding_row
from llmemb.methods import RATConfig, extra_loss
from llmemb.projection import Adapter
from tests.method_fixtures import HIDDEN, N, hybrid


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



def test_hybrid_starts_as_llmemb_and_untrained_items_keep_a_zero_residual():
    from llmemb.item_tables import HybridItemEmbedding
    trained = np.ones(N + 1, dtype=bool)
    trained[[0, 3, 7]] = False
    model, _ = hybrid(trained)
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
    model, _ = hybrid(trained, text_residual=0.5)
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
    model, _ = hybrid(trained, alpha=0.1, residual_l2=0.5)
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
    model, _ = hybrid()
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
    model, _ = hybrid(**rat)
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
