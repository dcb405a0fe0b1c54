"""PCA and the adapter: LLM vectors (D) -> d_pca -> the backbone's size d.

PCA is centred and not whitened (docs/METHOD.md, RAT step 1). The adapter is the
paper's two linear layers with no nonlinearity in between.
"""
from __future__ import annotations

import torch
from torch import nn

MAX_PCA_COMPONENTS = 1536  # the paper's d_pca


def default_n_components(n: int, d: int) -> int:
    """min(1536, D, N-1): centred data of N rows has rank at most N-1."""
    return max(1, min(MAX_PCA_COMPONENTS, d, n - 1))


class PCA:
    """x -> (x - mean) @ components.T, components [k, D]: orthonormal rows as fitted;
    `scaled` and `whitened` fold a rescaling of the reduced coordinates into them."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor):
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(
                f"PCA expects mean [D] and components [k, D], got {tuple(mean.shape)} and {tuple(components.shape)}"
            )
        self.mean = mean.float()
        self.components = components.float()
        self.explained_variance: torch.Tensor | None = None  # known after fit only

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def dim_in(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def fit(cls, x: torch.Tensor, n_components: int | None = None) -> PCA:
        """Deterministic: fp64 on CPU, and each component's largest-magnitude entry is
        made positive (singular vectors are defined only up to sign)."""
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"PCA needs a [N >= 2, D] matrix, got {tuple(x.shape)}")
        n, d = x.shape
        k = default_n_components(n, d) if n_components is None else n_components
        if not 1 <= k <= min(d, n):
            raise ValueError(f"n_components must be in [1, {min(d, n)}], got {k}")
        data = x.detach().to("cpu", torch.float64)
        mean = data.mean(dim=0)
        centred = data - mean
        if n > d:
            # The right singular vectors of X are those of the D x D matrix X^T X,
            # whose singular values are squared: far less memory when N >> D.
            _, s2, vh = torch.linalg.svd(centred.T @ centred)
            variance = s2 / (n - 1)
        else:
            _, s, vh = torch.linalg.svd(centred, full_matrices=False)
            variance = s**2 / (n - 1)
        components = vh[:k]
        pivot = components.abs().argmax(dim=1)
        signs = torch.sign(components[torch.arange(k), pivot])
        components = components * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
        pca = cls(mean, components)
        pca.explained_variance = variance[:k].float()
        return pca

    def scaled(self, factor: float) -> PCA:
        """The same projection times `factor` (rows of norm `factor`): a global rescale of
        the reduced table, kept inside the PCA so the bundle and the service apply it too."""
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        out = PCA(self.mean, self.components * factor)
        if self.explained_variance is not None:
            out.explained_variance = self.explained_variance * factor**2
        return out

    def whitened(self, floor: float = 1e-3) -> PCA:
        """Each component divided by its standard deviation, so every reduced coordinate has
        unit variance on the fitted data. Components whose variance is below `floor` times
        the mean variance are divided by that floor's deviation instead, so directions with
        (numerically) no variance are not blown up. Needs the variances of `fit`."""
        if self.explained_variance is None:
            raise ValueError("whitening needs the explained variances: use a PCA from fit()")
        if not floor > 0:
            raise ValueError(f"whitening floor must be positive, got {floor}")
        variance = self.explained_variance.double()
        std = variance.clamp_min(floor * float(variance.mean())).sqrt()
        out = PCA(self.mean, (self.components.double() / std.unsqueeze(1)).float())
        out.explained_variance = (variance / std**2).float()
        return out

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., k] fp32 on x's device."""
        mean = self.mean.to(x.device)
        components = self.components.to(x.device)
        return (x.float() - mean) @ components.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "components": self.components.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PCA:
        return cls(state["mean"], state["components"])


class Adapter(nn.Module):
    """e = W2 (W1 x + b1) + b2, as in the paper: no nonlinearity, so the adapter is
    a learned low-rank linear map whose factorised form trains more easily than
    one D x d matrix.

    Hidden size: d_in // 2 by default, the halving of the authors' reference
    code (and of their LLM-ESR adapter). At the paper's sizes (d_pca 1536 -> 768 -> d 64-128) the
    bottleneck stays well above d, so the map's rank is bounded by d_out rather
    than by the hidden layer. Pass `hidden` to change it; `from_state_dict`
    reads it back from the weights.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None):
        super().__init__()
        self.hidden = hidden if hidden is not None else max(1, d_in // 2)
        self.W1 = nn.Linear(d_in, self.hidden)
        self.W2 = nn.Linear(self.hidden, d_out)
        self.d_in, self.d_out = d_in, d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W2(self.W1(x))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same map as one matrix and bias, x -> x @ M + c, differentiable in W1 and W2:
        M = W1^T W2^T [d_in, d_out], c = W2 b1 + b2. Over many rows it costs d_in * d_out per row
        instead of (d_in + d_out) * hidden, in the backward pass too (one [d_in, d_out] weight
        gradient instead of two, and no gradient of the hidden activations)."""
        return self.W1.weight.T @ self.W2.weight.T, self.W2(self.W1.bias)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Adapter:
        """Rebuild with the sizes read from the weights (also a non-default hidden)."""
        hidden, d_in = state["W1.weight"].shape
        d_out = state["W2.weight"].shape[0]
        adapter = cls(d_in, d_out, hidden=hidden)
        adapter.load_state_dict(state)
        return adapter
