"""The chunk pipeline of a backfill: embed the chunk's uncached items with one ItemEmbedder and write
them; the local engine runs it over the whole file in one process, the Ray engine (on_ray.py) per range."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis

from llmemb.bundle import LoadedBundle
from service.backfill.config import BackfillConfig, BackfillError, Counts
from service.backfill.items import CatalogueItem, chunked, read_items
from service.backfill.store import CatalogueTarget, RedisVectors
from service.cache import to_bytes

if TYPE_CHECKING:
    from service.embedder import ItemEmbedder

log = logging.getLogger("llmemb.backfill")


class LazyEmbedder:
    """Builds the ItemEmbedder on the first text to embed: a run with everything cached never loads the model."""

    def __init__(self, bundle: LoadedBundle, config: BackfillConfig):
        self.bundle = bundle
        self.config = config
        self.engine: ItemEmbedder | None = None

    def embed_batch(self, prompts: list[str]):
        if self.engine is None:
            from service.embedder import ItemEmbedder

            started = time.perf_counter()
            self.engine = ItemEmbedder(self.bundle, self.config.device, self.config.dtype, self.config.token_budget,
                                 self.config.base_model_path)
            log.info("model loaded in %.1fs (%s)", time.perf_counter() - started, self.config.device)
        return self.engine.embed_batch(prompts)


def process_chunk(items: list[CatalogueItem], target: RedisVectors, embedder, prompt_of,
                  stages: tuple[str, ...], catalogue: CatalogueTarget | None = None) -> Counts:
    """Check which vectors exist, embed the distinct missing prompts, write their missing stages;
    with a catalogue, then write the items it lacks (their item vectors from this chunk or the cache)."""
    prompts = [prompt_of(it.attributes) for it in items]
    unique = list(dict.fromkeys(prompts))
    missing = target.missing(unique, stages)
    todo = [p for p in unique if missing[p]]
    unlisted = catalogue.unlisted(items) if catalogue is not None else []
    item_vectors: dict[str, np.ndarray] = {}
    if unlisted:  # item vectors already cached need no model (a job killed between cache and catalogue)
        computing = set(todo)
        wanted = [p for p in dict.fromkeys(prompt_of(it.attributes) for it in unlisted) if p not in computing]
        item_vectors = {p: v for p, v in zip(wanted, target.read("item", wanted)) if v is not None}
        todo += [p for p in wanted if p not in item_vectors]
    counts = Counts(read=len(items), skipped_existing=sum(1 for p in prompts if not missing[p]),
                    computed=len(todo))
    counts.duplicates = max(0, counts.read - counts.skipped_existing - counts.computed)
    if todo:
        vectors = embedder.embed_batch(todo)
        pairs = [(target.key(s, p), to_bytes(v.stage(s))) for p, v in zip(todo, vectors) for s in missing.get(p, ())]
        if pairs:
            target.write(pairs)
        counts.keys_written = len(pairs)
        item_vectors.update((p, v.item) for p, v in zip(todo, vectors))
    if unlisted and catalogue is not None:  # unlisted is empty without a catalogue
        catalogue.write([(it, item_vectors[prompt_of(it.attributes)]) for it in unlisted])
        counts.catalogued = len(unlisted)
    return counts


def run_local(bundle: LoadedBundle, input_path: str | Path, client: redis.Redis, config: BackfillConfig,
              embedder=None, progress_every_s: float = 10.0, catalogue_client: redis.Redis | None = None) -> Counts:
    """The whole file in this process; `embedder` (anything with embed_batch) defaults to a LazyEmbedder."""
    check_stages(bundle.dims, config.stages)
    target = RedisVectors(client, bundle.fingerprint, bundle.dims, config.ttl_s)
    catalogue = CatalogueTarget(catalogue_client or client, bundle) if config.catalogue else None
    embedder = embedder if embedder is not None else LazyEmbedder(bundle, config)
    prompt_of = bundle.encoder.prompt
    counts = Counts()
    started = last = time.perf_counter()
    for chunk in chunked(read_items(input_path, config.on_error, counts), config.batch_size):
        counts.add(process_chunk(chunk, target, embedder, prompt_of, config.stages, catalogue))
        now = time.perf_counter()
        if now - last >= progress_every_s:
            last = now
            log.info("%d items read, %d computed, %d already cached, %.1f items/s", counts.read, counts.computed,
                     counts.skipped_existing, counts.read / (now - started))
    return counts


def check_stages(dims: Mapping[str, int], stages: tuple[str, ...]) -> None:
    unknown = [s for s in stages if s not in dims]
    if unknown:
        raise BackfillError(f"the bundle has no dims for stage(s) {unknown}; it has {sorted(dims)}")
