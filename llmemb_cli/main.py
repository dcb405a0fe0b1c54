"""The `llmemb` command: `train …`, `serve`, `backfill`, `catalogue`, `verify` and `export-st`
(and `llmemb --version`).

Each part is imported only when its sub-command runs, so an install with the serve
extra alone runs `llmemb serve` and `llmemb verify` without the trainer's packages.
The sub-commands hand their arguments on unchanged: `llmemb train quick --help`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LLMEmb: LLM item embeddings for sequential recommenders (trainer, service, backfill).")
PASS_ON = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
DISTRIBUTION = "llmemb-serve"


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"llmemb {version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def main(show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the installed version and exit.")] = False) -> None:
    """LLMEmb: LLM item embeddings for sequential recommenders (trainer, service, backfill)."""


@app.command(context_settings=PASS_ON, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """The offline trainer: prepare, train, scft, export, rat, quality, tune, quick … (`llmemb train --help`)."""
    # Idle OpenMP threads sleep instead of spinning (set before torch loads), as `python -m trainer` does.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from trainer.cli import app as trainer_app

    trainer_app(args=list(ctx.args), prog_name="llmemb train")


@app.command(context_settings=PASS_ON, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Run the API over a bundle (`llmemb serve --help`; settings from LLMEMB_* variables)."""
    from service.__main__ import main

    main(list(ctx.args))


@app.command(context_settings=PASS_ON, add_help_option=False)
def backfill(ctx: typer.Context) -> None:
    """Embed a whole catalogue into Redis or files, locally or on Ray (`llmemb backfill --help`)."""
    from service.backfill.cli import main

    main(list(ctx.args))


@app.command(context_settings=PASS_ON, add_help_option=False)
def catalogue(ctx: typer.Context) -> None:
    """Export the live catalogue to JSON lines, or import one (`llmemb catalogue export --help`)."""
    from service.catalogue_io import main

    raise typer.Exit(main(list(ctx.args), prog="llmemb catalogue"))


@app.command()
def verify(bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory.")]) -> None:
    """Check every hash of a bundle; exits non-zero with the offending file named."""
    from llmemb.bundle import BundleError, verify_bundle

    try:
        manifest = verify_bundle(bundle)
    except BundleError as err:
        typer.echo(f"bundle refused: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"bundle ok: fingerprint {manifest.fingerprint}, {manifest.n_items} items")


@app.command("export-st")
def export_st(bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory.")],
              out: Annotated[Path, typer.Option("--out", help="Folder to write.")],
              base_model_path: Annotated[Optional[Path], typer.Option(help="The base model, if not the bundle's id.")]
              = None) -> None:
    """The bundle's item stage as a sentence-transformers folder (merged LoRA, pooling, one Dense
    layer = PCA then adapter), for standard embedding servers such as infinity."""
    from llmemb.bundle import BundleError, load_bundle
    from service.st_export import export_item_stage

    try:
        folder = export_item_stage(load_bundle(bundle), out, str(base_model_path) if base_model_path else None)
    except (BundleError, ValueError) as err:
        typer.echo(f"export refused: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"sentence-transformers folder written: {folder}")
