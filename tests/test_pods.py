"""The pods of every overlay, run as their manifests say (scripts/run_pods.py).

The first tests check the runner's reading of the manifests (no privileges needed); the last ones run
the pods: k8s/overlays/cpu with the backfill RayJob beside it (service, both Redis, Ray head, two
workers and the submitter), and k8s/overlays/gpu (the Job that fills the shared base-model volume and
the replica's init containers; its GPU container only where a GPU is). They need root (network and mount namespaces), as on the CI machine."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from llmemb_testing.servers import movielens_items, shared_test_bundle

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_pods", ROOT / "scripts" / "run_pods.py")
assert _spec is not None and _spec.loader is not None
pods = importlib.util.module_from_spec(_spec)
sys.modules["run_pods"] = pods   # its dataclasses look their module up
_spec.loader.exec_module(pods)

TOOLS = ("ip", "nsenter", "unshare", "kubectl", "curl", "redis-server", "redis-cli")
can_run = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason=f"running pods needs root and {', '.join(TOOLS)}")


def render(target: str) -> list[dict]:
    return pods.check_k8s.render(ROOT / "k8s", "namespace") + pods.check_k8s.render(ROOT / "k8s", target)


def test_kubelet_expansion():
    env = {"A": "x", "EMPTY": ""}
    assert pods.expand("--url $(A) $(B) $$(A) $(EMPTY)", env) == "--url x $(B) $(A) "


@pytest.mark.process
def test_env_comes_from_rendered_names_and_a_bare_generated_name_is_refused():
    objects = render("backfill")
    head = next(p for p in pods.pods_of(objects) if p.name.endswith("-head"))
    fetch = head.spec["initContainers"][0]
    env = pods.container_env(fetch, objects)
    assert env["LLMEMB_BUNDLE_URL"].startswith("https://") and "LLMEMB_BACKFILL_INPUT_URL" in env
    ray = head.spec["containers"][0]
    assert pods.container_env(ray, objects)["LLMEMB_REDIS_PASSWORD"]   # from k8s/namespace's Secret
    fetch["envFrom"][0]["configMapRef"]["name"] = "llmemb-backfill-bundle"   # the name before the hash
    with pytest.raises(pods.PodFailure, match="ConfigMap 'llmemb-backfill-bundle' is read but not rendered"):
        pods.container_env(fetch, objects)


@pytest.mark.process
def test_commands_combine_the_manifest_and_the_image():
    service = pods.image_for("ghcr.io/llmemb/llmemb-serve:0.1.0-cpu", ROOT)
    assert service.entrypoint == ["llmemb", "serve"]
    assert service.env["PATH"].startswith("/opt/venv/bin:") and service.env["HF_HUB_OFFLINE"] == "1"
    assert service.paths["/opt/venv"] == ROOT / ".venv"
    assert pods.argv_of({}, service, {}) == ["llmemb", "serve"]
    redis = next(o for o in render("overlays/cpu") if o["metadata"]["name"] == "llmemb-redis"
                 and o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    image = pods.image_for(redis["image"], ROOT)
    argv = pods.argv_of(redis, image, {"LLMEMB_REDIS_PASSWORD": "pw"})
    assert argv[0] == "redis-server" and argv[argv.index("--requirepass") + 1] == "pw"
    with pytest.raises(pods.PodFailure, match="no stand-in"):
        pods.image_for("docker.io/library/nginx:1", ROOT)


@pytest.mark.process
def test_kuberay_pods_of_the_backfill():
    rayjob = next(o for o in render("backfill") if o["kind"] == "RayJob")
    made = {p.name: p for p in pods.kuberay_pods(rayjob)}
    assert set(made) == {"llmemb-backfill-head", "llmemb-backfill-cpu-0", "llmemb-backfill-cpu-1",
                         "llmemb-backfill-submitter"}
    head = made["llmemb-backfill-head"].spec["containers"][0]["args"][0]
    assert "ray start --head" in head and "--num-cpus=2" in head and f"--memory={6 * 2**30}" in head
    worker = made["llmemb-backfill-cpu-0"].spec["containers"][0]["args"][0]
    assert "--address=llmemb-backfill-head-svc:6379" in worker
    submit = made["llmemb-backfill-submitter"].spec["containers"][0]["command"]
    assert submit[:3] == ["ray", "job", "submit"] and submit[submit.index("--") + 1:][:2] == ["llmemb", "backfill"]
    assert "/input/items.jsonl" in submit and made["llmemb-backfill-submitter"].job


def _query(name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00" + qtype.to_bytes(2, "big") + b"\x00\x01"


def test_cluster_dns_answers():
    names = {"llmemb-redis.llmemb.svc.cluster.local": "10.244.0.11"}
    answer = pods.dns_answer(_query("llmemb-redis.llmemb.svc.cluster.local", 1), names)
    assert answer[:2] == b"\x12\x34" and answer[3] & 0x0F == 0 and answer[6:8] == b"\x00\x01"
    assert answer[-4:] == bytes([10, 244, 0, 11])
    aaaa = pods.dns_answer(_query("llmemb-redis.llmemb.svc.cluster.local", 28), names)
    assert aaaa[3] & 0x0F == 0 and aaaa[6:8] == b"\x00\x00"
    unknown = pods.dns_answer(_query("example.com", 1), names)
    assert unknown[3] & 0x0F == 3 and unknown[6:8] == b"\x00\x00"


def test_root_script_mounts_volumes_over_a_read_only_root(tmp_path):
    volume = tmp_path / "bundle"
    volume.mkdir()
    script = pods.root_script(tmp_path / "root", {"/bundle": (volume, False)}, read_only=True).splitlines()
    assert script[-1] == f"mount -o remount,ro {tmp_path / 'root'}"
    assert f"mount --bind {volume} {tmp_path / 'root' / 'bundle'}" in script
    assert f"mkdir -m 1777 {tmp_path / 'root' / 'tmp'}" in script   # the image's /tmp: not the host's
    assert not any(line.startswith(f"mount -o remount,bind,ro {tmp_path / 'root' / 'bundle'}") for line in script)


# ------------------------------------------------------------------------------------ running pods
@pytest.fixture(scope="module")
def archives(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """What the init containers fetch: the test bundle, a catalogue of 40 items, a base model."""
    out = tmp_path_factory.mktemp("archives")
    bundle = shared_test_bundle()
    with tarfile.open(out / "bundle.tar.gz", "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    ids, attrs = movielens_items(40)
    items = out / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"new-{i}", "attributes": a}) + "\n" for i, a in zip(ids, attrs)))
    with tarfile.open(out / "catalogue.tar.gz", "w:gz") as tar:
        tar.add(items, arcname="items.jsonl")
    with tarfile.open(out / "base.tar.gz", "w:gz") as tar:
        tar.add(tiny_llama_dir, arcname="base")
    return {"BUNDLE": out / "bundle.tar.gz", "BACKFILL_INPUT": out / "catalogue.tar.gz",
            "BASE_MODEL": out / "base.tar.gz"}


@can_run
@pytest.mark.slow
def test_cpu_overlay_and_backfill_start_and_the_rayjob_succeeds(archives, tmp_path):
    lines: list[str] = []
    problems = pods.run_targets(["overlays/cpu", "backfill"], archives, tmp_path, deadline_s=400, log=lines.append)
    assert problems == [], "\n".join(problems)
    for pod in ("llmemb-service-0", "llmemb-redis-0", "llmemb-catalogue-0", "llmemb-backfill-head",
                "llmemb-backfill-cpu-0", "llmemb-backfill-cpu-1"):
        assert f"  {pod}: ready" in lines
    assert "  RayJob/llmemb-backfill: SUCCEEDED" in lines
    submitted = (tmp_path / "logs" / "llmemb-backfill-submitter-ray-job-submitter.log").read_text()
    assert '"keys_written": 40' in submitted


@pytest.mark.process
@can_run
def test_gpu_overlay_fills_the_shared_base_model_and_fetches_the_bundle(archives, tmp_path):
    lines: list[str] = []
    problems = pods.run_targets(["overlays/gpu"], archives, tmp_path, deadline_s=120, log=lines.append)
    assert problems == [], "\n".join(problems)
    assert "  llmemb-base-model-job: succeeded" in lines   # the Job filled the shared claim ...
    assert "  llmemb-service-0: init container wait-base-model done" in lines   # ... which the replica waited for
    assert "  llmemb-service-0: init container fetch-bundle done" in lines
    assert (tmp_path / "claims" / "llmemb-base-model" / "config.json").is_file()
    if shutil.which("nvidia-smi") is None:
        assert any("container service not started: it asks for an nvidia.com/gpu" in line for line in lines)
    else:
        assert "  llmemb-service-0: ready" in lines


@pytest.mark.process
@can_run
def test_a_write_outside_the_volumes_stops_the_pod(archives, tmp_path):
    """The defect the runner was built to catch: the bundle download used to make its work folder in the
    target's parent (/), which a read-only root refuses."""
    served = tmp_path / "files"
    served.mkdir()
    shutil.copy(archives["BUNDLE"], served / "bundle.tar.gz")
    settings = pods.settings_for({"BUNDLE": served / "bundle.tar.gz"})
    objects = pods.check_k8s.render(ROOT / "k8s", "namespace") + pods.check_k8s.render(
        ROOT / "k8s", "overlays/cpu", settings)
    service = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "llmemb-service")
    fetch = service["spec"]["template"]["spec"]["initContainers"][0]
    fetch["command"] = ["python", "-c", "import os, tempfile; assert (os.getuid(), os.getgid()) == (10001, 10001); "
                        "open('/tmp/ok', 'w').close(); tempfile.mkdtemp(dir='/', prefix='.fetch-')"]
    problems = pods.run_objects(objects, served, tmp_path / "work", deadline_s=60, log=lambda _: None)
    assert len(problems) == 1 and "init container fetch-bundle exited 1" in problems[0]
    assert "Read-only file system: '/.fetch-" in problems[0]   # as the old download failed; /tmp was writable
