"""Run independent RAT experiments (`MethodTask`s) on a pool of worker processes.

A task may wait for another (`after`: the ID run whose item table it aligns to): it starts as
soon as that one has finished, while every task that waits for nothing (ID runs, LLM2X) starts
at once; trainer.runs.pipeline works out who waits for whom. On a 2-core
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

from llmemb.methods import RATConfig, get_method
from llmemb.metrics import Evaluator
from trainer.config import Config
from trainer.runs.method_run import RunSplit, Tables, run_method
from trainer.runs.store import load_item_table


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


def reads_id_run(task: MethodTask) -> bool:
    """Whether the task needs its ID run's item table (only the methods that align read it)."""
    return task.id_dir is not None and get_method(task.method).uses_alignment(task.rat)


def run_task(task: MethodTask, splits: dict[str, RunSplit] | None = None) -> dict[str, Any]:
    split = (splits or _SPLITS)[task.split]
    if task.tables is not None:
        split = replace(split, tables=task.tables)
    id_table = load_item_table(task.id_dir) if reads_id_run(task) else None
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
    after: Sequence[int | None] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of every task, in the tasks' order. workers <= 1 runs them in this process.

    after[i]: the index of the task that task i waits for (None: none); it must not form a cycle."""
    def name(task: MethodTask) -> str:
        return f"[{task.split}] {task.label or task.method} {task.config.backbone.name} seed {task.config.train.seed}"

    waits = list(after) if after is not None else [None] * len(tasks)
    waited = {w for w in waits if w is not None}
    out: list[dict[str, Any] | None] = [None] * len(tasks)
    started: set[int] = set()
    finished: set[int] = set()

    def ready() -> list[int]:
        """Tasks not started whose run to wait for has finished; those others wait for first."""
        free = [i for i in range(len(tasks)) if i not in started and (waits[i] is None or waits[i] in finished)]
        return sorted(free, key=lambda j: (j not in waited, j))

    def cycle() -> ValueError:
        return ValueError("tasks wait for each other in a cycle: "
                          + ", ".join(name(tasks[i]) for i in range(len(tasks)) if i not in started))

    if workers <= 1 or len(tasks) <= 1:
        while len(finished) < len(tasks):
            batch = ready()
            if not batch:
                raise cycle()
            i = batch[0]
            started.add(i)
            log(name(tasks[i]))
            out[i] = run_task(tasks[i], splits)
            finished.add(i)
        return out  # type: ignore[return-value]

    context = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(splits,)) as pool:
        pending: dict[Any, int] = {}

        def submit_ready() -> None:
            for i in ready():
                started.add(i)
                pending[pool.submit(run_task, tasks[i])] = i

        submit_ready()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                out[i] = future.result()   # a failed run stops the grid with its error
                finished.add(i)
                log(f"{name(tasks[i])} done ({len(finished)}/{len(tasks)})")
            submit_ready()
    if len(finished) < len(tasks):
        raise cycle()
    return out  # type: ignore[return-value]
