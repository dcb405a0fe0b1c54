"""One run of a method: train its backbone, evaluate it, record it.

`run_method` is the one way a run is trained: ID-only (`trainer train`, the baselines)
and every RAT method (rat, quick, quality, tune, encoders). A finished run leaves the
files of trainer/runs/store.py under its directory and is reused when the same settings ask
again: trainer.runs.store.is_done over those settings (run_settings), the one reuse rule.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmemb.backbones import SequentialBackbone
from llmemb.data.dataset import Dataset
from llmemb.methods import ID_METHOD, RATConfig, build_model, get_method
from llmemb.metrics import Evaluator, group_metrics
from llmemb.projection import PCA
from trainer.config import Config
from trainer.stages.prepare import prepared_dataset
from trainer.runs.store import CHECKPOINT_FILE, ITEM_LAYER_FILE, METRICS_FILE, is_done, recompute, write_run
from trainer.stages.train import fit, seed_everything


@dataclass
class Tables:
    """Exported LLM tables [N, D] (row r = item r+1) the methods read."""

    base: torch.Tensor | None = None
    scft: torch.Tensor | None = None


@dataclass
class RunSplit:
    """The data a run trains and is evaluated on, and what the runs of one data split share."""

    dataset: Dataset
    tables: Tables = field(default_factory=Tables)
    cache_dir: Path | None = None                     # sampled negatives (drawn once, then read)
    loss_items: np.ndarray | None = None              # bool [N+1], the items the loss may score
    fit_rows: np.ndarray | None = None                # rows of the export tables PCA is fitted on
    user_groups: dict[str, np.ndarray] = field(default_factory=dict)   # extra named test-user masks

    def evaluator(self, config: Config) -> Evaluator:
        return Evaluator(self.dataset, config.eval, cache_dir=self.cache_dir)


@dataclass
class MethodRun:
    method: str
    backbone: str
    seed: int
    metrics: dict[str, Any]
    model: SequentialBackbone | None = None   # None when the run was reused from disk
    pca: PCA | None = None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


# Settings added after runs were recorded: left out of a run's settings while at the value that
# reproduces the behaviour before they existed, so the runs recorded before stay reusable.
ADDED_LATER = {"residual_item_drop": 0.0, "text_residual": 0.0, "align_max_items": None}
# The same for the other sections; and settings that never change a result (where a run trains,
# how much it scores at once, the progress bar) are left out altogether.
ADDED_LATER_CONFIG = {"train": {"precision": "fp32", "batching": "shuffle"},
                      "backbone": {"loss_negatives": 256, "loss_sampler": "uniform", "dropout_masks": "torch"},
                      "eval": {"paper_tail_below": None}}
RUNTIME_ONLY = {"train": {"progress", "device"}, "eval": {"chunk_items"}}


def _result_keys(section: str, values: dict[str, Any]) -> dict[str, Any]:
    later = ADDED_LATER_CONFIG.get(section, {})
    return {k: v for k, v in values.items()
            if k not in RUNTIME_ONLY.get(section, set()) and not (k in later and v == later[k])}


def rat_settings(rat: RATConfig) -> dict[str, Any]:
    return {k: v for k, v in rat.to_dict().items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}


def run_settings(
    config: Config,
    method: str,
    rat: RATConfig,
    tables: Tables,
    id_table: torch.Tensor | None = None,
    loss_items: np.ndarray | None = None,
    fit_rows: np.ndarray | None = None,
    user_groups: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """What a run's result depends on, and nothing else: the data, backbone, training
    and evaluation sections (not the progress bar), the RAT settings and the one
    export table the method reads (none for ID-only runs), the alignment target and
    the masks. Other stages' config sections (encoder, scft, quality, quick) reach a
    run only through the tables, so editing them does not invalidate ID-only runs."""
    whole = config.to_dict()
    m = get_method(method)
    table = m.table
    source = getattr(tables, table) if table is not None else None
    sections = {k: _result_keys(k, whole[k]) for k in ("backbone", "train", "eval")}
    return {"config": {"dataset": whole["dataset"], **sections},
            "method": method, "rat": None if m.is_id else rat_settings(rat),
            "table": None if source is None else {table: _tensor_digest(source)},
            "loss_items": None if loss_items is None else _digest(np.flatnonzero(loss_items).tolist()),
            "fit_rows": None if fit_rows is None else _digest(np.asarray(fit_rows).tolist()),
            "id_table": None if id_table is None else _tensor_digest(id_table),
            "user_groups": {k: _digest(np.flatnonzero(v).tolist()) for k, v in (user_groups or {}).items()}}


def run_method(
    config: Config,
    split: RunSplit,
    method: str,
    rat: RATConfig,
    directory: Path,
    id_table: torch.Tensor | None = None,
    reuse: bool = True,
) -> MethodRun:
    """Train `method` on config.backbone with seed config.train.seed over `split`; write the run's files
    under `directory` (trainer/runs/store.py).

    id_table: the ID model's item table (alignment target) for methods that align.
    split.loss_items: the items the training loss may score (cold start: warm only).
    split.fit_rows: rows of the export tables PCA is fitted on (cold start: warm items only).
    split.user_groups: extra named bool [U] masks of test users, reported under metrics["test_groups"]
    (cold start: users whose test target is a cold item).
    """
    dataset, tables, loss_items, fit_rows = split.dataset, split.tables, split.loss_items, split.fit_rows
    user_groups = split.user_groups
    evaluator = split.evaluator(config)
    seed = config.train.seed
    m = get_method(method)
    settings = run_settings(config, method, rat, tables, id_table, loss_items, fit_rows, user_groups)
    metrics_path = directory / METRICS_FILE
    outputs = (METRICS_FILE, CHECKPOINT_FILE) + ((ITEM_LAYER_FILE,) if m.has_pca else ())
    if reuse and is_done(directory, settings, *outputs):
        return MethodRun(method, config.backbone.name, seed, json.loads(metrics_path.read_text(encoding="utf-8")))

    extra = m.extra_loss(id_table, rat)
    seed_everything(seed)
    model, pca = build_model(method, config.backbone, dataset.n_items, rat, tables.scft, tables.base, fit_rows,
                             trained_items=trained_items(dataset, loss_items))
    result = fit(model, dataset, config.train, config.eval, extra_loss=extra, evaluator=evaluator,
                 loss_items=None if loss_items is None else torch.from_numpy(loss_items))
    metrics = {
        "method": method,
        "backbone": config.backbone.name,
        "seed": seed,
        "valid": evaluator.evaluate(model, "valid"),
        "test": evaluator.evaluate(model, "test"),
        "test_groups": {
            name: {p: group_metrics(evaluator.ranks(model, "test", p), users, evaluator.config.ks)
                   for p in evaluator.config.protocols}
            for name, users in (user_groups or {}).items()
        },
        "fit": {k: v for k, v in result.to_dict().items() if k != "history"},
        "settings_digest": _digest(settings),
    }
    model.cpu()  # evaluated where it trained; kept and handed on (the next method's alignment target) on the CPU
    history = [{"epoch": r.epoch, "loss": r.loss, "valid": r.valid_score} for r in result.history]
    with recompute(directory, settings):
        write_run(directory, config, dataset, model, metrics, history, pca)
    return MethodRun(method, config.backbone.name, seed, metrics, model, pca)


def train_id_run(config: Config, directory: Path, reuse: bool = True) -> MethodRun:
    """The ID-only run of config.backbone, seed config.train.seed (`trainer train`, the baselines):
    run_method of the ID-only method on the prepared dataset (its `model` is None when the run was reused)."""
    dataset, data_dir = prepared_dataset(config)
    return run_method(config, RunSplit(dataset, cache_dir=data_dir), ID_METHOD, RATConfig(), directory, reuse=reuse)


def trained_items(dataset: Dataset, loss_items: np.ndarray | None = None) -> np.ndarray:
    """bool [N+1]: items with training interactions that the loss may score: the only
    ones a hybrid residual is given to."""
    trained = dataset.popularity() > 0
    if loss_items is not None:
        trained &= np.asarray(loss_items, dtype=bool)
    trained[0] = False
    return trained
