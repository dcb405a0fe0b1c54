"""Run independent RAT experiments (`MethodTask`s) on a pool of worker processes.

The tasks given together must not depend on each other: trainer.pipeline runs the
ID-only tasks first and the ones that align to their tables after. On a 2-core
machine two workers with one torch thread each finish a grid about twice as fast
as one process (a single small model does not scale across threads).

Workers are spawned processes (no fork of a process holding torch threads);
each receives the splits (dataset, tables, masks) once, at start-up.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmemb.metrics import Evaluator
from trainer.config import Config
from trainer.experiments import RunSplit, Tables, run_method
from trainer.rat import RATConfig
from trainer.runs import load_item_table


@dataclass
class MethodTask:
    split: str
    config: Config
    method: str
    rat: RATConfig
    directory: Path
    id_dir: Path | None = None        # the run whose item table is the alignment target
    tables: Tables | None = None      # overrides the split's tables (tuning variants of the LLM stages)
    label: str = ""


_SPLITS: dict[str, RunSplit] = {}


def _init_worker(splits: dict[str, RunSplit]) -> None:
    _SPLITS.clear()
    _SPLITS.update(splits)


def run_task(task: MethodTask, splits: dict[str, RunSplit] | None = None) -> dict[str, Any]:
    split = (splits or _SPLITS)[task.split]
    if task.tables is not None:
        split = replace(split, tables=task.tables)
    id_table = load_item_table(task.id_dir) if task.id_dir is not None else None
    return run_method(task.config, split, task.method, task.rat, task.directory, id_table=id_table).metrics


def prepare_negatives(splits: dict[str, RunSplit], eval_config: Any) -> None:
    """Draw and store every split's sampled negatives before workers read them."""
    for split in splits.values():
        evaluator = Evaluator(split.dataset, eval_config, cache_dir=split.cache_dir)
        if "sampled" in evaluator.config.protocols:
            for which in ("valid", "test"):
                evaluator.negatives(which)


def run_tasks(
    splits: dict[str, RunSplit],
    tasks: Sequence[MethodTask],
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Metrics of every task, in the tasks' order. workers <= 1 runs them in this process."""
    def name(task: MethodTask) -> str:
        return f"[{task.split}] {task.label or task.method} {task.config.backbone.name} seed {task.config.train.seed}"

    if workers <= 1 or len(tasks) <= 1:
        results = []
        for task in tasks:
            log(name(task))
            results.append(run_task(task, splits))
        return results

    out: list[dict[str, Any] | None] = [None] * len(tasks)
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(splits,)) as pool:
        pending = {pool.submit(run_task, task): i for i, task in enumerate(tasks)}
        done_count = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                i = pending.pop(future)
                out[i] = future.result()   # a failed run stops the grid with its error
                done_count += 1
                log(f"{name(tasks[i])} done ({done_count}/{len(tasks)})")
    return out  # type: ignore[return-value]
