"""`python -m trainer <stage>`: one thin command per stage.

Each command turns its options into a Config (load_config: file < per_backbone
< --set overrides) and calls one stage function; adding a stage is one more
decorated function here calling its module.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmemb.backbones import BACKBONES
from llmemb.methods import METHODS, get_method, served_method
from trainer.config import Config, load_config
from trainer.runs.method_run import train_id_run
from trainer.runs.store import run_dir
from trainer.stages import prepare as prepare_stage
from trainer.stages.evaluate import evaluate_run, metrics_table
from trainer.stages.prepare import prepared_dataset
from trainer.studies.baselines import run_baselines

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLMEmb offline trainer.")

ConfigPath = Annotated[Path, typer.Option("--config", "-c", help="YAML experiment config.", exists=True, dir_okay=False)]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.lr=0.002 (repeatable).")]
Backbone = Annotated[Optional[str], typer.Option("--backbone", "-b", help="sasrec | gru4rec | bert4rec (default: the config's).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Training seed (default: the config's).")]


def resolve(config: Path, overrides: list[str] | None, backbone: str | None = None, seed: int | None = None) -> Config:
    sets = list(overrides or [])
    if seed is not None:
        sets.append(f"train.seed={seed}")
    try:
        cfg = load_config(config, sets, backbone=backbone)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from None
    if cfg.backbone.name not in BACKBONES:
        raise typer.BadParameter(f"unknown backbone {cfg.backbone.name!r}; known: {', '.join(BACKBONES)}",
                                 param_hint="--backbone")
    return cfg


@app.command()
def prepare(config: ConfigPath, overrides: Overrides = None) -> None:
    """Load the raw dataset, print its statistics, save it under <runs_dir>/<dataset>/data."""
    dataset, directory = prepare_stage.prepare(resolve(config, overrides))
    typer.echo(json.dumps(dataset.stats(), indent=2))
    typer.echo(f"saved to {directory}")


@app.command()
def train(
    config: ConfigPath,
    backbone: Backbone = None,
    seed: Seed = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run directory name (default <backbone>-seed<seed>).")] = None,
    overrides: Overrides = None,
) -> None:
    """Train an ID-only backbone; write <runs_dir>/<dataset>/<run name>/ and print its test metrics."""
    cfg = resolve(config, overrides, backbone, seed)
    directory = run_dir(cfg, run_name)
    metrics = train_id_run(cfg, directory).metrics
    typer.echo(metrics_table(metrics))
    typer.echo(f"run written to {directory}")


@app.command()
def evaluate(run: Annotated[Path, typer.Option("--run", help="A run directory (any method: train, rat, quick, quality, tune).", exists=True, file_okay=False)]) -> None:
    """Re-evaluate a run's checkpoint under both protocols and print the table."""
    typer.echo(metrics_table(evaluate_run(run)))


@app.command()
def baselines(
    config: ConfigPath,
    backbones: Annotated[str, typer.Option(help="Comma-separated backbones.")] = "sasrec,gru4rec,bert4rec",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    force: Annotated[bool, typer.Option(help="Retrain runs that already exist.")] = False,
    overrides: Overrides = None,
) -> None:
    """Train every backbone x seed on ID embeddings; write reports/<dataset>/baselines.{md,json}."""
    run_baselines(
        config,
        backbones=[b.strip() for b in backbones.split(",") if b.strip()],
        seeds=[int(s) for s in seeds.split(",") if s.strip()],
        overrides=list(overrides or []),
        force=force,
        log=typer.echo,
    )


# ------------------------------------------------------------ LLMEmb stages
@app.command()
def scft(config: ConfigPath, steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (default: the config's).")] = None,
         tag: Annotated[str, typer.Option(help="Output name: <runs_dir>/<dataset>/llm/<model>/<tag>-<settings digest>/.")] = "scft",
         overrides: Overrides = None) -> None:
    """Supervised contrastive fine-tuning (LoRA) on the catalogue's attribute-drop views."""
    from trainer.stages.llm_stages import ensure_scft

    cfg = resolve(config, overrides)
    dataset, _ = prepared_dataset(cfg)
    changes = {} if steps is None else {"steps": steps}
    typer.echo(f"LoRA saved to {ensure_scft(cfg, dataset, tag=tag, **changes)}")


@app.command()
def export(config: ConfigPath,
           lora: Annotated[Optional[Path], typer.Option(help="LoRA directory from `scft`; omit for the base LLM.")] = None,
           tag: Annotated[str, typer.Option(help="Output name: <runs_dir>/<dataset>/llm/<model>/export-<tag>-<settings digest>/.")] = "scft",
           overrides: Overrides = None) -> None:
    """Embed every catalogue item from its full prompt (fp32, safetensors)."""
    from trainer.stages.llm_stages import ensure_export, export_dir

    cfg = resolve(config, overrides)
    dataset, _ = prepared_dataset(cfg)
    table = ensure_export(cfg, dataset, lora, tag)
    typer.echo(f"exported {tuple(table.shape)} to {export_dir(cfg, dataset, lora, tag)}/")


@app.command()
def rat(config: ConfigPath,
        method: Annotated[str, typer.Option(help=" | ".join(METHODS))] = "llmemb",
        backbone: Backbone = None, seed: Seed = None,
        bundle: Annotated[Optional[Path], typer.Option(help="Also write the bundle here (a method a bundle may carry).")] = None,
        overrides: Overrides = None) -> None:
    """PCA + ID pretraining + RAT for one method; prints its test metrics."""
    from trainer.runs.method_run import RunSplit
    from trainer.runs.pipeline import llm_tables, method_tasks, run_pipeline
    from trainer.stages.make_bundle import bundle_from_run

    if bundle is not None:
        served_method(method, "--method")   # before any training: a bundle needs a servable method
    else:
        get_method(method, "--method")
    cfg = resolve(config, overrides, backbone, seed)
    dataset, data_dir = prepared_dataset(cfg)
    lora, tables = llm_tables(cfg, dataset, [method])
    tasks = method_tasks("main", cfg, [method], cfg.rat,
                         run_dir(cfg, f"rat/{cfg.backbone.name}-seed{cfg.train.seed}"))
    metrics = run_pipeline({"main": RunSplit(dataset, tables, data_dir)}, tasks)[-1]
    typer.echo(metrics_table(metrics))
    if bundle is not None:
        manifest = bundle_from_run(tasks[-1].directory, dataset, lora, bundle)
        typer.echo(f"bundle {bundle} fingerprint {manifest.fingerprint}")


@app.command()
def regimes(reports_dir: Annotated[Path, typer.Option(help="Where the quality reports are.")] = Path("reports")) -> None:
    """One page comparing None, LLM2X, LLMEmb and Hybrid across the regimes' quality reports."""
    from trainer.reports.regimes import write_regimes

    write_regimes(reports_dir, log=typer.echo)


@app.command()
def quality(config: ConfigPath, overrides: Overrides = None) -> None:
    """None / LLM2X / LLMEmb / Hybrid on every backbone, the ablations and cold start, 3 seeds; writes the report."""
    from trainer.studies.quality import run_quality

    run_quality(config, list(overrides or []), log=typer.echo)


@app.command()
def tune(config: ConfigPath,
         grid: Annotated[Path, typer.Option("--grid", help="YAML grid of variants (see trainer/studies/tune.py).", exists=True, dir_okay=False)]) -> None:
    """Try variants of one method on validation; writes <reports>/<dataset>/tuning/<grid name>.{json,md}."""
    from trainer.studies.tune import run_tuning

    try:
        run_tuning(config, grid, log=typer.echo)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--grid") from None


@app.command()
def encoders(comparison: Annotated[Path, typer.Option("--comparison", help="YAML comparison of item encoders "
                                                      "(see trainer/studies/encoders.py).", exists=True, dir_okay=False)]) -> None:
    """The same rows on several item encoders; writes <reports>/<dataset>/encoders.{json,md}."""
    from trainer.studies.encoders import run_encoders

    try:
        run_encoders(comparison, log=typer.echo)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--comparison") from None


@app.command()
def quick(config: ConfigPath,
          out: Annotated[Path, typer.Option("--out", help="Bundle directory to write (must not exist).")],
          overrides: Overrides = None) -> None:
    """The quick pipeline of `make run`: short SCFT, RAT on SASRec, evaluation, bundle."""
    from trainer.studies.quick import run_quick

    summary = run_quick(config, out, list(overrides or []), log=typer.echo)
    typer.echo(metrics_table({"test": summary["test"]}))
