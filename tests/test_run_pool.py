"""Chains of RAT runs on worker processes: the same metrics as in-process, chain
order respected (the alignment run reads the ID table its chain wrote first)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tests.synthetic import N_ITEMS, cyclic_dataset, tiny_config
from trainer.experiments import Tables, _digest, run_settings
from trainer.rat import RATConfig
from trainer.run_pool import MethodTask, RunSplit, prepare_negatives, run_chains
from trainer.runs import load_item_table


def grid(tmp_path, root_name):
    ds = cyclic_dataset()
    splits = {"main": RunSplit(ds, Tables(scft=torch.randn(N_ITEMS, 20, generator=torch.Generator().manual_seed(0))),
                            tmp_path / "cache")}
    rat = RATConfig(d_pca=6)
    root = tmp_path / root_name
    chains = []
    for seed in (0, 1, 2):
        cfg = tiny_config(tmp_path, seed=seed)
        cfg = replace(cfg, train=replace(cfg.train, threads=1))
        chains.append([MethodTask("main", cfg, "none", rat, root / f"none-{seed}"),
                       MethodTask("main", cfg, "llmemb", rat, root / f"llmemb-{seed}", id_dir=root / f"none-{seed}")])
    return splits, chains


@pytest.mark.slow
def test_workers_give_the_in_process_metrics(tmp_path):
    splits, chains = grid(tmp_path, "serial")
    prepare_negatives(splits, chains[0][0].config.eval)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "negatives-test-n5-seed2025.npz", "negatives-valid-n5-seed2025.npz"]
    serial = run_chains(splits, chains, workers=1, log=lambda _: None)
    splits2, chains2 = grid(tmp_path, "pool")
    logs: list[str] = []
    pooled = run_chains(splits2, chains2, workers=2, log=logs.append)
    assert len(pooled) == 3 and [len(c) for c in pooled] == [2, 2, 2]
    for a_chain, b_chain, chain in zip(serial, pooled, chains2):
        for a, b, task in zip(a_chain, b_chain, chain):
            assert (b["method"], b["seed"]) == (task.method, task.config.train.seed)
            assert b["test"]["full"]["overall"]["ndcg@10"] == pytest.approx(a["test"]["full"]["overall"]["ndcg@10"], abs=1e-6)
            assert b["test"]["sampled"]["overall"]["hr@10"] == pytest.approx(a["test"]["sampled"]["overall"]["hr@10"], abs=1e-6)
            saved = json.loads((task.directory / "metrics.json").read_text())
            assert saved["settings_digest"] == b["settings_digest"]
    assert sum("done" in line for line in logs) == 3


def test_a_failing_run_stops_the_grid_with_its_error(tmp_path):
    splits, chains = grid(tmp_path, "bad")
    # the alignment run of chain 0 names an ID run that nobody wrote
    chains[0][1] = replace(chains[0][1], id_dir=tmp_path / "missing")
    chains[0] = chains[0][1:]
    with pytest.raises(Exception, match="No such file|does not exist|missing"):
        run_chains(splits, chains[:1], workers=1, log=lambda _: None)


def test_split_tables_can_be_overridden_per_task(tmp_path):
    splits, chains = grid(tmp_path, "override")
    other = Tables(scft=torch.randn(N_ITEMS, 20, generator=torch.Generator().manual_seed(9)))
    first = run_chains(splits, [chains[0]], workers=1, log=lambda _: None)[0][1]
    moved = [chains[0][0], replace(chains[0][1], tables=other, directory=tmp_path / "override" / "other")]
    second = run_chains(splits, [moved], workers=1, log=lambda _: None)[0][1]
    # The run saw the other table: its recorded settings are exactly those of that table.
    id_table = load_item_table(chains[0][0].directory)
    task = moved[1]
    assert second["settings_digest"] == _digest(run_settings(task.config, task.method, task.rat, other, id_table))
    assert first["settings_digest"] == _digest(run_settings(task.config, task.method, task.rat,
                                                            splits["main"].tables, id_table))


def test_a_result_rewritten_in_place_is_not_done_until_it_completes(tmp_path):
    from trainer.runs import is_done, recompute

    with recompute(tmp_path, {"a": 1}):
        (tmp_path / "out.txt").write_text("old")
    assert is_done(tmp_path, {"a": 1}, "out.txt") and not is_done(tmp_path, {"a": 2}, "out.txt")
    with pytest.raises(RuntimeError), recompute(tmp_path, {"a": 2}):
        (tmp_path / "out.txt").write_text("half")
        raise RuntimeError("interrupted")
    # neither the old settings (their output is overwritten) nor the new ones count as done
    assert not is_done(tmp_path, {"a": 1}, "out.txt") and not is_done(tmp_path, {"a": 2}, "out.txt")
