"""`make encoders`: the same rows on several item encoders, one page comparing them.

A comparison file (configs/encoders/ml100k.yaml) names the encoders, each by
the experiment config that sets it up (its `encoder` and `scft` sections), and
the grid they share:

    encoders: {minilm: ../ml100k.yaml, mpnet: ../ml100k-mpnet.yaml, smollm2: ../ml100k-smollm2.yaml}
    backbone: sasrec
    seeds: [0, 1, 2]
    methods: [llm2x, wo_scft, llmemb]     # on each encoder; None (ID only) runs once per seed
    workers: 2

Every config must agree on everything but the `encoder`, `scft` and `quick`
sections, so the rows differ by the encoder alone; the ID-only run of each seed
is shared (it reads no encoder) and is every method's alignment target. Per
encoder: SCFT and the exports of the base and the tuned model (the same steps
as `quality` and `tune` with that config, shared with them), then the RAT runs
on a pool of workers; everything is reused when unchanged.
Output: <reports_dir>/<dataset>/encoders.{json,md}.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from llmemb.methods import ID_METHOD, METHODS, get_method
from llmemb.sections import checked
from trainer.config import Config, load_config
from trainer.reports.quality_report import LABELS, aggregate, mean_std, pm, separation
from trainer.runs.method_run import RunSplit, Tables
from trainer.runs.pipeline import llm_tables, run_pipeline
from trainer.runs.pool import MethodTask, prepare_negatives
from trainer.stages.llm_stages import base_model_id, export_summary
from trainer.stages.prepare import prepared_dataset

COMPARISON_KEYS = {"encoders", "backbone", "seeds", "methods", "workers"}
ENCODER_SECTIONS = {"encoder", "scft", "quick"}


def load_comparison(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw = checked(raw, COMPARISON_KEYS, str(path))
    if not isinstance(raw.get("encoders"), dict) or not raw["encoders"]:
        raise ValueError(f"{path}: 'encoders' must map names to config files")
    out = {"backbone": "sasrec", "seeds": [0, 1, 2], "methods": ["llm2x", "wo_scft", "llmemb"], "workers": 2, **raw}
    bad = [m for m in out["methods"] if m not in METHODS or get_method(m).table is None]
    if bad:
        raise ValueError(f"{path}: methods {bad} read no LLM table; encoder methods: "
                         f"{', '.join(n for n, m in METHODS.items() if m.table is not None)}")
    out["encoders"] = {name: (Path(path).parent / file).resolve() for name, file in raw["encoders"].items()}
    return out


def _shared_part(config: Config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in ENCODER_SECTIONS}


def run_encoders(comparison_path: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    comp = load_comparison(comparison_path)
    backbone, seeds = comp["backbone"], comp["seeds"]
    configs = {name: {s: load_config(path, [f"train.seed={s}"], backbone=backbone) for s in seeds}
               for name, path in comp["encoders"].items()}
    first_name = next(iter(configs))
    reference = configs[first_name][seeds[0]]
    for name, by_seed in configs.items():
        if _shared_part(by_seed[seeds[0]]) != _shared_part(reference):
            raise ValueError(f"encoder {name!r}: its config differs from {first_name!r} outside "
                             f"{', '.join(sorted(ENCODER_SECTIONS))}; the rows would not be comparable")
    dataset, data_dir = prepared_dataset(reference)
    root = Path(reference.runs_dir) / reference.name / "encoders"

    # The LLM stages first (they use every core), then the RAT runs on the pool.
    tables: dict[str, Tables] = {}
    llm: dict[str, dict[str, Any]] = {}
    for name, by_seed in configs.items():
        cfg = by_seed[seeds[0]]
        t = time.perf_counter()
        lora, tables[name] = llm_tables(cfg, dataset, ["llm2x", "llmemb"])
        assert lora is not None
        scft = json.loads((lora.parent / "scft.json").read_text(encoding="utf-8"))
        export = export_summary(cfg, dataset, lora, "scft")
        llm[name] = {"model": base_model_id(cfg), "dim": int(tables[name].scft.shape[1]),
                     "encoder": cfg.sections.get("encoder"), "scft_settings": cfg.sections.get("scft"),
                     "val_before": scft["val_before"], "val_after": scft["val_after"],
                     "scft_steps": scft["steps"], "scft_batch_items": scft["batch_items"],
                     "scft_steps_per_s": scft["steps_per_s"], "export_items_per_s": export["items_per_s"],
                     "llm_stage_seconds": time.perf_counter() - t}
        log(f"encoder {name}: SCFT MRR {scft['val_before']['mrr']:.3f} -> {scft['val_after']['mrr']:.3f}")

    splits = {"main": RunSplit(dataset, Tables(), data_dir)}
    prepare_negatives(splits, reference.eval)
    rat = {name: by_seed[seeds[0]].rat for name, by_seed in configs.items()}
    id_dirs = {s: root / f"{ID_METHOD}-{backbone}-seed{s}" for s in seeds}
    id_tasks = [MethodTask("main", configs[first_name][s], ID_METHOD, rat[first_name], id_dirs[s], label=ID_METHOD)
                for s in seeds]
    method_runs = [MethodTask("main", configs[name][s], method, rat[name], root / name / f"{method}-{backbone}-seed{s}",
                              id_dir=id_dirs[s], tables=tables[name], label=f"{name}/{method}")
                   for name in configs for method in comp["methods"] for s in seeds]
    results = run_pipeline(splits, id_tasks + method_runs, workers=int(comp["workers"]), log=log)
    runs = [{**metrics, "split": "ids" if get_method(task.method).is_id else task.label.split("/")[0]}
            for task, metrics in zip(id_tasks + method_runs, results)]
    report = {
        "comparison": str(comparison_path), "backbone": backbone, "seeds": seeds, "methods": comp["methods"],
        "encoders": llm, "runs": runs, "dataset": dataset.stats(reference.eval.head_fraction),
        "wall_seconds": time.perf_counter() - started,
        "environment": f"{platform.machine()}, {comp['workers']} worker process(es) x {reference.train.threads} "
                       f"torch thread(s) for RAT, torch {torch.__version__}",
    }
    out_dir = Path(reference.reports_dir) / reference.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "encoders.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / "encoders.md").write_text(encoders_markdown(report), encoding="utf-8")
    log(f"wrote {out_dir / 'encoders.md'}")
    return report



def encoders_markdown(report: dict[str, Any]) -> str:
    agg = aggregate(report["runs"])
    backbone = report["backbone"]
    protocols = [p for p in ("full", "sampled") if p in report["runs"][0]["test"]]
    none = agg[("ids", backbone, ID_METHOD)]
    lines = [
        f"# Item encoders on {report['dataset'].get('name', 'the dataset')} ({backbone}, seeds "
        f"{', '.join(map(str, report['seeds']))}, test, mean ± std)",
        "",
        f"Generated by `python -m trainer encoders --comparison {report['comparison']}` (`make encoders`) "
        f"in {report['wall_seconds'] / 60:.0f} min ({report['environment']}). Every row has the same data, "
        "backbone, training and stopping rule; only the item encoder differs. None (ID only) reads no encoder: "
        "one row, shared. SmolLM2's weights are 4-bit (Q4_1) GGUF weights dequantised to float: its figures "
        "are those of a 4-bit model.",
        "",
        "| encoder | method | " + " | ".join(f"{p} N@10 | {p} H@10 | {p} tail H@10" for p in protocols)
        + " | best epoch |",
        "|" + "---|" * (3 + 3 * len(protocols)),
    ]

    def row(encoder: str, method: str, summary: dict[str, Any]) -> str:
        cells = [encoder, LABELS.get(method, method)]
        for p in protocols:
            cells += [pm(summary[p]["overall"]["ndcg@10"]), pm(summary[p]["overall"]["hr@10"]),
                      pm(summary[p]["tail"]["hr@10"])]
        cells.append(f"{summary['best_epoch']['mean']:.0f}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row("-", ID_METHOD, none))
    for name in report["encoders"]:
        for method in report["methods"]:
            lines.append(row(name, method, agg[(name, backbone, method)]))
    lines += ["", "## Does SCFT help? LLMEmb against LLMEmb w/o SCFT and None", "",
              "A difference counts when it is beyond 2 sd of the difference over seeds.", "",
              "| encoder | comparison | metric | difference | sd | counts |", "|---|---|---|---|---|---|"]
    for name in report["encoders"]:
        full = agg.get((name, backbone, "llmemb"))
        for other, label in (("wo_scft", "LLMEmb − w/o SCFT"), (ID_METHOD, "LLMEmb − None")):
            ref = none if get_method(other).is_id else agg.get((name, backbone, other))
            if full is None or ref is None:
                continue
            for p in protocols:
                for group, metric in (("overall", "ndcg@10"), ("tail", "hr@10")):
                    diff, sd, counts = separation(full[p][group][metric], ref[p][group][metric])
                    lines.append(f"| {name} | {label} | {p} {group} {metric.upper()} | {diff:+.4f} | {sd:.4f} | "
                                 f"{'yes' if counts else 'no'} |")
    lines += ["", "## SCFT: held-out view retrieval", "",
              "Items held out of SCFT, two attribute-drop views each drawn once from a fixed seed; view 1 must "
              "find view 2 of the same item among all held-out items (trainer/stages/scft.py).", "",
              "| encoder | model | dim | SCFT steps x items | top-1 before → after | MRR before → after | "
              "SCFT steps/s | export items/s |",
              "|---|---|---|---|---|---|---|---|"]
    for name, e in report["encoders"].items():
        b, a = e["val_before"], e["val_after"]
        lines.append(f"| {name} | `{e['model']}` | {e['dim']} | {e['scft_steps']} x {e['scft_batch_items']} | "
                     f"{b['top1']:.3f} → {a['top1']:.3f} | {b['mrr']:.3f} → {a['mrr']:.3f} | "
                     f"{e['scft_steps_per_s']:.3f} | {e['export_items_per_s']:.1f} |")
    lines += ["", "Encoder settings:", ""]
    for name, e in report["encoders"].items():
        lines.append(f"- {name}: encoder `{json.dumps(e['encoder'], sort_keys=True)}`, "
                     f"scft `{json.dumps(e['scft_settings'], sort_keys=True)}`")
    seconds = mean_std([r["fit"]["total_seconds"] for r in report["runs"]])
    lines += ["", f"RAT runs: {len(report['runs'])}, {seconds['mean']:.0f} ± {seconds['std']:.0f} s each; "
              f"stop reasons: {', '.join(sorted({str(r['fit'].get('stop_reason')) for r in report['runs']}))}."]
    return "\n".join(lines) + "\n"
