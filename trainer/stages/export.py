"""Export: the LLM vector of every catalogue item, E_llm [N, D].

Each item is embedded from its full prompt (no attribute dropped), in fp32 and
in catalogue order. The file holds N rows with NO padding row: row r belongs to
internal item r + 1 (ids run 1..N, 0 is padding; RAT adds the zero row itself,
see llmemb.item_tables.with_padding_row). Stored with safetensors under the key
"embeddings"; a JSON summary (throughput, model fingerprint) sits beside it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from llmemb.encoder import ItemEncoder
from llmemb.spec import EncoderSpec

EMBEDDINGS_KEY = "embeddings"
# Texts handed to one `embed` call: large enough for length sorting to pay off,
# small enough for the progress bar to move.
CHUNK_ITEMS = 4096


def summary_path(out_path: str | Path) -> Path:
    return Path(out_path).with_suffix(".json")


def embed_catalogue(
    encoder: ItemEncoder,
    items: list[dict[str, Any]],
    spec: EncoderSpec,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """([N, D] fp32, summary with items/s): row r is items[r], prompted by `spec`."""
    prompts = [spec.prompt(attrs) for attrs in items]
    start = time.perf_counter()
    chunks = []
    with tqdm(total=len(prompts), desc="export", unit="item", disable=not progress) as bar:
        for begin in range(0, len(prompts), CHUNK_ITEMS):
            chunk = prompts[begin:begin + CHUNK_ITEMS]
            chunks.append(encoder.embed(chunk))
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    table = torch.cat(chunks) if chunks else torch.zeros((0, encoder.dim), dtype=torch.float32)
    summary = {
        "items": len(items),
        "dim": encoder.dim,
        "seconds": seconds,
        "items_per_s": len(items) / seconds if seconds > 0 else float("inf"),
        "spec": spec.to_dict(),
        "model_fingerprint": encoder.model_fingerprint(),
        "rows": "row r = internal item r + 1 (no padding row)",
    }
    return table, summary


def export_embeddings(
    encoder: ItemEncoder,
    items: list[dict[str, Any]],
    spec: EncoderSpec,
    out_path: str | Path,
) -> torch.Tensor:
    """Embed the catalogue, save it to `out_path` (safetensors) and the summary to
    `summary_path(out_path)`; returns the [N, D] fp32 table."""
    table, summary = embed_catalogue(encoder, items, spec)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in summary.items()}
    save_file({EMBEDDINGS_KEY: table.contiguous()}, str(out), metadata=metadata)
    summary_path(out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return table


def load_embeddings(path: str | Path) -> torch.Tensor:
    """The [N, D] table written by `export_embeddings`."""
    tensors = load_file(str(path))
    if EMBEDDINGS_KEY not in tensors:
        raise ValueError(f"{path}: no {EMBEDDINGS_KEY!r} tensor (found {sorted(tensors)})")
    return tensors[EMBEDDINGS_KEY]
