"""One Redis connection with a health state, shared by the cache and the catalogue.

Requests never wait on a dead Redis: while the link is down every call fails at
once (RedisUnavailable) and only a background probe, with exponential backoff,
tries to reconnect. Socket timeouts are short, so a Redis that hangs costs a
request at most one timeout before the link is marked down.

After a Redis restart every pooled connection is stale. A command that fails
with a connection error drops the pool's idle connections and retries once on a
fresh one; only when that fails too is the link declared down. Coming back up
needs `up_probes` consecutive successful probes, so one lucky PING does not flip
the state back and forth (hysteresis).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from service.metrics import Metrics

log = logging.getLogger("llmemb.service.redis")
T = TypeVar("T")


def _reraise_cancellation() -> None:
    """redis-py can turn the cancellation of a command in flight into a connection error; a task
    being cancelled (shutdown, a poller stopped) must end, not retry or carry on as if Redis failed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task, what: str, attempts: int = 50, wait_s: float = 0.1) -> None:
    """Cancel `task` until it ends: a cancellation that lands inside a Redis command can be absorbed
    by the client, and stopping must never wait forever (at most attempts x wait_s)."""
    for _ in range(attempts):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        if done:
            return
    log.error("%s did not stop", what)



PASSWORD_ENV = "LLMEMB_REDIS_PASSWORD"   # the Redis password where a URL carries none (k8s: from a Secret)


def env_password() -> str | None:
    """The password of LLMEMB_REDIS_PASSWORD, for the command-line tools (backfill, catalogue export and
    import); the service reads the same variable through its settings."""
    return os.environ.get(PASSWORD_ENV) or None


def safe_url(url: str) -> str:
    """A Redis URL fit for logs and messages: never a password embedded in it."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url

class RedisUnavailable(Exception):
    """Redis is down (or just failed); the caller falls back."""


class RedisLink:
    def __init__(self, url: str, timeout_s: float, backoff_max_s: float, metrics: Metrics, up_probes: int = 2,
                 role: str = "cache", password: str | None = None):
        self.url = url
        self.metrics = metrics
        self.backoff_min_s = min(0.05, backoff_max_s)
        self.backoff_max_s = backoff_max_s
        self.client = aioredis.from_url(
            url,
            password=password,              # used where the URL has none (a password in the URL wins)
            decode_responses=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.up = False
        self.up_probes = max(1, up_probes)
        self._good_probes = 0
        self.transitions = 0                 # up/down changes since start (the flapping count)
        self.last_error: str | None = None
        self._backoff = self.backoff_min_s
        self._woken = asyncio.Event()
        self._probe_task: asyncio.Task | None = None
        self.up_gauge = metrics.redis_up.labels(role)   # cache | catalogue (one Redis serving both: cache)
        self.up_gauge.set(0)

    async def start(self) -> None:
        await self._probe()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="redis-probe")

    async def close(self) -> None:
        if self._probe_task is not None:
            await stop_task(self._probe_task, "redis probe")
        await self.client.aclose()

    async def call(self, op: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run fn(client); on any Redis/socket failure mark the link down and raise RedisUnavailable."""
        if not self.up:
            raise RedisUnavailable(self.last_error or "redis is down")
        try:
            try:
                return await fn(self.client)
            except (RedisConnectionError, ConnectionError) as e:
                _reraise_cancellation()
                # Most likely a stale pooled connection (Redis restarted): drop the idle ones
                # and try once more on a fresh connection before calling Redis down.
                self.metrics.cache_errors.labels(op).inc()
                log.info("redis %s failed on a pooled connection (%s); retrying on a fresh one", op, e)
                await self.client.connection_pool.disconnect(inuse_connections=False)
                return await fn(self.client)
        except ResponseError as e:
            # Redis answered, with an error (e.g. OOM under noeviction): the link is fine, the command failed.
            self.metrics.cache_errors.labels(op).inc()
            log.warning("redis %s refused: %s", op, e)
            raise RedisUnavailable(f"redis refused {op}: {e}") from None
        except (TimeoutError, RedisError, OSError) as e:
            _reraise_cancellation()
            self.metrics.cache_errors.labels(op).inc()
            self._mark_down(e)
            raise RedisUnavailable(str(e)) from None

    def _mark_down(self, error: BaseException) -> None:
        if self.up:
            log.warning("redis at %s is unavailable (%s); serving without it", safe_url(self.url), error)
            self.transitions += 1
        self.up = False
        self._good_probes = 0
        self.last_error = f"{type(error).__name__}: {error}"
        self.up_gauge.set(0)
        self._woken.set()

    async def _probe(self) -> bool:
        try:
            await self.client.ping()
        except (TimeoutError, RedisError, OSError) as e:
            self._mark_down(e)
            return False
        if self.up:
            return True
        self._good_probes += 1
        if self._good_probes < self.up_probes and self.transitions > 0:
            return False   # back, but not yet trusted: probe again after the shortest backoff
        log.info("redis at %s is available", safe_url(self.url))
        if self.transitions:
            self.transitions += 1
        self.up = True
        self.last_error = None
        self._backoff = self.backoff_min_s
        self.up_gauge.set(1)
        return True

    async def _probe_loop(self) -> None:
        while True:
            if self.up:
                self._woken.clear()
                await self._woken.wait()
                continue
            started = time.monotonic()
            if not await self._probe():
                if self._good_probes:   # answering again: confirm soon, without growing the backoff
                    await asyncio.sleep(self.backoff_min_s)
                    continue
                self.metrics.cache_errors.labels("probe").inc()
                wait = self._backoff - (time.monotonic() - started)
                self._backoff = min(self._backoff * 2, self.backoff_max_s)
                await asyncio.sleep(max(0.0, wait))

