"""A finished run of a servable method (LLMEmb, Hybrid) -> the immutable bundle the service loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from llmemb.bundle import BundleParts, write_bundle
from llmemb.data.dataset import Dataset
from llmemb.methods import served_method
from trainer.config import load_config
from trainer.runs.store import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, load_checkpoint, load_item_layer, read_json
from trainer.stages.llm_stages import base_model_id, encoder_spec


def bundle_from_run(run_dir: Path, dataset: Dataset, lora_dir: Path | None, out_dir: Path) -> dict[str, Any]:
    """Write `out_dir` from a run (trainer/runs/store.py) of a method a bundle may carry: its item layer is
    Adapter(PCA(E_llm)), for Hybrid plus a residual r (the bundle then stores r as well); `dataset` is
    the one the run trained on, `lora_dir` the SCFT adapter its table was exported with. Returns the
    manifest."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    metrics = read_json(run_dir / METRICS_FILE)
    try:
        method = served_method(metrics["method"])
        method.check_servable(config.rat)
    except ValueError as e:
        raise ValueError(f"{run_dir}: {e}") from None
    model = load_checkpoint(run_dir / CHECKPOINT_FILE)
    layer = load_item_layer(run_dir)
    if layer.adapter is None:
        raise ValueError(f"{run_dir}: a bundle needs the LLMEmb item layer (PCA table + adapter); "
                         "this run has no adapter")
    table = model.item_embedding.table().detach()
    if table.shape[0] != dataset.n_items + 1:
        raise ValueError(f"{run_dir}: the run has {table.shape[0] - 1} items, the dataset {dataset.n_items}")
    if (layer.residual is not None) != method.residual:
        raise ValueError(f"{run_dir}: a {method.name} run {'needs' if method.residual else 'has no'} residual rows")
    return write_bundle(out_dir, BundleParts(
        base_model_id=base_model_id(config),
        encoder=encoder_spec(config, dataset.domain),
        pca_state=layer.pca,
        adapter_state=layer.adapter,
        backbone_config=model.config,
        backbone_state=model.backbone_state_dict(),
        item_table=table,
        item_ids=list(dataset.item_ids),
        item_attributes=list(dataset.attributes),
        lora_dir=lora_dir,
        dataset=dataset.stats(config.eval.head_fraction),
        metrics={"test": metrics["test"], "fit": metrics["fit"]},
        method=method.name,
        residual=layer.residual,
    ))
