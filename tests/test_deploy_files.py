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


def test_the_catalogue_ships_durable_and_apart_from_the_cache():
    import yaml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    catalogue = " ".join(services["redis-catalogue"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in catalogue
    assert "catalogue" in compose["volumes"] and any(v.startswith("catalogue:") for v in services["redis-catalogue"]["volumes"])
    assert "allkeys-lru" in " ".join(services["redis"]["command"])        # only the cache may evict
    env = services["service"]["environment"]
    assert env["LLMEMB_CATALOGUE_REDIS_URL"].startswith("redis://redis-catalogue:")
    docs = [d for f in sorted((ROOT / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "llmemb-catalogue")
    args = " ".join(sts["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["LLMEMB_CATALOGUE_REDIS_URL"].startswith("redis://llmemb-catalogue:")
