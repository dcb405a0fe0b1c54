"""The `evaluate` stage: re-evaluate a saved run under both protocols, print a table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from llmemb.metrics import GROUPS, Evaluator
from trainer.runs.store import load_run
from trainer.stages.prepare import prepared_dataset


def evaluate_run(directory: Path) -> dict[str, Any]:
    """{"valid"|"test": {protocol: summary}} for the checkpoint of a run directory."""
    config, model = load_run(directory)
    dataset, data_dir = prepared_dataset(config)
    evaluator = Evaluator(dataset, config.eval, cache_dir=data_dir)
    return {which: evaluator.evaluate(model, which, ("full", "sampled")) for which in ("valid", "test")}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_table(metrics: dict[str, Any], k: int = 10) -> str:
    """Markdown table: one row per split x protocol, HR@k / NDCG@k per group."""
    header = "| split | protocol | " + " | ".join(f"{g} HR@{k} | {g} N@{k}" for g in GROUPS) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(GROUPS))]
    for which in ("valid", "test"):
        for protocol, summary in metrics.get(which, {}).items():
            cells = []
            for g in GROUPS:
                cells += [_cell(summary[g][f"hr@{k}"]), _cell(summary[g][f"ndcg@{k}"])]
            lines.append(f"| {which} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
