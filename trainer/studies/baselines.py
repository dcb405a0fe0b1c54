"""The `baselines` stage: ID-only backbones x seeds, summarised as mean ± std.

Each (backbone, seed) is an ordinary `train` run in runs/<dataset>/<backbone>-seed<seed>;
a run whose metrics.json exists and whose saved config equals the one asked for
is reused (pass force to retrain). The report goes to
<reports_dir>/<dataset>/baselines.md with baselines.json beside it.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llmemb.metrics import ITEM_GROUPS
from trainer.config import load_config
from trainer.reports.quality_report import mean_std, pm
from trainer.runs.method_run import train_id_run
from trainer.runs.store import run_dir
from trainer.stages.prepare import prepared_dataset

BACKBONES = ("sasrec", "gru4rec", "bert4rec")
METRICS = ("hr@10", "ndcg@10")


def command_line(config_path: Path, backbone: str, seed: int, overrides: Sequence[str]) -> str:
    sets = "".join(f" --set {o}" for o in overrides)
    return f"python -m trainer train --config {config_path} --backbone {backbone} --seed {seed}{sets}"


def run_baselines(
    config_path: Path,
    backbones: Sequence[str] = BACKBONES,
    seeds: Sequence[int] = (0, 1, 2),
    overrides: Sequence[str] = (),
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    commands, config = [], None
    for backbone in backbones:
        runs[backbone] = []
        for seed in seeds:
            config = load_config(config_path, [*overrides, f"train.seed={seed}"], backbone=backbone)
            directory = run_dir(config)
            commands.append(command_line(config_path, backbone, seed, overrides))
            run = train_id_run(config, directory, reuse=not force)
            log(f"{backbone} seed {seed}: {'reused' if run.model is None else 'trained into'} {directory}")
            metrics = run.metrics
            runs[backbone].append({"seed": seed, "run": str(directory), **metrics})
    assert config is not None, "no backbone or seed given"
    dataset, _ = prepared_dataset(config)
    summary = {
        b: {
            "test": {
                protocol: {
                    g: {m: mean_std([r["test"][protocol][g][m] for r in rs]) for m in METRICS}
                    for g in ITEM_GROUPS
                }
                for protocol in config.eval.protocols
            },
            "best_epoch": mean_std([r["fit"]["best_epoch"] for r in rs]),
            "seconds_to_best": mean_std([r["fit"]["seconds_to_best"] for r in rs]),
            "total_seconds": mean_std([r["fit"]["total_seconds"] for r in rs]),
        }
        for b, rs in runs.items()
    }
    report = {
        "dataset": dataset.stats(config.eval.head_fraction),
        "config": str(config_path),
        "overrides": list(overrides),
        "seeds": list(seeds),
        "select": f"valid {config.eval.select_metric} ({config.eval.select_protocol} protocol)",
        "environment": f"python {platform.python_version()}, torch {torch.__version__}, "
                       f"{config.train.threads or torch.get_num_threads()} thread(s) per run",
        "wall_seconds": sum(r["fit"]["total_seconds"] for rs in runs.values() for r in rs),
        "commands": [f"python -m trainer baselines --config {config_path}"
                     + "".join(f" --set {o}" for o in overrides)] + commands,
        "summary": summary,
        "runs": runs,
    }
    out = Path(config.reports_dir) / config.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "baselines.md").write_text(baselines_markdown(report), encoding="utf-8")
    log(f"wrote {out / 'baselines.md'} and {out / 'baselines.json'}")
    return report



def baselines_markdown(report: dict[str, Any]) -> str:
    stats = report["dataset"]
    lines = [
        f"# ID-only baselines on {stats['name']}",
        "",
        f"{stats['users']} users, {stats['items']} items, {stats['interactions']} interactions; "
        f"leave-one-out (last item test, second-to-last valid). Tail = items outside the "
        f"{stats['head_fraction']:.0%} most popular by training interactions "
        f"({stats['tail_items']} items, {stats['tail_share_of_test_targets']:.1%} of test targets).",
        "",
        f"Test metrics at the best epoch by {report['select']}, mean ± sample std over seeds "
        f"{', '.join(map(str, report['seeds']))}. {report['environment']}; the whole set trained "
        f"in {report['wall_seconds'] / 60:.1f} min (sum of the runs' wall times).",
        "",
    ]
    for protocol in next(iter(report["summary"].values()))["test"]:
        what = ("all items ranked, history masked" if protocol == "full"
                else "target vs 100 fixed negatives the user never interacted with")
        lines += [f"## Protocol: {protocol} ({what})", ""]
        head = "| backbone | " + " | ".join(f"{g} HR@10 | {g} N@10" for g in ITEM_GROUPS) + " |"
        lines += [head, "|" + "---|" * (1 + 2 * len(ITEM_GROUPS))]
        for backbone, s in report["summary"].items():
            cells = [pm(s["test"][protocol][g][m]) for g in ITEM_GROUPS for m in METRICS]
            lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training", "", "| backbone | best epoch | seconds to best | seconds in total |", "|---|---|---|---|"]
    for backbone, s in report["summary"].items():
        lines.append(f"| {backbone} | {s['best_epoch']['mean']:.1f} ± {s['best_epoch']['std']:.1f} | "
                     f"{s['seconds_to_best']['mean']:.1f} ± {s['seconds_to_best']['std']:.1f} | "
                     f"{s['total_seconds']['mean']:.1f} ± {s['total_seconds']['std']:.1f} |")
    lines += ["", "## Commands", "", "```"] + report["commands"] + ["```", "",
              "Per-run metrics (valid and test, both protocols, all groups incl. short/long "
              "histories and popularity buckets) are in each run's metrics.json; "
              "all numbers of this page are in baselines.json.", ""]
    return "\n".join(lines)
