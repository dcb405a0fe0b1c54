"""Export and import of the shared catalogue: recovering from a lost Redis is one command.

    python -m service.catalogue_io export --bundle DIR --redis-url URL --out catalogue.jsonl
    python -m service.catalogue_io import --bundle DIR --redis-url URL --in catalogue.jsonl

The file is JSONL. Its first line is a header {"llmemb_catalogue": 1, "fingerprint",
"epoch", "version", "exported_at"}; every other line is an item changed at run time,
{"id", "attributes", "vector_b64"} (float32 little-endian, base64: exact), or a
removed bundle item, {"id", "deleted": true}. The bundle's own items are not in
the file: the bundle has them.

Import refuses a file made for another bundle, and a Redis that already holds a
live catalogue unless --replace is given. It writes everything in one
transaction under a new epoch, with a `restored` marker, so every running
replica (which refuses a catalogue whose epoch changed) adopts the restored one
instead of calling it lost. Exit status: 0 done, 1 refused or failed.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from llmemb.bundle import read_manifest
from service.catalogue import KEY_NAMES, catalogue_keys
from service.redis_link import env_password

FORMAT = 1


class CatalogueFileError(ValueError):
    """A catalogue file that cannot be imported; the message names the line."""


def _keys(fingerprint: str) -> dict[str, str]:
    return dict(zip(KEY_NAMES, catalogue_keys(fingerprint)))


def export_catalogue(client: redis.Redis, fingerprint: str, out: Path) -> dict[str, Any]:
    """Write the catalogue of bundle `fingerprint` to `out`; returns the header plus counts."""
    k = _keys(fingerprint)
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(k["vectors"])
    pipe.hgetall(k["attributes"])
    pipe.smembers(k["deleted"])
    pipe.get(k["version"])
    pipe.get(k["epoch"])
    vectors, attributes, deleted, version, epoch = pipe.execute()
    header = {"llmemb_catalogue": FORMAT, "fingerprint": fingerprint,
              "epoch": epoch.decode() if epoch is not None else None, "version": int(version or 0),
              "exported_at": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for raw_id in sorted(vectors):
            item_id = raw_id.decode()
            attrs = json.loads(attributes[raw_id]) if raw_id in attributes else {}
            f.write(json.dumps({"id": item_id, "attributes": attrs,
                                "vector_b64": base64.b64encode(vectors[raw_id]).decode()}, ensure_ascii=False) + "\n")
        for raw_id in sorted(deleted):
            f.write(json.dumps({"id": raw_id.decode(), "deleted": True}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return {**header, "items": len(vectors), "deleted": len(deleted)}


def read_catalogue_file(path: Path, fingerprint: str, dim: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the rows of an export, checked line by line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        try:
            header = json.loads(f.readline())
        except json.JSONDecodeError as e:
            raise CatalogueFileError(f"{path}:1: not a catalogue header ({e})") from None
        if not isinstance(header, dict) or header.get("llmemb_catalogue") != FORMAT:
            raise CatalogueFileError(f"{path}:1: not a catalogue export of format {FORMAT}")
        if header.get("fingerprint") != fingerprint:
            raise CatalogueFileError(f"{path}:1: exported for bundle {str(header.get('fingerprint'))[:12]}..., "
                                     f"this bundle is {fingerprint[:12]}...")
        seen: set[str] = set()
        for lineno, line in enumerate(f, start=2):
            try:
                row = json.loads(line)
                item_id = row["id"]
                if not isinstance(item_id, str) or not item_id:
                    raise ValueError("id must be a non-empty string")
                if item_id in seen:
                    raise ValueError(f"id {item_id!r} appears twice")
                seen.add(item_id)
                if row.get("deleted") is True:
                    rows.append({"id": item_id, "deleted": True})
                    continue
                vector = base64.b64decode(row["vector_b64"], validate=True)
                if len(vector) != 4 * dim:
                    raise ValueError(f"vector has {len(vector) // 4} floats, the bundle's items {dim}")
                if not isinstance(row.get("attributes"), dict):
                    raise ValueError("attributes must be an object")
                rows.append({"id": item_id, "attributes": row["attributes"], "vector": vector})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise CatalogueFileError(f"{path}:{lineno}: {e}") from None
    return header, rows


def import_catalogue(client: redis.Redis, fingerprint: str, dim: int, path: Path,
                     replace: bool = False) -> dict[str, Any]:
    """Write an export into Redis under a new epoch, in one transaction."""
    header, rows = read_catalogue_file(path, fingerprint, dim)
    k = _keys(fingerprint)
    if not replace and client.exists(k["epoch"], k["vectors"], k["deleted"], k["version"]):
        raise CatalogueFileError(f"Redis already holds a catalogue for bundle {fingerprint[:12]}... "
                                 "(pass --replace to overwrite it)")
    items = [r for r in rows if not r.get("deleted")]
    deleted = [r["id"] for r in rows if r.get("deleted")]
    epoch = uuid.uuid4().hex
    version = int(header.get("version") or 0) + 1
    pipe = client.pipeline(transaction=True)
    pipe.delete(*k.values())
    if items:
        pipe.hset(k["vectors"], mapping={r["id"]: r["vector"] for r in items})
        pipe.hset(k["attributes"], mapping={r["id"]: json.dumps(r["attributes"], ensure_ascii=False) for r in items})
    if deleted:
        pipe.sadd(k["deleted"], *deleted)
    pipe.set(k["version"], version)
    pipe.set(k["integrity"], f"{len(items)},{len(deleted)}")
    pipe.set(k["restored"], json.dumps({"epoch": epoch, "version": version, "from_epoch": header.get("epoch"),
                                        "at": datetime.now(UTC).isoformat(timespec="seconds")}))
    pipe.set(k["epoch"], epoch)
    pipe.execute()
    return {"epoch": epoch, "version": version, "items": len(items), "deleted": len(deleted)}


def main(argv: list[str] | None = None, prog: str = "python -m service.catalogue_io") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["export", "import"])
    p.add_argument("--bundle", required=True, type=Path, help="the bundle the catalogue belongs to")
    p.add_argument("--redis-url", required=True,
                   help="the catalogue's Redis (LLMEMB_CATALOGUE_REDIS_URL; its password from LLMEMB_REDIS_PASSWORD)")
    p.add_argument("--out", type=Path, help="export: the JSONL file to write")
    p.add_argument("--in", dest="src", type=Path, help="import: the JSONL file to read")
    p.add_argument("--replace", action="store_true", help="import: overwrite a catalogue Redis already holds")
    args = p.parse_args(argv)
    manifest = read_manifest(args.bundle)
    fingerprint, dim = manifest.fingerprint, manifest.dims.item
    client = redis.Redis.from_url(args.redis_url, password=env_password())
    try:
        if args.command == "export":
            if args.out is None:
                p.error("export needs --out")
            summary = export_catalogue(client, fingerprint, args.out)
        else:
            if args.src is None:
                p.error("import needs --in")
            summary = import_catalogue(client, fingerprint, dim, args.src, args.replace)
    except (CatalogueFileError, redis.RedisError, OSError) as e:
        print(f"catalogue {args.command} failed: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
