"""The model in a process of its own: nothing the model does can hold up the event loop.

The encoder (LLM -> PCA -> adapter, service/embedder.py) lives in one child
process (spawned, so it shares no locks or threads with the service). The
micro-batcher sends it one batch of prompts at a time and awaits the vectors.
In the same process as the event loop, a forward pass would hold the GIL for
its Python glue: on a saturated model, cache hits, /v1/recommend and /v1/score
would wait milliseconds for every I/O step (bench/load.py measured p50 near a
second at 64 clients). Apart, they only share the CPU, which the OS divides.

The child runs at a lower CPU priority (LLMEMB_MODEL_NICE, default 10): when the
CPU is saturated by embedding, the event loop and the scoring thread are served
first and the model takes what is left, so cheap requests stay fast.

The child ignores SIGINT and SIGTERM (a signal sent to the whole process group
must not kill it under requests in flight): the service drains, then shuts it
down. If it dies anyway (killed, out of memory), the requests of its batch get
ModelUnavailable (503), the service reports `model: restarting` and starts a
new one; when that fails too, `model: failed`.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from service.embedder import StageVectors, stage_vectors
from service.logs import configure as configure_logs

log = logging.getLogger("llmemb.service")

_EMBEDDER = None  # in the child: the ItemEmbedder


@dataclass(frozen=True)
class ModelOptions:
    bundle_path: str
    device: str = "cpu"
    dtype: str | None = None
    token_budget: int = 16384
    base_model_path: str | None = None
    threads: int | None = None
    nice: int = 0              # CPU priority increment of the model process
    log_level: str = "info"    # the child logs as the service does (service/logs.py)
    log_format: str = "json"


def _load(options: ModelOptions) -> int:
    """Runs in the child: build the embedder (the bundle was verified by the parent)."""
    global _EMBEDDER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logs(options.log_level, options.log_format)   # a spawned child starts with no handlers
    import torch

    from llmemb.bundle import load_bundle
    from service.embedder import ItemEmbedder

    if options.threads:
        torch.set_num_threads(options.threads)
    if options.nice:
        os.nice(options.nice)
    bundle = load_bundle(options.bundle_path, verify=False)
    _EMBEDDER = ItemEmbedder(bundle, options.device, options.dtype, options.token_budget, options.base_model_path)
    return os.getpid()


def _embed(texts: list[str]):
    if _EMBEDDER is None:
        raise RuntimeError("the model process has no embedder: _load did not run in it")
    return _EMBEDDER.embed_arrays(texts)


class ModelUnavailable(Exception):
    """The model process ended or is being restarted; the request may be retried."""


class ModelProcess:
    def __init__(self, options: ModelOptions, metrics=None):
        self.options = options
        self.metrics = metrics
        self.state = "stopped"        # stopped | starting | up | restarting | failed
        self.pid: int | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._restarting: asyncio.Task | None = None

    async def start(self) -> None:
        """Spawn the child and build the embedder there; raises what the child raised (e.g. BundleError)."""
        self.state = "starting"
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            self.pid = await asyncio.get_running_loop().run_in_executor(self._pool, _load, self.options)
        except BaseException:
            self.state = "failed"
            await asyncio.to_thread(self._shutdown_pool)  # never block the event loop on a dead pool
            raise
        self.state = "up"

    async def embed(self, texts: list[str]) -> list[StageVectors]:
        if self.state != "up":
            raise ModelUnavailable(f"the model process is {self.state}")
        pool = self._pool
        if pool is None:
            raise ModelUnavailable("the model process is not running")
        try:
            arrays = await asyncio.get_running_loop().run_in_executor(pool, _embed, texts)
        except BrokenProcessPool:
            self._on_crash(pool)
            raise ModelUnavailable("the model process ended while embedding; it is being restarted") from None
        return stage_vectors(*arrays)

    def _on_crash(self, pool: ProcessPoolExecutor) -> None:
        if pool is not self._pool or self._restarting is not None:
            return  # another request already saw it
        log.error("the model process (pid %s) ended unexpectedly; starting a new one", self.pid)
        self.state = "restarting"
        self._restarting = asyncio.create_task(self._restart(), name="llmemb-model-restart")

    async def _restart(self) -> None:
        await asyncio.to_thread(self._shutdown_pool)
        try:
            await self.start()
            if self.metrics is not None:
                self.metrics.model_restarts.inc()
            log.info("model process restarted (pid %s)", self.pid)
        except Exception as e:
            log.error("the model process could not be restarted: %s: %s", type(e).__name__, e)
        finally:
            self._restarting = None

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def stop(self) -> None:
        if self._restarting is not None:
            self._restarting.cancel()
            try:
                await self._restarting
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        await asyncio.to_thread(self._shutdown_pool)
