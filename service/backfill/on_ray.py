"""The Ray engine: line ranges of the file over a pool of actors, one ItemEmbedder each."""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from llmemb.bundle import BundleError, Manifest, load_bundle
from service.backfill.chunks import LazyEmbedder, check_stages, process_chunk
from service.backfill.config import (
    BackfillConfig,
    BackfillError,
    CatalogueError,
    Counts,
    RayPlacement,
)
from service.backfill.items import chunked, line_ranges, read_items
from service.backfill.store import CatalogueTarget, RedisVectors, connect


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise BackfillError("the ray engine needs Ray Data, which is not installed: "
                            "pip install -e '.[distributed]' (ray[data]), or use --engine local") from None
    return ray


class RangeWorker:
    """One Ray actor: its own verified bundle, Redis client and (lazily) ItemEmbedder; processes line ranges."""

    def __init__(self, bundle_path: str, fingerprint: str, input_path: str, redis_url: str,
                 config: BackfillConfig, catalogue_redis_url: str | None = None):
        bundle = load_bundle(bundle_path)
        if bundle.fingerprint != fingerprint:
            raise BundleError(f"this node's bundle at {bundle_path} has fingerprint {bundle.fingerprint[:12]}..., "
                              f"the driver's has {fingerprint[:12]}...; every node must see the same bundle")
        self.input_path = input_path
        self.config = config
        self.target = RedisVectors(connect(redis_url), fingerprint, bundle.dims, config.ttl_s)
        self.catalogue = (CatalogueTarget(connect(catalogue_redis_url or redis_url), bundle)
                          if config.catalogue else None)
        self.embedder = LazyEmbedder(bundle, config)
        self.prompt_of = bundle.encoder.prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts, error = Counts(), ""
        for start, end, first in zip(batch["start"], batch["end"], batch["first_line"]):
            items = read_items(self.input_path, self.config.on_error, counts, int(start), int(end), int(first))
            try:
                for chunk in chunked(items, self.config.batch_size):
                    counts.add(process_chunk(chunk, self.target, self.embedder, self.prompt_of, self.config.stages,
                                             self.catalogue))
            except CatalogueError as e:
                # Returned, not raised: Ray would wrap it in its own exception and lose the file:line message.
                error = str(e)
                break
        row = {name: np.array([value], dtype=np.int64) for name, value in asdict(counts).items()}
        row["error"] = np.array([error], dtype=object)
        return row


def run_ray(bundle_path: str | Path, manifest: Manifest, input_path: str | Path, redis_url: str,
            config: BackfillConfig, placement: RayPlacement = RayPlacement(),
            catalogue_redis_url: str | None = None) -> Counts:
    """Ray Data over line ranges of the file; an already initialised Ray (e.g. in tests) is used as it is."""
    check_stages(manifest.dims.to_dict(), config.stages)
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=placement.address)
    ranges = line_ranges(input_path, config.batch_size)
    if not ranges:
        return Counts()
    dataset = ray.data.from_items([{"start": s, "end": e, "first_line": f} for s, e, f in ranges])
    results = dataset.map_batches(
        RangeWorker,
        batch_size=1,
        # One call at a time per actor (Ray Data's default, kept): the ItemEmbedder is not thread-safe.
        compute=ray.data.ActorPoolStrategy(size=placement.actors),
        num_cpus=placement.cpus_per_actor,
        num_gpus=placement.gpus_per_actor or None,
        fn_constructor_kwargs={
            "bundle_path": str(Path(bundle_path).resolve()),
            "fingerprint": manifest.fingerprint,
            "input_path": str(Path(input_path).resolve()),
            "redis_url": redis_url,
            "config": config,
            "catalogue_redis_url": catalogue_redis_url,
        },
    )
    counts = Counts()
    for row in results.iter_rows():
        if row["error"]:
            raise CatalogueError(row["error"])
        counts.add(Counts(**{f.name: int(row[f.name]) for f in fields(Counts)}))
    return counts
