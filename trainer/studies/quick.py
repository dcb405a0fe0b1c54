"""The quick pipeline behind `make run`: short SCFT, export, PCA, ID pretraining,
RAT on one backbone, evaluation, bundle (trainer.runs.pipeline's sequence, one seed, a time cap
per model). Minutes on a laptop-class CPU.

Config section `quick` (optional): scft_steps (default 60), backbone (sasrec),
seed (0), max_seconds (training time cap per model, default 120), method (the
bundle's item layer: llmemb or hybrid, default hybrid: reports/regimes.md shows it
never below the ID-only model, where LLMEmb alone is on dense data).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmemb.methods import served_method
from llmemb.sections import checked
from trainer.config import load_config
from trainer.runs.method_run import RunSplit
from trainer.runs.pipeline import llm_tables, method_tasks, run_pipeline
from trainer.stages.make_bundle import bundle_from_run
from trainer.stages.prepare import prepared_dataset

DEFAULTS: dict[str, Any] = {"scft_steps": 60, "backbone": "sasrec", "seed": 0, "max_seconds": 120,
                            "method": "hybrid"}


def run_quick(config_path: Path, out_dir: Path, overrides: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    first = load_config(config_path, list(overrides))
    q = {**DEFAULTS, **checked(first.sections.get("quick"), DEFAULTS, "quick")}
    method = q["method"]
    served_method(method, "quick.method")
    config = load_config(config_path, [*overrides, f"train.seed={q['seed']}",
                                       f"train.max_seconds={q['max_seconds']}"], backbone=q["backbone"])
    rat = config.rat
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    dataset, data_dir = prepared_dataset(config)
    seconds["prepare"] = time.perf_counter() - t
    log(f"dataset {dataset.name}: {dataset.n_users} users, {dataset.n_items} items")
    t = time.perf_counter()
    lora, tables = llm_tables(config, dataset, [method], scft_tag="scft-quick",
                              scft_changes={"steps": int(q["scft_steps"])})
    seconds["llm_tables"] = time.perf_counter() - t

    root = Path(config.runs_dir) / config.name / "quick"
    tasks = method_tasks("main", config, [method], rat, root)
    t = time.perf_counter()
    (metrics,) = run_pipeline({"main": RunSplit(dataset, tables, data_dir)}, tasks, log=log)[1:]
    seconds["id_and_rat"] = time.perf_counter() - t
    t = time.perf_counter()
    manifest = bundle_from_run(tasks[-1].directory, dataset, lora, out_dir)
    seconds["bundle"] = time.perf_counter() - t
    summary = {"bundle": str(out_dir), "fingerprint": manifest.fingerprint, "seconds": seconds,
               "wall_seconds": time.perf_counter() - started, "test": metrics["test"]}
    (root / "quick.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log(f"bundle {out_dir} ({manifest.fingerprint[:12]}) in {summary['wall_seconds']:.0f} s")
    return summary
