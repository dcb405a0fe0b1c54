"""Dockerfiles, Kubernetes manifests and the compose file pass their checks (no engine or cluster needed).

The manifests are checked by scripts/check_k8s.py, the manifest check of `make lint`: first that it
catches what broke deployments before, then that every shipped kustomization passes it."""
import glob
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.process
def test_dockerfiles_pass_hadolint():
    files = sorted(glob.glob(str(ROOT / "docker" / "*.Dockerfile")))
    assert len(files) >= 3
    r = run(str(BIN / "hadolint"), *files)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.process
def test_compose_file_matches_the_compose_spec():
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.process
@pytest.mark.parametrize("broken", ["services: [1, 2]\n"])
def test_compose_check_rejects_a_broken_file(tmp_path, broken):
    bad = tmp_path / "compose.yml"
    bad.write_text(broken)
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert r.returncode != 0


@pytest.mark.process
def test_the_images_workflow_matches_its_schema():
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", ".github/workflows/images.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.process
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomizations (make lint)")
def test_the_release_images_are_the_ones_the_manifests_run_and_start_from_the_pinned_base():
    plan = run(str(ROOT / "scripts" / "images.sh"), "plan").stdout.splitlines()
    tags = {line.split(" -t ")[1].split()[0] for line in plan}
    assert {"ghcr.io/llmemb/llmemb-trainer:0.1.0-cpu", "ghcr.io/llmemb/llmemb-trainer:0.1.0-gpu"} <= tags
    used = {c["image"] for target in ("overlays/cpu", "overlays/gpu", "backfill") for obj in check.render(ROOT / "k8s", target)
            for _, pod in check.pod_specs(obj) for c in pod.get("initContainers", []) + pod.get("containers", [])
            if "/llmemb-" in c["image"]}
    assert used and used <= tags, used - tags
    assert all("--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:" in line for line in plan)
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):   # every stage starts from the pinned argument
        froms = [line for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]
        assert froms and all(line.split()[1] == "${PYTHON_IMAGE}" for line in froms), dockerfile.name


@pytest.mark.process
def test_images_are_not_built_from_an_unpinned_base():
    lock = (ROOT / "docker" / "base-image.lock").read_text()
    if any(line.startswith("python:") for line in lock.splitlines()):
        pytest.skip("the lock holds a pin")
    r = run(str(ROOT / "scripts" / "images.sh"), "build")
    assert r.returncode == 1 and "holds no digest" in r.stderr


def test_compose_redis_requires_the_password_the_service_is_given():
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("redis", "redis-catalogue"):
        command = services[name]["command"]
        password = command[command.index("--requirepass") + 1]
        assert password.startswith("${LLMEMB_REDIS_PASSWORD:?"), name   # compose stops when it is unset
        assert services[name]["environment"]["REDISCLI_AUTH"] == "${LLMEMB_REDIS_PASSWORD}"   # the health check
    assert services["service"]["environment"]["LLMEMB_REDIS_PASSWORD"] == "${LLMEMB_REDIS_PASSWORD}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


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
    docs = [d for f in sorted((ROOT / "k8s" / "base").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "llmemb-catalogue")
    args = " ".join(sts["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["LLMEMB_CATALOGUE_REDIS_URL"].startswith("redis://llmemb-catalogue:")


# ------------------------------------------------------------------ kubernetes
spec = importlib.util.spec_from_file_location("check_k8s", ROOT / "scripts" / "check_k8s.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def _deployment(container: dict, pod_security: dict | None = None, volumes: list | None = None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"securityContext": pod_security or {}, "containers": [container],
                                           "volumes": volumes or []}}}}


RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_a_restricted_pod_with_a_qualified_image_passes():
    ok = _deployment({"name": "c", "image": "ghcr.io/llmemb/llmemb-serve:1", "securityContext": RESTRICTED_CONTAINER},
                     RESTRICTED_POD, [{"name": "tmp", "emptyDir": {}}])
    assert check.object_problems(ok) == []


def test_what_broke_deployments_is_reported():
    bad = _deployment({"name": "c", "image": "llmemb-serve:cpu", "ports": [{"containerPort": 80, "hostPort": 80}]},
                      {}, [{"name": "h", "hostPath": {"path": "/"}}])
    problems = " | ".join(check.object_problems(bad))
    for expected in ("runAsNonRoot must be true", "seccompProfile", "allowPrivilegeEscalation", "drop ALL",
                     "hostPort", "does not name its registry", "hostPath"):
        assert expected in problems
    empty_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                    "stringData": {"LLMEMB_API_KEYS": ""}}
    assert "empty" in check.object_problems(empty_secret)[0]
    rom = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "b"},
           "spec": {"accessModes": ["ReadOnlyMany"]}}
    assert "ReadOnlyMany" in check.object_problems(rom)[0]
    redis = _deployment({"name": "redis", "image": "docker.io/library/redis:7.4-alpine", "args": ["--save", ""],
                         "securityContext": RESTRICTED_CONTAINER}, RESTRICTED_POD)
    assert check.object_problems(redis) == ["Deployment/x container redis: Redis without --requirepass"]


def test_pods_inside_a_rayjob_are_checked():
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
           "spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [
               {"name": "ray", "image": "ray:2"}]}}}, "workerGroupSpecs": []}}}
    assert any("RayJob/j head container ray" in p for p in check.object_problems(job))


def test_a_rayjob_without_a_restricted_submitter_pod_is_reported():
    pod = {"securityContext": RESTRICTED_POD, "containers": [
        {"name": "ray", "image": "ghcr.io/llmemb/llmemb-backfill:1", "securityContext": RESTRICTED_CONTAINER}]}
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
           "spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": pod}}, "workerGroupSpecs": []}}}
    problems = check.object_problems(job)
    assert problems and all(p.startswith("RayJob/j submitter") for p in problems)
    assert any("runAsNonRoot must be true" in p for p in problems)
    job["spec"]["submitterPodTemplate"] = {"spec": pod}
    assert check.object_problems(job) == []


def test_a_pod_reading_a_configmap_or_secret_the_render_lacks_is_reported():
    pod = {"containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "bundle"}}],
                           "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "keys-5f2", "key": "k"}}}]}],
           "volumes": [{"name": "v", "secret": {"secretName": "tls"}}]}
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
           "spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": pod}}, "workerGroupSpecs": []}}}
    generated = [{"kind": "ConfigMap", "metadata": {"name": "bundle-h4sh"}},
                 {"kind": "Secret", "metadata": {"name": "keys-5f2"}}]
    problems = check.reference_problems([job] + generated)
    assert problems == ["RayJob/j head: reads ConfigMap 'bundle', which this render does not create",
                        "RayJob/j head: reads Secret 'tls', which this render does not create"]


@pytest.mark.process
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomizations (make lint)")
def test_the_rayjob_reads_the_configmap_its_kustomization_generates(tmp_path):
    objects = check.render(ROOT / "k8s", "backfill")
    generated = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
    assert len(generated) == 1 and generated[0].startswith("llmemb-backfill-bundle-")   # hash-suffixed
    job = next(o for o in objects if o["kind"] == "RayJob")
    read = {name for _, pod in check.pod_specs(job) for _, name in check._references(pod)}
    assert read == {generated[0], "llmemb-redis-auth"}   # the second from k8s/namespace, under its fixed name
    # without the RayJob name configuration, kustomize leaves the reference unrewritten: the check sees it
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    kustomization = copy / "backfill" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("configurations:\n  - rayjob-names.yaml\n", ""))
    shared = check.render(ROOT / "k8s", "namespace")
    assert check.reference_problems(objects, shared) == []
    assert any("which this render does not create" in p
               for p in check.reference_problems(check.render(copy, "backfill"), shared))


@pytest.mark.process
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomizations (make lint)")
@pytest.mark.parametrize("target", check.TARGETS)
def test_every_shipped_kustomization_renders_and_passes(target):
    objects = check.render(ROOT / "k8s", target)
    assert objects
    assert [p for obj in objects for p in check.object_problems(obj)] == []
    assert check.schema_problems(objects, target) == []
    shared = check.render(ROOT / "k8s", "namespace")
    assert check.reference_problems(objects, shared) == [] and check.autoscaling_problems(objects) == []
    assert check.namespace_problems(objects, target) == [] and check.network_problems(objects) == []
    assert check.spread_problems(objects) == []


@pytest.mark.process
def test_only_the_namespace_kustomization_creates_the_namespace():
    namespace = {"kind": "Namespace", "metadata": {"name": "llmemb"}}
    assert check.namespace_problems([namespace], "namespace") == []
    assert "delete -k" in check.namespace_problems([namespace], "overlays/cpu")[0]
    rendered = check.render(ROOT / "k8s", "namespace") if shutil.which("kubectl") else [namespace]
    assert sorted(o["kind"] for o in rendered) == ["Namespace", "Secret"]   # the Redis password, fixed name
    secret = next(o for o in rendered if o["kind"] == "Secret")
    assert secret["metadata"]["name"] == "llmemb-redis-auth" and check.object_problems(secret) == []


def test_a_replica_count_beside_an_hpa_is_reported():
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}}}
    deployment = _deployment({"name": "c", "image": "ghcr.io/a/b:1"})
    assert check.autoscaling_problems([hpa, deployment]) == []
    deployment["spec"]["replicas"] = 2
    assert check.autoscaling_problems([hpa, deployment]) == [
        "Deployment/x: sets replicas while an HPA scales it (each apply resets the count)"]
    assert check.autoscaling_problems([deployment]) == []


def test_replicas_without_a_spread_over_nodes_are_reported():
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}, "maxReplicas": 4}}
    deployment = _deployment({"name": "c", "image": "ghcr.io/a/b:1"})
    assert check.spread_problems([deployment]) == []   # one replica
    assert check.spread_problems([hpa, deployment]) == [
        "Deployment/x: several replicas and no topology spread over kubernetes.io/hostname"]
    deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]
    assert check.spread_problems([hpa, deployment]) == []


@pytest.mark.process
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomizations (make lint)")
def test_gpu_replicas_scale_on_the_queue_and_share_one_read_only_base_model():
    objects = check.render(ROOT / "k8s", "overlays/gpu")
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == ["llmemb_queue_depth"]
    pod = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "llmemb-service")[
        "spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "base-model")
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    job = next(o for o in objects if o["kind"] == "Job")["spec"]["template"]["spec"]
    assert next(v for v in job["volumes"] if v["name"] == "base-model")["persistentVolumeClaim"]["claimName"] == \
        claim["claimName"]
    pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = [m for c in pod["initContainers"] + pod["containers"] for m in c.get("volumeMounts", [])
              if m["name"] == "base-model"]
    assert mounts and all(m.get("readOnly") for m in mounts)   # only the Job writes it


def test_compose_trainer_writes_as_the_host_user():
    import yaml
    trainer = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["trainer"]
    assert trainer["user"] == "${LLMEMB_UID:-1000}:${LLMEMB_GID:-1000}"


@pytest.mark.process
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomizations (make lint)")
def test_network_policies_deny_by_default_and_keep_redis_to_its_clients():
    import copy

    objects = check.render(ROOT / "k8s", "overlays/cpu")
    assert check.network_problems(objects) == []
    redis = {"app.kubernetes.io/name": "llmemb-catalogue"}
    peers = check.allowed_peers(objects, redis, 6379)
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in peers) == [
        "llmemb-backfill", "llmemb-service"]
    assert check.allowed_peers(objects, redis, 6380) == []                   # any other port: closed
    assert check.allowed_peers(objects, {"app.kubernetes.io/name": "llmemb-service"}, 8000) == [{}]

    def without(name: str) -> list:
        return [o for o in copy.deepcopy(objects) if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name)]

    assert any("deny-by-default" in p for p in check.network_problems(without("llmemb-default-deny")))
    # without the Redis policy, only the default deny selects Redis: no pod may reach it, the service included
    assert any("reachable by no pod" in p for p in check.network_problems(without("llmemb-redis")))
    opened = copy.deepcopy(objects)
    policy = next(o for o in opened if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "llmemb-redis")
    policy["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    assert any("open to" in p and "namespaceSelector" in p for p in check.network_problems(opened))
    no_policies = [o for o in objects if o["kind"] != "NetworkPolicy"]
    assert any("open to every pod" in p for p in check.network_problems(no_policies))
    assert check.network_problems(check.render(ROOT / "k8s", "monitoring")) == []   # no service there
