"""service.bundle_fetch: the init container's download of a bundle into the pod's volume."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from llmemb.bundle import MANIFEST, verify_bundle
from service.bundle_fetch import FetchError, fetch
from tests.servers import shared_test_bundle


def _pack(bundle: Path, archive: Path, top: str = "bundle") -> str:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=top)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A static HTTP server on a free loopback port, over a folder of archives."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetches_verifies_and_keeps_an_unchanged_bundle(http_root, tmp_path):
    root, url = http_root
    bundle = shared_test_bundle()
    sha = _pack(bundle, root / "b.tar.gz")
    dest = tmp_path / "mount"
    dest.mkdir()
    (dest / "stale.txt").write_text("from an older bundle")
    line = fetch(f"{url}/b.tar.gz?X-Signature=secret", dest, sha256=sha)
    fingerprint = json.loads((bundle / MANIFEST).read_text())["fingerprint"]
    assert line == f"bundle {fingerprint} in {dest}"
    assert verify_bundle(dest)["fingerprint"] == fingerprint and not (dest / "stale.txt").exists()
    assert fetch(f"{url}/b.tar.gz", dest) == f"bundle {fingerprint} already in {dest}"


def test_refuses_a_wrong_checksum_a_tampered_bundle_and_a_missing_file(http_root, tmp_path):
    root, url = http_root
    bundle = shared_test_bundle()
    _pack(bundle, root / "ok.tar.gz")
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(f"{url}/ok.tar.gz", tmp_path / "a", sha256="0" * 64)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with (tampered / "items.jsonl").open("a") as f:
        f.write("\n")
    with tarfile.open(root / "bad.tar.gz", "w:gz") as tar:
        tar.add(tampered, arcname="bundle")
    with pytest.raises(FetchError, match="refused"):
        fetch(f"{url}/bad.tar.gz", tmp_path / "b")
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetch(f"{url}/missing.tar.gz?token=secret", tmp_path / "c")
    assert "secret" not in str(err.value)   # pre-signed URLs carry credentials in the query
    assert not any((tmp_path / "b").iterdir())   # nothing half-written is left in place


def test_refuses_an_archive_that_escapes_its_directory(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        data = b"x"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(FetchError, match="cannot unpack"):
        fetch(archive.as_uri(), tmp_path / "dest", is_bundle=False)
    assert not (tmp_path / "outside.txt").exists()


def test_a_plain_directory_such_as_a_base_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    archive = tmp_path / "model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(model, arcname="llama-7b")
    fetch(archive.as_uri(), tmp_path / "dest", is_bundle=False)
    assert (tmp_path / "dest" / "config.json").read_text() == "{}"
