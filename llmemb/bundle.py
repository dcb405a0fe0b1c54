"""The artifact bundle: one immutable directory the trainer writes and the service loads.

Layout (docs/DESIGN.md):
    manifest.json          format version, base model (id, config / weights / tokenizer
                           sha256), encoder contract (llmemb.spec.EncoderSpec), dims, backbone config,
                           dataset summary, test metrics, sha256 of every file and a
                           fingerprint over all of it
    lora/                  optional PEFT adapter (save_pretrained)
    pca.safetensors        mean [D], components
    adapter.safetensors    Adapter state dict
    backbone.safetensors   SequentialBackbone.backbone_state_dict()
    items.safetensors      "items": final item table [N+1, d], row 0 = padding
    residual.safetensors   hybrid bundles only: "residual" r [N+1, d], the per-item part of
                           the table (items.safetensors already includes it); zero for
                           padding and for items that had no training interactions
    items.jsonl            one line per row 1..N: {"id": external id, "attributes": {...}}

Loading re-hashes every file and the manifest, so a bundle that was edited,
truncated, partly copied or mixed with another one is refused with the name of
the offending file. Tensors are stored with safetensors only (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmemb.backbones.base import BackboneConfig
from llmemb.base_models import ModelIdentity, model_identity, sha256_file
from llmemb.methods import Method, get_method, served_method
from llmemb.spec import EncoderSpec

IDENTITY_FIELDS = tuple(ModelIdentity.__dataclass_fields__)

# 2: the whole encoder contract (EncoderSpec) and the base model's weight and
# tokenizer hashes; bundles of format 1 are refused (retrain: they lacked them).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PCA_FILE = "pca.safetensors"
ADAPTER_FILE = "adapter.safetensors"
BACKBONE_FILE = "backbone.safetensors"
ITEMS_FILE = "items.safetensors"
ITEMS_JSONL = "items.jsonl"
RESIDUAL_FILE = "residual.safetensors"
LORA_DIR = "lora"
# What produced the item table: a method a bundle may carry (llmemb.methods: served), e.g. llmemb =
# Adapter(PCA(E_llm)); hybrid = that plus a per-item residual r (docs/METHOD.md, beyond the paper).
# A bundle without the field is llmemb.
DEFAULT_METHOD = "llmemb"


class BundleError(Exception):
    """A bundle that cannot be written or trusted; `file` names the culprit when known."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file


def _served(name: Any, file: str | None = None) -> Method:
    """The method a bundle names, when a bundle may carry it (a BundleError naming `method` otherwise)."""
    try:
        return served_method(name)
    except ValueError as e:
        raise BundleError(str(e), file) from None


@dataclass(frozen=True)
class Dims:
    """Widths along the item path: the LLM's vectors, PCA's output, the item table's rows."""

    llm: int
    pca: int
    item: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BaseModelRecord:
    """The base model a bundle was trained with: its id and the hashes that identify it."""

    id: str
    identity: ModelIdentity

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, **self.identity.to_dict()}


@dataclass(frozen=True)
class Manifest:
    """manifest.json, parsed once and strictly: every reader gets typed fields, never key strings."""

    format_version: int
    created_at: str
    base_model: BaseModelRecord
    encoder: EncoderSpec
    lora: bool
    method: str
    dims: Dims
    n_items: int
    backbone: BackboneConfig
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as written to manifest.json."""
        return {"format_version": self.format_version, "created_at": self.created_at,
                "base_model": self.base_model.to_dict(), "encoder": self.encoder.to_dict(), "lora": self.lora,
                "method": self.method, "dims": self.dims.to_dict(), "n_items": self.n_items,
                "backbone": self.backbone.to_dict(), "dataset": self.dataset, "metrics": self.metrics,
                "files": dict(self.files), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Parse the JSON form; a missing or ill-typed entry is a BundleError naming it."""
        def entry(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = raw.get(key, default)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise BundleError(f"{key}: missing or not a {getattr(kind, '__name__', kind)}", MANIFEST)
            return value

        base = entry("base_model", dict)
        missing = [k for k in ("id", *IDENTITY_FIELDS) if not isinstance(base.get(k), str)]
        if missing:
            raise BundleError(f"base_model.{missing[0]}: missing or not a string", MANIFEST)
        dims = entry("dims", dict)
        bad = [k for k in ("llm", "pca", "item") if not isinstance(dims.get(k), int) or isinstance(dims.get(k), bool)]
        if bad:
            raise BundleError(f"dims.{bad[0]}: missing or not an integer", MANIFEST)
        files = entry("files", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise BundleError("files: every entry must map a path to its sha256", MANIFEST)
        try:
            spec = EncoderSpec.from_dict(entry("encoder", dict))
            backbone = BackboneConfig.from_dict(entry("backbone", dict))
        except ValueError as e:   # written by code that knows other settings: refused, not misread
            raise BundleError(str(e), MANIFEST) from None
        return cls(format_version=entry("format_version", int), created_at=entry("created_at", str, ""),
                   base_model=BaseModelRecord(base["id"], ModelIdentity(**{k: base[k] for k in IDENTITY_FIELDS})),
                   encoder=spec, lora=entry("lora", bool, False),
                   method=_served(raw.get("method", DEFAULT_METHOD), MANIFEST).name,
                   dims=Dims(dims["llm"], dims["pca"], dims["item"]), n_items=entry("n_items", int, 0),
                   backbone=backbone, dataset=entry("dataset", dict, {}), metrics=entry("metrics", dict, {}),
                   files=dict(files), fingerprint=entry("fingerprint", str))


@dataclass
class BundleParts:
    """Everything the trainer hands over; tensors on any device, any float dtype."""

    base_model_id: str
    encoder: EncoderSpec
    pca_state: dict[str, torch.Tensor]       # PCA.state_dict(): mean, components
    adapter_state: dict[str, torch.Tensor]   # Adapter.state_dict()
    backbone_config: BackboneConfig
    backbone_state: dict[str, torch.Tensor]  # SequentialBackbone.backbone_state_dict()
    item_table: torch.Tensor                 # [N+1, d], row 0 = padding
    item_ids: list[str]                      # external id of rows 1..N
    item_attributes: list[dict[str, Any]]    # attributes of rows 1..N
    lora_dir: str | Path | None = None       # PEFT save_pretrained directory
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    base_model_identity: ModelIdentity | None = None  # computed from the base model when None
    method: str = DEFAULT_METHOD             # a servable method (llmemb.methods)
    residual: torch.Tensor | None = None     # methods with a residual (hybrid): r [N+1, d]


@dataclass
class LoadedBundle:
    """A verified bundle in memory: its manifest (typed) and its tensors and items."""

    path: Path
    manifest: Manifest
    pca_state: dict[str, torch.Tensor]
    adapter_state: dict[str, torch.Tensor]
    backbone_state: dict[str, torch.Tensor]
    item_table: torch.Tensor
    item_ids: list[str]
    item_attributes: list[dict[str, Any]]
    lora_dir: Path | None
    residual: torch.Tensor | None = None     # methods with a residual (hybrid): r [N+1, d], already in item_table

    @property
    def encoder(self) -> EncoderSpec:
        return self.manifest.encoder

    @property
    def backbone_config(self) -> BackboneConfig:
        return self.manifest.backbone

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def base_model_id(self) -> str:
        return self.manifest.base_model.id

    @property
    def dims(self) -> dict[str, int]:
        return self.manifest.dims.to_dict()

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Item id -> row of item_table (row 0 is padding)."""
        return {ext: row for row, ext in enumerate(self.item_ids, start=1)}

    def catalogue_vector(self, item_id: str, adapted: np.ndarray) -> np.ndarray:
        """The catalogue vector of `item_id` from its LLM-path (adapter) vector. Hybrid bundles
        (e_i = Adapter(PCA(E_llm))_i + r_i): a bundle item keeps its residual r_i when its
        attributes are replaced; any other item has none (r = 0). Other bundles: unchanged."""
        row = self.rows.get(item_id)
        residual_row = None if self.residual is None or row is None else self.residual[row].numpy()
        return get_method(self.method).catalogue_vector(adapted, residual_row)


# --------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the same object always hashes the same."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as e:
        raise BundleError(f"manifest value cannot be stored as strict JSON: {e}", MANIFEST) from None


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "fingerprint"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _bundle_files(root: Path) -> list[str]:
    """Every regular file under root except the manifest, as sorted POSIX relative paths."""
    out = []
    for p in root.rglob("*"):
        if p.is_symlink():
            raise BundleError("symbolic links are not allowed in a bundle", p.relative_to(root).as_posix())
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


# ----------------------------------------------------------------------- write
def _tensors(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    if not state:
        raise BundleError(f"{what} state is empty")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise BundleError(f"{what} entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _check_parts(parts: BundleParts) -> dict[str, int]:
    pca = parts.pca_state
    if set(pca) != {"mean", "components"}:
        raise BundleError(f"pca state must have keys mean and components, got {sorted(pca)}")
    d_llm = int(pca["mean"].numel())
    if pca["components"].numel() % d_llm:
        raise BundleError(f"pca components {tuple(pca['components'].shape)} do not match mean of size {d_llm}")
    d_pca = int(pca["components"].numel() // d_llm)
    table = parts.item_table
    n = len(parts.item_ids)
    if table.dim() != 2 or table.shape[0] != n + 1:
        raise BundleError(f"item table has shape {tuple(table.shape)}, expected [{n + 1}, d] for {n} items")
    if len(parts.item_attributes) != n:
        raise BundleError(f"{len(parts.item_attributes)} attribute rows for {n} item ids")
    if len(set(parts.item_ids)) != n:
        raise BundleError("item ids are not unique")
    if not all(isinstance(i, str) and i for i in parts.item_ids):
        raise BundleError("item ids must be non-empty strings")
    d = int(table.shape[1])
    if parts.backbone_config.hidden != d:
        raise BundleError(f"backbone hidden {parts.backbone_config.hidden} != item table width {d}")
    method = _served(parts.method)
    if (parts.residual is not None) != method.residual:
        raise BundleError(f"a {method.name} bundle {'needs its residual' if method.residual else 'has no residual'}")
    if parts.residual is not None and tuple(parts.residual.shape) != tuple(table.shape):
        raise BundleError(f"residual has shape {tuple(parts.residual.shape)}, the item table {tuple(table.shape)}")
    return {"llm": d_llm, "pca": d_pca, "item": d}


def write_bundle(out_dir: str | Path, parts: BundleParts) -> Manifest:
    """Write a new bundle and return its manifest. Refuses an existing path (bundles are immutable).

    Files go to a temporary sibling directory that is renamed into place at the
    end, so a crash never leaves a half-written bundle under the final name.
    """
    out = Path(out_dir)
    if out.exists():
        raise BundleError(f"bundle {out} already exists; bundles are immutable, write a new directory")
    dims = _check_parts(parts)
    identity = parts.base_model_identity or model_identity(parts.base_model_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(_tensors(parts.pca_state, "pca"), str(tmp / PCA_FILE))
        save_file(_tensors(parts.adapter_state, "adapter"), str(tmp / ADAPTER_FILE))
        save_file(_tensors(parts.backbone_state, "backbone"), str(tmp / BACKBONE_FILE))
        save_file({"items": parts.item_table.detach().to("cpu", torch.float32).contiguous().clone()},
                  str(tmp / ITEMS_FILE))
        if parts.residual is not None:
            save_file({"residual": parts.residual.detach().to("cpu", torch.float32).contiguous().clone()},
                      str(tmp / RESIDUAL_FILE))
        with open(tmp / ITEMS_JSONL, "w", encoding="utf-8") as f:
            for ext, attrs in zip(parts.item_ids, parts.item_attributes):
                try:
                    line = json.dumps({"id": ext, "attributes": attrs}, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise BundleError(f"attributes of item {ext!r} are not JSON: {e}", ITEMS_JSONL) from None
                f.write(line + "\n")
        if parts.lora_dir is not None:
            src = Path(parts.lora_dir)
            if not src.is_dir():
                raise BundleError(f"LoRA directory {src} does not exist")
            shutil.copytree(src, tmp / LORA_DIR, symlinks=False)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "base_model": {"id": parts.base_model_id, **identity.to_dict()},
            "encoder": parts.encoder.to_dict(),
            "lora": parts.lora_dir is not None,
            "method": parts.method,
            "dims": dims,
            "n_items": len(parts.item_ids),
            "backbone": parts.backbone_config.to_dict(),
            "dataset": parts.dataset,
            "metrics": parts.metrics,
            "files": {rel: sha256_file(tmp / rel) for rel in _bundle_files(tmp)},
        }
        manifest["fingerprint"] = manifest_fingerprint(manifest)
        (tmp / MANIFEST).write_bytes(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False).encode())
        _make_readable(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Manifest.from_dict(manifest)


def _make_readable(root: Path) -> None:
    """safetensors writes 0600 files; a bundle is read by other users (the service's container user)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o755 if p.is_dir() else 0o644) & ~umask)


# ------------------------------------------------------------------------ load
def _manifest_json(root: Path) -> dict[str, Any]:
    """manifest.json as written (the fingerprint is over this form), of a format this code reads."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    if not path.is_file():
        raise BundleError("missing; not a bundle directory", MANIFEST)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"not valid JSON ({e})", MANIFEST) from None
    if not isinstance(raw, dict):
        raise BundleError("must be a JSON object", MANIFEST)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"format_version {version!r} is not supported (this code reads {FORMAT_VERSION})", MANIFEST)
    for key in ("fingerprint", "files", "base_model", "encoder", "dims", "backbone"):
        if key not in raw:
            raise BundleError(f"no {key!r} entry", MANIFEST)
    return raw


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """The manifest, parsed, without checking any hash (verify_bundle checks them)."""
    return Manifest.from_dict(_manifest_json(Path(bundle_dir)))


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Check the fingerprint and every file hash; return the manifest or raise BundleError."""
    root = Path(bundle_dir)
    raw = _manifest_json(root)
    if manifest_fingerprint(raw) != raw["fingerprint"]:
        raise BundleError("fingerprint does not match the manifest content (manifest was edited)", MANIFEST)
    manifest = Manifest.from_dict(raw)
    listed = manifest.files
    present = set(_bundle_files(root))
    for rel in sorted(listed):
        if rel not in present:
            raise BundleError("listed in the manifest but missing", rel)
    for rel in sorted(present - set(listed)):
        raise BundleError("present but not listed in the manifest (extra file)", rel)
    for rel in sorted(listed):
        if sha256_file(root / rel) != listed[rel]:
            raise BundleError("sha256 does not match the manifest (file corrupted or replaced)", rel)
    return manifest


def _load_tensors(root: Path, rel: str) -> dict[str, torch.Tensor]:
    path = root / rel
    if not path.is_file():
        raise BundleError("missing", rel)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"unreadable safetensors file ({e})", rel) from None


def _load_items(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    ids, attrs = [], []
    path = root / ITEMS_JSONL
    if not path.is_file():
        raise BundleError("missing", ITEMS_JSONL)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                attrs.append(dict(row["attributes"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise BundleError(f"line {lineno} is not an item row ({e})", ITEMS_JSONL) from None
    return ids, attrs


def load_bundle(bundle_dir: str | Path, verify: bool = True) -> LoadedBundle:
    """Load a bundle; with verify (the default) every hash is checked first."""
    root = Path(bundle_dir)
    manifest = verify_bundle(root) if verify else read_manifest(root)
    dims = manifest.dims
    pca = _load_tensors(root, PCA_FILE)
    if set(pca) != {"mean", "components"} or pca["mean"].numel() != dims.llm:
        raise BundleError(f"expected mean [{dims.llm}] and components, got {sorted(pca)}", PCA_FILE)
    table = _load_tensors(root, ITEMS_FILE).get("items")
    ids, attrs = _load_items(root)
    if table is None or table.dim() != 2 or tuple(table.shape) != (len(ids) + 1, dims.item):
        shape = None if table is None else tuple(table.shape)
        raise BundleError(f"item table {shape} does not match {len(ids)} items of width {dims.item}", ITEMS_FILE)
    lora = root / LORA_DIR
    if manifest.lora and not lora.is_dir():
        raise BundleError("the manifest names a LoRA adapter but the directory is missing", LORA_DIR)
    method = get_method(manifest.method)
    residual = None
    if method.residual:
        if not (root / RESIDUAL_FILE).is_file():
            raise BundleError(f"a {method.name} bundle needs its residual file", RESIDUAL_FILE)
        residual = _load_tensors(root, RESIDUAL_FILE).get("residual")
        if residual is None or tuple(residual.shape) != tuple(table.shape):
            shape = None if residual is None else tuple(residual.shape)
            raise BundleError(f"residual {shape} does not match the item table {tuple(table.shape)}", RESIDUAL_FILE)
    return LoadedBundle(
        path=root,
        manifest=manifest,
        pca_state=pca,
        adapter_state=_load_tensors(root, ADAPTER_FILE),
        backbone_state=_load_tensors(root, BACKBONE_FILE),
        item_table=table,
        item_ids=ids,
        item_attributes=attrs,
        lora_dir=lora if manifest.lora else None,
        residual=residual,
    )
