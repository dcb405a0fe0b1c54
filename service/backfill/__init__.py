"""Backfill: embed a whole catalogue into the service's Redis cache, so the service then answers it cached.

    python -m service.backfill --bundle DIR --input items.jsonl [--redis-url redis://host:6379/0]
        [--catalogue [--catalogue-redis-url URL]] [--engine local|ray] [--batch-size 512] [--token-budget 16384] [--stage item [--stage llm ...]]
        [--ttl SECONDS] [--out vectors.safetensors | vectors.npy] [--on-error raise|skip]
        [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--base-model-path DIR] [--threads N]
        [--ray-address auto] [--actors N] [--gpus-per-actor G] [--cpus-per-actor C]

--bundle, --redis-url and --catalogue-redis-url default to LLMEMB_BUNDLE_PATH, LLMEMB_REDIS_URL and
LLMEMB_CATALOGUE_REDIS_URL (else the --redis-url), as for the service.

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

With --catalogue the items also go into the service's shared catalogue (service/catalogue.py): every
replica then recommends and scores them, and GET /v1/items/{id} returns them. Each chunk is one
catalogue change (the service's own Lua script, under its epoch guard: a catalogue lost or restored
during the job stops it). The vector written is the item-space vector (for a hybrid bundle's own
items, plus their residual), exactly what PUT /v1/items would store.

Resumable: each chunk of --batch-size items first asks Redis (one pipelined STRLEN per key) which vectors
are there with the right size; only the others are computed. A re-run after a crash, or over a grown
catalogue, computes only what is missing, and does not even load the model when nothing is. With
--catalogue, items already in the catalogue with the same attributes are not written again, and an
item whose vector is cached but whose catalogue entry is missing (a job killed between the two) is
written from the cache, not recomputed.

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
computed in the same chunk, keys written, items written into the catalogue, malformed lines, items/s) logged and printed as one JSON line
on stdout. Exit status 1 on an error (message on stderr); a re-run resumes.

Modules: config (settings, counts, errors), items (reading the JSONL), store (the cache's vectors and
the catalogue in Redis), local (the one-process engine), on_ray (the Ray engine), export (the vectors
file), cli (the job and `python -m service.backfill`).
"""
