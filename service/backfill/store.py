"""Where the backfill writes, in Redis: the service cache's vectors, and the shared catalogue."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import cast

import numpy as np
import redis

from llmemb.bundle import LoadedBundle
from service.backfill.config import BackfillError
from service.backfill.items import CatalogueItem
from service.cache import cache_key, from_bytes, queue_sets
from service.catalogue import (
    ADOPT_SCRIPT,
    PUT_SCRIPT,
    attributes_json,
    catalogue_keys,
    put_arguments,
)
from service.redis_link import env_password, safe_url


def connect(url: str) -> redis.Redis:
    """A checked client of the Redis at `url`, with LLMEMB_REDIS_PASSWORD where the URL has no password
    (in the CLI's process and in every Ray actor alike)."""
    client = redis.Redis.from_url(url, password=env_password(), decode_responses=False, socket_timeout=30,
                                  socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        raise BackfillError(f"Redis at {safe_url(url)} is unavailable ({e})") from None
    return client


class RedisVectors:
    """The service cache's vectors of one bundle, checked, written and read in pipelines."""

    def __init__(self, client: redis.Redis, fingerprint: str, dims: Mapping[str, int], ttl_s: int | None = None):
        self.client = client
        self.fingerprint = fingerprint
        self.dims = dict(dims)
        self.ttl_s = ttl_s

    def key(self, stage: str, prompt: str) -> str:
        return cache_key(self.fingerprint, stage, prompt)

    def missing(self, prompts: list[str], stages: tuple[str, ...]) -> dict[str, list[str]]:
        """prompt -> stages whose vector is absent or of the wrong size (the service would not read it)."""
        pipe = self.client.pipeline(transaction=False)
        for p in prompts:
            for s in stages:
                pipe.strlen(self.key(s, p))
        lengths = iter(pipe.execute())
        return {p: [s for s in stages if next(lengths) != 4 * self.dims[s]] for p in prompts}

    def write(self, pairs: list[tuple[str, bytes]]) -> None:
        queue_sets(self.client.pipeline(transaction=False), pairs, self.ttl_s).execute()

    def read(self, stage: str, prompts: list[str]) -> list[np.ndarray | None]:
        # decode_responses=False (connect): replies are bytes, though redis-py types them bytes | str.
        values = cast(list[bytes | None], self.client.mget([self.key(stage, p) for p in prompts]))
        return [from_bytes(v, self.dims[stage]) if v is not None else None for v in values]


class CatalogueTarget:
    """The service's shared catalogue of one bundle, written with the service's own script and epoch guard.

    An item is already there when the catalogue holds it with the same attributes (added or replaced
    before), or when it is a bundle item, not removed, with the bundle's attributes."""

    def __init__(self, client: redis.Redis, bundle: LoadedBundle):
        self.client = client
        self.bundle = bundle
        self.keys = catalogue_keys(bundle.fingerprint)
        self._bundle_ids = set(bundle.item_ids)
        self._put = client.register_script(PUT_SCRIPT)
        epoch = client.register_script(ADOPT_SCRIPT)(keys=self.keys[:6], args=[uuid.uuid4().hex])
        if epoch is None:
            raise BackfillError("the shared catalogue holds changes but no epoch: it was lost; restore it with "
                                "`python -m service.catalogue_io import` before writing into it")
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    def unlisted(self, items: list[CatalogueItem]) -> list[CatalogueItem]:
        """The items whose catalogue entry is absent or holds other attributes."""
        if not items:
            return []
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(self.keys[1], [it.id for it in items])
        pipe.smismember(self.keys[2], [it.id for it in items])
        stored, removed = pipe.execute()
        out = []
        for it, raw, gone in zip(items, stored, removed):
            wanted = attributes_json(it.attributes)
            if raw is not None:
                if raw.decode() != wanted:
                    out.append(it)
            elif gone or it.id not in self._bundle_ids or \
                    attributes_json(self.bundle.item_attributes[self.bundle.rows[it.id] - 1]) != wanted:
                out.append(it)
        return out

    def write(self, items: list[tuple[CatalogueItem, np.ndarray]]) -> int:
        """One catalogue change for the chunk: (item, item-space vector) pairs; returns the version.
        Ids repeated within the chunk: the last line wins, as it would through PUT one by one."""
        last = {it.id: (it, vector) for it, vector in items}
        batch = [(it.id, self.bundle.catalogue_vector(it.id, vector), it.attributes) for it, vector in last.values()]
        result = self._put(keys=self.keys[:6], args=[self.epoch, *put_arguments(batch, self._bundle_ids)])
        if int(result[0]) == -1:
            raise BackfillError("the shared catalogue's epoch changed during the backfill (it was lost or restored); "
                                "nothing more was written; run the backfill again once it is restored")
        return int(result[0])
