"""A RAT-trained LLMEmb model -> the immutable bundle the service loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmemb.backbones import SequentialBackbone
from llmemb.bundle import BundleParts, write_bundle
from llmemb.data.dataset import Dataset
from llmemb.item_tables import AdaptedItemEmbedding, HybridItemEmbedding
from llmemb.projection import PCA
from trainer.config import Config
from trainer.llm_stages import base_model_id, encoder_spec


def bundle_from_model(
    config: Config,
    dataset: Dataset,
    model: SequentialBackbone,
    pca: PCA,
    lora_dir: Path | None,
    metrics: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Write `out_dir` from a RAT-trained model whose item layer is Adapter(PCA(E_llm)),
    or Hybrid's Adapter(PCA(E_llm)) + r (the bundle then stores r as well)."""
    layer = model.item_embedding
    if not isinstance(layer, AdaptedItemEmbedding) or layer.adapter is None:
        raise ValueError("a bundle needs the LLMEmb item layer (PCA table + adapter); "
                         f"got {type(layer).__name__} without an adapter")
    hybrid = isinstance(layer, HybridItemEmbedding)
    layer.eval()
    with torch.no_grad():
        table = layer.table().detach().cpu()
        residual = layer.residual_rows().detach().cpu() if hybrid else None
    return write_bundle(out_dir, BundleParts(
        base_model_id=base_model_id(config),
        encoder=encoder_spec(config, dataset.domain),
        pca_state=pca.state_dict(),
        adapter_state={k: v.detach().cpu() for k, v in layer.adapter.state_dict().items()},
        backbone_config=model.config,
        backbone_state=model.backbone_state_dict(),
        item_table=table,
        item_ids=list(dataset.item_ids),
        item_attributes=list(dataset.attributes),
        lora_dir=lora_dir,
        dataset=dataset.stats(config.eval.head_fraction),
        metrics=metrics,
        method="hybrid" if hybrid else "llmemb",
        residual=residual,
    ))


def bundle_from_run(config: Config, dataset: Dataset, run, lora_dir: Path | None, out_dir: Path) -> dict[str, Any]:
    """The bundle of a method's run (trainer.experiments.MethodRun, trained in this process), with its
    test and fit metrics in the manifest."""
    return bundle_from_model(config, dataset, run.model, run.pca, lora_dir,
                             {"test": run.metrics["test"], "fit": run.metrics["fit"]}, out_dir)
