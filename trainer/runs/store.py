"""Where stages read and write, and the one format of a run.

    <runs_dir>/<dataset>/data/         prepared Dataset (Dataset.save), stats.json, settings.json,
                                       cached sampled negatives
    <run directory>/                   config.yaml (resolved), dataset_stats.json,
                                       model.safetensors, metrics.json, history.json,
                                       item_layer.safetensors (methods with a PCA)

Every run has these files, whatever its method (the ID-only `train` runs and the
RAT runs of rat, quick, quality, tune and encoders alike; trainer/runs/method_run.py
writes them). model.safetensors holds the backbone's parameters and the item table
as trained (for a RAT method, the adapter's output over the frozen LLM table, plus
Hybrid's residual), with the backbone config and item count in its metadata, so any
run rebuilds on its own and `trainer evaluate` reads any run. item_layer.safetensors keeps
what the item table was made from where a PCA made it (the PCA, the adapter, Hybrid's
residual rows): a bundle is written from any LLMEmb or Hybrid run directory.

One reuse rule for every stage that writes a directory (the prepared dataset, SCFT, the
exports, the runs): `is_done(directory, settings, outputs...)`: the directory's
settings.json equals what the result depends on, and its outputs exist. A stage makes
its result inside `with recompute(directory, settings)`, which removes settings.json
first and writes it last, so an interrupted or half-rewritten result is never taken
as finished, under the old settings or the new.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llmemb.backbones import BackboneConfig, FixedItemEmbedding, SequentialBackbone, build_backbone
from llmemb.data.dataset import Dataset
from llmemb.item_tables import AdaptedItemEmbedding, HybridItemEmbedding
from llmemb.projection import PCA
from trainer.config import Config, load_config, save_config

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
DATASET_STATS_FILE = "dataset_stats.json"
TABLE_KEY = "item_embedding.table"
SETTINGS_FILE = "settings.json"
ITEM_LAYER_FILE = "item_layer.safetensors"


def dataset_dir(config: Config) -> Path:
    return Path(config.runs_dir) / config.name / "data"


def default_run_name(config: Config) -> str:
    return f"{config.backbone.name}-seed{config.train.seed}"


def run_dir(config: Config, run_name: str | None = None) -> Path:
    return Path(config.runs_dir) / config.name / (run_name or default_run_name(config))


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def plain_json(settings: Any) -> Any:
    """Settings as JSON gives them back (tuples as lists, paths and numbers as written)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_of(directory: Path) -> Any:
    """The settings a finished step was made with, or None."""
    path = Path(directory) / SETTINGS_FILE
    return read_json(path) if path.is_file() else None


def is_done(directory: Path, settings: Any, *outputs: str) -> bool:
    """The one reuse rule: `directory` holds the finished result of `settings`."""
    directory = Path(directory)
    return settings_of(directory) == plain_json(settings) and all((directory / o).exists() for o in outputs)


@contextmanager
def recompute(directory: Path, settings: Any) -> Iterator[Path]:
    """Make the result of `settings` in `directory` anew: not done while the block runs,
    done (settings.json written) once it completes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SETTINGS_FILE).unlink(missing_ok=True)
    yield directory
    write_json(directory / SETTINGS_FILE, plain_json(settings))


def save_checkpoint(model: SequentialBackbone, path: Path) -> None:
    """The backbone's parameters and its item table as evaluated (eval mode: no dropout on it)."""
    model.eval()
    state = {k: v.detach().contiguous().cpu() for k, v in model.backbone_state_dict().items()}
    with torch.no_grad():
        state[TABLE_KEY] = model.item_embedding.table().detach().contiguous().cpu()
    metadata = {
        "backbone": json.dumps(model.config.to_dict()),
        "n_items": str(state[TABLE_KEY].shape[0] - 1),
    }
    save_file(state, str(path), metadata=metadata)


def load_checkpoint(path: Path) -> SequentialBackbone:
    """A backbone over the run's item table, rebuilt from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "backbone" not in metadata or "n_items" not in metadata:
        raise ValueError(f"{path}: not a backbone checkpoint (metadata lacks backbone config / n_items)")
    config = BackboneConfig.from_dict(json.loads(metadata["backbone"]))
    state = load_file(str(path))
    model = build_backbone(config, FixedItemEmbedding(state.pop(TABLE_KEY)))
    model.load_backbone_state_dict(state)
    model.eval()
    return model


def load_item_table(directory: Path) -> torch.Tensor:
    """The item table [N+1, d] of a run (row 0 = padding)."""
    with safe_open(str(Path(directory) / CHECKPOINT_FILE), framework="pt") as f:
        return f.get_tensor(TABLE_KEY)


def save_item_layer(model: SequentialBackbone, pca: PCA, path: Path, method: str) -> None:
    """pca.*, adapter.* (when the layer has an adapter) and, for Hybrid, residual: the
    residual rows as evaluated (zero for items without training interactions)."""
    layer = model.item_embedding
    if not isinstance(layer, AdaptedItemEmbedding):
        raise TypeError(f"a PCA item layer was expected, found {type(layer).__name__}")
    state = {f"pca.{k}": v for k, v in pca.state_dict().items()}
    if layer.adapter is not None:
        state.update({f"adapter.{k}": v.detach() for k, v in layer.adapter.state_dict().items()})
    if isinstance(layer, HybridItemEmbedding):
        layer.eval()
        with torch.no_grad():
            state["residual"] = layer.residual_rows().detach()
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path),
              metadata={"method": method})


@dataclass
class ItemLayerParts:
    pca: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor] | None       # None: the "w/o adapter" ablation
    residual: torch.Tensor | None                 # Hybrid's residual rows [N+1, d]


def load_item_layer(directory: Path) -> ItemLayerParts:
    """The item layer's parts of a run directory (save_item_layer)."""
    path = Path(directory) / ITEM_LAYER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {ITEM_LAYER_FILE} (only runs of a method with a PCA have one)")
    state = load_file(str(path))

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}

    return ItemLayerParts(part("pca"), part("adapter") or None, state.get("residual"))


def write_run(
    directory: Path,
    config: Config,
    dataset: Dataset,
    model: SequentialBackbone,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    pca: PCA | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_config(config, directory / CONFIG_FILE)
    write_json(directory / DATASET_STATS_FILE, dataset.stats(config.eval.head_fraction))
    save_checkpoint(model, directory / CHECKPOINT_FILE)
    if pca is not None:
        save_item_layer(model, pca, directory / ITEM_LAYER_FILE, metrics["method"])
    else:
        (directory / ITEM_LAYER_FILE).unlink(missing_ok=True)
    write_json(directory / HISTORY_FILE, history)
    write_json(directory / METRICS_FILE, metrics)


def load_run(directory: Path) -> tuple[Config, SequentialBackbone]:
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a run directory (no {CONFIG_FILE})")
    return load_config(directory / CONFIG_FILE), load_checkpoint(directory / CHECKPOINT_FILE)

