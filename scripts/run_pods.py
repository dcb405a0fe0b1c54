"""Run the pods of rendered kustomizations on this machine as the manifests say, and check they start.

Linting a manifest proves it is well-formed, not that its pods start: a read-only root, a ConfigMap
named without its hash or an image without a program all pass a linter. This runs, for every
workload a render holds (Deployments, StatefulSets, and a RayJob's head, workers and submitter as
KubeRay would start them):
- each pod in its own network namespace, on a private bridge (10.244.0.0/24) that reaches nothing
  else; /etc/hosts names each Service after the pod it selects (a RayJob's head after KubeRay's
  `<name>-head-svc`);
- each container in a private mount namespace whose root is read-only when its securityContext says
  so: this machine's tree bound read-only stands in for the image, with the image's own paths from
  its Dockerfile (/opt/venv: this checkout's .venv; /opt/models: the model cache) and its ENV,
  ENTRYPOINT and WORKDIR; emptyDirs and volume claims are fresh writable folders mounted where the
  manifest says (readOnly mounts read-only), shared by the pod's containers;
- as the securityContext's uid and gid (fsGroup a supplementary group), with the manifest's command,
  args and env: envFrom and valueFrom resolved from the rendered ConfigMaps and Secrets by their
  rendered names, $(VAR) expanded as the kubelet does;
- init containers first, in order, each to exit 0, then the main containers; a pod is ready when every
  readiness probe passes (httpGet from the bridge, exec inside the container) and then every liveness
  probe passes too; a RayJob passes when its submitter exits 0 and Ray reports the job SUCCEEDED.
The archives the init containers fetch are served over HTTP from the bridge; their URLs and sha256s
are written into the render's .env files before rendering, as an operator does. Containers that ask
for an nvidia.com/gpu are not started where this machine has none (their init containers are).
NetworkPolicies are not enforced (scripts/check_k8s.py checks them). Needs root: namespaces, mounts,
veth pairs. `python scripts/run_pods.py --help`; tests/test_pods.py runs it over every overlay.
"""
from __future__ import annotations

import argparse
import base64
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmemb.base_models import model_cache_dir, sha256_file

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_k8s", ROOT / "scripts" / "check_k8s.py")
assert _spec is not None and _spec.loader is not None
check_k8s = importlib.util.module_from_spec(_spec)   # the renderer `make lint` uses
_spec.loader.exec_module(check_k8s)

BRIDGE_IP = "10.244.0.1"
FILES_HOST = "pod-files"        # the name the served archives' URLs use
FILES_PORT = 8080
SKIP_TOP = {"tmp", "root", "lost+found", "old_root"}   # not part of the stand-in image
KERNEL_TOP = {"proc", "sys", "dev"}   # bound as they are (the runtime gives a container its own)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # python:3.11-slim, redis


class PodFailure(Exception):
    pass


# ----------------------------------------------------------------------------------------- images
@dataclass
class Image:
    """What a container image contributes: its program, environment and working dir, and the host
    folders that stand in for its own files."""
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    paths: dict[str, Path] = field(default_factory=dict)   # path in the image -> host folder


def dockerfile_image(dockerfile: Path, paths: dict[str, Path]) -> Image:
    """ENV, WORKDIR, ENTRYPOINT and CMD of a Dockerfile's final stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stage: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            stage = []
        elif line and not line.startswith("#"):
            stage.append(line)
    image = Image(entrypoint=[], env={"PATH": BASE_PATH, "LANG": "C.UTF-8"})
    for line in stage:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                image.env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: image.env.get(m.group(1), ""), value)
        elif word == "WORKDIR":
            image.workdir = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            setattr(image, "entrypoint" if word == "ENTRYPOINT" else "cmd", json.loads(rest))
    image.paths = paths
    return image


def image_for(name: str, checkout: Path) -> Image:
    """The stand-in for a rendered image name: the project's images from their Dockerfiles, Redis
    from this machine's redis-server (the official image's entrypoint runs it with the args given)."""
    repo, _, tag = name.rpartition("/")[2].partition(":")
    image_paths = {"/opt/venv": checkout / ".venv", "/opt/models": model_cache_dir()}
    if repo in ("llmemb-serve", "llmemb-backfill"):
        dockerfile = "service-gpu.Dockerfile" if tag.endswith("-gpu") else "service.Dockerfile"
        return dockerfile_image(checkout / "docker" / dockerfile, image_paths)
    if repo == "redis":
        return Image(entrypoint=["redis-server"], env={"PATH": BASE_PATH}, workdir="/data")
    raise PodFailure(f"image {name!r}: no stand-in known (add one to scripts/run_pods.py)")


# ------------------------------------------------------------------------------- env and commands
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: a defined variable is replaced, an unknown one left as written,
    $$ is a literal $."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def object_data(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    for obj in objects:
        if obj.get("kind") == kind and obj["metadata"]["name"] == name:
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                return data | dict(obj.get("stringData") or {})
            return dict(obj.get("data") or {})
    raise PodFailure(f"{kind} {name!r} is read but not rendered")


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the manifest gives a container (envFrom, then env in order), without the image's."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                env |= {prefix + k: v for k, v in object_data(objects, kind, source[key]["name"]).items()}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
            kind, key = ("Secret", "secretKeyRef") if "secretKeyRef" in ref else ("ConfigMap", "configMapKeyRef")
            data = object_data(objects, kind, ref[key]["name"])
            if ref[key]["key"] not in data:
                raise PodFailure(f"{kind} {ref[key]['name']!r} has no key {ref[key]['key']!r}")
            env[var["name"]] = data[ref[key]["key"]]
        else:
            raise PodFailure(f"env {var['name']}: valueFrom {sorted(ref)} not supported here")
    return env


def argv_of(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
    """command/args over the image's ENTRYPOINT/CMD, as Kubernetes combines them, $(VAR) expanded."""
    if "command" in container:
        argv = container["command"] + container.get("args", [])
    elif "args" in container:
        argv = image.entrypoint + container["args"]
    else:
        argv = image.entrypoint + image.cmd
    return [expand(a, env) for a in argv]


# --------------------------------------------------------------------------------- root filesystem
def root_script(root: Path, binds: dict[str, tuple[Path, bool]], read_only: bool) -> str:
    """Shell lines, run in a fresh mount namespace, that build the container's root at `root`: a tmpfs
    holding this machine's tree bound read-only, `binds` (path in the container -> (host path,
    read-only)) mounted over it."""
    lines = ["set -e", f"mount -t tmpfs -o mode=0755,size=16m pod-root {q(root)}"]
    targets = set(binds)

    def fill(directory: Path) -> None:
        for child in sorted(directory.iterdir()):
            path, dest = str(child), q(root / str(child).lstrip("/"))
            if directory == Path("/") and child.name in SKIP_TOP and not any(
                    t.startswith(path + "/") for t in targets):
                lines.append(f"mkdir -m {'1777' if child.name == 'tmp' else '0700'} {dest}")
            elif path in targets:
                continue
            elif any(t.startswith(path + "/") for t in targets) and not child.is_symlink():
                lines.append(f"mkdir -m 0755 {dest}")
                fill(child)
            elif child.is_symlink():
                lines.append(f"ln -s {q(os.readlink(child))} {dest}")
            elif child.is_dir():
                lines.extend([f"mkdir {dest}", f"mount --rbind {q(path)} {dest}"])
                if child.name not in KERNEL_TOP:
                    lines.append(f"mount -o remount,bind,ro {dest}")
            elif child.is_file():
                lines.extend([f"touch {dest}", f"mount --bind {q(path)} {dest}", f"mount -o remount,bind,ro {dest}"])

    fill(Path("/"))
    for target, (source, ro) in sorted(binds.items()):
        dest = q(root / target.lstrip("/"))
        lines.append(f"mkdir -p {dest}" if source.is_dir() else f"mkdir -p {q(Path(dest).parent)} && touch {dest}")
        lines.append(f"mount --bind {q(source)} {dest}")
        if ro:
            lines.append(f"mount -o remount,bind,ro {dest}")
    if read_only:
        lines.append(f"mount -o remount,ro {q(root)}")
    return "\n".join(lines)


def q(value: Any) -> str:
    return shlex.quote(str(value))


def interpreter_binds() -> dict[str, tuple[Path, bool]]:
    """The Python the venv's interpreter links to, where the stand-in root would hide it (under /root)."""
    prefix = Path(sys.base_prefix).resolve()
    if prefix.parts[1] in SKIP_TOP:
        return {str(prefix): (prefix, True)}
    return {}


# ------------------------------------------------------------------------------------------ network
class Network:
    """A bridge in a namespace of its own, and one namespace per pod with a veth on it."""

    def __init__(self, tag: str):
        self.tag, self.cluster = tag, f"pods-{tag}-net"
        self.pods: list[str] = []
        self.remove_stale()
        self._ip("netns", "add", self.cluster)
        self._ip("-n", self.cluster, "link", "set", "lo", "up")
        self._ip("-n", self.cluster, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.cluster, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        self._ip("-n", self.cluster, "link", "set", "br0", "up")

    @staticmethod
    def _ip(*args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise PodFailure(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def add_pod(self) -> tuple[str, str]:
        """(namespace, address) of a new pod."""
        index = len(self.pods) + 10
        ns, veth, address = f"pods-{self.tag}-{index}", f"pv{self.tag}{index}", f"10.244.0.{index}"
        self._ip("netns", "add", ns)
        self.pods.append(ns)
        self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip("link", "set", veth, "netns", self.cluster)
        self._ip("-n", self.cluster, "link", "set", veth, "master", "br0", "up")
        self._ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip("-n", ns, "link", "set", "eth0", "up")
        self._ip("-n", ns, "link", "set", "lo", "up")
        # A default route, as every pod has (it leads nowhere past the bridge): programs that find their
        # address by routing towards the outside (Ray's node IP) would otherwise pick 127.0.0.1.
        self._ip("-n", ns, "route", "add", "default", "via", BRIDGE_IP)
        return ns, address

    def run_in_cluster(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.cluster}", *argv], capture_output=True,
                              text=True, timeout=timeout)

    def http_status(self, url: str) -> int:
        out = self.run_in_cluster(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url], 10)
        return int(out.stdout or 0)

    @staticmethod
    def remove_stale() -> None:
        """Namespaces an earlier run left behind (killed before it could clean up): their pid is gone."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for name in re.findall(r"^pods-(\d+)-\w+", listed, flags=re.M):
            if not Path(f"/proc/{name}").exists():
                for ns in re.findall(rf"^(pods-{name}-\w+)", listed, flags=re.M):
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def close(self) -> None:
        for ns in [*self.pods, self.cluster]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ---------------------------------------------------------------------------------------------- DNS
def dns_answer(query: bytes, names: dict[str, str]) -> bytes:
    """The answer to one DNS query: an A record for a name of `names` (name -> IPv4), no record for its
    other types, NXDOMAIN for any other name. The cluster's DNS, as kube-dns answers for Services."""
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace"))
        i += 1 + query[i]
    qtype = int.from_bytes(query[i + 1:i + 3], "big")
    question = query[12:i + 5]
    name = ".".join(labels).lower()
    header = query[:2] + (b"\x81\x80" if name in names else b"\x81\x83")
    if name in names and qtype == 1:
        record = b"\xc0\x0c\x00\x01\x00\x01" + (30).to_bytes(4, "big") + b"\x00\x04" + bytes(
            int(part) for part in names[name].split("."))
        return header + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + record
    return header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question


def serve_dns(hosts: Path) -> None:
    """Answer DNS queries on the bridge from a hosts file, until killed (`run_pods.py serve-dns HOSTS`)."""
    names: dict[str, str] = {}
    for line in hosts.read_text().splitlines():
        address, *aliases = line.split()
        names |= {alias.lower(): address for alias in aliases}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((BRIDGE_IP, 53))
    while True:
        query, peer = sock.recvfrom(512)
        if len(query) > 12:
            sock.sendto(dns_answer(query, names), peer)


RESOLV_CONF = (f"nameserver {BRIDGE_IP}\nsearch llmemb.svc.cluster.local svc.cluster.local cluster.local\n"
               "options ndots:5\n")


# --------------------------------------------------------------------------------------------- pods
@dataclass
class Started:
    """A container's process, and the identity and env an exec probe enters it with."""
    process: subprocess.Popen
    env: dict[str, str]
    uid: int
    gid: int


@dataclass
class Pod:
    """One pod to run: where it comes from, its spec, and what the runner gives it."""
    name: str
    spec: dict[str, Any]
    labels: dict[str, str]
    claims: list[str] = field(default_factory=list)     # a StatefulSet's volumeClaimTemplates
    job: bool = False                                   # runs to completion (a Job's pod, a submitter)
    after_ready: bool = False                           # started once every other pod is ready (a submitter)
    ns: str = ""
    address: str = ""
    processes: dict[str, Started] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def pods_of(objects: list[dict[str, Any]]) -> Iterator[Pod]:
    for obj in objects:
        kind, name, spec = obj.get("kind"), obj["metadata"]["name"], obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet"):
            claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
            for i in range(spec.get("replicas", 1)):
                yield Pod(f"{name}-{i}", spec["template"]["spec"], spec["template"]["metadata"].get("labels", {}),
                          claims)
        elif kind == "Job":
            yield Pod(f"{name}-job", spec["template"]["spec"], spec["template"]["metadata"].get("labels", {}), job=True)
        elif kind == "RayJob":
            yield from kuberay_pods(obj)
        elif kind in ("DaemonSet", "CronJob", "Pod"):
            raise PodFailure(f"{kind}/{name}: not run here (add it to scripts/run_pods.py)")


def head_service(rayjob: dict[str, Any]) -> str:
    return f"{rayjob['metadata']['name']}-head-svc"


def _ray_resources(container: dict[str, Any]) -> str:
    """--num-cpus and --memory from the container's limits, else its requests, as KubeRay sets them."""
    res = container.get("resources", {})
    cpu = res.get("limits", {}).get("cpu") or res.get("requests", {}).get("cpu")
    flags = []
    if cpu:
        cpus = int(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
        flags.append(f"--num-cpus={max(1, int(cpus))}")
    memory = res.get("limits", {}).get("memory") or res.get("requests", {}).get("memory")
    if memory:
        units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
        match = re.fullmatch(r"(\d+)([KMGT]i)?", str(memory))
        if match is None:
            raise PodFailure(f"memory {memory!r}: only integers with Ki, Mi, Gi or Ti are read here")
        number, unit = match.groups()
        flags.append(f"--memory={int(number) * units.get(unit, 1)}")
    return " ".join(flags)


def _ray_params(params: dict[str, Any]) -> str:
    return " ".join(f"--{k}={v}" for k, v in params.items())


def kuberay_pods(rayjob: dict[str, Any]) -> Iterator[Pod]:
    """The head, the workers and the submitter a KubeRay (>= 1.1) operator makes of a RayJob: `ray start`
    in the first container of each Ray pod (bash -c, ulimit first, as KubeRay writes it), and
    `ray job submit` of the entrypoint in the submitter."""
    name, spec = rayjob["metadata"]["name"], rayjob["spec"]
    cluster, head_svc = spec["rayClusterSpec"], head_service(rayjob)
    head = copy.deepcopy(cluster["headGroupSpec"]["template"])
    ray = head["spec"]["containers"][0]
    ray["command"] = ["/bin/bash", "-c", "--"]
    ray["args"] = [f"ulimit -n 65536; ray start --head --block --dashboard-host=0.0.0.0 {_ray_resources(ray)} "
                   f"{_ray_params(cluster['headGroupSpec'].get('rayStartParams', {}))}"]
    ray.setdefault("env", []).extend([{"name": "RAY_CLUSTER_NAME", "value": name}, {"name": "RAY_PORT", "value": "6379"}])
    ray.setdefault("readinessProbe", {"httpGet": {"path": "/api/gcs_healthz", "port": 8265}})
    yield Pod(f"{name}-head", head["spec"], head["metadata"].get("labels", {}))
    for group in cluster.get("workerGroupSpecs", []):
        for i in range(group.get("replicas", 1)):
            worker = copy.deepcopy(group["template"])
            ray = worker["spec"]["containers"][0]
            ray["command"] = ["/bin/bash", "-c", "--"]
            ray["args"] = [f"ulimit -n 65536; ray start --address={head_svc}:6379 --block {_ray_resources(ray)} "
                           f"{_ray_params(group.get('rayStartParams', {}))}"]
            ray.setdefault("env", []).append({"name": "RAY_CLUSTER_NAME", "value": name})
            ray.setdefault("readinessProbe", {"httpGet": {"path": "/api/local_raylet_healthz", "port": 52365}})
            yield Pod(f"{name}-{group['groupName']}-{i}", worker["spec"], worker["metadata"].get("labels", {}))
    submitter = copy.deepcopy(spec["submitterPodTemplate"])
    job = submitter["spec"]["containers"][0]
    job["command"] = ["ray", "job", "submit", "--address", f"http://{head_svc}:8265", "--submission-id", f"{name}-1",
                      "--", *shlex.split(spec["entrypoint"])]
    job.setdefault("env", []).append({"name": "RAY_DASHBOARD_ADDRESS", "value": f"{head_svc}:8265"})
    yield Pod(f"{name}-submitter", submitter["spec"], submitter["metadata"].get("labels", {}), job=True,
              after_ready=True)


class Runner:
    """Runs the pods of one render in a work folder, then cleans up everything it started."""

    def __init__(self, objects: list[dict[str, Any]], work: Path, checkout: Path = ROOT, deadline_s: float = 300,
                 log=print):
        self.objects, self.work, self.checkout, self.log = objects, work, checkout, log
        self.deadline = time.monotonic() + deadline_s
        self.gpu = shutil.which("nvidia-smi") is not None
        self.pods = list(pods_of(objects))   # before the network: a manifest it cannot run leaves nothing behind
        self.net = Network(str(os.getpid()))
        self.helpers: list[subprocess.Popen] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ setup
    def hosts(self) -> str:
        """/etc/hosts of every pod: each Service's names at the address of the pod it selects."""
        lines = ["127.0.0.1 localhost", f"{BRIDGE_IP} {FILES_HOST}"]
        services = [(o["metadata"]["name"], o["spec"].get("selector", {})) for o in self.objects
                    if o.get("kind") == "Service"]
        services += [(head_service(o), None) for o in self.objects if o.get("kind") == "RayJob"]
        for name, selector in services:
            pods = [p for p in self.pods if (selector is None and p.name.endswith("-head")) or (
                selector and all(p.labels.get(k) == v for k, v in selector.items()))]
            if pods:
                lines.append(f"{pods[0].address} {name} {name}.llmemb.svc {name}.llmemb.svc.cluster.local")
        lines += [f"{p.address} {p.name}" for p in self.pods]
        return "\n".join(lines) + "\n"

    def serve(self, folder: Path) -> None:
        """The archives over HTTP and the names over DNS, on the bridge."""
        cluster = ["nsenter", f"--net=/run/netns/{self.net.cluster}", sys.executable]
        self.helpers = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True) for argv in (
            [*cluster, "-m", "http.server", "--bind", BRIDGE_IP, "--directory", str(folder), str(FILES_PORT)],
            [*cluster, __file__, "serve-dns", str(self.work / "hosts")])]
        self.until(lambda: self.net.http_status(f"http://{BRIDGE_IP}:{FILES_PORT}/") == 200, "the file server")

    def volumes(self, pod: Pod) -> dict[str, tuple[Path, bool]]:
        """name -> (folder, read-only) of each volume: a fresh world-writable folder per emptyDir (as the
        kubelet makes it), one folder per claim shared by every pod that mounts it, given to the fsGroup."""
        folders: dict[str, tuple[Path, bool]] = {}
        claims: list[Path] = []
        for volume in pod.spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            if kinds == {"emptyDir"}:
                folder = self.work / "pods" / pod.name / "volumes" / volume["name"]
                folder.mkdir(parents=True)
                folder.chmod(0o777)
                folders[volume["name"]] = (folder, False)
            elif kinds == {"persistentVolumeClaim"}:
                claim = volume["persistentVolumeClaim"]
                if not any(o.get("kind") == "PersistentVolumeClaim" and o["metadata"]["name"] == claim["claimName"]
                           for o in self.objects):
                    raise PodFailure(f"{pod.name}: claim {claim['claimName']!r} is mounted but not rendered")
                claims.append(self.work / "claims" / claim["claimName"])
                folders[volume["name"]] = (claims[-1], bool(claim.get("readOnly")))
            else:
                raise PodFailure(f"{pod.name}: volume {volume['name']} of type {sorted(kinds)} not supported here")
        for claim in pod.claims:   # a StatefulSet's own
            claims.append(self.work / "pods" / pod.name / "claims" / claim)
            folders[claim] = (claims[-1], False)
        fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
        with self.lock:
            for folder in claims:
                folder.mkdir(parents=True, exist_ok=True)
                if fs_group is not None:
                    os.chown(folder, 0, fs_group)
                    folder.chmod(0o2775)
        return folders

    # ------------------------------------------------------------------ containers
    def identity(self, pod: Pod, container: dict[str, Any]) -> tuple[int, int, list[int]]:
        psc, csc = pod.spec.get("securityContext", {}), container.get("securityContext", {})
        uid = csc.get("runAsUser", psc.get("runAsUser", 0))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", 0))
        groups = [g for g in [psc.get("fsGroup"), *psc.get("supplementalGroups", [])] if g is not None]
        return uid, gid, groups

    def start(self, pod: Pod, container: dict[str, Any], folders: dict[str, tuple[Path, bool]]) -> subprocess.Popen:
        image = image_for(container["image"], self.checkout)
        manifest_env = container_env(container, self.objects)
        env = image.env | manifest_env
        argv = argv_of(container, image, manifest_env)
        binds = {path: (host, True) for path, host in image.paths.items()} | interpreter_binds()
        binds["/etc/hosts"] = (self.work / "hosts", True)
        binds["/etc/resolv.conf"] = (self.work / "resolv.conf", True)
        for mount in container.get("volumeMounts", []):
            if "subPath" in mount:
                raise PodFailure(f"{pod.name}/{container['name']}: subPath mounts not supported here")
            folder, read_only_volume = folders[mount["name"]]
            binds[mount["mountPath"]] = (folder, read_only_volume or bool(mount.get("readOnly")))
        uid, gid, groups = self.identity(pod, container)
        root = self.work / "roots" / f"{pod.name}-{container['name']}"
        root.mkdir(parents=True)
        read_only = bool(container.get("securityContext", {}).get("readOnlyRootFilesystem"))
        workdir = container.get("workingDir", image.workdir)
        chroot = [f"--userspec={uid}:{gid}"] + ([f"--groups={','.join(map(str, groups))}"] if groups else [])
        script = root_script(root, binds, read_only) + "\n" + shlex.join(
            ["exec", "/usr/sbin/chroot", *chroot, str(root), "/usr/bin/env", f"--chdir={workdir}", "--"]) + ' "$@"'
        log = (self.work / "logs" / f"{pod.name}-{container['name']}.log").open("wb")
        process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{pod.ns}", "unshare", "--mount", "--propagation", "private",
             "/bin/sh", "-c", script, "pod", *argv],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pod.processes[container["name"]] = Started(process, env, uid, gid)
        return process

    def tail(self, pod: Pod, container: str, lines: int = 15) -> str:
        path = self.work / "logs" / f"{pod.name}-{container}.log"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return "\n    ".join(text[-lines:])

    def run_pod(self, pod: Pod) -> None:
        try:
            folders = self.volumes(pod)
            for container in pod.spec.get("initContainers", []):
                process = self.start(pod, container, folders)
                rc = process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
                if rc != 0:
                    raise PodFailure(f"{pod.name}: init container {container['name']} exited {rc}:\n    "
                                     + self.tail(pod, container["name"]))
                self.log(f"  {pod.name}: init container {container['name']} done")
            for container in pod.spec.get("containers", []):
                wants_gpu = any("nvidia.com/gpu" in container.get("resources", {}).get(k, {})
                                for k in ("requests", "limits"))
                if wants_gpu and not self.gpu:
                    pod.skipped.append(container["name"])
                    self.log(f"  {pod.name}: container {container['name']} not started: it asks for an "
                             "nvidia.com/gpu and this machine has none")
                    continue
                self.start(pod, container, folders)
        except Exception as err:   # noqa: BLE001 (a thread's error is reported, never lost)
            self.failures.append(f"{pod.name}: {err}" if not isinstance(err, PodFailure) else str(err))

    # ------------------------------------------------------------------ probes
    def probe(self, pod: Pod, container: dict[str, Any], probe: dict[str, Any]) -> bool:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
            return self.net.http_status(f"http://{pod.address}:{port}{get.get('path', '/')}") == 200
        if "exec" in probe:
            started = pod.processes[container["name"]]
            out = subprocess.run(["nsenter", "-t", str(started.process.pid), "--mount", "--net", "--root", "--wd",
                                  "-S", str(started.uid), "-G", str(started.gid), *probe["exec"]["command"]],
                                 env=started.env, capture_output=True, timeout=10)
            return out.returncode == 0
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            return self.net.run_in_cluster(["bash", "-c", f"echo > /dev/tcp/{pod.address}/{port}"], 5).returncode == 0
        raise PodFailure(f"{pod.name}: probe {sorted(probe)} not supported here")

    def until(self, ready, what: str) -> None:
        while not ready():
            if time.monotonic() > self.deadline:
                raise PodFailure(f"{what}: not ready before the deadline")
            time.sleep(1.0)

    def check_running(self, pod: Pod) -> None:
        """Every started container still runs (a job's may have exited 0)."""
        for name, started in pod.processes.items():
            rc = started.process.poll()
            if rc is not None and not (pod.job and rc == 0) and name in {c["name"] for c in pod.spec["containers"]}:
                raise PodFailure(f"{pod.name}: container {name} exited {rc}:\n    " + self.tail(pod, name))

    def wait_ready(self, pod: Pod) -> None:
        containers = [c for c in pod.spec.get("containers", []) if c["name"] not in pod.skipped]
        if pod.job:
            process = pod.processes[containers[0]["name"]].process
            self.until(lambda: process.poll() is not None, f"{pod.name}")
            if process.returncode != 0:
                raise PodFailure(f"{pod.name}: exited {process.returncode}:\n    " + self.tail(pod, containers[0]["name"]))
            self.log(f"  {pod.name}: succeeded")
            return
        for container in containers:
            for kind in ("readinessProbe", "livenessProbe"):
                if kind in container:
                    def ready(container=container, kind=kind) -> bool:
                        self.check_running(pod)
                        return self.probe(pod, container, container[kind])
                    self.until(ready, f"{pod.name}/{container['name']} {kind}")
        self.log(f"  {pod.name}: ready" + ("" if containers else " (no container started)"))

    # ------------------------------------------------------------------ the run
    def run(self, files: Path) -> list[str]:
        """Start every pod and wait for each to be ready (jobs: to succeed); the problems found."""
        try:
            for pod in self.pods:
                pod.ns, pod.address = self.net.add_pod()
            (self.work / "logs").mkdir(parents=True)
            (self.work / "hosts").write_text(self.hosts())
            (self.work / "resolv.conf").write_text(RESOLV_CONF)
            self.serve(files)
            first = [p for p in self.pods if not p.after_ready]   # as a cluster starts them: all at once
            threads = [threading.Thread(target=self.run_pod, args=(p,)) for p in first]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for pod in first:
                if not self.failures:
                    self.wait_ready(pod)
            for pod in [p for p in self.pods if p.after_ready]:   # KubeRay submits once the cluster is ready
                if not self.failures:
                    self.run_pod(pod)
                if not self.failures:
                    self.wait_ready(pod)
                    self.check_ray_job(pod)
        except (PodFailure, subprocess.TimeoutExpired) as err:
            self.failures.append(str(err))
        finally:
            self.stop()
        return self.failures

    def check_ray_job(self, pod: Pod) -> None:
        for rayjob in [o for o in self.objects if o.get("kind") == "RayJob"]:
            url = f"http://{self.address_of(rayjob['metadata']['name'] + '-head')}:8265/api/jobs/{rayjob['metadata']['name']}-1"
            out = self.net.run_in_cluster(["curl", "-s", "--max-time", "5", url], 10)
            status = json.loads(out.stdout or "{}").get("status")
            if status != "SUCCEEDED":
                raise PodFailure(f"RayJob/{rayjob['metadata']['name']}: job status {status}:\n    "
                                 + self.tail(pod, pod.spec["containers"][0]["name"], 30))
            self.log(f"  RayJob/{rayjob['metadata']['name']}: {status}")

    def address_of(self, pod_name: str) -> str:
        return next(p.address for p in self.pods if p.name == pod_name)

    def stop(self) -> None:
        """SIGTERM to every process started, SIGKILL after 10 s; the namespaces deleted."""
        started = [s.process for pod in self.pods for s in pod.processes.values()] + self.helpers
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        self.net.close()


# --------------------------------------------------------------------------------------- archives
def settings_for(files: dict[str, Path]) -> dict[str, str]:
    """The .env settings that point the init containers at the served archives:
    {"BUNDLE": path} -> LLMEMB_BUNDLE_URL and LLMEMB_BUNDLE_SHA256."""
    settings = {}
    for key, path in files.items():
        settings[f"LLMEMB_{key}_URL"] = f"http://{FILES_HOST}:{FILES_PORT}/{path.name}"
        settings[f"LLMEMB_{key}_SHA256"] = sha256_file(path)
    return settings


def run_targets(targets: list[str], files: dict[str, Path], work: Path, deadline_s: float = 300,
                log=print) -> list[str]:
    """Render `targets` (k8s/namespace first: its Secret), with `files` served and named in the
    .env files, and run every pod of the renders together; the problems found."""
    served = work / "files"
    served.mkdir(parents=True)
    for path in files.values():
        shutil.copy(path, served / path.name)
    settings = settings_for({k: served / p.name for k, p in files.items()})
    objects = [o for t in ["namespace", *targets] for o in check_k8s.render(ROOT / "k8s", t, settings)]
    log(f"{' + '.join(targets)}: {sum(1 for _ in pods_of(objects))} pods")
    return run_objects(objects, served, work, deadline_s, log)


def run_objects(objects: list[dict[str, Any]], served: Path, work: Path, deadline_s: float = 300,
                log=print) -> list[str]:
    """Run every pod of rendered `objects`, the files of `served` on the bridge; the problems found."""
    return Runner(objects, work, deadline_s=deadline_s, log=log).run(served)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-dns"]:
        serve_dns(Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="kustomizations under k8s/, run together (e.g. overlays/cpu backfill)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle archive (make bundle-archive)")
    p.add_argument("--base-model", type=Path, help="archive of a base model folder (the GPU overlay)")
    p.add_argument("--backfill-input", type=Path, help="archive holding items.jsonl (k8s/backfill)")
    p.add_argument("--deadline", type=float, default=300, help="seconds for every pod to be ready")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run_pods: needs root (network and mount namespaces)", file=sys.stderr)
        return 1
    files = {"BUNDLE": args.bundle} | ({"BASE_MODEL": args.base_model} if args.base_model else {}) | (
        {"BACKFILL_INPUT": args.backfill_input} if args.backfill_input else {})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up (finally) when stopped
    with tempfile.TemporaryDirectory(prefix="run-pods-") as tmp:
        problems = run_targets(args.targets, files, Path(tmp), args.deadline)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
