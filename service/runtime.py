"""Everything one service process owns, from start-up to graceful shutdown.

Start-up is in the background so /healthz answers at once and /readyz says 503
until the bundle is verified and loaded, the model warmed up and the catalogue
synced. Shutdown (uvicorn lifespan, after in-flight requests finished): refuse
new texts, finish the queued ones, stop syncing, close Redis.

The encoder runs in a process of its own (service/model_process.py), fed by the
micro-batcher; the backbone and top-k run in one scoring thread here. So a long
embedding batch never delays a cache hit, a recommendation or a score: they
share no queue, no thread and no interpreter lock with the model.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np
import torch

from llmemb.bundle import LoadedBundle, load_bundle
from service.batcher import MicroBatcher
from service.cache import EmbeddingCache
from service.catalogue import Catalogue
from service.embedder import StageVectors
from service.metrics import Metrics
from service.model_process import ModelOptions, ModelProcess
from service.redis_link import RedisLink
from service.scoring import TopK
from service.scoring_model import ScoringModel
from service.settings import Settings

log = logging.getLogger("llmemb.service")
T = TypeVar("T")


class ReadyRuntime(Protocol):
    """A Runtime whose start-up finished: every part is present. Routes get one from
    `service.routes.ready_runtime`, the one place readiness is checked."""

    settings: Settings
    metrics: Metrics
    bundle: LoadedBundle
    scoring: ScoringModel
    cache: EmbeddingCache
    catalogue: Catalogue
    batcher: MicroBatcher[StageVectors]
    model: ModelProcess
    topk: TopK

    async def run_scoring(self, fn: Callable[[], T]) -> T: ...

    async def embed_prompts(self, stage: str, prompts: list[str]) -> tuple[list[np.ndarray], list[bool]]: ...


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.status = "loading"          # loading | ready | draining | failed
        self.error: str | None = None
        self.bundle: LoadedBundle | None = None
        self.scoring: ScoringModel | None = None
        self.cache: EmbeddingCache | None = None
        self.catalogue: Catalogue | None = None
        self.batcher: MicroBatcher[StageVectors] | None = None
        self.link: RedisLink | None = None            # the vector cache's Redis
        self.catalogue_link: RedisLink | None = None  # the catalogue's (the same link unless configured apart)
        self.warmed_up = False
        self.topk = TopK(settings.topk_chunk_rows)  # used in the scoring thread only
        self.model: ModelProcess | None = None
        self.score_pool = ThreadPoolExecutor(1, thread_name_prefix="llmemb-score")
        self._loader: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        s = self.settings
        password = s.redis_password.get_secret_value() if s.redis_password else None
        if s.redis_url:
            self.link = RedisLink(s.redis_url, s.redis_timeout_s, s.redis_backoff_max_s, self.metrics,
                                  password=password)
            await self.link.start()
        self.catalogue_link = self.link
        if s.catalogue_redis_url and s.catalogue_redis_url != s.redis_url:
            # The catalogue's own durable instance (AOF, noeviction); the cache may evict freely.
            self.catalogue_link = RedisLink(s.catalogue_redis_url, s.redis_timeout_s, s.redis_backoff_max_s,
                                            self.metrics, role="catalogue", password=password)
            await self.catalogue_link.start()
        self._loader = asyncio.create_task(self._load(), name="llmemb-load")

    async def _load(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # Each part goes on self before anything is awaited on it: stop() finds and stops it.
            self.bundle = bundle = await asyncio.to_thread(load_bundle, s.bundle_path, s.verify_bundle)
            if s.max_batch_tokens < bundle.encoder.max_tokens:
                raise ValueError(f"LLMEMB_MAX_BATCH_TOKENS={s.max_batch_tokens} is below the bundle's "
                                 f"max_tokens={bundle.encoder.max_tokens}: one text would not fit")
            base_model_path = str(s.base_model_path) if s.base_model_path is not None else None
            self.model = model = ModelProcess(ModelOptions(str(s.bundle_path), s.device, s.dtype, s.max_batch_tokens,
                                                           base_model_path, s.torch_threads, s.model_nice,
                                                           s.log_level, s.log_format),
                                              self.metrics)
            self.metrics.watch_model_process(lambda: model.pid)
            await model.start()
            self.scoring = await loop.run_in_executor(self.score_pool, lambda: ScoringModel(bundle, base_model_path, s.scoring_device))
            self.cache = EmbeddingCache(bundle.fingerprint, bundle.dims, self.link, s.lru_size,
                                        s.cache_ttl_s, s.cache_enabled, self.metrics)
            self.catalogue = catalogue = Catalogue(bundle.item_table, bundle.item_ids, bundle.fingerprint,
                                                   self.catalogue_link, s.catalogue_poll_ms / 1000, self.metrics)
            await catalogue.start()
            self.batcher = batcher = MicroBatcher(model.embed, s.max_batch_tokens,
                                                  s.max_batch_size, s.max_wait_ms / 1000, s.queue_size, self.metrics)
            batcher.start()
            await self._warm_up()
            m = bundle.manifest
            self.metrics.build_info.labels(bundle.fingerprint, bundle.base_model_id, bundle.method,
                                           str(m.format_version)).set(1)
            self.status = "ready"
            log.info("ready: bundle %s (%s), %d items, loaded in %.1fs", s.bundle_path,
                     bundle.fingerprint[:12], bundle.n_items, time.perf_counter() - started)
        except Exception as e:
            self.status = "failed"
            self.error = f"{type(e).__name__}: {e}"
            log.error("start-up failed: %s", self.error)

    async def _warm_up(self) -> None:
        """The real paths once: tokenizer, batcher, encoder (two shapes), backbone and top-k."""
        bundle, scoring, batcher, catalogue = self.bundle, self.scoring, self.batcher, self.catalogue
        if bundle is None or scoring is None or batcher is None or catalogue is None:
            raise RuntimeError("warm-up needs the bundle, scoring model, batcher and catalogue loaded first")
        attrs = bundle.item_attributes[:8] or [{"title": "warm-up"}]
        prompts = [scoring.prompt(a) for a in attrs]
        await batcher.submit(prompts, scoring.token_lengths(prompts))
        await batcher.submit(prompts[:1], scoring.token_lengths(prompts[:1]))
        snap = catalogue.snapshot
        rows = list(range(1, min(3, len(snap.ids) - 1) + 1))
        if rows:
            def score():
                table = scoring.scoring_table(snap.table)
                user = scoring.user_vectors([rows], table)[0]
                self.topk(user, table, 10, snap.blocked_rows)

            await self.run_scoring(score)
        self.warmed_up = True

    async def stop(self) -> None:
        self.status = "draining"
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            try:
                await self._loader
            except asyncio.CancelledError:
                pass
        if self.batcher is not None:
            await self.batcher.stop()
        if self.catalogue is not None:
            await self.catalogue.stop()
        if self.link is not None:
            await self.link.close()
        if self.catalogue_link is not None and self.catalogue_link is not self.link:
            await self.catalogue_link.close()
        if self.model is not None:
            await self.model.stop()
        self.score_pool.shutdown(wait=True)

    def readiness(self) -> dict:
        """/readyz: the process, its cache, its catalogue and its model process, each in one word."""
        if self.cache is not None:
            cache, backend = self.cache.state, self.cache.backend
        elif not self.settings.cache_enabled:
            cache, backend = "disabled", "none"
        else:
            cache = "degraded" if self.link is not None and not self.link.up else "ok"
            backend = "redis" if self.link is not None else "memory"
        link = self.catalogue_link
        if self.catalogue is not None:
            catalogue = self.catalogue.state
        else:
            catalogue = "local" if link is None else "shared" if link.up else "degraded"
        return {"status": self.status, "ready": self.ready, "bundle_loaded": self.scoring is not None,
                "warmed_up": self.warmed_up, "cache": cache, "cache_backend": backend, "catalogue": catalogue,
                "model": self.model.state if self.model is not None else "stopped", "error": self.error}

    # ------------------------------------------------------------------- work
    async def run_scoring(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.score_pool, fn)

    async def embed_prompts(self, stage: str, prompts: list[str]) -> tuple[list[np.ndarray], list[bool]]:
        """Vectors of `stage` for each prompt, from the cache or the model; identical prompts run once."""
        cache, scoring, batcher = self.cache, self.scoring, self.batcher
        if cache is None or scoring is None or batcher is None:
            raise RuntimeError(f"embedding needs a started runtime (the service is {self.status})")
        found = await cache.get_many(stage, prompts)
        cached = [v is not None for v in found]
        todo = list(dict.fromkeys(p for p, v in zip(prompts, found) if v is None))
        computed: dict[str, np.ndarray] = {}
        if todo:
            tokens = scoring.token_lengths(todo)
            results = await batcher.submit(todo, tokens)
            self.metrics.tokens.inc(sum(tokens))
            computed = {p: r.stage(stage) for p, r in zip(todo, results)}
            await cache.put_many(stage, todo, list(computed.values()))
        return [v if v is not None else computed[p] for p, v in zip(prompts, found)], cached
