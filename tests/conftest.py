"""Fixtures shared by several test modules (pytest finds them here; no imports needed)."""
from __future__ import annotations

import multiprocessing.process
import os
import subprocess
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_llama

FAST_TIER = os.environ.get("LLMEMB_TEST_TIER") == "fast"
_running: list[pytest.Item] = []   # the test being set up, run or torn down


def pytest_configure(config):
    """`make test-fast` (LLMEMB_TEST_TIER=fast) promises that no test starts a process: from here on
    a test without the `process` mark that starts one, in its body or in any fixture it sets up,
    fails with a message naming the mark it lacks, so the tier cannot drift."""
    if not FAST_TIER:
        return
    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def allowed(what: str) -> None:
        item = _running[-1] if _running else None
        if item is not None and item.get_closest_marker("process") is None:
            raise RuntimeError(f"{item.nodeid} starts {what}: mark it @pytest.mark.process "
                               f"(the fast tier, `make test-fast`, starts none)")

    def guarded_popen(self, *args, **kwargs):
        allowed("a subprocess")
        popen_init(self, *args, **kwargs)

    def guarded_start(self):
        allowed("a process")
        process_start(self)

    subprocess.Popen.__init__ = guarded_popen          # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = guarded_start   # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer LLaMA with a word-level tokenizer built here (tests/tiny_models.py)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2, unpacked in the model cache."""
    from llmemb.encoder import default_model_path

    return default_model_path()
