"""The service when things go wrong: Redis dies and returns, the queue overflows,
SIGTERM arrives with requests in flight, a bundle fails verification (the process exits non-zero)."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from llmemb_client import LLMEmbClient, LLMEmbError
from llmemb_testing.servers import (
    SHIPPED_CATALOGUE_REDIS,
    RedisServer,
    ServiceProcess,
    shared_test_bundle,
    wait_for,
)
from service.cache import cache_key

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def flaky_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    if server.proc is not None:
        server.stop()


def broken_copy(root: Path, name: str, damage) -> Path:
    copy = root / name
    shutil.copytree(shared_test_bundle(), copy)
    damage(copy)
    return copy


def flip_a_byte(bundle: Path) -> None:
    target = bundle / "backbone.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))


def edit_the_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["dims"]["item"] += 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def tampered_bundle(tmp_path_factory):
    return broken_copy(tmp_path_factory.mktemp("tampered"), "bundle", flip_a_byte)


@pytest.fixture(scope="module")
def services(flaky_redis, tampered_bundle, logs):
    """Three processes started together (their start-up overlaps): redis-backed, local, broken."""
    bundle = shared_test_bundle()
    procs = {
        # No in-process LRU: every cache hit has to come from Redis.
        "redis": ServiceProcess(bundle, logs, env={
            "LLMEMB_REDIS_URL": flaky_redis.url, "LLMEMB_LRU_SIZE": "0", "LLMEMB_REDIS_BACKOFF_MAX_S": "0.3",
            "LLMEMB_CATALOGUE_POLL_MS": "100"}),
        # No Redis; a small queue and a long batching wait make overload deterministic.
        "local": ServiceProcess(bundle, logs, env={
            "LLMEMB_QUEUE_SIZE": "8", "LLMEMB_MAX_ITEMS_PER_REQUEST": "8", "LLMEMB_MAX_BATCH_SIZE": "4",
            "LLMEMB_MAX_BATCH_TOKENS": "256", "LLMEMB_MAX_WAIT_MS": "1000"}),
        "broken": ServiceProcess(tampered_bundle, logs),
    }
    for p in procs.values():
        p.start()
    try:
        procs["redis"].wait_ready()
        procs["local"].wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def movie(title: str) -> dict:
    return {"title": title, "year": 1999, "genres": ["Drama"]}


def test_redis_outage_degrades_then_recovers(services, flaky_redis):
    with LLMEmbClient(services["redis"].url) as c:
        ready = c.ready()
        assert (ready.cache, ready.cache_backend, ready.catalogue) == ("ok", "redis", "shared")
        assert c.embed_items([{"attributes": movie("Before")}]).data[0].cached is False
        assert c.embed_items([{"attributes": movie("Before")}]).data[0].cached is True

        flaky_redis.stop()
        started = time.monotonic()
        during = c.embed_items([{"attributes": movie("Before")}, {"attributes": movie("During")}])
        assert [d.cached for d in during.data] == [False, False]
        assert time.monotonic() - started < 2.0, "a dead Redis must not stall requests"
        ready = c.ready()
        assert ready.ready and (ready.cache, ready.catalogue) == ("degraded", "degraded")
        assert len(c.recommend(["1", "2"], k=3).items) == 3
        with pytest.raises(LLMEmbError) as err:
            c.put_item("while-down", movie("While Down"))
        assert (err.value.status, err.value.code) == (503, "catalogue_unavailable")
        metrics = c.metrics()
        assert 'llmemb_redis_up{role="cache"} 0.0' in metrics
        errors = sum(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("llmemb_cache_errors_total{"))
        assert errors >= 1

        flaky_redis.start()  # same port, empty (no persistence)
        wait_for(lambda: c.ready().cache == "ok", 5, what="cache back to ok")
        after = c.embed_items([{"attributes": movie("After")}])
        assert after.data[0].cached is False
        assert c.embed_items([{"attributes": movie("After")}]).data[0].cached is True
        fingerprint = c.info().fingerprint
        prompt = "The movie has the following attributes: \ntitle is After; year is 1999; genres is Drama"
        stored = redis.Redis(port=flaky_redis.port).get(cache_key(fingerprint, "item", prompt))
        assert np.array_equal(np.frombuffer(stored, "<f4"), np.array(after.data[0].embedding, np.float32))
        assert c.put_item("after-outage", movie("After")).created
        assert "after-outage" in {i.id for i in c.recommend(["1"], k=100).items}


def test_local_mode_without_redis(services):
    with LLMEmbClient(services["local"].url) as c:
        ready = c.ready()
        assert (ready.cache, ready.cache_backend, ready.catalogue) == ("ok", "memory", "local")
        assert c.embed_items([{"attributes": movie("Local")}]).data[0].cached is False
        assert c.embed_items([{"attributes": movie("Local")}]).data[0].cached is True
        assert c.put_item("local-1", movie("Local")).created
        assert c.info().catalogue.shared is False and c.info().catalogue.added == 1
        assert c.delete_item("local-1").deleted
    # No LLMEMB_API_KEYS here: the operator is told at start-up, in the JSON log.
    warnings = [json.loads(line) for line in services["local"].log_path.read_text().splitlines()
                if line.startswith("{") and "no API key is set" in line]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["logger"] == "llmemb.service"


def test_full_queue_answers_429_with_retry_after(services):
    """3 + 6 texts do not fit a queue of 8: whichever request comes second is refused."""
    url = services["local"].url
    answers: list[httpx.Response] = []

    def post(prefix: str, n: int):
        answers.append(httpx.post(f"{url}/v1/items/embed", timeout=30, json={
            "items": [{"attributes": movie(f"{prefix} {i}")} for i in range(n)]}))

    t = threading.Thread(target=post, args=("Queued", 3))
    t.start()
    wait_for(lambda: "llmemb_queue_depth 3.0" in httpx.get(f"{url}/metrics").text, 10, 0.01,
             "the 3 texts waiting in the queue for a fuller batch (max wait 1 s)")
    post("Overflow", 6)
    t.join()
    assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
    assert 'llmemb_rejected_total{reason="queue_full"} 1.0' in httpx.get(f"{url}/metrics").text


def test_tampered_bundle_is_refused_with_the_file_named(services):
    broken = services["broken"]
    wait_for(lambda: broken.proc.poll() is not None, 60, what="the process to exit")
    assert broken.proc.returncode == 1
    assert "refused: backbone.safetensors: sha256 does not match" in broken.log()


@pytest.mark.parametrize("name, damage, named", [
    ("missing-file", lambda b: (b / "adapter.safetensors").unlink(), "adapter.safetensors: listed in the manifest but missing"),
    ("edited-manifest", edit_the_manifest, "manifest.json: fingerprint does not match"),
])
def test_a_bundle_failing_verification_exits_non_zero(name, damage, named, tmp_path, logs):
    service = ServiceProcess(broken_copy(tmp_path, name, damage), logs).start()
    try:
        wait_for(lambda: service.proc.poll() is not None, 60, what="the process to exit")
        assert service.proc.returncode == 1 and named in service.log()
    finally:
        service.stop()


def test_sigterm_finishes_requests_in_flight(logs):
    """32 requests waiting in the batch queue when SIGTERM arrives all get their answers."""
    proc = ServiceProcess(shared_test_bundle(), logs, env={
        "LLMEMB_MAX_WAIT_MS": "1500", "LLMEMB_MAX_BATCH_SIZE": "64", "LLMEMB_QUEUE_SIZE": "64"}).start()
    proc.wait_ready()
    results: list[int] = []

    def request(i: int):
        r = httpx.post(f"{proc.url}/v1/items/embed", timeout=60,
                       json={"items": [{"attributes": movie(f"In Flight {i}")}]})
        results.append(r.status_code)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    wait_for(lambda: "llmemb_queue_depth 32.0" in httpx.get(f"{proc.url}/metrics").text, 10, 0.01,
             "32 texts waiting for the batch (max wait 1.5 s)")
    code = proc.stop()
    for t in threads:
        t.join()
    assert results == [200] * 32
    assert code == -15 and proc.shut_down_cleanly()


def test_redis_killed_under_load_loses_no_item_and_answers_no_5xx(tmp_path, logs):
    """The shipped catalogue Redis (AOF every second, noeviction) is SIGKILLed while 8 clients read:
    no 5xx, /readyz degraded then ok, and every catalogue change made before is still there."""
    server = RedisServer(tmp_path / "redis", args=SHIPPED_CATALOGUE_REDIS).start()
    service = ServiceProcess(shared_test_bundle(), logs, env={
        "LLMEMB_REDIS_URL": server.url, "LLMEMB_REDIS_BACKOFF_MAX_S": "0.3", "LLMEMB_CATALOGUE_POLL_MS": "100"})
    service.start()
    try:
        service.wait_ready()
        url = service.url
        with LLMEmbClient(url) as c:
            added = [f"kept-{i}" for i in range(20)]
            for item_id in added:
                c.put_item(item_id, movie(item_id))
            c.delete_item("3")
            version = c.info().catalogue.version
            c.embed_items([{"attributes": movie("Cached")}])
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk

        statuses: list[int] = []
        stop = threading.Event()

        def reader(i: int) -> None:
            bodies = [("/v1/items/embed", {"items": [{"attributes": movie("Cached")}]}),
                      ("/v1/recommend", {"history": ["1", "2", added[i]], "k": 5}),
                      ("/v1/score", {"history": ["1", added[i]], "candidates": ["4", added[-1 - i]]})]
            with httpx.Client(base_url=url, timeout=30) as h:
                n = 0
                while not stop.is_set():
                    path, body = bodies[n % 3]
                    statuses.append(h.post(path, json=body).status_code)
                    statuses.append(h.get(f"/v1/items/{added[i]}").status_code)
                    n += 1

        def answered_more(n: int) -> None:
            """Wait until the readers have had n more answers than now."""
            start = len(statuses)
            wait_for(lambda: len(statuses) >= start + n, 30, 0.01, f"{n} more answers to the readers")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        answered_more(50)
        server.kill()
        with LLMEmbClient(url) as c:
            wait_for(lambda: c.ready().cache == "degraded", 10, what="/readyz degraded")
            answered_more(50)   # traffic while Redis is down
            server.start()  # same port, same directory: the AOF is replayed
            wait_for(lambda: (c.ready().cache, c.ready().catalogue) == ("ok", "shared"), 15, what="/readyz ok")
            answered_more(50)   # and after it is back
            stop.set()
            for t in threads:
                t.join()
            assert len(statuses) > 100 and not [s for s in statuses if s >= 500]
            assert set(statuses) == {200}
            info = c.info().catalogue
            assert (info.version, info.added, info.deleted) == (version, 20, 1)
            ids = {item.id for item in c.recommend(["1"], k=100, exclude_seen=False).items}
            assert set(added) <= ids and "3" not in ids
            assert c.put_item("after-kill", movie("After Kill")).created
    finally:
        service.stop()
        server.stop()


def test_a_killed_model_process_answers_503_then_is_replaced(logs):
    """SIGKILL the model process: embedding answers 503 model_unavailable (never a 500, never a hang),
    recommend goes on, and a new model process serves within seconds."""
    import psutil

    proc = ServiceProcess(shared_test_bundle(), logs).start()
    try:
        proc.wait_ready()
        with LLMEmbClient(proc.url) as c:
            assert c.ready().model == "up"
            children = [ch for ch in psutil.Process(proc.pid).children()
                        if "resource_tracker" not in " ".join(ch.cmdline())]
            assert len(children) == 1
            # Start times are wall-clock (boot time + ticks), and the two readers may take the boot time
            # at different moments: a step of the system clock between them shifts one and not the
            # other. So the metric is checked by differences: it moves as the children's start times do.
            first_metric, first_created = model_started(c.metrics()), children[0].create_time()
            children[0].kill()
            children[0].wait(10)
            with pytest.raises(LLMEmbError) as err:
                c.embed_items([{"attributes": movie("After The Kill")}])
            assert (err.value.status, err.value.code) == (503, "model_unavailable")
            assert len(c.recommend(["1", "2"], k=3).items) == 3   # scoring never needed the model process
            wait_for(lambda: c.ready().model == "up", 60, 0.2, "a new model process")
            assert c.embed_items([{"attributes": movie("After The Kill")}]).data[0].cached is False
            assert "llmemb_model_restarts_total 1.0" in c.metrics()
            new = [ch for ch in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(ch.cmdline())]
            moved = model_started(c.metrics()) - first_metric        # the new one's start, not the old one's
            assert moved > 0 and moved == pytest.approx(new[0].create_time() - first_created, abs=1.0)
    finally:
        proc.stop()
    # Both processes log JSON lines, no progress bars. Python's own resource tracker (a helper process
    # multiprocessing starts, with no logging set up) warns in plain text about the killed child's semaphore.
    text = proc.log_path.read_text().replace(
        "  warnings.warn('resource_tracker: There appear to be %d '\n", "")
    records = [json.loads(line) for line in text.splitlines() if line.strip() and "resource_tracker.py" not in line]
    assert any("model process restarted" in r["message"] for r in records)


def model_started(metrics: str) -> float:
    """The model process's start time, from the service's /metrics (llmemb_model_process_*)."""
    line = next(x for x in metrics.splitlines() if x.startswith("llmemb_model_process_start_time_seconds "))
    return float(line.split()[1])
