"""Both Redis behind a password (k8s sets LLMEMB_REDIS_PASSWORD from a Secret and keeps it out of every
URL): the service, the backfill's connection and the catalogue export authenticate with it, and a
client without it is refused."""
from __future__ import annotations

import httpx
import pytest
import redis

from llmemb_testing.servers import RedisServer, ServiceProcess, shared_test_bundle
from service.backfill.config import BackfillError
from service.backfill.store import connect
from service.catalogue_io import main as catalogue_io_main

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)

PASSWORD = "0f3a9c27d1e84b6b"


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"),
                         args=["--save", "", "--appendonly", "no", "--requirepass", PASSWORD]).start()
    yield server
    server.stop()


def test_tools_use_the_password_from_the_environment_and_fail_clearly_without(locked, monkeypatch, tmp_path):
    monkeypatch.delenv("LLMEMB_REDIS_PASSWORD", raising=False)
    with pytest.raises(BackfillError, match=r"Redis at redis://127.0.0.1:\d+/0 is unavailable .*(authenticat|NOAUTH)"):
        connect(locked.url)
    monkeypatch.setenv("LLMEMB_REDIS_PASSWORD", PASSWORD)
    assert connect(locked.url).ping()
    # a password in the URL wins over the variable
    monkeypatch.setenv("LLMEMB_REDIS_PASSWORD", "wrong")
    assert connect(f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0").ping()
    monkeypatch.setenv("LLMEMB_REDIS_PASSWORD", PASSWORD)
    out = tmp_path / "catalogue.jsonl"
    assert catalogue_io_main(["export", "--bundle", str(shared_test_bundle()), "--redis-url", locked.url,
                              "--out", str(out)]) == 0
    assert out.read_text().startswith("{")


def test_the_service_authenticates_with_the_password_setting(locked, tmp_path):
    env = {"LLMEMB_REDIS_URL": locked.url, "LLMEMB_REDIS_PASSWORD": PASSWORD}
    service = ServiceProcess(shared_test_bundle(), tmp_path, env=env).start()
    try:
        service.wait_ready()
        put = httpx.put(f"{service.url}/v1/items/pw-1", json={"attributes": {"title": "Behind a password"}},
                        timeout=60)
        assert put.status_code == 201, put.text
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert 'llmemb_redis_up{role="cache"} 1.0' in metrics
        direct = redis.Redis(port=locked.port, password=PASSWORD)
        assert any(b"pw-1" in direct.hkeys(key) for key in direct.keys("*") if direct.type(key) == b"hash")
        assert PASSWORD not in service.log_path.read_text()     # never logged
    finally:
        service.stop()
