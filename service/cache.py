"""Embedding cache: an in-process LRU in front of Redis (or alone when no Redis is set).

Key: `llmemb:{fingerprint}:emb:{stage}:{sha256(prompt)}`, value: the vector as
little-endian float32 bytes.
- fingerprint: a new bundle never reads vectors of another one;
- stage: item (adapter output), pca or llm, since the same prompt has three vectors;
- sha256 of the exact prompt text the model reads (built from the attributes in
  their given order with the bundle's domain and value cut). Attribute order
  changes the prompt and so the vector, which is why the key hashes the prompt
  and not sorted attributes; `/v1/embeddings` texts share the same key space.
Entries are content-addressed and immutable, so the local LRU never goes stale.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import cast

import numpy as np

from service.metrics import Metrics
from service.redis_link import RedisLink, RedisUnavailable

FLOAT32_LE = np.dtype("<f4")


def cache_key(fingerprint: str, stage: str, prompt: str) -> str:
    return f"llmemb:{fingerprint}:emb:{stage}:{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}"


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=FLOAT32_LE).tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray | None:
    if len(data) != dim * 4:
        return None
    return np.frombuffer(data, dtype=FLOAT32_LE).astype(np.float32)



def queue_sets(pipe, pairs: list[tuple[str, bytes]], ttl_s: int | None):
    """Queue a SET of each (key, vector bytes) on a Redis pipeline (sync or async), expiring after ttl_s."""
    for key, data in pairs:
        pipe.set(key, data, ex=ttl_s)
    return pipe

class LRU:
    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if self.size <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class EmbeddingCache:
    def __init__(
        self,
        fingerprint: str,
        dims: dict[str, int],
        link: RedisLink | None,
        lru_size: int,
        ttl_s: int | None,
        enabled: bool,
        metrics: Metrics,
    ):
        self.fingerprint = fingerprint
        self.dims = dims
        self.link = link if enabled else None
        self.lru = LRU(lru_size if enabled else 0)
        self.ttl_s = ttl_s
        self.enabled = enabled
        self.metrics = metrics

    @property
    def backend(self) -> str:
        if not self.enabled:
            return "none"
        return "redis" if self.link is not None else "memory"

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.link is not None and not self.link.up:
            return "degraded"
        return "ok"

    def key(self, stage: str, prompt: str) -> str:
        return cache_key(self.fingerprint, stage, prompt)

    async def get_many(self, stage: str, prompts: list[str]) -> list[np.ndarray | None]:
        if not self.enabled:
            return [None] * len(prompts)
        dim = self.dims[stage]
        keys = [self.key(stage, p) for p in prompts]
        out: list[np.ndarray | None] = [None] * len(keys)
        remote: list[int] = []
        for i, key in enumerate(keys):
            data = self.lru.get(key)
            if data is not None:
                out[i] = from_bytes(data, dim)
                self.metrics.cache_hits.labels("memory").inc()
            else:
                remote.append(i)
        if remote and self.link is not None and self.link.up:
            try:
                # The client has decode_responses=False: replies are bytes (redis-py types them bytes | str).
                values = cast(list[bytes | None],
                              await self.link.call("mget", lambda r: r.mget([keys[i] for i in remote])))
            except RedisUnavailable:
                values = [None] * len(remote)
            for i, data in zip(remote, values):
                if data is None:
                    continue
                vector = from_bytes(data, dim)
                if vector is not None:
                    out[i] = vector
                    self.lru.put(keys[i], data)
                    self.metrics.cache_hits.labels("redis").inc()
        misses = sum(1 for v in out if v is None)
        if misses:
            self.metrics.cache_misses.inc(misses)
        return out

    async def put_many(self, stage: str, prompts: list[str], vectors: list[np.ndarray]) -> None:
        if not self.enabled or not prompts:
            return
        pairs = [(self.key(stage, p), to_bytes(v)) for p, v in zip(prompts, vectors)]
        for key, data in pairs:
            self.lru.put(key, data)
        if self.link is None or not self.link.up:
            return

        async def write(r):
            return await queue_sets(r.pipeline(transaction=False), pairs, self.ttl_s).execute()

        try:
            await self.link.call("set", write)
        except RedisUnavailable:
            pass
