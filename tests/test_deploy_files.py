"""Dockerfiles, Kubernetes manifests and the compose file pass their linters (no engine needed)."""
import glob
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfiles_pass_hadolint():
    files = sorted(glob.glob(str(ROOT / "docker" / "*.Dockerfile")))
    assert len(files) >= 3
    r = run(str(BIN / "hadolint"), *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_k8s_manifests_validate_strictly():
    files = sorted(glob.glob(str(ROOT / "k8s" / "*.yaml")))
    assert files
    r = run(str(BIN / "kubernetes-validate"), "--strict", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout + r.stderr


def test_compose_file_matches_the_compose_spec():
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("broken", ["services: [1, 2]\n"])
def test_compose_check_rejects_a_broken_file(tmp_path, broken):
    bad = tmp_path / "compose.yml"
    bad.write_text(broken)
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert r.returncode != 0
