"""Backfill: embed a whole catalogue into the service's Redis cache, so the service then answers it cached.

    python -m service.backfill --bundle DIR --input items.jsonl [--redis-url redis://host:6379/0]
        [--engine local|ray] [--batch-size 512] [--token-budget 16384] [--stage item [--stage llm ...]]
        [--ttl SECONDS] [--out vectors.safetensors | vectors.npy] [--on-error raise|skip]
        [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--base-model-path DIR] [--threads N]
        [--ray-address auto] [--actors N] [--gpus-per-actor G] [--cpus-per-actor C]

--bundle and --redis-url default to LLMEMB_BUNDLE_PATH and LLMEMB_REDIS_URL, as for the service.

Input: JSON lines, one {"id": ..., "attributes": {...}} per line; a bundle's own items.jsonl has that
shape. Blank lines are ignored. A malformed line (not JSON, no id, attributes not a non-empty object,
NaN) stops the job with `file:line: reason`, or with --on-error skip is counted and skipped.

Output: for each item and stage (default: item; repeat --stage for pca and llm) the vector as
little-endian float32 under the key the service reads, `service.cache.cache_key`:
`llmemb:{fingerprint}:emb:{stage}:{sha256(prompt)}`, the prompt built from the attributes exactly as the
service builds it. Pipelined SETs; --ttl sets an expiry on the vectors written (vectors already there
keep theirs). --out also writes a file with the vectors in input order: `.safetensors` (one tensor per
stage) or `.npy` (one stage), and the ids beside it in `<out without suffix>.ids.jsonl` (one JSON
string per line, line i = row i). The file is read back from Redis after the job, so it holds exactly
what the service will serve, skipped items included.

Resumable: each chunk of --batch-size items first asks Redis (one pipelined STRLEN per key) which vectors
are there with the right size; only the others are computed. A re-run after a crash, or over a grown
catalogue, computes only what is missing, and does not even load the model when nothing is.

Engines:
- local (default): one process, one ItemEmbedder. The missing prompts of a chunk go to its embed_batch,
  which sorts them by token length and packs forward passes under --token-budget padded tokens.
- ray: for catalogues that outgrow one machine. The driver cuts the file into byte ranges of
  --batch-size lines (one pass over the bytes, no parsing); Ray Data `from_items` over the ranges ->
  `map_batches` on a pool of --actors actors, one ItemEmbedder each (--gpus-per-actor for GPU replicas).
  Each actor reads its ranges, checks Redis, computes and writes the vectors itself; only counts come
  back to the driver. The bundle and the input must be at the same path on every node (a shared
  filesystem) and Redis reachable from every node. Ray is imported only on this path
  (`pip install -e '.[distributed]'`).
  Why not `read_json` or `read_text`: Arrow's JSON reader unifies the attributes of all rows into one
  struct type, which reorders keys and adds nulls, so prompts (and keys) would differ from the
  service's; `read_text` splits on Unicode line separators that JSON strings may contain. Reading the
  byte ranges with Python parses exactly as the local engine does, and errors keep their line numbers.

At the end: a summary (items read, skipped because already in Redis, computed, duplicates of a prompt
computed in the same chunk, keys written, malformed lines, items/s) logged and printed as one JSON line
on stdout. Exit status 1 on an error (message on stderr); a re-run resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import redis

from llmemb.bundle import BundleError, LoadedBundle, load_bundle, verify_bundle
from llmemb.spec import EncoderSpec
from service.cache import FLOAT32_LE, cache_key, from_bytes, to_bytes

log = logging.getLogger("llmemb.backfill")

STAGES = ("item", "pca", "llm")
ON_ERROR = ("raise", "skip")
ENGINES = ("local", "ray")
OUT_SUFFIXES = (".safetensors", ".npy")


class BackfillError(Exception):
    """The job cannot go on (bad arguments, Redis unavailable, a vector missing at export)."""


class CatalogueError(BackfillError):
    """A malformed catalogue line; the message starts with `file:line:`."""


@dataclass
class BackfillConfig:
    stages: tuple[str, ...] = ("item",)
    batch_size: int = 512          # items per Redis check / write round trip (and per Ray range)
    token_budget: int = 16384      # padded tokens per forward pass
    ttl_s: int | None = None       # expiry of the written vectors; None = never
    on_error: str = "raise"        # raise | skip
    device: str = "cpu"
    dtype: str | None = None       # default: the bundle's
    base_model_path: str | None = None

    def __post_init__(self) -> None:
        self.stages = tuple(dict.fromkeys(self.stages))
        unknown = [s for s in self.stages if s not in STAGES]
        if not self.stages or unknown:
            raise BackfillError(f"stages must be among {', '.join(STAGES)}, got {list(self.stages)}")
        if self.on_error not in ON_ERROR:
            raise BackfillError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.batch_size < 1 or self.token_budget < 1:
            raise BackfillError("batch_size and token_budget must be positive")
        if self.ttl_s is not None and self.ttl_s < 1:
            raise BackfillError(f"ttl must be at least 1 second, got {self.ttl_s}")


@dataclass
class Counts:
    """read = skipped_existing + computed + duplicates."""

    read: int = 0              # valid items in the input
    skipped_existing: int = 0  # items whose vectors (every stage asked for) were already in Redis
    computed: int = 0          # distinct prompts embedded by the model
    duplicates: int = 0        # items whose prompt was computed for another item of the same chunk
    keys_written: int = 0
    errors: int = 0            # malformed lines skipped (--on-error skip)

    def add(self, other: "Counts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Summary(Counts):
    seconds: float = 0.0
    engine: str = "local"
    out: str | None = None

    @property
    def items_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["items_per_s"] = round(self.items_per_s, 1)
        return d


@dataclass(frozen=True)
class CatalogueItem:
    line: int
    id: str
    attributes: dict[str, Any]


# ----------------------------------------------------------------- reading
def _no_constants(name: str):
    raise ValueError(f"{name} is not a value")


def parse_item(text: str) -> tuple[str, dict[str, Any]]:
    """One catalogue line -> (id, attributes); ValueError saying what is wrong."""
    try:
        row = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with id and attributes, got a JSON {type(row).__name__}")
    if "id" not in row or "attributes" not in row:
        raise ValueError(f"expected keys id and attributes, got {sorted(row)}")
    item_id, attributes = row["id"], row["attributes"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip():
        raise ValueError(f"id must be a non-empty string or an integer, got {item_id!r}")
    if not isinstance(attributes, dict):
        raise ValueError(f"attributes must be an object, got a JSON {type(attributes).__name__}")
    # The service refuses such an item (422 empty_attributes): its prompt would be the instruction alone.
    if not any(v is not None and v != "" and v != [] for v in attributes.values()):
        raise ValueError("attributes are empty (every value is null, empty or missing)")
    return str(item_id), attributes


def read_items(path: str | Path, on_error: str, counts: Counts, start: int = 0, end: int | None = None,
               first_line: int = 1) -> Iterator[CatalogueItem]:
    """Valid items of the lines in bytes [start, end) of a JSON-lines file; `start` is a line start.

    Lines are split on b"\\n" only (JSON strings may hold other Unicode line separators).
    Malformed lines raise CatalogueError, or with on_error="skip" are counted in counts.errors.
    """
    with open(path, "rb") as f:
        f.seek(start)
        pos, line_no = start, first_line - 1
        while end is None or pos < end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            line_no += 1
            if not raw.strip():
                continue
            try:
                item_id, attributes = parse_item(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
                if on_error == "raise":
                    raise CatalogueError(f"{path}:{line_no}: {reason}") from None
                counts.errors += 1
                log.warning("%s:%d: skipped: %s", path, line_no, reason)
                continue
            yield CatalogueItem(line_no, item_id, attributes)


def line_ranges(path: str | Path, lines_per_range: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first line number) of consecutive blocks of `lines_per_range` lines."""
    ranges, start, pos, first, n = [], 0, 0, 1, 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            pos += len(raw)
            n += 1
            if n == lines_per_range:
                ranges.append((start, pos, first))
                start, first, n = pos, line_no + 1, 0
    if n:
        ranges.append((start, pos, first))
    return ranges


def chunked(items: Iterable[CatalogueItem], size: int) -> Iterator[list[CatalogueItem]]:
    chunk: list[CatalogueItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -------------------------------------------------------------------- redis
def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=30, socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        raise BackfillError(f"Redis at {_safe_url(url)} is unavailable ({e})") from None
    return client


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class RedisVectors:
    """The service cache's vectors of one bundle, checked, written and read in pipelines."""

    def __init__(self, client: redis.Redis, fingerprint: str, dims: Mapping[str, int], ttl_s: int | None = None):
        self.client = client
        self.fingerprint = fingerprint
        self.dims = dict(dims)
        self.ttl_s = ttl_s

    def key(self, stage: str, prompt: str) -> str:
        return cache_key(self.fingerprint, stage, prompt)

    def missing(self, prompts: list[str], stages: tuple[str, ...]) -> dict[str, list[str]]:
        """prompt -> stages whose vector is absent or of the wrong size (the service would not read it)."""
        pipe = self.client.pipeline(transaction=False)
        for p in prompts:
            for s in stages:
                pipe.strlen(self.key(s, p))
        lengths = iter(pipe.execute())
        return {p: [s for s in stages if next(lengths) != 4 * self.dims[s]] for p in prompts}

    def write(self, pairs: list[tuple[str, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, data in pairs:
            pipe.set(key, data, ex=self.ttl_s)
        pipe.execute()

    def read(self, stage: str, prompts: list[str]) -> list[np.ndarray | None]:
        values = self.client.mget([self.key(stage, p) for p in prompts])
        return [from_bytes(v, self.dims[stage]) if v is not None else None for v in values]


# --------------------------------------------------------------------- work
class LazyEmbedder:
    """Builds the ItemEmbedder on the first text to embed: a run with everything cached never loads the model."""

    def __init__(self, bundle: LoadedBundle, config: BackfillConfig):
        self.bundle = bundle
        self.config = config
        self.engine = None

    def embed_batch(self, prompts: list[str]):
        if self.engine is None:
            from service.embedder import ItemEmbedder

            started = time.perf_counter()
            self.engine = ItemEmbedder(self.bundle, self.config.device, self.config.dtype, self.config.token_budget,
                                 self.config.base_model_path)
            log.info("model loaded in %.1fs (%s)", time.perf_counter() - started, self.config.device)
        return self.engine.embed_batch(prompts)


def process_chunk(items: list[CatalogueItem], target: RedisVectors, embedder, prompt_of,
                  stages: tuple[str, ...]) -> Counts:
    """Check which vectors exist, embed the distinct missing prompts, write their missing stages."""
    prompts = [prompt_of(it.attributes) for it in items]
    unique = list(dict.fromkeys(prompts))
    missing = target.missing(unique, stages)
    todo = [p for p in unique if missing[p]]
    counts = Counts(read=len(items), skipped_existing=sum(1 for p in prompts if not missing[p]),
                    computed=len(todo))
    counts.duplicates = counts.read - counts.skipped_existing - counts.computed
    if todo:
        vectors = embedder.embed_batch(todo)
        pairs = [(target.key(s, p), to_bytes(v.stage(s))) for p, v in zip(todo, vectors) for s in missing[p]]
        target.write(pairs)
        counts.keys_written = len(pairs)
    return counts


def run_local(bundle: LoadedBundle, input_path: str | Path, client: redis.Redis, config: BackfillConfig,
              embedder=None, progress_every_s: float = 10.0) -> Counts:
    """The whole file in this process; `embedder` (anything with embed_batch) defaults to a LazyEmbedder."""
    _check_stages(bundle.dims, config.stages)
    target = RedisVectors(client, bundle.fingerprint, bundle.dims, config.ttl_s)
    embedder = embedder if embedder is not None else LazyEmbedder(bundle, config)
    prompt_of = bundle.encoder.prompt
    counts = Counts()
    started = last = time.perf_counter()
    for chunk in chunked(read_items(input_path, config.on_error, counts), config.batch_size):
        counts.add(process_chunk(chunk, target, embedder, prompt_of, config.stages))
        now = time.perf_counter()
        if now - last >= progress_every_s:
            last = now
            log.info("%d items read, %d computed, %d already cached, %.1f items/s", counts.read, counts.computed,
                     counts.skipped_existing, counts.read / (now - started))
    return counts


def _check_stages(dims: Mapping[str, int], stages: tuple[str, ...]) -> None:
    unknown = [s for s in stages if s not in dims]
    if unknown:
        raise BackfillError(f"the bundle has no dims for stage(s) {unknown}; it has {sorted(dims)}")


# ---------------------------------------------------------------------- ray
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
                 config: BackfillConfig):
        bundle = load_bundle(bundle_path)
        if bundle.fingerprint != fingerprint:
            raise BundleError(f"this node's bundle at {bundle_path} has fingerprint {bundle.fingerprint[:12]}..., "
                              f"the driver's has {fingerprint[:12]}...; every node must see the same bundle")
        self.input_path = input_path
        self.config = config
        self.target = RedisVectors(connect(redis_url), fingerprint, bundle.dims, config.ttl_s)
        self.embedder = LazyEmbedder(bundle, config)
        self.prompt_of = bundle.encoder.prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts, error = Counts(), ""
        for start, end, first in zip(batch["start"], batch["end"], batch["first_line"]):
            items = read_items(self.input_path, self.config.on_error, counts, int(start), int(end), int(first))
            try:
                for chunk in chunked(items, self.config.batch_size):
                    counts.add(process_chunk(chunk, self.target, self.embedder, self.prompt_of, self.config.stages))
            except CatalogueError as e:
                # Returned, not raised: Ray would wrap it in its own exception and lose the file:line message.
                error = str(e)
                break
        row = {name: np.array([value], dtype=np.int64) for name, value in asdict(counts).items()}
        row["error"] = np.array([error], dtype=object)
        return row


def run_ray(bundle_path: str | Path, manifest: Mapping[str, Any], input_path: str | Path, redis_url: str,
            config: BackfillConfig, address: str | None = None, actors: int = 1, gpus_per_actor: float = 0.0,
            cpus_per_actor: float = 1.0) -> Counts:
    """Ray Data over line ranges of the file; an already initialised Ray (e.g. in tests) is used as it is."""
    _check_stages(manifest["dims"], config.stages)
    if actors < 1:
        raise BackfillError(f"actors must be at least 1, got {actors}")
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
    ranges = line_ranges(input_path, config.batch_size)
    if not ranges:
        return Counts()
    dataset = ray.data.from_items([{"start": s, "end": e, "first_line": f} for s, e, f in ranges])
    results = dataset.map_batches(
        RangeWorker,
        batch_size=1,
        # One call at a time per actor (Ray Data's default, kept): the ItemEmbedder is not thread-safe.
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        fn_constructor_kwargs={
            "bundle_path": str(Path(bundle_path).resolve()),
            "fingerprint": manifest["fingerprint"],
            "input_path": str(Path(input_path).resolve()),
            "redis_url": redis_url,
            "config": config,
        },
    )
    counts = Counts()
    for row in results.iter_rows():
        if row["error"]:
            raise CatalogueError(row["error"])
        counts.add(Counts(**{f.name: int(row[f.name]) for f in fields(Counts)}))
    return counts


# ------------------------------------------------------------------- export
def check_out(out: str | Path, stages: tuple[str, ...]) -> Path:
    out = Path(out)
    if out.suffix not in OUT_SUFFIXES:
        raise BackfillError(f"--out must end in {' or '.join(OUT_SUFFIXES)}, got {out.name}")
    if out.suffix == ".npy" and len(stages) != 1:
        raise BackfillError(f".npy holds one stage, {len(stages)} were asked for; use .safetensors")
    return out


def ids_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".ids.jsonl")


def export_vectors(out: str | Path, input_path: str | Path, target: RedisVectors, prompt_of,
                   stages: tuple[str, ...], n_items: int, on_error: str, chunk_size: int = 1024,
                   metadata: Mapping[str, str] | None = None) -> Path:
    """The stored vectors of every valid input item, in input order, to .safetensors or .npy + ids."""
    out = check_out(out, stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{uuid.uuid4().hex[:8]}"
    tmp_out, tmp_ids = out.with_name(out.name + tag), ids_path(out).with_name(ids_path(out).name + tag)
    try:
        if out.suffix == ".npy":  # written through a memory map: the table never has to fit in memory
            arrays = {stages[0]: np.lib.format.open_memmap(tmp_out, mode="w+", dtype=FLOAT32_LE,
                                                           shape=(n_items, target.dims[stages[0]]))}
        else:
            arrays = {s: np.empty((n_items, target.dims[s]), dtype=FLOAT32_LE) for s in stages}
        row = 0
        with open(tmp_ids, "w", encoding="utf-8") as ids:
            for chunk in chunked(read_items(input_path, on_error, Counts()), chunk_size):
                if row + len(chunk) > n_items:
                    raise BackfillError(f"{input_path} has more items than the {n_items} backfilled; did it change?")
                prompts = [prompt_of(it.attributes) for it in chunk]
                for s in stages:
                    vectors = target.read(s, prompts)
                    for it, vector in zip(chunk, vectors):
                        if vector is None:
                            raise BackfillError(f"{input_path}:{it.line}: the {s} vector of item {it.id!r} is not "
                                                "in Redis (expired or evicted?); run the backfill again")
                    arrays[s][row:row + len(chunk)] = np.stack(vectors)
                ids.writelines(json.dumps(it.id, ensure_ascii=False) + "\n" for it in chunk)
                row += len(chunk)
        if row != n_items:
            raise BackfillError(f"{input_path} has {row} items, {n_items} were backfilled; did it change?")
        if out.suffix == ".npy":
            arrays[stages[0]].flush()
            del arrays
        else:
            from safetensors.numpy import save_file

            save_file(arrays, str(tmp_out), metadata={"fingerprint": target.fingerprint,
                                                      "ids": ids_path(out).name, **(metadata or {})})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_out, 0o644 & ~umask)  # safetensors writes 0600; the service's user may read the file
        os.replace(tmp_ids, ids_path(out))
        os.replace(tmp_out, out)
    finally:
        for p in (tmp_out, tmp_ids):
            if p.exists():
                p.unlink()
    return out


# ---------------------------------------------------------------------- cli
def backfill(bundle_path: str | Path, input_path: str | Path, redis_url: str, config: BackfillConfig,
             engine: str = "local", out: str | Path | None = None, ray_address: str | None = None,
             actors: int = 1, gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0) -> Summary:
    """The job the CLI runs: backfill with one engine, then optionally export; returns the summary."""
    if engine not in ENGINES:
        raise BackfillError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not Path(input_path).is_file():
        raise BackfillError(f"input {input_path} is not a file")
    if out is not None:
        check_out(out, config.stages)  # before the job, not after hours of it
    client = connect(redis_url)
    started = time.perf_counter()
    try:
        if engine == "local":
            bundle = load_bundle(bundle_path)
            manifest, spec = bundle.manifest, bundle.encoder
            counts = run_local(bundle, input_path, client, config)
        else:
            manifest = verify_bundle(bundle_path)
            try:
                spec = EncoderSpec.from_dict(manifest["encoder"])
            except ValueError as e:
                raise BundleError(str(e), "manifest.json") from None
            counts = run_ray(bundle_path, manifest, input_path, redis_url, config, ray_address, actors,
                             gpus_per_actor, cpus_per_actor)
        summary = Summary(**asdict(counts), engine=engine)
        if out is not None:
            target = RedisVectors(client, manifest["fingerprint"], manifest["dims"])
            export_vectors(out, input_path, target, spec.prompt, config.stages, counts.read,
                           config.on_error, metadata={"stages": ",".join(config.stages)})
            summary.out = str(out)
    finally:
        client.close()
    summary.seconds = time.perf_counter() - started
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service.backfill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=os.environ.get("LLMEMB_BUNDLE_PATH"),
                   help="bundle directory (default: LLMEMB_BUNDLE_PATH)")
    p.add_argument("--input", required=True, help="JSON-lines catalogue, e.g. the bundle's items.jsonl")
    p.add_argument("--redis-url", default=os.environ.get("LLMEMB_REDIS_URL"),
                   help="the service's Redis (default: LLMEMB_REDIS_URL)")
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
                                device=device, dtype=args.dtype, base_model_path=args.base_model_path)
        summary = backfill(args.bundle, args.input, args.redis_url, config, args.engine, args.out,
                           args.ray_address, args.actors, args.gpus_per_actor, args.cpus_per_actor)
    except (BackfillError, BundleError, redis.RedisError, OSError) as e:
        sys.exit(f"backfill: {e}")
    log.info("done: %d items read, %d already cached, %d computed, %d duplicates, %d keys written, "
             "%d malformed lines skipped, %.1f items/s", summary.read, summary.skipped_existing, summary.computed,
             summary.duplicates, summary.keys_written, summary.errors, summary.items_per_s)
    print(json.dumps(summary.as_dict()), flush=True)


if __name__ == "__main__":
    main()
