"""The trainer's YAML experiment configs -> dataclasses, with `section.key=value` overrides.

A config file has these sections (all but `dataset` optional):

    dataset:  the spec given to llmemb.data.load_dataset (name, format, path, domain, cores, ...)
    backbone: BackboneConfig fields
    train:    TrainConfig fields
    eval:     EvalConfig fields
    rat:      RATConfig fields (llmemb/methods/settings.py): the item-layer methods' settings
    per_backbone:  {<backbone name>: {backbone: {...}, train: {...}}} merged into the
                   backbone / train sections when that backbone is chosen
                   (e.g. BERT4Rec wants more patience)
    runs_dir, reports_dir: where runs and reports go

Precedence: defaults < file sections < per_backbone of the chosen backbone <
command-line overrides. A loaded Config is resolved: per_backbone has been
applied and is not kept, so the config.yaml a run saves reloads to the same
values.

Sections this module does not know (later stages: encoder, scft, quality, quick, ...) are
kept verbatim in `Config.sections` for their own loaders. Unknown keys inside the
known sections are errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmemb.backbones.base import BackboneConfig
from llmemb.methods import RATConfig
from llmemb.metrics import EvalConfig
from llmemb.sections import dataclass_from


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10               # epochs without a better validation score before stopping
    seed: int = 0
    stride: int = 0                  # windows of max_len+1 items every `stride` items; 0 = max_len
                                     # (no overlap); 1 = prefix-materialised (see trainer/stages/train.py)
    windows: str = "all"             # all = tile each user's sequence; last = only its most recent window
    grad_clip: float = 0.0           # max gradient norm; 0 = off
    max_seconds: float = 0.0         # stop after this much training time; 0 = no limit
    threads: int = 0                 # torch.set_num_threads; 0 = leave as is
    progress: bool = True            # tqdm bar per epoch
    device: str = "auto"             # cpu | cuda | cuda:N | auto (the GPU when there is one); fit, RAT
                                     # and evaluation run there (llmemb/devices.py)
    precision: str = "fp32"          # fp32 | bf16 (autocast for the forward pass and the loss)
    batching: str = "shuffle"        # shuffle: random batches; length: batches of similar length (less
                                     # padding on short-sequence data). Every batch is cut to its longest row.


@dataclass
class Config:
    dataset: dict[str, Any]
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rat: RATConfig = field(default_factory=RATConfig)   # the item-layer methods' settings
    runs_dir: str = "runs"
    reports_dir: str = "reports"
    sections: dict[str, Any] = field(default_factory=dict)  # other stages' sections, verbatim

    @property
    def name(self) -> str:
        return str(self.dataset["name"])

    def to_dict(self) -> dict[str, Any]:
        out = {
            "dataset": copy.deepcopy(self.dataset),
            "backbone": self.backbone.to_dict(),
            "train": asdict(self.train),
            "eval": asdict(self.eval),
            "rat": self.rat.to_dict(),
            "runs_dir": self.runs_dir,
            "reports_dir": self.reports_dir,
        }
        out.update(copy.deepcopy(self.sections))
        return out


KNOWN = {"dataset", "backbone", "train", "eval", "rat", "per_backbone", "runs_dir", "reports_dir"}
PER_BACKBONE_SECTIONS = {"backbone", "train"}


def _merge(obj: Any, values: dict[str, Any], where: str) -> Any:
    return dataclass_from(type(obj), values, where, base=obj)


def config_from_dict(raw: dict[str, Any]) -> Config:
    if not isinstance(raw, dict) or "dataset" not in raw:
        raise ValueError("a config needs a 'dataset' section")
    dataset = raw["dataset"]
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise ValueError("dataset: a mapping with at least 'name' is required")
    if raw.get("per_backbone"):
        raise ValueError("per_backbone must be resolved first (resolve_backbone)")
    return Config(
        dataset=copy.deepcopy(dataset),
        backbone=_merge(BackboneConfig(), raw.get("backbone") or {}, "backbone"),
        train=_merge(TrainConfig(), raw.get("train") or {}, "train"),
        eval=_merge(EvalConfig(), raw.get("eval") or {}, "eval"),
        rat=RATConfig.from_dict(raw.get("rat")),
        runs_dir=str(raw.get("runs_dir", "runs")),
        reports_dir=str(raw.get("reports_dir", "reports")),
        sections={k: copy.deepcopy(v) for k, v in raw.items() if k not in KNOWN},
    )


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` strings (value parsed as YAML) set nested keys of a raw config dict."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value (e.g. train.lr=0.001)")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(value)
    return out


def resolve_backbone(raw: dict[str, Any], backbone: str | None = None) -> dict[str, Any]:
    """Choose the backbone (default: backbone.name of the file) and merge its per_backbone sections."""
    out = copy.deepcopy(raw)
    per_backbone = out.pop("per_backbone", None) or {}
    if not isinstance(per_backbone, dict):
        raise ValueError("per_backbone: expected a mapping of backbone name -> sections")
    section = out.setdefault("backbone", {}) or {}
    out["backbone"] = section
    name = backbone or section.get("name") or BackboneConfig.name
    for key, value in (per_backbone.get(name) or {}).items():
        if key not in PER_BACKBONE_SECTIONS or not isinstance(value, dict):
            raise ValueError(f"per_backbone.{name}.{key}: expected one of the mappings "
                             f"{', '.join(sorted(PER_BACKBONE_SECTIONS))}")
        out[key] = {**(out.get(key) or {}), **value}
    out["backbone"]["name"] = name
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def read_raw_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict; `extends: other.yaml` (relative to this file) is read
    first and this file's keys are merged over it, mapping by mapping."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: 'extends' forms a cycle")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping of sections")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ValueError(f"{path}: extends must be a file name, got {parent!r}")
    return _deep_merge(read_raw_config(path.parent / parent, (*_seen, path)), raw)


def load_config(path: str | Path, overrides: list[str] | None = None, backbone: str | None = None) -> Config:
    """Read a YAML config (following `extends`), choose the backbone, apply `section.key=value` overrides."""
    raw = read_raw_config(path)
    return config_from_dict(apply_overrides(resolve_backbone(raw, backbone), overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
