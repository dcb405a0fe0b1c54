"""Micro-batcher: many concurrent requests, one model, one forward pass per batch.

Requests put texts in a bounded queue and await one future per text. A single
worker task takes the oldest texts up to a padded-token budget and a batch size,
waiting at most `max_wait_s` (counted from the oldest text) for a batch to fill,
sorts them by length (less padding), and awaits `run_batch` on them (the model
process, service/model_process.py). While that forward runs, the next batch gathers.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.metrics import Metrics

R = TypeVar("R")


class Overloaded(Exception):
    def __init__(self, queued: int, capacity: int, retry_after_s: int):
        super().__init__(f"the embedding queue is full ({queued} of {capacity} texts waiting)")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    pass


@dataclass
class _Job:
    text: str
    tokens: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[R]):
    def __init__(
        self,
        run_batch: Callable[[list[str]], Awaitable[Sequence[R]]],
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        metrics: Metrics,
    ):
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0
        self._arrived = asyncio.Event()
        self._stopping = False
        self._worker: asyncio.Task | None = None
        self._texts_per_s = 0.0  # moving estimate for Retry-After

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="llmemb-batcher")

    async def stop(self) -> None:
        """Refuse new texts, finish every queued one, then end the worker."""
        self._stopping = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker

    async def submit(self, texts: list[str], tokens: list[int]) -> list[R]:
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        if len(self._queue) + len(texts) > self.queue_size:
            self.metrics.rejected.labels("queue_full").inc()
            backlog = len(self._queue) + len(texts)
            retry = math.ceil(backlog / self._texts_per_s) if self._texts_per_s > 0 else 1
            raise Overloaded(len(self._queue), self.queue_size, max(1, min(retry, 60)))
        loop = asyncio.get_running_loop()
        jobs = [_Job(t, n, loop.create_future()) for t, n in zip(texts, tokens)]
        self._queue.extend(jobs)
        self._queued_tokens += sum(tokens)
        self.metrics.queue_depth.set(len(self._queue))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        except asyncio.CancelledError:
            for j in jobs:
                j.future.cancel()
            raise

    # ------------------------------------------------------------------ worker
    def _full(self) -> bool:
        return len(self._queue) >= self.max_batch_size or self._queued_tokens >= self.max_batch_tokens

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        longest = 0
        now = time.perf_counter()
        while self._queue and len(batch) < self.max_batch_size:
            job = self._queue[0]
            if job.future.done():  # its request was cancelled
                self._queue.popleft()
                self._queued_tokens -= job.tokens
                continue
            padded = (len(batch) + 1) * max(longest, job.tokens)
            if batch and padded > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= job.tokens
            longest = max(longest, job.tokens)
            batch.append(job)
            self.metrics.queue_wait_seconds.observe(now - job.enqueued)
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _gather(self) -> None:
        """Wait until the oldest text has waited max_wait_s or a batch is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s - (time.perf_counter() - self._queue[0].enqueued)
        while not self._full() and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            batch.sort(key=lambda j: j.tokens, reverse=True)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_tokens.observe(len(batch) * batch[0].tokens)
            started = time.perf_counter()
            try:
                results = await self.run_batch([j.text for j in batch])
            except Exception as e:  # the model failed: every request of the batch gets the error
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.inference_seconds.observe(elapsed)
            rate = len(batch) / max(elapsed, 1e-6)
            self._texts_per_s = rate if self._texts_per_s == 0 else 0.8 * self._texts_per_s + 0.2 * rate
            for j, r in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(r)
