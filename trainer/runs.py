"""Where stages read and write, and the files of a run.

    <runs_dir>/<dataset>/data/         prepared Dataset (Dataset.save), stats.json, spec.json,
                                       cached sampled negatives
    <runs_dir>/<dataset>/<run name>/   config.yaml (resolved), dataset_stats.json,
                                       model.safetensors, metrics.json, history.json

model.safetensors holds the whole model state (item table included) and, in
its metadata, the backbone config and item count, so it rebuilds on its own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llmemb.backbones import BackboneConfig, SequentialBackbone, build_id_backbone
from llmemb.data.dataset import Dataset
from trainer.config import Config, load_config, save_config

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
DATASET_STATS_FILE = "dataset_stats.json"


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


def save_checkpoint(model: SequentialBackbone, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "backbone": json.dumps(model.config.to_dict()),
        "n_items": str(model.item_embedding.n_items),
    }
    save_file(state, str(path), metadata=metadata)


def load_checkpoint(path: Path) -> SequentialBackbone:
    """An ID-table backbone rebuilt from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "backbone" not in metadata or "n_items" not in metadata:
        raise ValueError(f"{path}: not a backbone checkpoint (metadata lacks backbone config / n_items)")
    config = BackboneConfig.from_dict(json.loads(metadata["backbone"]))
    model = build_id_backbone(config, int(metadata["n_items"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def write_run(
    directory: Path,
    config: Config,
    dataset: Dataset,
    model: SequentialBackbone,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_config(config, directory / CONFIG_FILE)
    write_json(directory / DATASET_STATS_FILE, dataset.stats(config.eval.head_fraction))
    save_checkpoint(model, directory / CHECKPOINT_FILE)
    write_json(directory / METRICS_FILE, metrics)
    write_json(directory / HISTORY_FILE, history)


def load_run(directory: Path) -> tuple[Config, SequentialBackbone]:
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a run directory (no {CONFIG_FILE})")
    return load_config(directory / CONFIG_FILE), load_checkpoint(directory / CHECKPOINT_FILE)

