"""Export: full prompts, catalogue order, N rows (row r = item r + 1), fp32 safetensors."""
from __future__ import annotations

import json
from dataclasses import replace

import torch
from safetensors import safe_open

from llmemb.encoder import EncoderConfig, ItemEncoder
from llmemb.prompts import build_prompt, instruction_for
from llmemb.spec import EncoderSpec
from tests.tiny_models import ml100k_like_items
from trainer.stages.export import (
    EMBEDDINGS_KEY,
    export_embeddings,
    load_embeddings,
    summary_path,
)

MOVIE = EncoderSpec(instruction=instruction_for("movie"), pooling="last", max_value_chars=100)


def test_export_writes_the_catalogue_in_order(tiny_llama_dir, tmp_path):
    items = ml100k_like_items()[:12]
    encoder = ItemEncoder(EncoderConfig.from_spec(MOVIE, str(tiny_llama_dir), token_budget=48))
    out = tmp_path / "export" / "llm.safetensors"
    table = export_embeddings(encoder, items, MOVIE, out)

    assert table.shape == (12, encoder.dim) and table.dtype == torch.float32
    # Row r is item r's full prompt (no attribute dropped), computed alone.
    for r in (0, 5, 11):
        alone = encoder.embed([build_prompt(items[r], instruction_for("movie"), 100)])[0]
        assert torch.allclose(table[r], alone, atol=1e-5)
    assert torch.equal(load_embeddings(out), table)
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == [EMBEDDINGS_KEY]
        assert f.metadata()["model_fingerprint"] == encoder.model_fingerprint()
        assert json.loads(f.metadata()["spec"]) == MOVIE.to_dict()
    summary = json.loads(summary_path(out).read_text(encoding="utf-8"))
    assert summary["items"] == 12 and summary["dim"] == encoder.dim and summary["items_per_s"] > 0
    assert summary["spec"] == MOVIE.to_dict()
    assert summary["model_fingerprint"] == encoder.model_fingerprint()


def test_max_value_chars_reaches_the_prompts(tiny_llama_dir, tmp_path):
    items = [{"movie_title": "Toy Story Goldeneye Babe", "class": "Drama"}]
    encoder = ItemEncoder(EncoderConfig.from_spec(MOVIE, str(tiny_llama_dir)))
    cut = replace(MOVIE, max_value_chars=3)
    short = export_embeddings(encoder, items, cut, tmp_path / "a.safetensors")
    full = export_embeddings(encoder, items, MOVIE, tmp_path / "b.safetensors")
    assert cut.prompt(items[0]) != MOVIE.prompt(items[0])
    # each export holds exactly the vector of its own prompt
    assert torch.allclose(short, encoder.embed([cut.prompt(items[0])]).float(), atol=1e-6)
    assert torch.allclose(full, encoder.embed([MOVIE.prompt(items[0])]).float(), atol=1e-6)
