"""RAT runs on worker processes (trainer.runs.pipeline.run_pipeline over run_pool): the same
metrics as in-process, the ID runs first (an alignment run reads the table its ID run wrote)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from llmemb.methods import RATConfig
from tests.synthetic import N_ITEMS, cyclic_dataset, tiny_config
from trainer.runs.method_run import RunSplit, Tables, _digest, run_settings
from trainer.runs.pipeline import method_tasks, run_pipeline, waits_for
from trainer.runs.pool import prepare_negatives
from trainer.runs.store import load_item_table


def grid(tmp_path, root_name):
    ds = cyclic_dataset()
    splits = {"main": RunSplit(ds, Tables(scft=torch.randn(N_ITEMS, 20, generator=torch.Generator().manual_seed(0))),
                            tmp_path / "cache")}
    rat = RATConfig(d_pca=6)
    root = tmp_path / root_name
    tasks = []
    for seed in (0, 1, 2):
        cfg = tiny_config(tmp_path, seed=seed)
        cfg = replace(cfg, train=replace(cfg.train, threads=1))
        tasks += method_tasks("main", cfg, ["llmemb"], rat, root, name=lambda m, s=seed: f"{m}-{s}")
    return splits, tasks


@pytest.mark.slow
def test_workers_give_the_in_process_metrics(tmp_path):
    splits, tasks = grid(tmp_path, "serial")
    assert [(t.method, t.directory.name, t.id_dir and t.id_dir.name) for t in tasks[:2]] == [
        ("none", "none-0", None), ("llmemb", "llmemb-0", "none-0")]
    prepare_negatives(splits, tasks[0].config.eval)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "negatives-test-n5-seed2025.npz", "negatives-valid-n5-seed2025.npz"]
    serial = run_pipeline(splits, tasks, workers=1, log=lambda _: None)
    splits2, tasks2 = grid(tmp_path, "pool")
    logs: list[str] = []
    pooled = run_pipeline(splits2, tasks2, workers=2, log=logs.append)
    assert len(pooled) == 6
    for a, b, task in zip(serial, pooled, tasks2):
        assert (b["method"], b["seed"]) == (task.method, task.config.train.seed)
        assert b["test"]["full"]["overall"]["ndcg@10"] == pytest.approx(a["test"]["full"]["overall"]["ndcg@10"], abs=1e-6)
        assert b["test"]["sampled"]["overall"]["hr@10"] == pytest.approx(a["test"]["sampled"]["overall"]["hr@10"], abs=1e-6)
        saved = json.loads((task.directory / "metrics.json").read_text())
        assert saved["settings_digest"] == b["settings_digest"]
    # each alignment run starts after its own ID run has finished
    done = [line for line in logs if "done" in line]
    assert len(done) == 6
    for seed in (0, 1, 2):
        order = [line.split()[1] for line in done if f"seed {seed} done" in line]
        assert order == ["none", "llmemb"]


def test_only_runs_that_align_wait_for_their_id_run(tmp_path):
    cfg = tiny_config(tmp_path)
    tasks = method_tasks("main", cfg, ["llm2x", "llmemb", "hybrid"], RATConfig(d_pca=6), tmp_path / "g")
    assert waits_for(tasks) == [None, None, 0, 0]
    # without the alignment loss nothing waits (and no ID table is read)
    free = method_tasks("main", cfg, ["llmemb"], RATConfig(d_pca=6, alpha=0.0), tmp_path / "h")
    assert waits_for(free) == [None, None]


def test_an_alignment_run_without_its_id_run_is_refused(tmp_path):
    splits, tasks = grid(tmp_path, "bad")
    with pytest.raises(ValueError, match="its ID run .*none-0 is neither a task here nor a finished run"):
        run_pipeline(splits, tasks[1:2], workers=1, log=lambda _: None)
    # a checkpoint without settings.json is an interrupted run, not a finished one
    (tmp_path / "bad" / "none-0").mkdir(parents=True)
    (tmp_path / "bad" / "none-0" / "model.safetensors").write_bytes(b"half written")
    with pytest.raises(ValueError, match="neither a task here nor a finished run"):
        run_pipeline(splits, tasks[1:2], workers=1, log=lambda _: None)


def test_a_failing_run_stops_the_grid_with_its_error(tmp_path):
    splits, tasks = grid(tmp_path, "broken")
    (tmp_path / "broken" / "none-0").mkdir(parents=True)
    (tmp_path / "broken" / "none-0" / "model.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "broken" / "none-0" / "settings.json").write_text("{}")   # marked finished, yet unreadable
    with pytest.raises(Exception, match="header|safetensors|deserializ"):
        run_pipeline(splits, tasks[1:2], workers=1, log=lambda _: None)


def test_split_tables_can_be_overridden_per_task(tmp_path):
    splits, tasks = grid(tmp_path, "override")
    other = Tables(scft=torch.randn(N_ITEMS, 20, generator=torch.Generator().manual_seed(9)))
    first = run_pipeline(splits, tasks[:2], workers=1, log=lambda _: None)[1]
    moved = replace(tasks[1], tables=other, directory=tmp_path / "override" / "other")
    second = run_pipeline(splits, [moved], workers=1, log=lambda _: None)[0]
    # The run saw the other table: its recorded settings are exactly those of that table.
    id_table = load_item_table(tasks[0].directory)
    assert second["settings_digest"] == _digest(run_settings(moved.config, moved.method, moved.rat, other, id_table))
    assert first["settings_digest"] == _digest(run_settings(moved.config, moved.method, moved.rat,
                                                            splits["main"].tables, id_table))
    assert second["settings_digest"] != first["settings_digest"]


def test_a_result_rewritten_in_place_is_not_done_until_it_completes(tmp_path):
    from trainer.runs.store import is_done, recompute

    with recompute(tmp_path, {"a": 1}):
        (tmp_path / "out.txt").write_text("old")
    assert is_done(tmp_path, {"a": 1}, "out.txt") and not is_done(tmp_path, {"a": 2}, "out.txt")
    with pytest.raises(RuntimeError), recompute(tmp_path, {"a": 2}):
        (tmp_path / "out.txt").write_text("half")
        raise RuntimeError("interrupted")
    # neither the old settings (their output is overwritten) nor the new ones count as done
    assert not is_done(tmp_path, {"a": 1}, "out.txt") and not is_done(tmp_path, {"a": 2}, "out.txt")
