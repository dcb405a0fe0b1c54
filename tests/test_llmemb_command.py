"""The installed `llmemb` command: its four parts, each handing its arguments on unchanged."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)


def _llmemb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmemb_cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_the_four_parts():
    out = _llmemb("--help")
    assert out.returncode == 0, out.stderr
    for part in ("train", "serve", "backfill", "catalogue", "verify"):
        assert part in out.stdout


@pytest.mark.parametrize("part, expected", [
    ("train", ["quick", "quality", "rat", "scft"]),   # the trainer's own sub-commands
    ("serve", ["--bundle", "--redis-url", "--print-examples"]),
    ("backfill", ["--engine", "--catalogue", "--ray-address"]),
    ("catalogue", ["export", "import", "--redis-url", "--replace"]),
])
def test_each_part_shows_its_own_help(part, expected):
    out = _llmemb(part, "--help")
    assert out.returncode == 0, out.stderr
    for word in expected:
        assert word in out.stdout, f"{part} --help lacks {word}"


def test_serve_passes_bad_arguments_to_the_service_parser():
    out = _llmemb("serve", "--port", "not-a-port")
    assert out.returncode == 2 and "--port" in out.stderr and "invalid int value" in out.stderr


def test_the_serve_part_does_not_import_the_trainer():
    code = ("import sys; from llmemb_cli import main; "
            "print(sorted(m for m in sys.modules if m == 'trainer' or m.startswith('trainer.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    out = _llmemb("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"llmemb {version('llmemb-serve')}"
