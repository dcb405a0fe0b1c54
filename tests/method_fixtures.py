"""Small tables, backbones and models the tests of the item layers, the methods and the alignment share."""
from __future__ import annotations

import torch

from llmemb.backbones import BackboneConfig
from llmemb.methods import RATConfig, build_model, extra_loss
from trainer.stages.train import seed_everything

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



def alignment_loss(id_table, rat):
    return extra_loss("llmemb", id_table, rat)


def aligned_model():
    scft, _ = tables()
    seed_everything(0)
    model, _ = build_model("llmemb", backbone(), N, RATConfig(), scft_table=scft)
    id_table = torch.randn(N + 1, HIDDEN, generator=torch.Generator().manual_seed(3), requires_grad=True)
    return model, id_table


def hybrid(trained=None, **rat):
    scft, _ = tables()
    seed_everything(0)
    return build_model("hybrid", backbone(), N, RATConfig(**rat), scft_table=scft, trained_items=trained)
