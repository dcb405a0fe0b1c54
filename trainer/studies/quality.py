"""`make quality`: every row of the paper's tables on one dataset, plus cold start.

Grid (config section `quality`, all optional):
    seeds:      [0, 1, 2]
    backbones:  [sasrec, gru4rec, bert4rec]  every method on each ([] = the cold-start split only, e.g.
                                 a report <name>-cold that `trainer regimes` shows with report <name>)
    methods:    [none, llm2x, llmemb, hybrid]
    ablations:  [wo_scft, wo_adapter, wo_freeze, wo_align] on `ablation_backbone`
    ablation_backbone: sasrec
    cold_fraction: 0.1          held-out items for the cold-start split (0 = skip)
    cold_seed: 0
    cold_scft_steps: 30         SCFT steps of the cold-start split's own LoRA (trained on warm items only)
    cold_methods: [none, llm2x, llmemb, hybrid]
    workers: 2                  processes training runs side by side (one torch thread each)
    report: null                the report's name (default: the dataset's); one dataset can have
                                several reports (e.g. the CE and the BCE loss)

Runs go to <runs_dir>/<dataset>/quality/<report>/<split>/<method>-<backbone>-seed<s>/
and are reused when their settings are unchanged, so an interrupted grid resumes.
The report (results.json, results.md, figures) goes to <reports_dir>/<report>/.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llmemb.data.coldstart import cold_start_split
from llmemb.data.dataset import Dataset
from llmemb.methods import RATConfig, get_method
from llmemb.sections import checked
from trainer.config import Config, load_config
from trainer.reports.quality_report import write_report
from trainer.runs.method_run import RunSplit, Tables
from trainer.runs.pipeline import llm_tables, method_tasks, run_pipeline
from trainer.runs.pool import MethodTask, prepare_negatives
from trainer.stages.prepare import prepared_dataset

DEFAULTS: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "backbones": ["sasrec", "gru4rec", "bert4rec"],
    "methods": ["none", "llm2x", "llmemb", "hybrid"],
    "ablations": ["wo_scft", "wo_adapter", "wo_freeze", "wo_align"],
    "ablation_backbone": "sasrec",
    "cold_fraction": 0.1,
    "cold_seed": 0,
    "cold_methods": ["none", "llm2x", "llmemb", "hybrid"],
    "cold_backbone": "sasrec",
    "cold_scft_steps": 30,
    "workers": 2,
    "report": None,
}


def quality_settings(config: Config) -> dict[str, Any]:
    return {**DEFAULTS, **checked(config.sections.get("quality"), DEFAULTS, "quality")}


def _config(path: Path, overrides: Sequence[str], backbone: str, seed: int) -> Config:
    return load_config(path, [*overrides, f"train.seed={seed}"], backbone=backbone)


def _grid_tasks(split: str, root: Path, backbone: str, methods: Sequence[str], seeds: Sequence[int],
                config_path: Path, overrides: Sequence[str], rat: RATConfig) -> list[MethodTask]:
    """Per seed: the ID run, then the other methods (aligned to it), under root/split/."""
    return [task for seed in seeds
            for task in method_tasks(split, _config(config_path, overrides, backbone, seed), methods, rat, root / split,
                                     name=lambda m, s=seed: f"{m}-{backbone}-seed{s}")]


def _cold_split(base: Config, dataset: Dataset, data_dir: Path, tables: Tables,
                q: dict[str, Any]) -> tuple[RunSplit, dict[str, Any]]:
    """The cold-start split: q["cold_fraction"] of the items held out of training, and of SCFT and PCA
    (strict cold start: its own LoRA trained on the warm items only); its summary for the report."""
    cold = cold_start_split(dataset, q["cold_fraction"], q["cold_seed"])
    warm_rows = cold.warm_rows
    _, cold_tables = llm_tables(base, cold.dataset, ["llmemb"], scft_tag="scft-cold", item_rows=warm_rows.tolist(),
                                scft_changes={"steps": int(q["cold_scft_steps"])})
    cold_users = cold.cold_test_users()
    loss_items = ~cold.cold
    loss_items[0] = False
    info = {"scft_steps": int(q["cold_scft_steps"]), "items": int(cold.cold.sum()),
            "test_users_with_cold_target": int(cold_users.sum()), "users": cold.dataset.n_users,
            "fraction": q["cold_fraction"], "seed": q["cold_seed"]}
    split = RunSplit(cold.dataset, Tables(base=tables.base, scft=cold_tables.scft), data_dir / "cold",
                     loss_items=loss_items, fit_rows=warm_rows, user_groups={"cold_targets": cold_users})
    return split, info


def run_quality(
    config_path: Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    base = load_config(config_path, list(overrides))
    q = quality_settings(base)
    rat = base.rat
    dataset, data_dir = prepared_dataset(base)
    log(f"dataset {dataset.name}: {dataset.n_users} users, {dataset.n_items} items")

    stage_seconds: dict[str, float] = {}
    t = time.perf_counter()
    main_methods = {*q["methods"], *q["ablations"]} if q["backbones"] else set()
    cold_methods = set(q["cold_methods"]) if q["cold_fraction"] > 0 else set()
    # the cold split trains its own SCFT and reads only the base table from here
    lora, tables = llm_tables(base, dataset, main_methods | {m for m in cold_methods if get_method(m).table == "base"})
    stage_seconds["llm_tables"] = time.perf_counter() - t
    report = str(q["report"] or base.name)
    root = Path(base.runs_dir) / base.name / "quality" / report

    splits = {"main": RunSplit(dataset, tables, data_dir)}
    tasks: list[MethodTask] = []
    for backbone in q["backbones"]:
        methods = list(q["methods"]) + (list(q["ablations"]) if backbone == q["ablation_backbone"] else [])
        tasks += _grid_tasks("main", root, backbone, methods, q["seeds"], config_path, overrides, rat)

    cold_info: dict[str, Any] | None = None
    if q["cold_fraction"] > 0:
        t = time.perf_counter()
        splits["cold"], cold_info = _cold_split(base, dataset, data_dir, tables, q)
        stage_seconds["cold_scft_export"] = time.perf_counter() - t
        tasks += _grid_tasks("cold", root, q["cold_backbone"], q["cold_methods"], q["seeds"], config_path, overrides,
                             rat)

    t = time.perf_counter()
    prepare_negatives(splits, base.eval)
    by_task = run_pipeline(splits, tasks, workers=int(q["workers"]), log=log)
    runs = [{"split": task.split, **metrics} for task, metrics in zip(tasks, by_task)]
    stage_seconds["grid"] = time.perf_counter() - t

    results = {
        "dataset": dataset.stats(base.eval.head_fraction),
        "config": base.to_dict(),
        "config_path": str(config_path) + "".join(f" --set {o}" for o in overrides),
        "quality": q,
        "rat": rat.to_dict(),
        "cold_start": cold_info,
        "popularity": dataset.popularity().tolist(),
        "runs": runs,
        "stage_seconds": stage_seconds,
        "wall_seconds": time.perf_counter() - started,
        "environment": f"{platform.machine()}, {q['workers']} worker process(es) x {base.train.threads} torch thread(s), "
                       f"torch {torch.__version__}",
        "scft_summary_path": None if lora is None else str(lora.parent / "scft.json"),
    }
    out = Path(base.reports_dir) / report
    write_report(results, out, root, log=log)
    return results
