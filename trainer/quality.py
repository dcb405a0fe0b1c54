"""`make quality`: every row of the paper's tables on one dataset, plus cold start.

Grid (config section `quality`, all optional):
    seeds:      [0, 1, 2]
    backbones:  [sasrec, gru4rec, bert4rec]  every method on each
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
from llmemb.sections import checked
from trainer.config import Config, load_config
from trainer.experiments import Tables
from trainer.llm_stages import ensure_export, ensure_scft
from trainer.prepare import prepared_dataset
from trainer.rat import RATConfig
from trainer.report import write_report
from trainer.run_pool import MethodTask, RunSplit, prepare_negatives, run_chains

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


def _chains(split: str, root: Path, backbone: str, methods: Sequence[str], seeds: Sequence[int], config_path: Path,
            overrides: Sequence[str], rat: RATConfig) -> list[list[MethodTask]]:
    """One chain per seed: the ID run first (the others align to its table), then the other methods."""
    chains = []
    for seed in seeds:
        cfg = _config(config_path, overrides, backbone, seed)
        id_dir = root / split / f"none-{backbone}-seed{seed}"
        chains.append([
            MethodTask(split, cfg, method, rat, root / split / f"{method}-{backbone}-seed{seed}",
                       id_dir=id_dir if method != "none" else None)
            for method in ["none"] + [m for m in methods if m != "none"]
        ])
    return chains


def run_quality(
    config_path: Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    base = load_config(config_path, list(overrides))
    q = quality_settings(base)
    rat = RATConfig.from_dict(base.sections.get("rat"))
    dataset, data_dir = prepared_dataset(base)
    log(f"dataset {dataset.name}: {dataset.n_users} users, {dataset.n_items} items")

    stage_seconds: dict[str, float] = {}
    t = time.perf_counter()
    lora = ensure_scft(base, dataset)
    stage_seconds["scft"] = time.perf_counter() - t
    t = time.perf_counter()
    tables = Tables(base=ensure_export(base, dataset, None, "base"), scft=ensure_export(base, dataset, lora, "scft"))
    stage_seconds["export"] = time.perf_counter() - t
    report = str(q["report"] or base.name)
    root = Path(base.runs_dir) / base.name / "quality" / report

    splits = {"main": RunSplit(dataset, tables, data_dir)}
    chains: list[list[MethodTask]] = []
    for backbone in q["backbones"]:
        methods = list(q["methods"]) + (list(q["ablations"]) if backbone == q["ablation_backbone"] else [])
        chains += _chains("main", root, backbone, methods, q["seeds"], config_path, overrides, rat)

    cold_info: dict[str, Any] | None = None
    if q["cold_fraction"] > 0:
        t = time.perf_counter()
        cold = cold_start_split(dataset, q["cold_fraction"], q["cold_seed"])
        warm_rows = cold.warm_rows
        # Strict cold start: SCFT and PCA never see the held-out items.
        lora_cold = ensure_scft(base, cold.dataset, tag="scft-cold", item_rows=warm_rows.tolist(),
                                steps=int(q["cold_scft_steps"]))
        cold_tables = Tables(base=tables.base, scft=ensure_export(base, cold.dataset, lora_cold, "scft-cold"))
        stage_seconds["cold_scft_export"] = time.perf_counter() - t
        cold_users = cold.cold_test_users()
        loss_items = ~cold.cold
        loss_items[0] = False
        cold_info = {"scft_steps": int(q["cold_scft_steps"]), "items": int(cold.cold.sum()), "test_users_with_cold_target": int(cold_users.sum()),
                     "users": cold.dataset.n_users, "fraction": q["cold_fraction"], "seed": q["cold_seed"]}
        splits["cold"] = RunSplit(cold.dataset, cold_tables, data_dir / "cold", loss_items=loss_items,
                               fit_rows=warm_rows, user_groups={"cold_targets": cold_users})
        chains += _chains("cold", root, q["cold_backbone"], q["cold_methods"], q["seeds"], config_path, overrides,
                          rat)

    t = time.perf_counter()
    prepare_negatives(splits, base.eval)
    results_by_chain = run_chains(splits, chains, workers=int(q["workers"]), log=log)
    runs = [{"split": chain[0].split, **metrics} for chain, out in zip(chains, results_by_chain) for metrics in out]
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
        "scft_summary_path": str(lora.parent / "scft.json"),
    }
    out = Path(base.reports_dir) / report
    write_report(results, out, root, log=log)
    return results
