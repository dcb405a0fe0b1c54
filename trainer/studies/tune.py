"""`python -m trainer tune`: try settings of one method on validation, record them all.

A grid file names the variants (each a list of `section.key=value` overrides on
top of the experiment config) and the seeds:

    method: llmemb            # the method tuned
    backbone: sasrec
    seeds: [0]
    workers: 2
    overrides: [train.max_seconds=75]       # shared by every variant and the ID reference
    variants:
      default: []
      alpha-0.1: [rat.alpha=0.1]
      scft-300: [scft.steps=300]

Variants that change the encoder or SCFT sections get SCFT and export runs of
their own (tagged by a digest of those sections), trained before the grid.
Every variant aligns with the same ID-only model per seed (the reference row).

Selection is on validation NDCG@10 under the config's selection protocol; test
metrics are written beside it for the record, never used to choose. Output:
<reports_dir>/<dataset>/tuning/<grid file stem>.{json,md}.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmemb.methods import ID_METHOD
from llmemb.sections import checked
from trainer.config import Config, load_config
from trainer.reports.quality_report import mean_std, pm
from trainer.runs.method_run import RunSplit, Tables
from trainer.runs.pipeline import llm_tables, run_pipeline
from trainer.runs.pool import MethodTask, prepare_negatives
from trainer.stages.prepare import prepared_dataset

GRID_KEYS = {"method", "backbone", "seeds", "workers", "overrides", "variants"}
LLM_SECTIONS = ("encoder", "scft")


def load_grid(path: Path) -> dict[str, Any]:
    grid = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    grid = checked(grid, GRID_KEYS, str(path))
    variants = grid.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path}: 'variants' must map names to lists of overrides")
    for name, sets in variants.items():
        if not isinstance(sets, list) or not all(isinstance(x, str) and "=" in x for x in sets):
            raise ValueError(f"{path}: variant {name!r} must be a list of 'section.key=value' strings")
    return {"method": "llmemb", "backbone": "sasrec", "seeds": [0], "workers": 2, "overrides": [], **grid}


def _llm_tag(config: Config, reference: Config, stem: str) -> str:
    """`stem` when the variant's LLM sections equal the reference config's, else stem-<digest>."""
    mine = {k: config.sections.get(k) for k in LLM_SECTIONS}
    if mine == {k: reference.sections.get(k) for k in LLM_SECTIONS}:
        return stem
    return f"{stem}-{hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:10]}"


def _row(name: str, sets: list[str], runs: list[dict[str, Any]], select_protocol: str) -> dict[str, Any]:
    def pick(which: str, protocol: str, group: str, metric: str) -> dict[str, float]:
        return mean_std([r[which][protocol][group][metric] for r in runs])

    return {
        "variant": name, "overrides": sets, "seeds": [r["seed"] for r in runs],
        "valid_ndcg@10": pick("valid", select_protocol, "overall", "ndcg@10"),
        "test": {p: {"overall_ndcg@10": pick("test", p, "overall", "ndcg@10"),
                     "tail_hr@10": pick("test", p, "tail", "hr@10")} for p in runs[0]["test"]},
        "epochs": [r["fit"].get("epochs_run") for r in runs],
        "stop": [r["fit"].get("stop_reason") for r in runs],
        "train_seconds": [round(r["fit"].get("train_seconds", 0.0), 1) for r in runs],
    }


def run_tuning(config_path: Path, grid_path: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    grid = load_grid(grid_path)
    shared = list(grid["overrides"])
    reference = load_config(config_path, shared, backbone=grid["backbone"])
    dataset, data_dir = prepared_dataset(reference)
    method = grid["method"]
    root = Path(reference.runs_dir) / reference.name / "tune"

    # The LLM stages of every variant first (they use all cores), then the RAT grid.
    tables: dict[str, Tables] = {}
    scft_val: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[int, Config]] = {}
    for name, sets in grid["variants"].items():
        configs[name] = {s: load_config(config_path, [*shared, *sets, f"train.seed={s}"], backbone=grid["backbone"])
                         for s in grid["seeds"]}
        cfg = configs[name][grid["seeds"][0]]
        scft_tag, base_tag = _llm_tag(cfg, reference, "scft"), _llm_tag(cfg, reference, "base")
        lora, tables[name] = llm_tables(cfg, dataset, [method], scft_tag=scft_tag, base_tag=base_tag)
        if lora is not None:
            summary = json.loads((lora.parent / "scft.json").read_text(encoding="utf-8"))
            scft_val[name] = {"before": summary["val_before"], "after": summary["val_after"],
                              "steps_per_s": summary["steps_per_s"]}
        log(f"variant {name}: LLM tables ready ({scft_tag if lora is not None else base_tag})")

    splits = {"main": RunSplit(dataset, Tables(), data_dir)}
    prepare_negatives(splits, reference.eval)
    ref_rat = reference.rat
    id_dirs = {s: root / f"{ID_METHOD}-{grid['backbone']}-seed{s}" for s in grid["seeds"]}
    id_tasks = [MethodTask("main", load_config(config_path, [*shared, f"train.seed={s}"], backbone=grid["backbone"]),
                           ID_METHOD, ref_rat, id_dirs[s], label=ID_METHOD) for s in grid["seeds"]]
    variant_tasks = [MethodTask("main", configs[name][s], method, configs[name][s].rat,
                                root / f"{name}-seed{s}", id_dir=id_dirs[s], tables=tables[name], label=name)
                     for name in grid["variants"] for s in grid["seeds"]]
    results = run_pipeline(splits, id_tasks + variant_tasks, workers=int(grid["workers"]), log=log)

    select = reference.eval.select_protocol
    by_variant: dict[str, list[dict[str, Any]]] = {name: [] for name in grid["variants"]}
    for task, metrics in zip(variant_tasks, results[len(id_tasks):]):
        by_variant[task.label].append(metrics)
    rows = [{**_row(name, grid["variants"][name], runs, select), "scft_val": scft_val.get(name)}
            for name, runs in by_variant.items()]
    rows.sort(key=lambda r: -r["valid_ndcg@10"]["mean"])
    reference_row = _row("None (ID only)", [], results[:len(id_tasks)], select)
    report = {"config": str(config_path), "grid": str(grid_path), "method": method, "backbone": grid["backbone"],
              "seeds": grid["seeds"], "shared_overrides": shared, "select_protocol": select,
              "reference": reference_row, "variants": rows, "wall_seconds": time.perf_counter() - started}
    out_dir = Path(reference.reports_dir) / reference.name / "tuning"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(grid_path).stem
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(tuning_markdown(report), encoding="utf-8")
    log(f"wrote {out_dir / (stem + '.md')}")
    return report


def tuning_markdown(report: dict[str, Any]) -> str:
    protocols = list(report["reference"]["test"])
    head = ("| variant | overrides | valid N@10 (" + report["select_protocol"] + ") | "
            + " | ".join(f"test {p} N@10 | test {p} tail H@10" for p in protocols)
            + " | SCFT held-out MRR before → after | epochs | stop |")
    lines = [
        f"# Tuning {report['method']} on {report['backbone']} ({Path(report['config']).name}, grid {Path(report['grid']).name})",
        "",
        f"Generated by `python -m trainer tune --config {report['config']} --grid {report['grid']}`. "
        f"Seeds {', '.join(map(str, report['seeds']))}; shared overrides: "
        f"{', '.join('`' + o + '`' for o in report['shared_overrides']) or 'none'}. "
        "Rows are sorted by validation NDCG@10, the only number used to choose; test columns are for the record. "
        f"Wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        head,
        "|" + "---|" * (3 + 2 * len(protocols) + 3),
    ]
    for row in [report["reference"], *report["variants"]]:
        cells = [row["variant"], ", ".join(f"`{o}`" for o in row["overrides"]) or "-", pm(row["valid_ndcg@10"])]
        for p in protocols:
            cells += [pm(row["test"][p]["overall_ndcg@10"]), pm(row["test"][p]["tail_hr@10"])]
        val = row.get("scft_val")
        cells.append(f"{val['before']['mrr']:.3f} → {val['after']['mrr']:.3f}" if val else "-")
        cells += [", ".join(str(e) for e in row["epochs"]), ", ".join(str(s) for s in row["stop"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
