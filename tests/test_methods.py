"""llmemb.methods: the registry of item-layer methods and what each method object decides."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from llmemb.backbones import BackboneConfig, IdItemEmbedding
from llmemb.item_tables import AdaptedItemEmbedding, HybridItemEmbedding
from llmemb.methods import (
    ID_METHOD,
    METHODS,
    Method,
    RATConfig,
    build_model,
    extra_loss,
    get_method,
    register,
    served_method,
)

N, D_LLM = 20, 12


def tables() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D_LLM, generator=g), torch.randn(N, D_LLM, generator=g)


def backbone() -> BackboneConfig:
    return BackboneConfig(name="sasrec", hidden=8, max_len=6, n_layers=1, n_heads=1, dropout=0.0)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_builds_the_layer_its_fields_announce(name):
    method = get_method(name)
    scft, base = tables()
    model, pca = build_model(name, backbone(), N, RATConfig(d_pca=6), scft_table=scft, base_table=base)
    layer = model.item_embedding
    assert (pca is not None) == method.has_pca
    assert isinstance(layer, IdItemEmbedding) == (method.table is None or not method.has_pca)
    if method.served:   # the service embeds new items through PCA -> adapter: a served layer has both
        assert isinstance(layer, AdaptedItemEmbedding) and layer.adapter is not None
    assert isinstance(layer, HybridItemEmbedding) == method.residual
    assert method.is_id == (name == ID_METHOD)
    # the table a method reads is the one it needs: without it, a clear error
    if method.table is not None:
        missing = {"scft_table": None, "base_table": base} if method.table == "scft" else \
            {"scft_table": scft, "base_table": None}
        with pytest.raises(ValueError, match="export table"):
            build_model(name, backbone(), N, RATConfig(), **missing)


def test_unknown_and_unservable_methods_name_the_setting_and_the_choices():
    with pytest.raises(ValueError, match=r"quality.methods: unknown method 'melt'; known: none, llm2x, llmemb"):
        get_method("melt", "quality.methods")
    with pytest.raises(ValueError, match="unknown method"):
        get_method(["llmemb"])   # not a name at all
    with pytest.raises(ValueError, match="quick.method must be one of llmemb, hybrid, got 'wo_scft'"):
        served_method("wo_scft", "quick.method")
    assert served_method("hybrid").residual
    with pytest.raises(ValueError, match="registered already"):
        register(Method("llmemb", "again"))
    with pytest.raises(ValueError, match="table must be one of"):
        Method("odd", "Odd", table="llama")


def test_served_vectors_follow_the_method():
    adapted, residual = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    assert np.array_equal(get_method("llmemb").catalogue_vector(adapted, None), adapted)
    assert np.array_equal(get_method("hybrid").catalogue_vector(adapted, residual), adapted + residual)
    assert np.array_equal(get_method("hybrid").catalogue_vector(adapted, None), adapted)   # an item added later
    get_method("llmemb").check_servable(RATConfig(text_residual=0.5))   # the field concerns Hybrid only
    with pytest.raises(ValueError, match="text_residual"):
        get_method("hybrid").check_servable(RATConfig(text_residual=0.5))
    with pytest.raises(ValueError, match="cannot be served"):
        get_method("llm2x").check_servable(RATConfig())


@dataclass(frozen=True)
class ScaledId(Method):
    """A method defined outside the package: an ID table scaled down at the start."""

    def build_layer(self, n_items, d, rat, table, fit_rows, trained):
        return IdItemEmbedding(n_items, d, init=0.5 * torch.randn(n_items + 1, d)), None


def test_a_new_method_is_one_object_and_its_registration():
    method = register(ScaledId("scaled_id", "Scaled ID", aligns=True))
    try:
        model, pca = build_model("scaled_id", backbone(), N, RATConfig())
        assert pca is None and isinstance(model.item_embedding, IdItemEmbedding)
        assert model.item_embedding.table()[1:].std() > 0.3   # its own initialisation, not ID-only's (std 0.02)
        with pytest.raises(ValueError, match="train the ID run first"):
            extra_loss("scaled_id", None, RATConfig(alpha=0.1))
        hook = extra_loss("scaled_id", torch.randn(N + 1, 8), RATConfig(alpha=0.1))
        targets = torch.tensor([[1, 2, 3, 0]])
        loss = hook(model, targets, targets)   # the paper's form leaves the positive out: any sign
        assert loss.requires_grad and loss.item() != 0
        assert extra_loss("scaled_id", None, RATConfig(alpha=0.0)) is None
        assert method.label == "Scaled ID" and not method.served
    finally:
        del METHODS["scaled_id"]
