"""The vectors file: what Redis holds for every input item, in input order (.safetensors or .npy + ids)."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from service.backfill.config import BackfillError, Counts
from service.backfill.items import chunked, read_items
from service.backfill.store import RedisVectors
from service.cache import FLOAT32_LE

OUT_SUFFIXES = (".safetensors", ".npy")


def check_out(out: str | Path, stages: tuple[str, ...]) -> Path:
    out = Path(out)
    if out.suffix not in OUT_SUFFIXES:
        raise BackfillError(f"--out must end in {' or '.join(OUT_SUFFIXES)}, got {out.name}")
    if out.suffix == ".npy" and len(stages) != 1:
        raise BackfillError(f".npy holds one stage, {len(stages)} were asked for; use .safetensors")
    return out


def ids_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".ids.jsonl")


def export_vectors(out: str | Path, input_path: str | Path, target: RedisVectors, prompt_of,
                   stages: tuple[str, ...], n_items: int, on_error: str, chunk_size: int = 1024,
                   metadata: Mapping[str, str] | None = None) -> Path:
    """The stored vectors of every valid input item, in input order, to .safetensors or .npy + ids."""
    out = check_out(out, stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{uuid.uuid4().hex[:8]}"
    tmp_out, tmp_ids = out.with_name(out.name + tag), ids_path(out).with_name(ids_path(out).name + tag)
    try:
        memmap: np.memmap | None = None
        arrays: dict[str, np.ndarray]
        if out.suffix == ".npy":  # written through a memory map: the table never has to fit in memory
            memmap = np.lib.format.open_memmap(tmp_out, mode="w+", dtype=FLOAT32_LE,
                                               shape=(n_items, target.dims[stages[0]]))
            arrays = {stages[0]: memmap}
        else:
            arrays = {s: np.empty((n_items, target.dims[s]), dtype=FLOAT32_LE) for s in stages}
        row = 0
        with open(tmp_ids, "w", encoding="utf-8") as ids:
            for chunk in chunked(read_items(input_path, on_error, Counts()), chunk_size):
                if row + len(chunk) > n_items:
                    raise BackfillError(f"{input_path} has more items than the {n_items} backfilled; did it change?")
                prompts = [prompt_of(it.attributes) for it in chunk]
                for s in stages:
                    vectors: list[np.ndarray] = []
                    for it, vector in zip(chunk, target.read(s, prompts)):
                        if vector is None:
                            raise BackfillError(f"{input_path}:{it.line}: the {s} vector of item {it.id!r} is not "
                                                "in Redis (expired or evicted?); run the backfill again")
                        vectors.append(vector)
                    arrays[s][row:row + len(chunk)] = np.stack(vectors)
                ids.writelines(json.dumps(it.id, ensure_ascii=False) + "\n" for it in chunk)
                row += len(chunk)
        if row != n_items:
            raise BackfillError(f"{input_path} has {row} items, {n_items} were backfilled; did it change?")
        if memmap is not None:  # .npy
            memmap.flush()
            del arrays, memmap
        else:
            from safetensors.numpy import save_file

            save_file(arrays, str(tmp_out), metadata={"fingerprint": target.fingerprint,
                                                      "ids": ids_path(out).name, **(metadata or {})})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_out, 0o644 & ~umask)  # safetensors writes 0600; the service's user may read the file
        os.replace(tmp_ids, ids_path(out))
        os.replace(tmp_out, out)
    finally:
        for p in (tmp_out, tmp_ids):
            if p.exists():
                p.unlink()
    return out
