"""PCA (deterministic, centred, no whitening) and the two-layer linear adapter."""
from __future__ import annotations

import pytest
import torch

from llmemb.projection import PCA, Adapter, default_n_components


def data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Anisotropic, off-centre data so the order of the components is well defined.
    scales = torch.linspace(3.0, 0.1, d)
    return torch.randn(n, d, generator=gen) * scales + 5.0


@pytest.mark.parametrize("n,d", [(200, 16), (12, 40)])  # the N > D (Gram) route and the N <= D route
def test_full_components_reconstruct_the_data(n, d):
    x = data(n, d)
    pca = PCA.fit(x)
    assert pca.n_components == min(d, n - 1)
    reconstructed = pca.transform(x) @ pca.components + pca.mean  # components are orthonormal rows
    assert torch.allclose(reconstructed, x, atol=1e-4)


@pytest.mark.parametrize("n,d", [(200, 16), (12, 40)])
def test_components_are_orthonormal_and_sorted_by_variance(n, d):
    x = data(n, d)
    pca = PCA.fit(x, n_components=8)
    c = pca.components
    assert torch.allclose(c @ c.T, torch.eye(8), atol=1e-5)
    z = pca.transform(x)
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-4)  # centred
    variance = z.var(0)
    assert torch.all(variance[:-1] >= variance[1:] - 1e-4)
    assert torch.allclose(variance, pca.explained_variance, rtol=1e-4)  # no whitening


def test_matches_the_eigenvectors_of_the_covariance_up_to_sign():
    x = data(300, 10).double()
    cov = torch.cov(x.T)
    _, vecs = torch.linalg.eigh(cov)
    top = vecs[:, -3:].flip(1).T  # largest eigenvalues first
    pca = PCA.fit(x, n_components=3)
    cosines = (pca.components.double() * top).sum(1).abs()
    assert torch.allclose(cosines, torch.ones(3, dtype=torch.float64), atol=1e-5)


def test_fit_is_deterministic_and_sign_fixed():
    x = data(150, 12)
    a, b = PCA.fit(x, 6), PCA.fit(x.clone(), 6)
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)
    # Negating the data flips every singular vector's sign; the convention undoes it.
    c = PCA.fit(-x, 6)
    assert torch.allclose(c.components, a.components, atol=1e-5)
    pivot = a.components.abs().argmax(1)
    assert torch.all(a.components[torch.arange(6), pivot] > 0)
    # Row order does not matter either.
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(PCA.fit(x[perm], 6).components, a.components, atol=1e-5)


def test_default_component_rule():
    assert default_n_components(n=10, d=384) == 9
    assert default_n_components(n=1682, d=384) == 384
    assert default_n_components(n=100_000, d=4096) == 1536
    assert PCA.fit(data(30, 50)).n_components == 29
    with pytest.raises(ValueError):
        PCA.fit(data(30, 50), n_components=51)


def test_state_dict_round_trip_and_dtypes():
    x = data(50, 8).double()
    pca = PCA.fit(x, 4)
    state = pca.state_dict()
    assert set(state) == {"mean", "components"}
    assert state["mean"].dtype == torch.float32 and state["components"].shape == (4, 8)
    loaded = PCA.from_state_dict(state)
    assert torch.equal(loaded.transform(x), pca.transform(x))
    assert loaded.transform(x).dtype == torch.float32
    with pytest.raises(ValueError):
        PCA(torch.zeros(8), torch.zeros(4, 7))


def test_adapter_is_two_affine_layers_without_nonlinearity():
    torch.manual_seed(0)
    adapter = Adapter(48, 8)
    assert adapter.hidden == 24  # d_in // 2 by default
    x = torch.randn(5, 48)
    out = adapter(x)
    assert out.shape == (5, 8)
    w = adapter.W2.weight @ adapter.W1.weight
    b = adapter.W2.weight @ adapter.W1.bias + adapter.W2.bias
    assert torch.allclose(out, x @ w.T + b, atol=1e-5)
    assert Adapter(48, 8, hidden=100).W1.out_features == 100


def test_adapter_from_state_dict_reads_the_sizes():
    adapter = Adapter(20, 6, hidden=7)
    rebuilt = Adapter.from_state_dict(adapter.state_dict())
    assert (rebuilt.d_in, rebuilt.hidden, rebuilt.d_out) == (20, 7, 6)
    x = torch.randn(3, 20)
    assert torch.equal(rebuilt(x), adapter(x))


def test_scaled_pca_multiplies_the_projection_and_keeps_the_mean():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    pca = PCA.fit(x, 4)
    big = pca.scaled(2.5)
    assert torch.allclose(big.transform(x), 2.5 * pca.transform(x), atol=1e-5)
    assert torch.equal(big.mean, pca.mean)
    assert torch.allclose(big.explained_variance, pca.explained_variance * 6.25)
    # the saved state carries the factor, so a reloaded PCA projects the same
    again = PCA.from_state_dict(big.state_dict())
    assert torch.allclose(again.transform(x), big.transform(x))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            pca.scaled(bad)


def test_whitened_pca_gives_unit_variance_and_floors_empty_directions():
    x = data(60, 8)
    x[:, 7] = x[:, 6] * 2.0            # rank 7: the last component has no variance
    pca = PCA.fit(x, 8)
    white = pca.whitened(floor=1e-3)
    z = white.transform(x).double()
    assert torch.allclose(z[:, :7].var(dim=0), torch.ones(7, dtype=torch.float64), rtol=1e-3)
    # the empty direction is divided by the floor's deviation, not by ~0
    floor_std = (1e-3 * float(pca.explained_variance.double().mean())) ** 0.5
    assert float(z[:, 7].abs().max()) < 1e-3 / floor_std
    # the same directions as the plain PCA, only rescaled per coordinate
    ratio = white.transform(x)[:, :7] / pca.transform(x)[:, :7]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)
    with pytest.raises(ValueError, match="explained variances"):
        PCA.from_state_dict(pca.state_dict()).whitened()
    with pytest.raises(ValueError, match="floor must be positive"):
        pca.whitened(floor=0.0)


def test_layer_uses_the_adapters_one_matrix_form_with_the_same_values_and_gradients():
    from llmemb.item_tables import AdaptedItemEmbedding

    torch.manual_seed(3)
    source = torch.randn(41, 24)
    source[0] = 0
    adapter = Adapter(24, 6)
    layer = AdaptedItemEmbedding(source, adapter)
    ids = torch.randint(0, 41, (5, 7))
    ids[0, 0] = 0
    weights_t, weights_r = torch.randn(41, 6), torch.randn(5, 7, 6)

    def grads(table: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        adapter.zero_grad()
        ((table * weights_t).sum() + (rows * weights_r).sum()).backward()
        return [p.grad.clone() for p in adapter.parameters()]

    table, rows = layer.table(), layer(ids)
    got = grads(table, rows)
    plain_table = adapter(source) * (torch.arange(41) != 0).unsqueeze(-1)
    plain_rows = adapter(source[ids]) * (ids != 0).unsqueeze(-1)
    want = grads(plain_table, plain_rows)
    assert torch.allclose(table, plain_table, atol=1e-5) and torch.allclose(rows, plain_rows, atol=1e-5)
    assert table[0].abs().max() == 0 and rows[ids == 0].abs().sum() == 0
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-4)
