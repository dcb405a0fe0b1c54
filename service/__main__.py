"""`python -m service`: run the API with uvicorn (settings from LLMEMB_* variables, overridable here)."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from llmemb.bundle import BundleError, verify_bundle
from service.app import create_app
from service.invalid_http import JsonErrorsH11Protocol
from service.logs import configure as configure_logs
from service.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--bundle", dest="bundle_path", help="bundle directory (LLMEMB_BUNDLE_PATH)")
    p.add_argument("--host", help="bind address (LLMEMB_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (LLMEMB_PORT, default 8000)")
    p.add_argument("--redis-url", dest="redis_url", help="Redis for the cache and shared catalogue (LLMEMB_REDIS_URL)")
    p.add_argument("--device", help="torch device of the encoder: cpu, cuda, cuda:N, auto (LLMEMB_DEVICE)")
    p.add_argument("--scoring-device", dest="scoring_device",
                   help="torch device of the backbone and catalogue scoring (LLMEMB_SCORING_DEVICE)")
    p.add_argument("--log-level", dest="log_level", help="debug | info | warning | error")
    p.add_argument("--print-examples", action="store_true", help="print example requests for this bundle first")
    return p.parse_args(argv)


def _shell(body: dict) -> str:
    """A JSON body as one shell word: titles such as "Schindler's List" must survive bash."""
    return shlex.quote(json.dumps(body))


def examples(settings: Settings) -> str:
    """curl commands that work against this bundle (ids and attributes of its first items)."""
    rows = []
    with open(Path(settings.bundle_path) / "items.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == 3:
                break
    base = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $LLMEMB_API_KEY"' if settings.api_keys else ""
    ids = [r["id"] for r in rows]
    embed = {"items": [{"id": rows[0]["id"], "attributes": rows[0]["attributes"]}]} if rows else {}
    lines = [
        "Example requests:",
        f"  curl -s {base}/readyz",
        f"  curl -s{auth} {base}/v1/info",
        f"  curl -s{auth} -H 'Content-Type: application/json' {base}/v1/items/embed -d {_shell(embed)}",
        f"  curl -s{auth} -H 'Content-Type: application/json' {base}/v1/recommend "
        f"-d {_shell({'history': ids, 'k': 5})}",
        f"  curl -s{auth} -X PUT -H 'Content-Type: application/json' {base}/v1/items/new-1 "
        f"-d {_shell({'attributes': {'title': 'A brand-new item'}})}",
        f"  open {base}/docs for the OpenAPI documentation",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "print_examples"}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        sys.exit(f"invalid settings:\n{e}")
    configure_logs(settings.log_level, settings.log_format)
    if not settings.api_keys:
        logging.getLogger("llmemb.service").warning(
            "no API key is set (LLMEMB_API_KEYS): every /v1 route answers anyone who can reach this port")
    try:
        # Before serving: a bundle that fails verification is an operator's error to see at once
        # (the process exits non-zero), not a replica left running that never gets ready.
        verify_bundle(settings.bundle_path)
    except BundleError as e:
        sys.exit(f"bundle {settings.bundle_path} refused: {e}")
    if args.print_examples:
        print(examples(settings), flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        http=JsonErrorsH11Protocol,
        access_log=False,       # service/access.py writes one JSON line per request, with its id
        log_config=None,        # keep the handlers configured above
    )


if __name__ == "__main__":
    main()
