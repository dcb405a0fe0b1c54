"""`python -m service.bundle_fetch`: put a bundle (or a base model) from a URL into a directory.

The k8s init container runs it, so the images stay model-free: a tar archive (gzip, bz2, xz or
plain) at an http(s) URL, a pre-signed object-store URL or a file:// path is streamed to disk,
checked against --sha256 when given, unpacked with tarfile's "data" filter (no absolute paths,
links out of the tree or device files), and, for a bundle, verified file by file
(llmemb.bundle.verify_bundle) before it is moved into place. A directory that already holds a
verified bundle with the same fingerprint is kept (a restarted pod on the same volume).
Exit status: 0 when the directory is ready, 1 with the reason on stderr otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from llmemb.bundle import MANIFEST, BundleError, verify_bundle

CHUNK = 1 << 20


class FetchError(Exception):
    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def download(url: str, to: Path, attempts: int = 3, timeout_s: float = 60.0) -> str:
    """Stream `url` into `to`; return the sha256 of what was written."""
    scheme = urlparse(url).scheme
    for attempt in range(attempts):
        digest = hashlib.sha256()
        try:
            with to.open("wb") as out:
                if scheme == "file":
                    with open(urlparse(url).path, "rb") as src:
                        while chunk := src.read(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                elif scheme in ("http", "https"):
                    with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
                        if response.status_code != 200:
                            raise FetchError(f"GET {_redacted(url)}: HTTP {response.status_code}",
                                             retryable=response.status_code >= 500)
                        for chunk in response.iter_bytes(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                else:
                    raise FetchError(f"unsupported URL scheme {scheme!r} (http, https or file)")
            return digest.hexdigest()
        except (httpx.TransportError, FetchError, OSError) as err:
            retryable = isinstance(err, httpx.TransportError) or getattr(err, "retryable", False)
            if not retryable or attempt == attempts - 1:
                raise FetchError(f"{_redacted(url)}: {err}") from None
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _redacted(url: str) -> str:
    """The URL without its query: a pre-signed URL carries its credentials there."""
    return url.split("?", 1)[0]


def _root(unpacked: Path, is_bundle: bool) -> Path:
    """The archive's content: its top directory when it has exactly one, else itself."""
    if is_bundle and (unpacked / MANIFEST).is_file():
        return unpacked
    children = [p for p in unpacked.iterdir()]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return unpacked


def _fingerprint(directory: Path) -> str | None:
    try:
        return verify_bundle(directory).fingerprint
    except BundleError:
        return None


WORK_PREFIX = ".fetch-"   # the download's working folder, inside dest (a pod's root filesystem is read-only)
DONE = ".llmemb-fetched"  # written last into a fetched directory: the archive's sha256 (a base model's)


def _checked_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FetchError(f"--sha256 must be 64 hex digits (or left out to skip the check), got {sha256!r}")
    return value


def fetch(url: str, dest: Path, sha256: str | None = None, is_bundle: bool = True) -> str:
    """Fill `dest` from the archive at `url`; return a one-line summary.

    Everything is written inside `dest` (the pod's volume): its parent may be a read-only root."""
    expected = _checked_sha256(sha256)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(WORK_PREFIX + "*"):   # left by a fetch that was killed
        shutil.rmtree(stale, ignore_errors=True)
    current = _fingerprint(dest) if is_bundle else None
    if not is_bundle and expected is not None and _done(dest) == expected:
        return f"{_redacted(url)} already in {dest} (sha256 {expected[:12]}...)"
    with tempfile.TemporaryDirectory(dir=dest, prefix=WORK_PREFIX) as tmp:
        archive = Path(tmp) / "archive"
        got = download(url, archive)
        if expected is not None and got != expected:
            raise FetchError(f"sha256 mismatch: expected {expected}, got {got}")
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise FetchError(f"cannot unpack the archive: {err}") from None
        root = _root(unpacked, is_bundle)
        fingerprint = None
        if is_bundle:
            try:
                fingerprint = verify_bundle(root).fingerprint
            except BundleError as err:
                raise FetchError(f"the archive's bundle is refused: {err}") from None
            if current == fingerprint:
                return f"bundle {fingerprint} already in {dest}"
        for old in dest.iterdir():   # dest may be a mount point: empty it, never replace it
            if old == Path(tmp):
                continue
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for item in root.iterdir():
            shutil.move(str(item), dest / item.name)
    if not is_bundle:
        (dest / DONE).write_text(got + "\n")
    return f"bundle {fingerprint} in {dest}" if is_bundle else f"{_redacted(url)} unpacked in {dest}"


def _done(directory: Path) -> str | None:
    try:
        return (directory / DONE).read_text().strip()
    except OSError:
        return None


def wait(dest: Path, sha256: str, timeout_s: float, poll_s: float = 5.0) -> str:
    """Wait until another process (the Job that fills a shared volume) has fetched the archive with
    `sha256` into `dest`; only reads, so `dest` may be mounted read-only."""
    expected = _checked_sha256(sha256)
    if expected is None:
        raise FetchError("waiting needs the archive's sha256")
    deadline = time.monotonic() + timeout_s
    while (found := _done(dest)) != expected:
        if time.monotonic() > deadline:
            raise FetchError(f"{dest} does not hold the archive with sha256 {expected} after {timeout_s:.0f}s "
                             f"(it holds {found or 'nothing fetched'}): has the Job that fills it run?")
        time.sleep(poll_s)
    return f"{dest} holds the archive with sha256 {expected[:12]}..."


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m service.bundle_fetch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="http(s):// or file:// URL of a tar archive (required unless --wait)")
    p.add_argument("--dest", required=True, type=Path, help="directory to fill (e.g. the pod's /bundle volume)")
    p.add_argument("--sha256", help="expected sha256 of the archive (64 hex digits; an empty value is an error)")
    p.add_argument("--directory", action="store_true",
                   help="any directory (a base model), not a bundle: no bundle verification; the sha256 is "
                        f"written into {DONE} when done, and an unchanged archive is not fetched again")
    p.add_argument("--wait", action="store_true", help="fetch nothing: wait until --dest holds the directory "
                   "archive with --sha256 (a shared volume another pod fills)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="how long --wait waits")
    args = p.parse_args(argv)
    if args.wait and not args.sha256:
        p.error("--wait needs --sha256")
    if not args.wait and not args.url:
        p.error("--url is required")
    try:
        if args.wait:
            print(wait(args.dest, args.sha256, args.timeout_s), flush=True)
        else:
            print(fetch(args.url, args.dest, args.sha256, is_bundle=not args.directory), flush=True)
    except FetchError as err:
        sys.exit(f"bundle_fetch: {err}")


if __name__ == "__main__":
    main()
