"""`make lint`: render every kustomization under k8s/ offline and check what it would apply.

For each of k8s/namespace, k8s/overlays/cpu, k8s/overlays/gpu, k8s/monitoring and k8s/backfill:
- render it with `kubectl kustomize` (no cluster needed), with a throwaway API-key file where an
  overlay's secretGenerator needs one (the real one is never committed);
- validate every object against the Kubernetes API schemas (kubernetes-validate --strict); the pod
  templates inside custom resources (RayJob) are validated as Pods;
- check every pod template against the "restricted" Pod Security Standard, every image name for
  a registry, that no Secret is empty, no claim asks for ReadOnlyMany and no Redis runs without a
  password;
- check that every ConfigMap and Secret a pod reads is created by the same render under that name,
  and that no workload an HPA scales sets its own replica count, and one with several replicas spreads
  them over nodes; that only k8s/namespace creates
  the Namespace; that NetworkPolicies deny by default and open the two Redis to the service and the
  backfill alone.
Exit status 1 with one line per problem.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["namespace", "overlays/cpu", "overlays/gpu", "monitoring", "backfill"]
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
CRD_GROUPS = ("monitoring.coreos.com/", "ray.io/")


def render(k8s: Path, target: str, settings: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders of k8s/<target>, with the committed examples as secrets.
    settings: values for keys of the .env files (an operator's bundle URL and sha256), set before rendering."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(k8s, copy)
        for example in copy.glob("**/secrets/*.env.example"):   # the overlays' API keys, the Redis password
            example.with_suffix("").write_text(example.read_text())
        for env_file in copy.glob("**/*.env") if settings else []:
            lines = env_file.read_text().splitlines()
            env_file.write_text("\n".join(
                f"{key}={settings[key]}" if (key := line.partition("=")[0]) in settings and not line.startswith("#")
                else line for line in lines) + "\n")
        out = subprocess.run(["kubectl", "kustomize", str(copy / target)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{target}: kubectl kustomize failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod an object would create."""
    kind, name, spec = obj.get("kind"), obj["metadata"]["name"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield f"{kind}/{name}", spec["template"]["spec"]
    elif kind == "RayJob":
        # KubeRay's own submitter pod when the RayJob gives none: no securityContext at all
        submitter = spec.get("submitterPodTemplate", {"spec": {"containers": [
            {"name": "ray-job-submitter (KubeRay's default)", "image": "rayproject/ray"}]}})
        yield f"{kind}/{name} submitter", submitter["spec"]
        cluster = spec["rayClusterSpec"]
        yield f"{kind}/{name} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{kind}/{name} workers {group['groupName']}", group["template"]["spec"]


def restricted_problems(where: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{where}: {flag} is not allowed")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{where}: volume {volume['name']} of type {sorted(kinds)} is not allowed")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        c, csc = f"{where} container {container['name']}", container.get("securityContext", {})
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{c}: runAsNonRoot must be true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{c}: runAsUser 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c}: seccompProfile must be RuntimeDefault or Localhost")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c}: allowPrivilegeEscalation must be false")
        if csc.get("privileged"):
            problems.append(f"{c}: privileged")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{c}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{c}: adds capabilities {caps['add']}")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            problems.append(f"{c}: hostPort")
        image = container.get("image", "")
        first = image.split("/")[0]
        if "/" not in image or not ("." in first or ":" in first or first == "localhost"):
            problems.append(f"{c}: image {image!r} does not name its registry")
    return problems


def object_problems(obj: dict[str, Any]) -> list[str]:
    kind, name = obj.get("kind"), obj["metadata"]["name"]
    problems = []
    if kind == "Secret" and not any((obj.get("data") or {}).values()) and not any(
            (obj.get("stringData") or {}).values()):
        problems.append(f"Secret/{name}: empty (it would override a real Secret and turn authentication off)")
    claims = [obj] if kind == "PersistentVolumeClaim" else [
        t for t in obj.get("spec", {}).get("volumeClaimTemplates", [])]
    for claim in claims:
        if "ReadOnlyMany" in claim.get("spec", {}).get("accessModes", []):
            problems.append(f"{kind}/{name}: a ReadOnlyMany claim nothing fills")
    for where, pod in pod_specs(obj):
        problems += restricted_problems(where, pod)
        for container in pod.get("containers", []):
            if "/redis:" in container.get("image", "") and "--requirepass" not in container.get("args", []):
                problems.append(f"{where} container {container['name']}: Redis without --requirepass")
    return problems


def _references(pod: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod spec reads: envFrom, env valueFrom, volumes."""
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"]
            if "secretRef" in source:
                yield "Secret", source["secretRef"]["name"]
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"]
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"]


def reference_problems(objects: list[dict[str, Any]], shared: list[dict[str, Any]] = ()) -> list[str]:
    """Every ConfigMap and Secret a pod reads must be an object of the same render, under its rendered
    name: a generated one carries a hash suffix that kustomize writes into the references it knows
    (and only those), so a name from another kustomization, or in a custom resource kustomize was not
    told about, points at nothing and the pod never starts. `shared`: objects of k8s/namespace, applied
    before every other kustomization (the Redis password, under a fixed name)."""
    present = {(obj.get("kind"), obj["metadata"]["name"]) for obj in list(objects) + list(shared)}
    problems = []
    for obj in objects:
        for where, pod in pod_specs(obj):
            for kind, name in sorted(set(_references(pod))):
                if (kind, name) not in present:
                    problems.append(f"{where}: reads {kind} {name!r}, which this render does not create")
    return problems


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In / NotIn / Exists / DoesNotExist) selects labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def allowed_peers(objects: list[dict[str, Any]], labels: dict[str, str], port: int,
                  direction: str = "ingress") -> list[dict[str, Any]] | None:
    """The peers the namespace's NetworkPolicies allow to reach (ingress) or be reached by (egress) a pod
    with `labels` on TCP `port`: None when no policy isolates the pod in that direction (all allowed), a
    list of peers otherwise ({} = any peer)."""
    kind = direction.capitalize()
    policies = [o["spec"] for o in objects if o.get("kind") == "NetworkPolicy"
                and kind in o["spec"].get("policyTypes", ["Ingress"]) and _selects(o["spec"]["podSelector"], labels)]
    if not policies:
        return None
    peers: list[dict[str, Any]] = []
    for spec in policies:
        for rule in spec.get(direction, []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            peers += rule.get("from" if direction == "ingress" else "to") or [{}]
    return peers


SERVICE_POD = {"app.kubernetes.io/name": "llmemb-service"}


def network_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Where a render runs the service: deny by default, the two Redis reachable from the service and the
    backfill alone, and the service reachable on its port and able to reach both Redis."""
    if not any(o.get("kind") == "Deployment" and o["metadata"]["name"] == "llmemb-service" for o in objects):
        return []
    problems = []
    if not any(o.get("kind") == "NetworkPolicy" and o["spec"].get("podSelector") == {}
               and set(o["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not o["spec"].get("ingress") and not o["spec"].get("egress") for o in objects):
        problems.append("NetworkPolicy: no deny-by-default policy (podSelector {}, Ingress and Egress, no rules)")
    clients = {"llmemb-service", "llmemb-backfill"}
    service_out = allowed_peers(objects, SERVICE_POD, 6379, "egress")
    for redis in ("llmemb-redis", "llmemb-catalogue"):
        peers = allowed_peers(objects, {"app.kubernetes.io/name": redis}, 6379)
        if peers is None or not peers:
            problems.append(f"{redis}: {'open to every pod' if peers is None else 'reachable by no pod'} on 6379")
            continue
        for peer in peers:
            name = (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            if set(peer) != {"podSelector"} or name not in clients:
                problems.append(f"{redis}: port 6379 open to {peer or 'any peer'} (only the service and the backfill)")
        if service_out is not None and not any(p == {} or (set(p) == {"podSelector"} and _selects(
                p["podSelector"], {"app.kubernetes.io/name": redis})) for p in service_out):
            problems.append(f"llmemb-service: may not reach {redis} on 6379")
    if allowed_peers(objects, SERVICE_POD, 8000) == []:
        problems.append("llmemb-service: its port 8000 is reachable by no one")
    return problems


def namespace_problems(objects: list[dict[str, Any]], target: str) -> list[str]:
    """Only k8s/namespace creates the Namespace: `kubectl delete -k` of any other kustomization would
    delete it, and every volume claim in it (the catalogue's) with it."""
    if target == "namespace":
        return []
    return [f"Namespace/{o['metadata']['name']}: created here, so `kubectl delete -k` would delete it with its "
            "volume claims (apply it from k8s/namespace)" for o in objects if o.get("kind") == "Namespace"]


def autoscaling_problems(objects: list[dict[str, Any]]) -> list[str]:
    """A workload an HPA scales must not set spec.replicas: every apply would reset the HPA's count."""
    scaled = {(o["spec"]["scaleTargetRef"]["kind"], o["spec"]["scaleTargetRef"]["name"])
              for o in objects if o.get("kind") == "HorizontalPodAutoscaler"}
    return [f"{o['kind']}/{o['metadata']['name']}: sets replicas while an HPA scales it (each apply resets the count)"
            for o in objects if (o.get("kind"), o["metadata"]["name"]) in scaled and "replicas" in o.get("spec", {})]


def spread_problems(objects: list[dict[str, Any]]) -> list[str]:
    """A workload that runs several replicas (an HPA's maxReplicas or its own replicas above 1) spreads them
    over nodes: without a topology spread on kubernetes.io/hostname, one node can hold every replica."""
    most = {(o["spec"]["scaleTargetRef"]["kind"], o["spec"]["scaleTargetRef"]["name"]): o["spec"]["maxReplicas"]
            for o in objects if o.get("kind") == "HorizontalPodAutoscaler"}
    problems = []
    for o in objects:
        if o.get("kind") != "Deployment":
            continue
        key = (o["kind"], o["metadata"]["name"])
        if max(most.get(key, 1), o["spec"].get("replicas", 1)) > 1 and not any(
                c.get("topologyKey") == "kubernetes.io/hostname"
                for c in o["spec"]["template"]["spec"].get("topologySpreadConstraints", [])):
            problems.append(f"{key[0]}/{key[1]}: several replicas and no topology spread over kubernetes.io/hostname")
    return problems


def schema_problems(objects: list[dict[str, Any]], target: str) -> list[str]:
    """kubernetes-validate --strict on the API objects and on the pods inside custom resources."""
    docs = []
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            for where, pod in pod_specs(obj):
                docs.append({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": where.lower().replace("/", "-").replace(" ", "-")}, "spec": pod})
        else:
            docs.append(obj)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(docs, f)
        f.flush()
        tool = Path(sys.executable).parent / "kubernetes-validate"
        out = subprocess.run([str(tool), "--strict", "--quiet", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        return [f"{target}: {line}" for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return []


def main() -> int:
    k8s = ROOT / "k8s"
    if shutil.which("kubectl") is None:
        print("check_k8s: kubectl (with its built-in kustomize) is needed to render k8s/", file=sys.stderr)
        return 1
    problems = []
    shared = render(k8s, "namespace")   # applied once, before the others: its Secret is read by them
    for target in TARGETS:
        objects = render(k8s, target)
        problems += schema_problems(objects, target)
        problems += [f"{target}: {p}" for p in reference_problems(objects, shared) + autoscaling_problems(objects)
                     + spread_problems(objects) + namespace_problems(objects, target) + network_problems(objects)]
        for obj in objects:
            problems += [f"{target}: {p}" for p in object_problems(obj)]
        print(f"{target}: {len(objects)} objects rendered")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
