"""The catalogue: the bundle's item table plus items added, replaced or removed at run time.

Shared state lives in Redis under `llmemb:{fingerprint}:cat:`:
    vectors     hash  id -> item-space vector (float32 LE) of added or replaced items
    attributes  hash  id -> attributes JSON (what the vector was computed from)
    deleted     set   bundle ids that were removed
    version     int   incremented by every change
    epoch       str   a random id given to the catalogue when it was created
    integrity   str   "<items in vectors>,<items in deleted>" after the last change
    restored    str   JSON {epoch, version, at}: written by `python -m service.catalogue_io import`
Changes are single Lua scripts (atomic across replicas). Every replica polls
`version` (default every 200 ms) and rebuilds an immutable snapshot when it
moved, so a change made through one replica is visible on all within a poll
period. The replica that made a change refreshes at once (read-your-writes).
Without Redis the same overlay lives in process memory.

Deleted items are gone everywhere: never recommended, and unknown in histories
and candidate lists.

A lost catalogue is refused, not rebuilt. Each replica remembers the epoch and
the version it last installed. When Redis comes back empty (restarted without
persistence, evicted, flushed), with another epoch, a lower version, or hashes
that no longer match `integrity`, the replica logs it, reports `lost`
(/readyz, llmemb_catalogue_lost), keeps serving its last good snapshot and
refuses changes (the write scripts check the epoch too, so no replica writes
over an emptied catalogue). Recovery is one command: `python -m
service.catalogue_io import` of an export, which gives the catalogue a new epoch
and a `restored` marker that replicas accept.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from service.cache import from_bytes, to_bytes
from service.metrics import Metrics
from service.redis_link import RedisLink, RedisUnavailable, stop_task

log = logging.getLogger("llmemb.service.catalogue")

# Every write first checks the epoch (ARGV[1]) and ends by recording the sizes
# the replicas check on refresh. KEYS: vectors, attributes, deleted, version, epoch, integrity.
# The shebang (Redis >= 7) makes Redis refuse a whole write script up front when memory is above
# maxmemory under noeviction, instead of failing it half-way through (scripts are not rolled back).
_GUARD = """#!lua
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return {-1, 0} end
"""
_SEAL = """
redis.call('SET', KEYS[6], redis.call('HLEN', KEYS[1]) .. ',' .. redis.call('SCARD', KEYS[3]))
"""

# ARGV after the epoch: 4 per item (id, vector, attributes JSON, '1' for a bundle id). One version
# step for the whole batch: replicas see all of it or none of it.
PUT_SCRIPT = _GUARD + """
local existed = {}
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if ARGV[i + 3] == '1' then
    existed[#existed + 1] = 1 - redis.call('SREM', KEYS[3], id)
  else
    existed[#existed + 1] = redis.call('HEXISTS', KEYS[1], id)
  end
  redis.call('HSET', KEYS[1], id, ARGV[i + 1])
  redis.call('HSET', KEYS[2], id, ARGV[i + 2])
end
local version = redis.call('INCR', KEYS[4])
""" + _SEAL + """
return {version, existed}
"""

DELETE_SCRIPT = _GUARD + """
local removed = redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[3] == '1' then removed = redis.call('SADD', KEYS[3], ARGV[2]) end
if removed == 0 then return {0, tonumber(redis.call('GET', KEYS[4]) or '0')} end
local version = redis.call('INCR', KEYS[4])
""" + _SEAL + """
return {1, version}
"""

# A catalogue with no epoch gets one, unless it holds changes written without one
# (then it is not new: the replica calls it lost rather than adopt it).
ADOPT_SCRIPT = """#!lua
local epoch = redis.call('GET', KEYS[5])
if epoch then return epoch end
if redis.call('EXISTS', KEYS[1], KEYS[3], KEYS[4]) > 0 then return false end
redis.call('SET', KEYS[5], ARGV[1])
return ARGV[1]
"""

KEY_NAMES = ("vectors", "attributes", "deleted", "version", "epoch", "integrity", "restored")


class CatalogueUnavailable(Exception):
    """The shared catalogue cannot be changed while Redis is down."""


class CatalogueLost(CatalogueUnavailable):
    """The shared catalogue went backwards or vanished: changes are refused until it is restored."""


class UnknownItem(KeyError):
    pass


@dataclass(frozen=True)
class Snapshot:
    version: int
    table: torch.Tensor      # [R, d]: row 0 padding, 1..N bundle, then added items
    ids: list[str]           # row -> external id ("" for padding)
    index: dict[str, int]    # active external id -> row
    blocked_rows: torch.Tensor  # long: padding and deleted rows, never recommended
    n_bundle: int
    n_added: int
    n_deleted: int
    attributes: dict[str, dict[str, Any]]  # what added or replaced items were put with (bundle items: the bundle's)

    @property
    def n_active(self) -> int:
        return len(self.index)


def build_snapshot(base_table: torch.Tensor, base_ids: list[str], vectors: dict[str, np.ndarray],
                   deleted: set[str], version: int, attributes: dict[str, dict[str, Any]] | None = None) -> Snapshot:
    base_index = {ext: row for row, ext in enumerate(base_ids, start=1)}
    added = sorted(i for i in vectors if i not in base_index)
    n_base = base_table.shape[0]
    table = torch.empty(n_base + len(added), base_table.shape[1], dtype=base_table.dtype)
    table[:n_base] = base_table
    for ext, vec in vectors.items():
        if ext in base_index:
            table[base_index[ext]] = torch.from_numpy(vec)
    for j, ext in enumerate(added):
        table[n_base + j] = torch.from_numpy(vectors[ext])
    ids = ["", *base_ids, *added]
    gone = {ext for ext in deleted if ext in base_index and ext not in vectors}
    blocked_rows = torch.tensor(sorted([0, *(base_index[ext] for ext in gone)]), dtype=torch.long)
    index = {ext: row for row, ext in enumerate(ids) if row > 0 and ext not in gone}
    attrs = {k: v for k, v in (attributes or {}).items() if k in vectors}
    return Snapshot(version, table, ids, index, blocked_rows, len(base_ids), len(added), len(gone), attrs)


def attributes_json(attributes: dict[str, Any]) -> str:
    """Attributes as the catalogue stores them (and compares them: the same dict, the same string)."""
    return json.dumps(attributes, ensure_ascii=False)


def put_arguments(items: list[tuple[str, np.ndarray, dict[str, Any]]], bundle_ids: set[str]) -> list[Any]:
    """PUT_SCRIPT's arguments after the epoch for (id, vector, attributes) items."""
    payload: list[Any] = []
    for item_id, vector, attributes in items:
        payload += [item_id, to_bytes(np.asarray(vector, dtype=np.float32)), attributes_json(attributes),
                    "1" if item_id in bundle_ids else "0"]
    return payload


def catalogue_keys(fingerprint: str) -> list[str]:
    """The Redis keys of the shared catalogue of the bundle `fingerprint`, in KEY_NAMES order."""
    return [f"llmemb:{fingerprint}:cat:{name}" for name in KEY_NAMES]


class Catalogue:
    def __init__(self, base_table: torch.Tensor, base_ids: list[str], fingerprint: str,
                 link: RedisLink | None, poll_s: float, metrics: Metrics):
        self.base_table = base_table.float().contiguous()
        self.base_ids = base_ids
        self._base_set = set(base_ids)
        self.dim = int(base_table.shape[1])
        self.link = link
        self.poll_s = poll_s
        self.metrics = metrics
        self.keys = catalogue_keys(fingerprint)
        self.epoch: str | None = None      # the shared catalogue's epoch this replica installed
        self.lost: str | None = None       # why the shared catalogue is refused, while it is
        # Process-local overlay (no Redis).
        self._vectors: dict[str, np.ndarray] = {}
        self._attributes: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._version = 0
        self._snapshot = build_snapshot(self.base_table, base_ids, {}, set(), 0)
        self._refresh_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._publish()
        if link is not None:
            self._put_script = link.client.register_script(PUT_SCRIPT)
            self._delete_script = link.client.register_script(DELETE_SCRIPT)
            self._adopt_script = link.client.register_script(ADOPT_SCRIPT)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def _shared_link(self) -> RedisLink:
        """The Redis link of a shared catalogue; only the shared catalogue's paths use it."""
        if self.link is None:
            raise RuntimeError("this catalogue is process-local: it has no Redis link")
        return self.link

    @property
    def shared(self) -> bool:
        return self.link is not None

    @property
    def state(self) -> str:
        if self.link is None:
            return "local"
        if self.lost is not None:
            return "lost"
        return "shared" if self.link.up and self.epoch is not None else "degraded"

    async def start(self) -> None:
        if self.link is not None:
            await self._refresh_if_up()
            self._poller = asyncio.create_task(self._poll(), name="catalogue-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            await stop_task(self._poller, "catalogue poller")

    # ----------------------------------------------------------------- changes
    async def put(self, item_id: str, vector: np.ndarray, attributes: dict[str, Any]) -> tuple[bool, int]:
        """Add or replace an item; returns (created, catalogue version)."""
        created, version = await self.put_many([(item_id, vector, attributes)])
        return created[0], version

    async def put_many(self, items: list[tuple[str, np.ndarray, dict[str, Any]]]) -> tuple[list[bool], int]:
        """Add or replace several items in one change (one version step, all or nothing);
        returns (created per item, catalogue version). Ids must be distinct."""
        if len({i for i, _, _ in items}) != len(items):
            raise ValueError("put_many: item ids must be distinct")
        vectors = [np.asarray(v, dtype=np.float32) for _, v, _ in items]
        if self.link is None:
            created = [item_id not in self._snapshot.index for item_id, _, _ in items]
            for (item_id, _, attributes), vector in zip(items, vectors):
                self._vectors[item_id] = vector.copy()
                self._attributes[item_id] = dict(attributes)
                self._deleted.discard(item_id)
            self._version += 1
            await self._install(dict(self._vectors), set(self._deleted), self._version, dict(self._attributes))
            return created, self._version
        payload = put_arguments([(i, v, a) for (i, _, a), v in zip(items, vectors)], self._base_set)
        version, existed = await self._write("catalogue_put", self._put_script, payload)
        await self._refresh_if_up()
        return [not bool(e) for e in existed], int(version)

    async def delete(self, item_id: str) -> int:
        """Remove an item; UnknownItem when it is not in the catalogue."""
        if self.link is None:
            if item_id not in self._snapshot.index:
                raise UnknownItem(item_id)
            self._vectors.pop(item_id, None)
            self._attributes.pop(item_id, None)
            if item_id in self._base_set:
                self._deleted.add(item_id)
            self._version += 1
            await self._install(dict(self._vectors), set(self._deleted), self._version, dict(self._attributes))
            return self._version
        payload = [item_id, "1" if item_id in self._base_set else "0"]
        removed, version = await self._write("catalogue_delete", self._delete_script, payload)
        if not removed:
            raise UnknownItem(item_id)
        await self._refresh_if_up()
        return int(version)

    async def _write(self, op: str, script, args: list, retry: bool = True) -> list:
        if self.lost is not None:
            raise CatalogueLost(self._lost_message())
        if self.epoch is None:
            raise CatalogueUnavailable("the shared catalogue has not been read from Redis yet")
        keys, epoch = self.keys[:6], self.epoch
        try:
            result = await self._shared_link.call(op, lambda r: script(keys=keys, args=[epoch, *args], client=r))
        except RedisUnavailable as e:
            raise CatalogueUnavailable(f"the shared catalogue needs Redis, which is unavailable ({e})") from None
        if int(result[0]) == -1:   # the epoch guard refused the write
            await self._refresh_if_up()
            if retry and self.lost is None and self.epoch is not None and self.epoch != epoch:
                # A replica that never saw a change started afresh on an empty Redis: write there.
                return await self._write(op, script, args, retry=False)
            self._mark_lost(self.lost or "its epoch changed under a write")
            raise CatalogueLost(self._lost_message())
        return result

    def _lost_message(self) -> str:
        return (f"the shared catalogue is lost ({self.lost}); this replica serves its last good snapshot "
                f"(version {self._snapshot.version}) and refuses changes until it is restored with "
                "`python -m service.catalogue_io import`")

    def _mark_lost(self, reason: str) -> None:
        if self.lost is None:
            log.error("shared catalogue lost: %s; keeping the last good snapshot (version %d, epoch %s) and "
                      "refusing changes until `python -m service.catalogue_io import` restores it",
                      reason, self._snapshot.version, self.epoch)
        self.lost = reason
        self.metrics.catalogue_lost.set(1)

    # ----------------------------------------------------------------- syncing
    async def _refresh_if_up(self) -> None:
        """Refresh now if Redis answers; otherwise the poller catches up once it is back."""
        try:
            await self._refresh()
        except RedisUnavailable:
            pass

    async def _refresh(self) -> None:
        async with self._refresh_lock:
            if self.epoch is not None and self._snapshot.version == 0 and self.lost is None:
                # Nothing was ever installed here: a Redis that came back empty or anew lost nothing; start afresh.
                # decode_responses=False: replies are bytes (redis-py types them bytes | str).
                raw_epoch = cast(bytes | None,
                                 await self._shared_link.call("catalogue_epoch", lambda r: r.get(self.keys[4])))
                if raw_epoch is None or raw_epoch.decode() != self.epoch:
                    self.epoch = None   # adopt what is there now (a backfill may have created it)
            if self.epoch is None:
                adopted = await self._shared_link.call(
                    "catalogue_adopt", lambda r: self._adopt_script(keys=self.keys[:6], args=[uuid.uuid4().hex],
                                                                    client=r))
                if adopted is None:
                    self._mark_lost("it holds changes but no epoch")
                    return
                self.epoch = adopted.decode() if isinstance(adopted, bytes) else str(adopted)

            async def read(r):
                pipe = r.pipeline(transaction=True)
                pipe.hgetall(self.keys[0])
                pipe.hgetall(self.keys[1])
                pipe.smembers(self.keys[2])
                pipe.get(self.keys[3])
                pipe.get(self.keys[4])
                pipe.get(self.keys[5])
                pipe.get(self.keys[6])
                return await pipe.execute()

            raw_vectors, raw_attributes, raw_deleted, raw_version, raw_epoch, raw_integrity, raw_restored = \
                await self._shared_link.call("catalogue_read", read)
            version = int(raw_version or 0)
            epoch = raw_epoch.decode() if raw_epoch is not None else None
            if epoch != self.epoch:
                restored = json.loads(raw_restored) if raw_restored else None
                if epoch is None or not restored or restored.get("epoch") != epoch:
                    self._mark_lost("its epoch vanished" if epoch is None else f"its epoch changed to {epoch}")
                    return
                log.warning("shared catalogue restored by import (epoch %s, version %d); adopting it",
                            epoch, version)
                self.epoch = epoch
                self.lost = None
                self.metrics.catalogue_lost.set(0)
            elif version < self._snapshot.version:
                self._mark_lost(f"its version went back from {self._snapshot.version} to {version}")
                return
            expected = f"{len(raw_vectors)},{len(raw_deleted)}"
            if version > 0 and (raw_integrity or b"").decode() != expected:
                self._mark_lost(f"its contents ({expected}) do not match the last change "
                                f"({(raw_integrity or b'missing').decode()})")
                return
            vectors = {}
            for k, v in raw_vectors.items():
                vec = from_bytes(v, self.dim)
                if vec is None:
                    log.error("catalogue vector of %r has %d bytes, expected %d; ignored", k, len(v), 4 * self.dim)
                    continue
                vectors[k.decode()] = vec
            deleted = {d.decode() for d in raw_deleted}
            attributes = {}
            for k, v in raw_attributes.items():
                try:
                    attributes[k.decode()] = json.loads(v)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    log.error("catalogue attributes of %r are not JSON; left out", k)
            await self._install(vectors, deleted, version, attributes)

    async def _install(self, vectors: dict[str, np.ndarray], deleted: set[str], version: int,
                       attributes: dict[str, dict[str, Any]]) -> None:
        if self.lost is not None and self.link is not None:
            return
        self._snapshot = await asyncio.to_thread(
            build_snapshot, self.base_table, self.base_ids, vectors, deleted, version, attributes)
        self._publish()

    def _publish(self) -> None:
        self.metrics.catalogue_items.set(self._snapshot.n_active)
        self.metrics.catalogue_version.set(self._snapshot.version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if not self._shared_link.up:
                continue
            try:
                async def poll(r):
                    pipe = r.pipeline(transaction=True)
                    pipe.mget(self.keys[3], self.keys[4], self.keys[5])
                    pipe.hlen(self.keys[0])
                    pipe.scard(self.keys[2])
                    return await pipe.execute()

                (raw_version, raw_epoch, raw_integrity), n_vectors, n_deleted = \
                    await self._shared_link.call("catalogue_poll", poll)
                version = int(raw_version or 0)
                epoch = raw_epoch.decode() if raw_epoch is not None else None
                sealed = version == 0 or (raw_integrity or b"").decode() == f"{n_vectors},{n_deleted}"
                if version != self._snapshot.version or epoch != self.epoch or not sealed:
                    await self._refresh()
            except RedisUnavailable:
                pass
            except Exception:  # a bad value must not end syncing for the life of the process
                task = asyncio.current_task()
                if task is not None and task.cancelling():   # stopped while a command was in flight
                    raise asyncio.CancelledError from None
                log.exception("catalogue refresh failed")
