"""Fixtures shared by several test modules (pytest finds them here; no imports needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer LLaMA with a word-level tokenizer built here (tests/tiny_models.py)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2, unpacked in the model cache."""
    from llmemb.encoder import default_model_path

    return default_model_path()
