"""The service's parts on their own: top-k, micro-batcher, cache, catalogue, limits, settings, client."""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
import torch

from llmemb_client import LLMEmbClient, LLMEmbError, decode_base64_embedding
from llmemb_testing.servers import RedisServer, until, wait_for
from service.batcher import MicroBatcher, Overloaded, ShuttingDown
from service.cache import LRU, EmbeddingCache, cache_key, from_bytes, to_bytes
from service.catalogue import Catalogue, UnknownItem, build_snapshot
from service.errors import ApiError, field_path
from service.limits import check_attributes, check_ids, check_text
from service.metrics import Metrics
from service.redis_link import RedisLink, RedisUnavailable
from service.scoring import TopK, score_rows, top_k
from service.security import ApiKeyChecker
from service.settings import Settings


# --------------------------------------------------------------------- top-k
@pytest.mark.parametrize("chunk_rows", [0, 777, 20_000])
def test_top_k_matches_brute_force_with_dropped_rows(chunk_rows):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(10_001, 16, generator=g)
    user = torch.randn(16, generator=g)
    drop = torch.cat([torch.tensor([0]), torch.randint(1, 10_001, (500,), generator=g)])
    values, rows = top_k(user, table, 25, drop, chunk_rows)
    scores = table @ user
    scores[drop] = float("-inf")
    expected = torch.argsort(scores, descending=True)[:25]
    assert rows.tolist() == expected.tolist()
    assert torch.allclose(values, scores[expected])
    assert not set(rows.tolist()) & set(drop.tolist())


def test_a_candidate_asked_for_twice_gets_the_same_score():
    g = torch.Generator().manual_seed(0)
    table, user = torch.randn(500, 64, generator=g), torch.randn(64, generator=g)
    rows = torch.tensor([7, 3, 7, 499, 3, 7] + list(range(40)), dtype=torch.long)
    scores = score_rows(user, table, rows)
    assert scores.shape == (len(rows),)
    assert scores[0] == scores[2] == scores[5] and scores[1] == scores[4]
    assert torch.allclose(scores, table[rows] @ user, atol=1e-5)


def test_top_k_reuses_its_buffer_and_grows_it():
    topk = TopK()
    small, big = torch.randn(100, 8), torch.randn(300, 8)
    user = torch.randn(8)
    for table in (small, big, small):
        values, rows = topk(user, table, 5, torch.tensor([0]))
        expected = torch.topk((table @ user)[1:], 5)
        assert rows.tolist() == (expected.indices + 1).tolist() and torch.allclose(values, expected.values)
    assert topk._buffer.shape[0] == 300


def test_top_k_returns_fewer_when_few_rows_are_allowed():
    table = torch.randn(50, 4)
    drop = torch.tensor([r for r in range(50) if r not in (3, 7, 9)] + [9])
    for chunk in (0, 8):
        values, rows = top_k(torch.randn(4), table, 10, drop, chunk)
        assert sorted(rows.tolist()) == [3, 7] and torch.isfinite(values).all()


# ----------------------------------------------------------------- batcher
class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, texts: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(texts))
        if self.fail_on in texts:
            raise RuntimeError("model failed")
        time.sleep(self.delay)
        return [t.upper() for t in texts]


def run_async(coro):
    return asyncio.run(coro)


def in_pool(fn, pool):
    """`fn` as the batcher's async run_batch, run in `pool` (as the model process runs it apart)."""
    async def run(texts):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, texts)

    return run


def test_batcher_batches_under_the_token_budget_sorted_by_length():
    rec = Recorder(delay=0.01)

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
            b = MicroBatcher(in_pool(rec, pool), max_batch_tokens=40, max_batch_size=6, max_wait_s=0.02, queue_size=100,
                             metrics=Metrics())
            b.start()
            texts = [f"t{i}-" + "x" * (i % 7) for i in range(40)]
            tokens = [len(t) for t in texts]
            results = await asyncio.gather(*(b.submit([t], [n]) for t, n in zip(texts, tokens)))
            await b.stop()
            return texts, results

    texts, results = run_async(main())
    assert [r[0] for r in results] == [t.upper() for t in texts]
    assert sum(len(b) for b in rec.batches) == 40
    assert any(len(b) > 1 for b in rec.batches), "concurrent requests must share forward passes"
    for batch in rec.batches:
        lengths = [len(t) for t in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert len(batch) <= 6
        assert len(batch) == 1 or len(batch) * lengths[0] <= 40
    assert rec.threads == {"infer_0"}


def test_batcher_refuses_when_the_queue_is_full_and_drains_on_stop():
    rec = Recorder(delay=0.2)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            b = MicroBatcher(in_pool(rec, pool), max_batch_tokens=1000, max_batch_size=2, max_wait_s=0.0, queue_size=4,
                             metrics=metrics)
            b.start()
            first = asyncio.create_task(b.submit(["a", "b"], [1, 1]))
            await until(lambda: rec.batches == [["a", "b"]], what="a, b in the forward pass")
            queued = asyncio.create_task(b.submit(["c", "d", "e", "f"], [1, 1, 1, 1]))
            await until(lambda: metrics.queue_depth._value.get() == 4, what="c..f queued")
            with pytest.raises(Overloaded) as err:
                await b.submit(["g"], [1])
            assert err.value.retry_after_s >= 1
            stopping = asyncio.create_task(b.stop())
            await until(lambda: b._stopping, what="the batcher stopping")
            with pytest.raises(ShuttingDown):
                await b.submit(["h"], [1])
            await stopping
            return await first, await queued

    first, queued = run_async(main())
    assert first == ["A", "B"] and queued == ["C", "D", "E", "F"]


def test_batcher_failure_reaches_the_callers_and_the_worker_survives():
    rec = Recorder(fail_on="boom")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(in_pool(rec, pool), 1000, 8, 0.0, 100, Metrics())
            b.start()
            with pytest.raises(RuntimeError, match="model failed"):
                await b.submit(["boom", "x"], [1, 1])
            after = await b.submit(["fine"], [1])
            await b.stop()
            return after

    assert run_async(main()) == ["FINE"]


def test_cancelled_requests_are_skipped():
    rec = Recorder(delay=0.1)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            b = MicroBatcher(in_pool(rec, pool), 1000, 1, 0.0, 100, metrics)
            b.start()
            busy = asyncio.create_task(b.submit(["busy"], [1]))
            await until(lambda: rec.batches == [["busy"]], what="busy in the forward pass")
            gone = asyncio.create_task(b.submit(["gone"], [1]))
            await until(lambda: metrics.queue_depth._value.get() == 1, what="gone queued")
            gone.cancel()
            await busy
            await b.stop()

    run_async(main())
    assert ["gone"] not in rec.batches


# ------------------------------------------------------------------- cache
def test_lru_evicts_the_least_recently_used():
    lru = LRU(2)
    lru.put("a", b"1")
    lru.put("b", b"2")
    assert lru.get("a") == b"1"
    lru.put("c", b"3")
    assert lru.get("b") is None and lru.get("a") == b"1" and len(lru) == 2


def test_vector_bytes_are_little_endian_float32():
    v = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    data = to_bytes(v)
    assert data == np.array(v, dtype="<f4").tobytes() and len(data) == 12
    assert np.array_equal(from_bytes(data, 3), v)
    assert from_bytes(data, 4) is None


def test_memory_cache_and_key_format():
    key = cache_key("fp", "pca", "hello")
    assert key == "llmemb:fp:emb:pca:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

    async def main():
        cache = EmbeddingCache("fp", {"item": 3}, None, lru_size=10, ttl_s=None, enabled=True, metrics=Metrics())
        assert cache.state == "ok" and cache.backend == "memory"
        assert await cache.get_many("item", ["p"]) == [None]
        await cache.put_many("item", ["p"], [np.array([1, 2, 3], dtype=np.float32)])
        hit = await cache.get_many("item", ["p", "q"])
        off = EmbeddingCache("fp", {"item": 3}, None, 10, None, enabled=False, metrics=Metrics())
        await off.put_many("item", ["p"], [np.ones(3, np.float32)])
        return hit, off.state, await off.get_many("item", ["p"])

    hit, off_state, off_get = run_async(main())
    assert hit[0].tolist() == [1, 2, 3] and hit[1] is None
    assert off_state == "disabled" and off_get == [None]


@pytest.mark.process
def test_redis_cache_degrades_and_recovers(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        async def main():
            metrics = Metrics()
            link = RedisLink(server.url, timeout_s=0.25, backoff_max_s=0.2, metrics=metrics)
            await link.start()
            cache = EmbeddingCache("fp", {"item": 2}, link, lru_size=0, ttl_s=60, enabled=True, metrics=metrics)
            await cache.put_many("item", ["a"], [np.array([0.5, -1], dtype=np.float32)])
            direct = redis.Redis(port=server.port)
            raw = direct.get(cache_key("fp", "item", "a"))
            ttl = direct.ttl(cache_key("fp", "item", "a"))
            first = await cache.get_many("item", ["a"])
            server.stop()
            started = time.perf_counter()
            during = await cache.get_many("item", ["a"])
            await cache.put_many("item", ["b"], [np.zeros(2, np.float32)])
            again = await cache.get_many("item", ["a"])
            elapsed = time.perf_counter() - started
            state_down = cache.state
            errors = sum(s.value for m in metrics.cache_errors.collect() for s in m.samples
                         if s.name.endswith("_total"))
            server.start()
            for _ in range(100):
                if link.up:
                    break
                await asyncio.sleep(0.05)
            after = await cache.get_many("item", ["b", "a"])
            await cache.put_many("item", ["c"], [np.ones(2, np.float32)])
            resumed = direct.get(cache_key("fp", "item", "c"))
            await link.close()
            return raw, ttl, first, during, again, elapsed, state_down, errors, cache.state, after, resumed

        raw, ttl, first, during, again, elapsed, state_down, errors, state_up, after, resumed = run_async(main())
        assert raw == np.array([0.5, -1], dtype="<f4").tobytes() and 0 < ttl <= 60
        assert first[0].tolist() == [0.5, -1]
        assert during == [None] and again == [None] and elapsed < 1.0
        assert state_down == "degraded" and errors >= 1
        assert state_up == "ok"
        assert after == [None, None]  # a fresh Redis without persistence: empty, but answering
        assert resumed == np.ones(2, dtype="<f4").tobytes()
    finally:
        if server.proc is not None:
            server.stop()


@pytest.mark.process
def test_a_redis_restart_costs_no_command_and_no_flap(tmp_path):
    """Every pooled connection is stale after a restart: each failing command retries once on a
    fresh connection, so the link never goes down while Redis answers again."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        async def main():
            link = RedisLink(server.url, timeout_s=0.5, backoff_max_s=0.2, metrics=Metrics())
            await link.start()
            # fill the pool with several idle connections
            await asyncio.gather(*(link.call("t", lambda r: r.set(f"k{i}", i)) for i in range(8)))
            idle = len(link.client.connection_pool._available_connections)
            server.stop()
            server.start()
            results = [await link.call("t", lambda r: r.ping()) for _ in range(10)]
            concurrent = await asyncio.gather(*(link.call("t", lambda r: r.ping()) for _ in range(8)))
            state = (link.up, link.transitions)
            await link.close()
            return idle, results, concurrent, state

        idle, results, concurrent, (up, transitions) = run_async(main())
        assert idle >= 2
        assert all(results) and all(concurrent)
        assert up and transitions == 0
    finally:
        if server.proc is not None:
            server.stop()


@pytest.mark.process
def test_coming_back_up_needs_consecutive_good_probes(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        async def main():
            link = RedisLink(server.url, timeout_s=0.25, backoff_max_s=0.1, metrics=Metrics(), up_probes=3)
            await link.start()
            server.stop()
            with pytest.raises(RedisUnavailable):
                await link.call("t", lambda r: r.ping())
            down_transitions = link.transitions
            link._probe_task.cancel()          # probe by hand only: the background loop would race
            with contextlib.suppress(asyncio.CancelledError):
                await link._probe_task
            link._probe_task = None
            server.start()
            first = await link._probe()        # one good probe is not enough after a failure
            second = await link._probe()
            third = await link._probe()
            state = (down_transitions, first, second, third, link.up, link.transitions)
            await link.close()
            return state

        down_transitions, first, second, third, up, transitions = run_async(main())
        assert down_transitions == 1 and (first, second, third) == (False, False, True)
        assert up and transitions == 2
    finally:
        if server.proc is not None:
            server.stop()


# --------------------------------------------------------------- catalogue
def test_snapshot_overlays_added_replaced_and_deleted_items():
    base = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # row 0 padding + 3 items
    snap = build_snapshot(base, ["a", "b", "c"], {"b": np.full(3, 9, np.float32), "z": np.ones(3, np.float32)},
                          {"c"}, version=7)
    assert snap.version == 7 and snap.ids == ["", "a", "b", "c", "z"]
    assert snap.index == {"a": 1, "b": 2, "z": 4}
    assert snap.blocked_rows.tolist() == [0, 3]
    assert snap.table[2].tolist() == [9, 9, 9] and snap.table[4].tolist() == [1, 1, 1]
    assert torch.equal(base[1], snap.table[1])
    assert (snap.n_bundle, snap.n_added, snap.n_deleted, snap.n_active) == (3, 1, 1, 3)


def test_local_catalogue_put_delete():
    async def main():
        cat = Catalogue(torch.zeros(3, 2), ["a", "b"], "fp", None, 0.1, Metrics())
        await cat.start()
        out = [await cat.put("new", np.ones(2), {"t": 1}), await cat.put("new", np.full(2, 2.0), {"t": 2})]
        await cat.delete("a")
        with pytest.raises(UnknownItem):
            await cat.delete("a")
        with pytest.raises(UnknownItem):
            await cat.delete("never")
        out.append(await cat.put("a", np.full(2, 3.0), {"t": 3}))
        await cat.stop()
        return out, cat.snapshot, cat.state

    out, snap, state = run_async(main())
    assert out == [(True, 1), (False, 2), (True, 4)]
    assert state == "local" and snap.index == {"a": 1, "b": 2, "new": 3}
    assert snap.table[3].tolist() == [2, 2] and snap.table[1].tolist() == [3, 3]


@pytest.mark.process
def test_two_catalogues_share_changes_through_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        async def main():
            links = [RedisLink(server.url, 2.0, 0.2, Metrics()) for _ in range(2)]
            cats = []
            for link in links:
                await link.start()
                cats.append(Catalogue(torch.zeros(3, 2), ["a", "b"], "fp", link, 0.05, Metrics()))
                await cats[-1].start()
            one, two = cats
            # a loaded machine may miss the first read; the poller adopts the shared catalogue soon after
            await until(lambda: one.epoch is not None and two.epoch is not None, what="both catalogues read")
            created, version = await one.put("x", np.array([1, 2], np.float32), {"title": "x"})
            await until(lambda: "x" in two.snapshot.index, what="the put seen by the other replica")
            await two.delete("b")
            await until(lambda: "b" not in one.snapshot.index, what="the delete seen by the other replica")
            with pytest.raises(UnknownItem):
                await one.delete("b")
            replaced = await two.put("x", np.array([5, 5], np.float32), {"title": "x2"})
            await until(lambda: one.snapshot.table[one.snapshot.index["x"]].tolist() == [5, 5],
                        what="the replacement seen by the other replica")
            attrs = json.loads(redis.Redis(port=server.port).hget("llmemb:fp:cat:attributes", "x"))
            for c in cats:
                await c.stop()
            for link in links:
                await link.close()
            return created, version, replaced, one.snapshot, attrs

        created, version, replaced, snap, attrs = run_async(main())
        assert created and version == 1
        assert replaced == (False, 3)
        assert snap.index == {"a": 1, "x": 3} and snap.blocked_rows.tolist() == [0, 2]
        assert attrs == {"title": "x2"}
    finally:
        server.stop()


# ------------------------------------------------- limits, settings, security
def limited_settings(**kw) -> Settings:
    return Settings(bundle_path="/nonexistent", max_attributes_per_item=3, max_attribute_chars=10,
                    max_list_values=2, max_history=3, **kw)


def test_limits_name_the_field():
    s = limited_settings()
    cases = [
        ({}, "items[0].attributes", "empty_attributes"),
        ({"a": None, "b": ""}, "items[0].attributes", "empty_attributes"),
        ({"a": 1, "b": 2, "c": 3, "d": 4}, "items[0].attributes", "limit_exceeded"),
        ({"title": "x" * 11}, "items[0].attributes.title", "limit_exceeded"),
        ({"genres": ["a", "b", "c"]}, "items[0].attributes.genres", "limit_exceeded"),
        ({"genres": ["a", "y" * 11]}, "items[0].attributes.genres", "limit_exceeded"),
        ({"price": float("nan")}, "items[0].attributes.price", "invalid_attribute"),
        ({"price": float("inf")}, "items[0].attributes.price", "invalid_attribute"),
        ({"price": -float("inf")}, "items[0].attributes.price", "invalid_attribute"),
        ({"title": "\ud800x"}, "items[0].attributes.title", "invalid_attribute"),
        ({"genres": ["a", "\udfff"]}, "items[0].attributes.genres", "invalid_attribute"),
        ({"ti\ud800": "x"}, "items[0].attributes", "invalid_attribute"),
    ]
    for attrs, field, code in cases:
        with pytest.raises(ApiError) as err:
            check_attributes("items[0].attributes", attrs, s)
        assert (err.value.status, err.value.field, err.value.code) == (422, field, code), attrs
    check_attributes("items[0].attributes", {"title": "ok", "genres": ["a", "b"], "year": 1995}, s)
    with pytest.raises(ApiError) as err:
        check_ids("history", ["1", "2", "3", "4"], s, s.max_history, "max_history")
    assert err.value.field == "history" and "LLMEMB_MAX_HISTORY" in err.value.message
    with pytest.raises(ApiError) as err:
        check_ids("history", ["1", " "], s, s.max_history, "max_history")
    assert err.value.field == "history[1]"
    for bad, what in (("\ud800", "U+D800"), ("a\x00", "U+0000"), ("b\x1f", "U+001F"), ("c\x7f", "U+007F")):
        with pytest.raises(ApiError) as err:
            check_ids("history", ["1", bad], s, s.max_history, "max_history")
        assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_id", "history[1]")
        assert what in err.value.message and bad not in err.value.message
        err.value.message.encode("utf-8")  # the error itself encodes
    with pytest.raises(ApiError) as err:
        check_text("input[2]", "x\udc00", s)
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_input", "input[2]")


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("LLMEMB_BUNDLE_PATH", "/b")
    monkeypatch.setenv("LLMEMB_API_KEYS", "k1, k2,")
    monkeypatch.setenv("LLMEMB_REDIS_URL", "")
    monkeypatch.setenv("LLMEMB_MAX_K", "7")
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(s) and s.redis_url is None and s.max_k == 7
    with pytest.raises(ValueError, match="queue_size"):
        Settings(bundle_path="/b", queue_size=8, max_items_per_request=16, max_batch_size=4)


def test_api_key_matching():
    from pydantic import SecretStr

    checker = ApiKeyChecker([SecretStr("alpha"), SecretStr("beta")])
    assert checker.enabled and checker.matches("beta") and not checker.matches("bet") and not checker.matches("")
    assert not ApiKeyChecker([]).enabled


def test_field_paths():
    assert field_path(("body", "items", 3, "attributes", "title")) == "items[3].attributes.title"
    assert field_path(("body",)) == "body"
    assert field_path(("query", "k")) == "query.k"


# ------------------------------------------------------------------- client
def test_client_raises_typed_errors_and_retries_after_429():
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if request.url.path == "/v1/recommend" and calls["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "0.01"},
                                  json={"error": {"code": "overloaded", "message": "queue full"}})
        if request.url.path == "/v1/recommend":
            assert request.headers["authorization"] == "Bearer sekret"
            return httpx.Response(200, json={"items": [{"id": "1", "score": 0.5}], "ignored": [],
                                             "catalogue_version": 0})
        return httpx.Response(422, json={"error": {"code": "validation_error", "message": "k: bad", "field": "k"}})

    http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler),
                        headers={"Authorization": "Bearer sekret"})
    with LLMEmbClient("http://test", max_retries=2, http=http) as client:
        answer = client.recommend(["1"], k=1)
        assert answer.items[0].id == "1" and calls["n"] == 2
        with pytest.raises(LLMEmbError) as err:
            client.score(["1"], ["2"])
        assert (err.value.status, err.value.code, err.value.field) == (422, "validation_error", "k")


def test_decode_base64_embedding():
    import base64

    v = np.array([0.25, -1.0], dtype=np.float32)
    assert decode_base64_embedding(base64.b64encode(v.astype("<f4").tobytes()).decode()) == [0.25, -1.0]


def test_wait_for_helper_times_out():
    with pytest.raises(TimeoutError):
        wait_for(lambda: False, 0.05, what="never")


# ------------------------------------------------------------------ process
@pytest.mark.process
def test_the_service_never_imports_the_trainer():
    import subprocess
    import sys

    code = "import sys, service.app, llmemb_client, service.__main__; " \
           "print(sorted(m for m in sys.modules if m == 'trainer' or m.startswith('trainer.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_print_examples_uses_the_bundle_items(tmp_path):
    from service.__main__ import examples

    (tmp_path / "items.jsonl").write_text(
        "\n".join(json.dumps({"id": f"i{n}", "attributes": {"title": f"T{n}"}}) for n in range(5)) + "\n")
    text = examples(Settings(bundle_path=tmp_path, port=9001, api_keys="secret-key-123"))
    assert "http://127.0.0.1:9001/v1/recommend" in text and '"history": ["i0", "i1", "i2"]' in text
    assert "Authorization: Bearer $LLMEMB_API_KEY" in text and "secret-key-123" not in text


@pytest.mark.process
def test_printed_examples_survive_the_shell_with_apostrophes(tmp_path):
    from service.__main__ import examples

    attrs = {"title": "Schindler's List (1993)", "genres": ["Drama", "War"]}
    (tmp_path / "items.jsonl").write_text(json.dumps({"id": "318", "attributes": attrs}) + "\n")
    text = examples(Settings(bundle_path=tmp_path, port=9001))
    embed = next(line for line in text.splitlines() if "/v1/items/embed" in line)
    # bash itself parses the printed line, with curl replaced by a function that prints its arguments
    script = 'curl() { for w in "$@"; do printf "%s\\0" "$w"; done; }\n' + embed.strip()
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split("\0")
    body = json.loads(words[words.index("-d") + 1])
    assert body == {"items": [{"id": "318", "attributes": attrs}]}


def test_operation_ids_are_the_route_names():
    from service.app import create_app

    schema = create_app(Settings(_env_file=None, bundle_path="/nonexistent")).openapi()
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert ids == {"healthz", "readyz", "metrics", "embed_items", "put_items", "put_item", "get_item", "delete_item",
                   "recommend", "score", "embeddings", "models", "info"}


# ------------------------------------------------------------------ schema limits
def test_the_published_schema_carries_the_configured_limits():
    from service.app import create_app

    settings = Settings(_env_file=None, bundle_path="unused", max_items_per_request=5, max_history=7,
                        max_candidates=9, max_k=11, max_id_chars=13, max_attribute_chars=17,
                        max_attributes_per_item=3, max_list_values=4, max_text_chars=19)
    schema = create_app(settings).openapi()
    c = schema["components"]["schemas"]
    assert c["EmbedItemsRequest"]["properties"]["items"]["maxItems"] == 5
    assert c["PutItemsRequest"]["properties"]["items"]["maxItems"] == 5
    history = c["RecommendRequest"]["properties"]["history"]
    assert (history["maxItems"], history["items"]["maxLength"]) == (7, 13)
    assert c["RecommendRequest"]["properties"]["candidates"]["anyOf"][0]["maxItems"] == 9
    assert c["RecommendRequest"]["properties"]["k"]["maximum"] == 11
    assert c["ScoreRequest"]["properties"]["candidates"]["maxItems"] == 9
    attributes = c["CatalogueItemIn"]["properties"]["attributes"]
    assert (attributes["maxProperties"], attributes["propertyNames"]["maxLength"]) == (3, 17)
    string, _, _, _, values = attributes["additionalProperties"]["anyOf"]
    assert (string, values["maxItems"], values["items"]["anyOf"][0]["maxLength"]) == (
        {"type": "string", "maxLength": 17}, 4, 17)
    text, texts = c["EmbeddingsRequest"]["properties"]["input"]["anyOf"]
    assert (text["maxLength"], texts["maxItems"], texts["items"]["maxLength"]) == (19, 5, 19)
    (param,) = schema["paths"]["/v1/items/{item_id}"]["put"]["parameters"]
    assert param["schema"]["maxLength"] == 13


def test_client_retries_connection_errors_then_gives_up(monkeypatch):
    import llmemb_client.client as client_module

    monkeypatch.setattr(client_module, "BACKOFF_S", 0.001)
    failures = {"left": 2, "calls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        failures["calls"] += 1
        if failures["left"] > 0:
            failures["left"] -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"status": "ok"})

    def client(retries: int) -> LLMEmbClient:
        return LLMEmbClient("http://test", max_retries=retries,
                            http=httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler)))

    with client(2) as c:
        assert c.health().status == "ok" and failures["calls"] == 3
    failures.update(left=5, calls=0)
    with client(1) as c, pytest.raises(httpx.ConnectError):
        c.health()
    assert failures["calls"] == 2


def test_async_client_retries_503_after_retry_after():
    from llmemb_client import AsyncLLMEmbClient

    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503, headers={"Retry-After": "0.01"},
                                  json={"error": {"code": "model_unavailable", "message": "restarting"}})
        return httpx.Response(200, json={"items": [], "ignored": [], "catalogue_version": 3})

    async def go():
        http = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(handler))
        async with AsyncLLMEmbClient("http://test", max_retries=1, http=http) as c:
            return await c.recommend(["1"])

    assert asyncio.run(go()).catalogue_version == 3 and calls["n"] == 2


@pytest.mark.process
def test_the_client_needs_neither_torch_nor_numpy_nor_the_service():
    code = ("import sys, llmemb_client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'service', 'llmemb'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
