"""The one id -> method -> bundle sequence behind every entry point that trains RAT methods
(`trainer rat`, quick, quality, tune, encoders).

1. `llm_tables`: SCFT and the exported tables the methods read (each reused when unchanged);
2. `run_pipeline`: every run on run_pool's worker processes, each method that aligns started once
   the ID run named by its task (its item table is the alignment target) has finished;
3. `trainer.stages.make_bundle.bundle_from_run`: a bundle from a finished LLMEmb or Hybrid run directory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from llmemb.data.dataset import Dataset
from llmemb.methods import ID_METHOD, RATConfig, get_method, tables_read
from trainer.config import Config
from trainer.stages.llm_stages import ensure_export, ensure_scft
from trainer.runs.method_run import RunSplit, Tables
from trainer.runs.pool import MethodTask, reads_id_run, run_tasks
from trainer.runs.store import CHECKPOINT_FILE, settings_of


def llm_tables(config: Config, dataset: Dataset, methods: Iterable[str], *, scft_tag: str = "scft",
               base_tag: str = "base", item_rows: list[int] | None = None,
               scft_changes: dict[str, Any] | None = None) -> tuple[Path | None, Tables]:
    """The LoRA directory of SCFT (None when no method needs it) and the tables `methods` read.

    item_rows: the catalogue rows SCFT may see (cold start: the warm items only);
    scft_changes: SCFT settings that differ from config's scft section (e.g. steps)."""
    read = tables_read(methods)
    lora = (ensure_scft(config, dataset, tag=scft_tag, item_rows=item_rows, **(scft_changes or {}))
            if "scft" in read else None)
    base = ensure_export(config, dataset, None, base_tag) if "base" in read else None
    scft = ensure_export(config, dataset, lora, scft_tag) if lora is not None else None
    return lora, Tables(base=base, scft=scft)


def method_tasks(split: str, config: Config, methods: Sequence[str], rat: RATConfig, root: Path,
                 name: Callable[[str], str] = lambda method: method) -> list[MethodTask]:
    """The ID-only run of `config` (backbone, seed) under root/name(ID_METHOD), then each other method
    under root/name(method), aligned to it."""
    id_dir = root / name(ID_METHOD)
    return [MethodTask(split, config, ID_METHOD, rat, id_dir)] + [
        MethodTask(split, config, m, rat, root / name(m), id_dir=id_dir) for m in methods if not get_method(m).is_id]


def waits_for(tasks: Sequence[MethodTask]) -> list[int | None]:
    """For each task, the index of the task it must wait for: the ID run whose table it aligns to when
    that run is a task here (else it must be a finished run: a ValueError otherwise); None for every
    task that reads no ID table (ID runs, LLM2X) or reads a finished one."""
    by_dir = {t.directory: i for i, t in enumerate(tasks) if get_method(t.method).is_id}
    after: list[int | None] = []
    for task in tasks:
        d = task.id_dir if reads_id_run(task) else None
        finished = d is not None and settings_of(d) is not None and (d / CHECKPOINT_FILE).is_file()
        if d is not None and d not in by_dir and not finished:
            raise ValueError(f"{task.label or task.method}: its ID run {d} is neither a task here nor "
                             "a finished run")
        after.append(by_dir.get(d) if d is not None else None)
    return after


def run_pipeline(splits: dict[str, RunSplit], tasks: Sequence[MethodTask], workers: int = 1,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate every task; their metrics, in the tasks' order. Each task starts as soon as
    the run it waits for (`waits_for`) has finished; every run is reused when its settings are
    unchanged (trainer.runs.store.is_done)."""
    return run_tasks(splits, tasks, workers=workers, log=log, after=waits_for(tasks))
