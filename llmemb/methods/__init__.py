"""The item-layer methods, registered by name (as backbones are in llmemb.backbones).

The trainer, the reports, the bundle and the service ask this registry what a method reads, builds,
adds to the loss and serves; none of them compares a method's name. Adding a method: a module of
this package with its `Method` (subclass or instance), and one `register` line below.
"""
from __future__ import annotations

import numpy as np
import torch

from llmemb.backbones import BackboneConfig, SequentialBackbone, build_backbone
from llmemb.methods.base import ExtraLoss, Method
from llmemb.methods.hybrid import HYBRID
from llmemb.methods.id_methods import LLM2X_METHOD, NONE
from llmemb.methods.llmemb import ABLATIONS, LLMEMB
from llmemb.methods.settings import ALIGN_LOSSES, RATConfig
from llmemb.projection import PCA

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


for _method in (NONE, LLM2X_METHOD, LLMEMB, HYBRID, *ABLATIONS):
    register(_method)

ID_METHOD = NONE.name


def get_method(name: str, setting: str = "method") -> Method:
    """The registered method `name`; a ValueError naming `setting` and the known methods otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{setting}: unknown method {name!r}; known: {', '.join(METHODS)}") from None


def served_method(name: str, setting: str = "method") -> Method:
    """`name`'s method when a bundle may carry it; a ValueError naming the servable ones otherwise."""
    method = get_method(name, setting)
    if not method.served:
        served = ", ".join(m.name for m in METHODS.values() if m.served)
        raise ValueError(f"{setting} must be one of {served}, got {name!r}")
    return method


def tables_read(names) -> set[str]:
    """The exported tables ("scft", "base") the methods `names` read."""
    return {t for t in (get_method(n).table for n in names) if t is not None}


def build_model(
    method: str,
    backbone: BackboneConfig,
    n_items: int,
    rat: RATConfig,
    scft_table: torch.Tensor | None = None,
    base_table: torch.Tensor | None = None,
    fit_rows: np.ndarray | None = None,
    trained_items: np.ndarray | None = None,
) -> tuple[SequentialBackbone, PCA | None]:
    """The backbone with `method`'s item layer, and the PCA the layer keeps (None for ID tables).

    trained_items: bool [N+1], the items with training interactions (default: all but padding)."""
    m = get_method(method)
    table = {"scft": scft_table, "base": base_table, None: None}[m.table]
    if m.table is not None:
        if table is None:
            which = "SCFT" if m.table == "scft" else "base-LLM"
            raise ValueError(f"method {method} needs the {which} export table")
        if table.shape[0] != n_items:
            raise ValueError(f"export table has {table.shape[0]} rows, the dataset {n_items} items")
    trained = torch.ones(n_items + 1, dtype=torch.bool) if trained_items is None else torch.as_tensor(trained_items)
    layer, pca = m.build_layer(n_items, backbone.hidden, rat, table, fit_rows, trained)
    return build_backbone(backbone, layer), pca


def extra_loss(method: str, id_table: torch.Tensor | None, rat: RATConfig) -> ExtraLoss | None:
    """fit's extra_loss hook for `method` (Method.extra_loss)."""
    return get_method(method).extra_loss(id_table, rat)


__all__ = ["ALIGN_LOSSES", "ID_METHOD", "METHODS", "ExtraLoss", "Method", "RATConfig", "build_model", "extra_loss",
           "get_method", "register", "served_method", "tables_read"]
