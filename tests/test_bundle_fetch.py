"""service.bundle_fetch: the init container's download of a bundle into the pod's volume."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from llmemb.bundle import MANIFEST, verify_bundle
from llmemb_testing.servers import shared_test_bundle
from service.bundle_fetch import DONE, FetchError, fetch, wait


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
    assert verify_bundle(dest).fingerprint == fingerprint and not (dest / "stale.txt").exists()
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


def _model_archive(tmp_path: Path) -> Path:
    """A tar of a one-file model folder, as a base model's archive."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    archive = tmp_path / "model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(model, arcname="llama-7b")
    return archive


def test_a_plain_directory_such_as_a_base_model(tmp_path):
    archive = _model_archive(tmp_path)
    fetch(archive.as_uri(), tmp_path / "dest", is_bundle=False)
    assert (tmp_path / "dest" / "config.json").read_text() == "{}"


def test_a_shared_base_model_volume_is_filled_once_and_waited_for(tmp_path):
    """The GPU overlay's Job fills a shared volume; each service pod's init container only waits for it."""
    archive = _model_archive(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "shared"
    with pytest.raises(FetchError, match="does not hold the archive .* nothing fetched"):
        wait(dest, digest, timeout_s=0.2, poll_s=0.05)
    waiter = threading.Thread(target=wait, args=(dest, digest, 30.0, 0.05))
    waiter.start()
    assert "unpacked in" in fetch(archive.as_uri(), dest, digest, is_bundle=False)
    waiter.join(10)
    assert not waiter.is_alive() and (dest / DONE).read_text().strip() == digest
    assert "already in" in fetch(archive.as_uri(), dest, digest, is_bundle=False)   # a rerun of the Job
    with pytest.raises(FetchError, match="holds " + digest):
        wait(dest, "0" * 64, timeout_s=0.1, poll_s=0.05)


def test_an_empty_or_malformed_checksum_is_refused_not_skipped(tmp_path):
    archive = tmp_path / "m.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(Path(__file__).parent / "__init__.py", arcname="x/__init__.py")
    for bad in ("", "  ", "abc", "g" * 64):
        with pytest.raises(FetchError, match="--sha256 must be 64 hex digits"):
            fetch(archive.as_uri(), tmp_path / "dest", sha256=bad, is_bundle=False)
    good = hashlib.sha256(archive.read_bytes()).hexdigest().upper()
    fetch(archive.as_uri(), tmp_path / "dest", sha256=f" {good} ", is_bundle=False)
    assert (tmp_path / "dest" / "__init__.py").is_file()


def test_a_killed_fetchs_work_folder_is_removed_and_an_unchanged_bundle_still_recognised(http_root, tmp_path):
    root, url = http_root
    bundle = shared_test_bundle()
    _pack(bundle, root / "k.tar.gz")
    dest = tmp_path / "vol"
    fetch(f"{url}/k.tar.gz", dest)
    (dest / ".fetch-killed").mkdir()
    (dest / ".fetch-killed" / "archive").write_bytes(b"partial")
    assert "already in" in fetch(f"{url}/k.tar.gz", dest)
    assert not any(p.name.startswith(".fetch-") for p in dest.iterdir())


@pytest.mark.process
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare for a private read-only mount")
def test_fetch_into_a_volume_whose_parent_is_read_only(http_root, tmp_path):
    """As in a pod: readOnlyRootFilesystem, the bundle's emptyDir mounted at /bundle. Here the parent
    folder is remounted read-only in a private mount namespace and the volume bound writable in it."""
    import subprocess
    import sys

    root, url = http_root
    _pack(shared_test_bundle(), root / "ro.tar.gz")
    parent = tmp_path / "root"
    dest = parent / "bundle"
    dest.mkdir(parents=True)
    script = (f"mount --bind {parent} {parent} && mount -o remount,bind,ro {parent} && "
              f"mount --bind {dest} {dest} && mount -o remount,bind,rw {dest} && "
              f"! touch {parent}/probe 2>/dev/null && "
              f"{sys.executable} -m service.bundle_fetch --url {url}/ro.tar.gz --dest {dest}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert "bundle " in done.stdout and verify_bundle(dest).fingerprint
    assert sorted(p.name for p in parent.iterdir()) == ["bundle"]
