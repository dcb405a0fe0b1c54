"""The backfill job as one call (`backfill`) and as a command (`python -m service.backfill`)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import redis

import service.backfill
from llmemb.bundle import BundleError, load_bundle, verify_bundle
from service.backfill.chunks import run_local
from service.backfill.config import (
    ENGINES,
    ON_ERROR,
    STAGES,
    BackfillConfig,
    BackfillError,
    RayPlacement,
    Summary,
)
from service.backfill.export import check_out, export_vectors
from service.backfill.on_ray import run_ray
from service.backfill.store import RedisVectors, connect

log = logging.getLogger("llmemb.backfill")


def backfill(bundle_path: str | Path, input_path: str | Path, redis_url: str, config: BackfillConfig,
             engine: str = "local", out: str | Path | None = None, placement: RayPlacement = RayPlacement(),
             catalogue_redis_url: str | None = None) -> Summary:
    """The job the CLI runs: backfill with one engine, then optionally export; returns the summary."""
    if engine not in ENGINES:
        raise BackfillError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not Path(input_path).is_file():
        raise BackfillError(f"input {input_path} is not a file")
    if out is not None:
        check_out(out, config.stages)  # before the job, not after hours of it
    client = connect(redis_url)
    # The catalogue's own Redis only when it is another one; otherwise the same client serves both.
    separate = config.catalogue and catalogue_redis_url != redis_url
    catalogue_client = connect(catalogue_redis_url) if separate and catalogue_redis_url else None
    started = time.perf_counter()
    try:
        if engine == "local":
            bundle = load_bundle(bundle_path)
            manifest, spec = bundle.manifest, bundle.encoder
            counts = run_local(bundle, input_path, client, config, catalogue_client=catalogue_client)
        else:
            manifest = verify_bundle(bundle_path)
            spec = manifest.encoder
            counts = run_ray(bundle_path, manifest, input_path, redis_url, config, placement, catalogue_redis_url)
        summary = Summary(**asdict(counts), engine=engine)
        if out is not None:
            target = RedisVectors(client, manifest.fingerprint, manifest.dims.to_dict())
            export_vectors(out, input_path, target, spec.prompt, config.stages, counts.read,
                           config.on_error, metadata={"stages": ",".join(config.stages)})
            summary.out = str(out)
    finally:
        client.close()
        if catalogue_client is not None:
            catalogue_client.close()
    summary.seconds = time.perf_counter() - started
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service.backfill", description=service.backfill.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=os.environ.get("LLMEMB_BUNDLE_PATH"),
                   help="bundle directory (default: LLMEMB_BUNDLE_PATH)")
    p.add_argument("--input", required=True, help="JSON-lines catalogue, e.g. the bundle's items.jsonl")
    p.add_argument("--redis-url", default=os.environ.get("LLMEMB_REDIS_URL"),
                   help="the service's Redis (default: LLMEMB_REDIS_URL)")
    p.add_argument("--catalogue", action="store_true",
                   help="also write the items into the service's shared catalogue (recommendable at once)")
    p.add_argument("--catalogue-redis-url",
                   default=os.environ.get("LLMEMB_CATALOGUE_REDIS_URL") or os.environ.get("LLMEMB_REDIS_URL"),
                   help="the catalogue's Redis (default: LLMEMB_CATALOGUE_REDIS_URL, else the --redis-url)")
    p.add_argument("--engine", choices=ENGINES, default="local")
    p.add_argument("--batch-size", type=int, default=512,
                   help="items per Redis check and write round trip; lines per Ray range (default 512)")
    p.add_argument("--token-budget", type=int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--stage", action="append", choices=STAGES,
                   help="vector stage to store, repeatable (default: item)")
    p.add_argument("--ttl", type=int, help="expiry of the written vectors in seconds (default: never)")
    p.add_argument("--out", help="also write the vectors to this .safetensors or .npy file (ids beside it)")
    p.add_argument("--on-error", choices=ON_ERROR, default="raise", help="malformed lines: stop, or count and skip")
    p.add_argument("--device", help="torch device of the encoder (default: cpu, or cuda with --gpus-per-actor)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="encoder dtype (default: the bundle's)")
    p.add_argument("--base-model-path", help="load the base model from here instead of the bundle's base_model.id")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--ray-address", help="Ray cluster to join, e.g. auto (default: start a local one)")
    p.add_argument("--actors", type=int, default=1, help="Ray actors, one ItemEmbedder each (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.bundle:
        sys.exit("backfill: no bundle: pass --bundle or set LLMEMB_BUNDLE_PATH")
    if not args.redis_url:
        sys.exit("backfill: no Redis: pass --redis-url or set LLMEMB_REDIS_URL")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.gpus_per_actor > 0 else "cpu")
    try:
        config = BackfillConfig(stages=tuple(args.stage or ("item",)), batch_size=args.batch_size,
                                token_budget=args.token_budget, ttl_s=args.ttl, on_error=args.on_error,
                                catalogue=args.catalogue,
                                device=device, dtype=args.dtype, base_model_path=args.base_model_path)
        placement = RayPlacement(args.ray_address, args.actors, args.gpus_per_actor, args.cpus_per_actor)
        summary = backfill(args.bundle, args.input, args.redis_url, config, args.engine, args.out, placement,
                           args.catalogue_redis_url or args.redis_url)
    except (BackfillError, BundleError, redis.RedisError, OSError) as e:
        sys.exit(f"backfill: {e}")
    log.info("done: %d items read, %d already cached, %d computed, %d duplicates, %d keys written, "
             "%d written into the catalogue, %d malformed lines skipped, %.1f items/s", summary.read,
             summary.skipped_existing, summary.computed, summary.duplicates, summary.keys_written,
             summary.catalogued, summary.errors, summary.items_per_s)
    print(json.dumps(summary.as_dict()), flush=True)

