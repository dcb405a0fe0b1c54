"""build_model: each method's model, the table it reads, its sizes and its PCA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmemb.backbones import IdItemEmbedding
from llmemb.item_tables import AdaptedItemEmbedding, with_padding_row
from llmemb.methods import METHODS, RATConfig, build_model
from llmemb.projection import PCA, Adapter
from tests.method_fixtures import HIDDEN, D, N, backbone, pca_of, tables
from trainer.stages.train import seed_everything


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
