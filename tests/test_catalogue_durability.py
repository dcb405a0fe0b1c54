"""A shared catalogue that went backwards or vanished is refused, not rebuilt; an export
imported back restores it on every replica without a restart (real Redis, in process)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
import torch

from llmemb_testing.servers import RedisServer, until
from service.catalogue import Catalogue, CatalogueLost, catalogue_keys
from service.catalogue_io import CatalogueFileError, export_catalogue, import_catalogue
from service.catalogue_io import main as catalogue_io_main
from service.metrics import Metrics
from service.redis_link import RedisLink

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)

FP = "fp0123456789abcdef"


def run_async(coro):
    return asyncio.run(coro)


async def replicas(url: str, n: int = 2):
    out = []
    for _ in range(n):
        link = RedisLink(url, 0.25, 0.1, Metrics())
        await link.start()
        cat = Catalogue(torch.zeros(3, 2), ["a", "b"], FP, link, 0.02, Metrics())
        await cat.start()
        out.append((link, cat))
    return out


async def close(pairs):
    for link, cat in pairs:
        await cat.stop()
        await link.close()


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis").start()
    yield s
    if s.proc is not None:
        s.stop()


@pytest.mark.parametrize("loss", ["flush", "version_back", "evicted_hash", "new_epoch"])
def test_a_lost_catalogue_is_refused_and_the_last_snapshot_kept(server, loss):
    direct = redis.Redis(port=server.port)
    keys = dict(zip(["vectors", "attributes", "deleted", "version", "epoch", "integrity", "restored"],
                    catalogue_keys(FP)))

    async def main():
        pairs = await replicas(server.url)
        (_, one), (_, two) = pairs
        await one.put("x", np.array([1, 2], np.float32), {"title": "x"})
        await one.delete("a")
        await until(lambda: "x" in two.snapshot.index and "a" not in two.snapshot.index)
        good = two.snapshot
        if loss == "flush":                 # a restart without persistence
            direct.flushall()
        elif loss == "version_back":
            direct.set(keys["version"], 1)
        elif loss == "evicted_hash":        # eviction took one key, not the others
            direct.delete(keys["vectors"])
        else:                               # someone else's catalogue
            direct.set(keys["epoch"], "another")
        await until(lambda: one.state == "lost" and two.state == "lost")
        with pytest.raises(CatalogueLost, match="catalogue_io import"):
            await two.put("y", np.ones(2, np.float32), {"title": "y"})
        with pytest.raises(CatalogueLost):
            await one.delete("b")
        gauge = two.metrics.catalogue_lost._value.get()
        await asyncio.sleep(0.1)
        kept = two.snapshot
        await close(pairs)
        return good, kept, gauge

    good, kept, gauge = run_async(main())
    assert kept is good and "x" in kept.index and "a" not in kept.index
    assert gauge == 1
    # nothing was written over the lost catalogue: no write rebuilt a version
    if loss == "flush":
        assert direct.get(keys["version"]) is None and direct.get(keys["epoch"]) is None


def test_export_then_import_restores_every_replica_without_a_restart(server, tmp_path):
    direct = redis.Redis(port=server.port)
    out = tmp_path / "catalogue.jsonl"

    async def main():
        pairs = await replicas(server.url)
        (_, one), (_, two) = pairs
        await one.put("x", np.array([1.5, -2], np.float32), {"title": "x", "year": 2001})
        await one.put("b", np.array([7, 7], np.float32), {"title": "b2"})
        await one.delete("a")
        await until(lambda: two.snapshot.version == 3)
        summary = export_catalogue(direct, FP, out)
        direct.flushall()
        await until(lambda: one.state == "lost" and two.state == "lost")
        restored = import_catalogue(direct, FP, 2, out)
        await until(lambda: one.state == "shared" and two.state == "shared")
        snap = two.snapshot
        after = await one.put("y", np.ones(2, np.float32), {"title": "y"})
        await until(lambda: "y" in two.snapshot.index)
        await close(pairs)
        return summary, restored, snap, after

    summary, restored, snap, after = run_async(main())
    assert (summary["items"], summary["deleted"], summary["version"]) == (2, 1, 3)
    assert restored["version"] == 4 and restored["items"] == 2 and restored["deleted"] == 1
    assert snap.index.keys() == {"b", "x"} and snap.table[snap.index["x"]].tolist() == [1.5, -2]
    assert snap.table[snap.index["b"]].tolist() == [7, 7]
    assert after == (True, 5)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["fingerprint"] == FP and {row["id"] for row in lines[1:]} == {"a", "b", "x"}


def test_import_refuses_other_bundles_bad_lines_and_a_live_catalogue(server, tmp_path):
    direct = redis.Redis(port=server.port)
    path = tmp_path / "c.jsonl"
    header = {"llmemb_catalogue": 1, "fingerprint": FP, "epoch": "e", "version": 2}
    good = {"id": "x", "attributes": {}, "vector_b64": "AACAPwAAAEA="}   # [1.0, 2.0]
    cases = {
        "exported for bundle zzz": [{**header, "fingerprint": "zzz"}],
        ":2: vector has 1 floats": [header, {**good, "vector_b64": "AACAPw=="}],
        ":3: id 'x' appears twice": [header, good, good],
        ":2: Expecting value": None,
    }
    for message, rows in cases.items():
        if rows is None:
            path.write_text(json.dumps(header) + "\nnot json\n")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(CatalogueFileError, match=message):
            import_catalogue(direct, FP, 2, path)
    path.write_text(json.dumps(header) + "\n" + json.dumps(good) + "\n")
    assert import_catalogue(direct, FP, 2, path)["items"] == 1
    with pytest.raises(CatalogueFileError, match="--replace"):
        import_catalogue(direct, FP, 2, path)
    assert import_catalogue(direct, FP, 2, path, replace=True)["version"] == 3


def test_the_command_line_round_trip(server, tmp_path):
    from llmemb.bundle import read_manifest
    from llmemb_testing.servers import shared_test_bundle
    bundle = shared_test_bundle()
    manifest = read_manifest(bundle)
    fp, dim = manifest.fingerprint, manifest.dims.item
    direct = redis.Redis(port=server.port)
    keys = catalogue_keys(fp)
    direct.hset(keys[0], "new", np.arange(dim, dtype="<f4").tobytes())
    direct.hset(keys[1], "new", json.dumps({"title": "new"}))
    direct.set(keys[3], 1)
    direct.set(keys[4], "epoch-1")
    out = tmp_path / "export.jsonl"
    assert catalogue_io_main(["export", "--bundle", str(bundle), "--redis-url", server.url, "--out", str(out)]) == 0
    direct.flushall()
    # the same through the installed command: `llmemb catalogue import ...`
    command = [sys.executable, "-m", "llmemb_cli", "catalogue", "import", "--bundle", str(bundle),
               "--redis-url", server.url, "--in", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items"] == 1
    assert direct.hget(keys[0], "new") == np.arange(dim, dtype="<f4").tobytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "catalogue import failed" in again.stderr


# ------------------------------------------------ the shipped Redis configuration
PASSWORD = "durability-test-password"


def shipped_redis_args(service: str) -> list[str]:
    """The redis-server arguments docker-compose.yml gives `service`, minus the binary name, with the
    password variable interpolated as compose does (to PASSWORD)."""
    from pathlib import Path

    import yaml
    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    command = [PASSWORD if arg.startswith("${LLMEMB_REDIS_PASSWORD") else arg
               for arg in compose["services"][service]["command"]]
    return command[1:] if command[0] == "redis-server" else command


def with_maxmemory(args: list[str], value: str) -> list[str]:
    out = list(args)
    out[out.index("--maxmemory") + 1] = value
    return out


def test_eviction_pressure_never_loses_a_catalogue_item(tmp_path):
    """The shipped layout under memory pressure: the cache Redis (allkeys-lru) evicts vectors freely;
    the catalogue's own Redis (AOF, noeviction) refuses the write that does not fit, loudly, and loses
    nothing. Both servers run with the compose arguments, maxmemory cut to 2 MB."""
    cat_args = shipped_redis_args("redis-catalogue")
    assert {"--appendonly", "yes", "--maxmemory-policy", "noeviction", "--appendfsync", "everysec"} <= set(cat_args)
    cache_server = RedisServer(tmp_path / "cache", args=with_maxmemory(shipped_redis_args("redis"), "2mb")).start()
    cat_server = RedisServer(tmp_path / "catalogue", args=with_maxmemory(cat_args, "2mb")).start()
    dim = 64
    try:
        async def main():
            from service.catalogue import CatalogueUnavailable
            link = RedisLink(cat_server.url, 0.5, 0.1, Metrics(), role="catalogue", password=PASSWORD)
            await link.start()
            cat = Catalogue(torch.zeros(3, dim), ["a", "b"], FP, link, 0.02, Metrics())
            await cat.start()
            cache = redis.Redis(port=cache_server.port, password=PASSWORD)
            for i in range(3000):           # a backfill of 3,000 LLM-stage vectors (384 floats)
                cache.set(f"llmemb:{FP}:emb:llm:{i}", np.random.rand(384).astype("<f4").tobytes())
            put, refused = [], None
            for i in range(5000):
                try:
                    await cat.put(f"item-{i}", np.full(dim, i, np.float32), {"title": "t" * 2000})
                    put.append(f"item-{i}")
                except CatalogueUnavailable as e:
                    refused = str(e)
                    break
            await cat._refresh()
            snap, state, up = cat.snapshot, cat.state, link.up
            await cat.stop()
            await link.close()
            evicted = int(cache.info("stats")["evicted_keys"])
            return put, refused, snap, state, up, evicted

        put, refused, snap, state, up, evicted = run_async(main())
        assert evicted > 0                                  # the cache did evict under the same pressure
        assert refused is not None and "maxmemory" in refused   # the catalogue said no instead of dropping keys
        assert len(put) > 100 and all(i in snap.index for i in put)
        assert snap.table[snap.index[put[-1]]][0].item() == len(put) - 1
        assert state == "shared" and up                     # a refused write is not a dead Redis
        assert cat_server.workdir.joinpath("appendonlydir").is_dir()
    finally:
        cache_server.stop()
        cat_server.stop()


def test_a_service_with_its_own_catalogue_redis_survives_losing_it(tmp_path):
    """Real process: the catalogue in its own Redis; that Redis restarted empty -> the replica keeps
    serving the items it had, says lost, refuses writes (503 catalogue_lost); an import restores it."""
    import httpx

    from llmemb.bundle import read_manifest
    from llmemb_testing.servers import ServiceProcess, shared_test_bundle
    bundle = shared_test_bundle()
    fp = read_manifest(bundle).fingerprint
    cache_server = RedisServer(tmp_path / "cache").start()
    cat_server = RedisServer(tmp_path / "catalogue").start()
    service = ServiceProcess(bundle, tmp_path, env={"LLMEMB_REDIS_URL": cache_server.url,
                                                    "LLMEMB_CATALOGUE_REDIS_URL": cat_server.url,
                                                    "LLMEMB_CATALOGUE_POLL_MS": "50"}).start()
    try:
        service.wait_ready()
        url = service.url
        put = httpx.put(f"{url}/v1/items/kept", json={"attributes": {"title": "Kept"}}, timeout=60)
        assert put.status_code == 201, put.text
        keys = catalogue_keys(fp)
        assert redis.Redis(port=cat_server.port).hexists(keys[0], "kept")
        assert not redis.Redis(port=cache_server.port).exists(keys[0])
        out = tmp_path / "export.jsonl"
        assert catalogue_io_main(["export", "--bundle", str(bundle), "--redis-url", cat_server.url,
                                  "--out", str(out)]) == 0
        cat_server.stop()
        cat_server.start()                                  # back, empty: no persistence in this test server

        def ready():
            return httpx.get(f"{url}/readyz", timeout=5).json()

        deadline = time.monotonic() + 10
        while ready()["catalogue"] != "lost":
            assert time.monotonic() < deadline, ready()
            time.sleep(0.05)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200          # still serving
        assert httpx.get(f"{url}/v1/items/kept", timeout=10).status_code == 200  # the last good snapshot
        refused = httpx.put(f"{url}/v1/items/other", json={"attributes": {"title": "Other"}}, timeout=60)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "catalogue_lost"
        assert "catalogue_io import" in refused.json()["error"]["message"]
        assert not redis.Redis(port=cat_server.port).exists(*keys)              # nothing rebuilt
        assert catalogue_io_main(["import", "--bundle", str(bundle), "--redis-url", cat_server.url,
                                  "--in", str(out)]) == 0
        deadline = time.monotonic() + 10
        while ready()["catalogue"] != "shared":
            assert time.monotonic() < deadline, ready()
            time.sleep(0.05)
        again = httpx.put(f"{url}/v1/items/other", json={"attributes": {"title": "Other"}}, timeout=60)
        assert again.status_code == 201, again.text
        assert httpx.get(f"{url}/v1/items/kept", timeout=10).json()["attributes"] == {"title": "Kept"}
    finally:
        service.stop()
        cache_server.stop()
        cat_server.stop()
