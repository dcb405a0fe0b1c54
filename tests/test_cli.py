"""`python -m trainer` end to end on tiny RecBole files: prepare, train, evaluate, baselines; config loading."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from trainer.cli import app
from trainer.config import load_config
from trainer.runs.store import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 40


def write_tiny_recbole(directory: Path) -> None:
    """40 users walking an item cycle, in RecBole atomic format."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(40):
        start = int(rng.integers(N_ITEMS))
        for t in range(int(rng.integers(6, 14))):
            lines.append(f"u{u}\ti{(start + t) % N_ITEMS}\t4\t{1000 + t}")
    (directory / "tiny.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"] + [f"i{i}\tItem number {i}" for i in range(N_ITEMS)]
    (directory / "tiny.item").write_text("\n".join(items) + "\n")


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    write_tiny_recbole(tmp_path / "data" / "tiny")
    config = {
        "dataset": {"name": "tiny", "format": "recbole", "path": str(tmp_path / "data" / "tiny"),
                    "domain": "item", "user_core": 3, "item_core": 2},
        "backbone": {"name": "sasrec", "hidden": 16, "max_len": 8, "n_layers": 1, "n_heads": 1},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.005, "patience": 5, "progress": False},
        "eval": {"n_negatives": 10, "ks": [5, 10]},
        "per_backbone": {"gru4rec": {"backbone": {"dropout": 0.1}, "train": {"lr": 0.01}}},
        "runs_dir": str(tmp_path / "runs"),
        "reports_dir": str(tmp_path / "reports"),
        "scft": {"lr": 0.0002},  # a later stage's section: kept verbatim
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_prepare_train_evaluate_end_to_end(config_path: Path, tmp_path: Path):
    out = invoke("prepare", "--config", str(config_path))
    data = tmp_path / "runs" / "tiny" / "data"
    stats = json.loads((data / "stats.json").read_text())
    assert stats["users"] == 40 and stats["items"] == N_ITEMS and '"users": 40' in out
    assert (data / "sequences.npz").is_file() and (data / "items.jsonl").is_file()

    out = invoke("train", "--config", str(config_path), "--seed", "3", "--run-name", "first")
    run = tmp_path / "runs" / "tiny" / "first"
    for name in ("config.yaml", "dataset_stats.json", "model.safetensors", "metrics.json", "history.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for which in ("valid", "test"):
        for protocol in ("full", "sampled"):
            summary = metrics[which][protocol]
            assert set(summary) >= {"overall", "tail", "head", "short", "long", "popularity"}
            assert summary["overall"]["n"] == 40 and 0 <= summary["overall"]["ndcg@10"] <= 1
    assert len(json.loads((run / "history.json").read_text())) == metrics["fit"]["epochs_run"] == 3
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["seed"] == 3 and saved["scft"] == {"lr": 0.0002} and "per_backbone" not in saved
    assert "test | full" in out

    # the checkpoint is self-describing and holds the item table
    model = load_checkpoint(run / "model.safetensors")
    assert model.config.name == "sasrec" and model.item_embedding.n_items == N_ITEMS

    out = invoke("evaluate", "--run", str(run))
    test_full = metrics["test"]["full"]["overall"]
    assert f"| test | full | {test_full['hr@10']:.4f} | {test_full['ndcg@10']:.4f} |" in out


def test_baselines_report_and_reuse(config_path: Path, tmp_path: Path):
    args = ("baselines", "--config", str(config_path), "--backbones", "sasrec,gru4rec", "--seeds", "0,1",
            "--set", "train.epochs=1")
    out = invoke(*args)
    assert out.count("trained into") == 4
    report = json.loads((tmp_path / "reports" / "tiny" / "baselines.json").read_text())
    stat = report["summary"]["gru4rec"]["test"]["full"]["overall"]["ndcg@10"]
    assert len(stat["values"]) == 2 and np.isclose(stat["mean"], np.mean(stat["values"]))
    assert np.isclose(stat["std"], np.std(stat["values"], ddof=1))
    markdown = (tmp_path / "reports" / "tiny" / "baselines.md").read_text()
    assert "| gru4rec |" in markdown and " ± " in markdown and "## Protocol: sampled" in markdown
    assert "python -m trainer train --config" in markdown and "--backbone gru4rec --seed 1" in markdown
    gru_config = yaml.safe_load((tmp_path / "runs" / "tiny" / "gru4rec-seed1" / "config.yaml").read_text())
    assert gru_config["train"]["lr"] == 0.01 and gru_config["backbone"]["dropout"] == 0.1
    assert invoke(*args).count("reused") == 4


def test_config_precedence_and_errors(config_path: Path):
    cfg = load_config(config_path, backbone="gru4rec")
    assert cfg.backbone.name == "gru4rec" and cfg.train.lr == 0.01 and cfg.backbone.dropout == 0.1
    cfg = load_config(config_path, ["train.lr=0.5", "backbone.hidden=32"], backbone="gru4rec")
    assert cfg.train.lr == 0.5 and cfg.backbone.hidden == 32      # the command line wins
    assert load_config(config_path).train.lr == 0.005              # sasrec has no overrides
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        load_config(config_path, ["train.learning_rate=0.1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(config_path, ["train.lr"])
    result = CliRunner().invoke(app, ["train", "--config", str(config_path), "--set", "eval.bogus=1"])
    assert result.exit_code != 0 and "bogus" in result.output
    result = CliRunner().invoke(app, ["train", "--config", str(config_path), "--backbone", "caser"])
    assert result.exit_code != 0 and "unknown backbone" in result.output


@pytest.mark.process
def test_module_entry_point_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for stage in ("prepare", "train", "evaluate", "baselines"):
        assert stage in out.stdout


def test_rat_command_trains_the_id_run_then_the_method_and_bundles_the_run(tmp_path: Path) -> None:
    """`trainer rat --bundle` runs trainer.runs.pipeline (ID run, then LLMEmb aligned to it) and writes the
    bundle from the run directory; the metrics it prints are the run's."""
    from llmemb.bundle import load_bundle
    from tests.movies import movie_config
    from trainer.runs.store import load_item_table

    path, _ = movie_config(tmp_path)
    out = invoke("rat", "--config", str(path), "--method", "llmemb", "--bundle", str(tmp_path / "bundle"))
    root = tmp_path / "runs" / "movies" / "rat" / "sasrec-seed0"
    assert json.loads((root / "none" / "metrics.json").read_text())["method"] == "none"
    saved = json.loads((root / "llmemb" / "metrics.json").read_text())
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.method == "llmemb" and bundle.residual is None
    assert torch.equal(bundle.item_table, load_item_table(root / "llmemb"))
    assert bundle.manifest.metrics["test"] == saved["test"]
    assert f"{saved['test']['full']['overall']['ndcg@10']:.4f}" in out and bundle.fingerprint in out
    # a method a bundle cannot carry: a clear error before any training, not a broken bundle
    result = CliRunner().invoke(app, ["rat", "--config", str(path), "--method", "llm2x", "--bundle",
                                      str(tmp_path / "b2")])
    assert result.exit_code != 0 and "--method must be one of llmemb, hybrid, got 'llm2x'" in str(result.exception)
    assert not (tmp_path / "b2").exists() and not (root / "llm2x").exists()
