"""Serving benchmark: everything measured in one run, reported as ratios to baselines.

1. Uncached embedding throughput over HTTP (concurrency 32, 1 and 8 items per
   request) vs the bare encoder forward in this process (goal >= 0.8) and vs
   sentence-transformers `encode` of the same model (goal >= 1.0), on the same
   catalogue prompts. Runs are interleaved and repeated; the best of each counts.
2. Single-item /v1/items/embed latency, cached (in-process LRU hit; and Redis
   hit when a redis-server binary is available) vs uncached (p50 / p99).
3. /v1/recommend latency (p50 / p99) over the bundle's catalogue.
4. Top-k over a synthetic 1M x 64 catalogue (service.scoring.top_k, single pass
   and chunked, with masks) vs one streaming pass over the same matrix (goal <= 2x).

Results: bench/results/serve.json and serve.md.
Usage: python bench/serve.py --bundle bundles/ml100k-quick
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]

from llmemb.base_models import resolve_model_path  # noqa: E402
from llmemb.bundle import load_bundle  # noqa: E402
from llmemb.encoder import EncoderConfig, ItemEncoder  # noqa: E402
from service.scoring import TopK, top_k  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, here and in the service")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--texts", type=int, default=512, help="catalogue prompts per throughput run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-requests", type=int, default=300)
    p.add_argument("--topk-items", type=int, default=1_000_000)
    p.add_argument("--topk-dim", type=int, default=64)
    p.add_argument("--token-budget", type=int, default=16384, help="LLMEMB_MAX_BATCH_TOKENS of the service")
    p.add_argument("--bare-budgets", type=int, nargs="+", default=[1024, 2048, 4096, 16384],
                   help="token budgets tried for the bare encoder; its best counts (a stricter baseline)")
    return p.parse_args()


# ------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "mean_ms": statistics.mean(ms)}


@contextmanager
def redis_server():
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def service(bundle: Path, threads: int, token_budget: int, env: dict[str, str]):
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMEMB_")}
    full_env.update({"LLMEMB_TORCH_THREADS": str(threads), "LLMEMB_MAX_BATCH_TOKENS": str(token_budget),
                     "LLMEMB_MAX_ITEMS_PER_REQUEST": "64", "LLMEMB_QUEUE_SIZE": "8192",
                     "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env})
    log = tempfile.NamedTemporaryFile(prefix="bench-service-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {Path(log.name).read_text()[-3000:]}")
            try:
                state = httpx.get(f"{url}/readyz", timeout=2).json()
                if state["ready"]:
                    break
                if state["status"] == "failed":
                    raise RuntimeError(f"service failed to start: {state['error']}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service not ready after 300 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
        os.unlink(log.name)


# -------------------------------------------------------------- throughput
def bare_encoder_rate(encoder: ItemEncoder, prompts: list[str], budget: int) -> float:
    encoder.config.token_budget = budget
    start = time.perf_counter()
    encoder.embed(prompts)
    return len(prompts) / (time.perf_counter() - start)


def sentence_transformers_rate(model, prompts: list[str]) -> float:
    start = time.perf_counter()
    model.encode(prompts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    return len(prompts) / (time.perf_counter() - start)


async def _http_rate(url: str, bodies: list[bytes], n_items: int, concurrency: int) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        queue = list(reversed(bodies))
        failures = 0

        async def worker():
            nonlocal failures
            while queue:
                body = queue.pop()
                r = await client.post("/v1/items/embed", content=body, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n_items / (time.perf_counter() - start), failures


def http_rate(url: str, attrs: list[dict], per_request: int, concurrency: int) -> tuple[float, int]:
    bodies = [json.dumps({"items": [{"attributes": a} for a in attrs[i:i + per_request]]}).encode()
              for i in range(0, len(attrs), per_request)]
    return asyncio.run(_http_rate(url, bodies, len(attrs), concurrency))


# ----------------------------------------------------------------- latency
def sequential_latencies(url: str, path: str, bodies: list[dict]) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for body in bodies:
            start = time.perf_counter()
            r = client.post(path, json=body)
            out.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")
    return out


# ------------------------------------------------------------------- top-k
def topk_bench(n: int, d: int, repeats: int = 15) -> dict:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n, d, generator=g)
    user = torch.randn(d, generator=g)
    # Padding, 1% deleted items and a history of 50: the rows a recommendation leaves out.
    drop = torch.cat([torch.tensor([0]), torch.randint(1, n, (n // 100,), generator=g),
                      torch.randint(1, n, (50,), generator=g)])

    def best_of(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    streaming = {
        "matvec (table @ user)": best_of(lambda: torch.mv(table, user)),
        "column sum (table.sum(0))": best_of(lambda: table.sum(dim=0)),
    }
    baseline_name, baseline = min(streaming.items(), key=lambda kv: kv[1])
    variants = {}
    single = TopK(0)  # what the service runs: single pass into a reused buffer
    variants["single pass, reused buffer (service)"] = best_of(lambda: single(user, table, 10, drop))
    variants["single pass, fresh buffer"] = best_of(lambda: top_k(user, table, 10, drop))
    for chunk in (65536, 262144):
        variants[f"chunked {chunk} rows"] = best_of(lambda c=chunk: top_k(user, table, 10, drop, c))
    best_name, best = min(variants.items(), key=lambda kv: kv[1])
    reference = torch.topk(torch.mv(table, user).index_fill(0, drop, float("-inf")), 10)
    for chunk in (0, 65536):
        assert torch.equal(top_k(user, table, 10, drop, chunk)[1], reference.indices), "top-k disagrees"
    return {
        "items": n, "dim": d, "threads": torch.get_num_threads(),
        "streaming_pass_ms": {k: v * 1000 for k, v in streaming.items()},
        "baseline": baseline_name,
        "topk_ms": {k: v * 1000 for k, v in variants.items()},
        "best_variant": best_name,
        "ratio_best_to_streaming": best / baseline,
        "ratio_service_to_streaming": variants["single pass, reused buffer (service)"] / baseline,
        "goal": "<= 2.0",
    }


# -------------------------------------------------------------------- main
def measure_throughput(args, bundle, encoder, st_model, attrs, prompts, results: dict) -> list[float]:
    """Phase 1 (into results): texts/s of the bare encoder, sentence-transformers and the service over
    HTTP, interleaved so that load from elsewhere hits every contender alike; returns the service's
    uncached single-item latencies, measured on the same service."""
    runs: dict[str, list[float]] = {f"bare_encoder_budget_{b}": [] for b in args.bare_budgets}
    runs |= {"sentence_transformers": [], "http_1_per_request": [], "http_8_per_request": []}
    failures = 0
    with service(args.bundle, args.threads, args.token_budget, {"LLMEMB_CACHE_ENABLED": "false"}) as url:
        http_rate(url, attrs[:64], 1, args.concurrency)  # warm the connections and the batcher
        for _ in range(args.repeats):
            for b in args.bare_budgets:
                runs[f"bare_encoder_budget_{b}"].append(bare_encoder_rate(encoder, prompts, b))
            runs["sentence_transformers"].append(sentence_transformers_rate(st_model, prompts))
            for per in (1, 8):
                rate, failed = http_rate(url, attrs, per, args.concurrency)
                runs[f"http_{per}_per_request"].append(rate)
                failures += failed
        uncached = sequential_latencies(url, "/v1/items/embed", [
            {"items": [{"attributes": bundle.item_attributes[i % bundle.n_items]}]}
            for i in range(min(args.latency_requests, bundle.n_items))])
    best = {k: max(v) for k, v in runs.items()}
    best["bare_encoder"] = max(best[f"bare_encoder_budget_{b}"] for b in args.bare_budgets)
    results["throughput_items_per_s"] = {"runs": runs, "best": best, "texts": len(prompts),
                                         "concurrency": args.concurrency, "http_failures": failures}
    bare_per_cycle = [max(runs[f"bare_encoder_budget_{b}"][i] for b in args.bare_budgets) for i in range(args.repeats)]
    paired = {  # each HTTP run against the baselines of its own cycle: robust to load that drifts over minutes
        f"http_{per}_vs_{base}": statistics.median(
            h / ref for h, ref in zip(runs[f"http_{per}_per_request"], refs))
        for per in (1, 8)
        for base, refs in (("bare_encoder", bare_per_cycle), ("sentence_transformers", runs["sentence_transformers"]))
    }
    results["throughput_ratios_paired_median"] = paired
    results["throughput_ratios"] = {
        f"http_{per}_vs_bare_encoder": best[f"http_{per}_per_request"] / best["bare_encoder"] for per in (1, 8)
    } | {
        f"http_{per}_vs_sentence_transformers": best[f"http_{per}_per_request"] / best["sentence_transformers"]
        for per in (1, 8)
    } | {"goals": {"vs_bare_encoder": ">= 0.8", "vs_sentence_transformers": ">= 1.0"}}
    return uncached


def measure_latencies(args, bundle, rng: random.Random, uncached: list[float], results: dict) -> None:
    """Phases 2 and 3 (into results): cached embedding latency (LRU hit; Redis hit with the LRU off)
    beside the uncached one, and /v1/recommend latency."""
    one_item = {"items": [{"attributes": bundle.item_attributes[0]}]}
    n = args.latency_requests
    with service(args.bundle, args.threads, args.token_budget, {}) as url:
        sequential_latencies(url, "/v1/items/embed", [one_item])
        cached_lru = sequential_latencies(url, "/v1/items/embed", [one_item] * n)
        histories = [{"history": rng.sample(bundle.item_ids, 20), "k": 10} for _ in range(n)]
        sequential_latencies(url, "/v1/recommend", histories[:20])
        recommend = sequential_latencies(url, "/v1/recommend", histories)
    cached_redis = None
    with redis_server() as redis_url:
        if redis_url:
            with service(args.bundle, args.threads, args.token_budget,
                         {"LLMEMB_REDIS_URL": redis_url, "LLMEMB_LRU_SIZE": "0"}) as url:
                sequential_latencies(url, "/v1/items/embed", [one_item])
                cached_redis = latency_summary(sequential_latencies(url, "/v1/items/embed", [one_item] * n))
    un = latency_summary(uncached)
    lru = latency_summary(cached_lru)
    results["embed_latency"] = {
        "uncached_single_item": un,
        "cached_single_item_lru": lru,
        "cached_single_item_redis": cached_redis,
        "speedup_p50_cached_lru_vs_uncached": un["p50_ms"] / lru["p50_ms"],
        "speedup_p50_cached_redis_vs_uncached": (un["p50_ms"] / cached_redis["p50_ms"]) if cached_redis else None,
    }
    results["recommend_latency"] = latency_summary(recommend) | {"history_length": 20, "k": 10,
                                                                 "catalogue_items": bundle.n_items}



def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    spec = bundle.encoder
    rng = random.Random(0)
    attrs = bundle.item_attributes[: args.texts]
    prompts = [spec.prompt(a) for a in attrs]
    model_path = resolve_model_path(bundle.base_model_id)
    # The encoder the service builds from the bundle's spec (service.embedder.ItemEmbedder).
    config = EncoderConfig.from_spec(spec, model_path, token_budget=args.token_budget)
    encoder = (ItemEncoder.from_pretrained_lora(config, bundle.lora_dir) if bundle.lora_dir
               else ItemEncoder(config))
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(model_path, device="cpu")
    st_model.max_seq_length = spec.max_tokens
    encoder.embed(prompts[:64])
    st_model.encode(prompts[:64], batch_size=64, show_progress_bar=False)
    results: dict = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(args.bundle), "fingerprint": bundle.fingerprint, "base_model": bundle.base_model_id,
        "lora": bundle.lora_dir is not None, "catalogue_items": bundle.n_items,
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_at_start": os.getloadavg()},
    }

    uncached = measure_throughput(args, bundle, encoder, st_model, attrs, prompts, results)
    del encoder, st_model
    measure_latencies(args, bundle, rng, uncached, results)

    # 4. top-k at 1M items, with the service processes gone
    results["topk_1m"] = topk_bench(args.topk_items, args.topk_dim)
    results["machine"]["load_average_at_end"] = os.getloadavg()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "serve.json").write_text(json.dumps(results, indent=2))
    (args.out_dir / "serve.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    t = r["throughput_items_per_s"]
    ratios = r["throughput_ratios"]
    e = r["embed_latency"]
    rec = r["recommend_latency"]
    k = r["topk_1m"]
    redis = e["cached_single_item_redis"]
    lines = [
        "# Serving benchmark",
        "",
        f"Bundle `{r['bundle']}` ({r['fingerprint'][:12]}, {r['base_model']}, LoRA: {r['lora']}, "
        f"{r['catalogue_items']} items). {r['machine']['cpus']} CPUs, {r['machine']['torch_threads']} torch threads, "
        f"load average {r['machine']['load_average_at_start'][0]:.1f} at start "
        f"(the CPUs are shared: ratios are measured in the same run, interleaved, best of "
        f"{len(t['runs']['sentence_transformers'])}). Generated by `bench/serve.py`.",
        "",
        f"## Uncached embedding throughput ({t['texts']} catalogue prompts, concurrency {t['concurrency']})",
        "",
        "| path | items/s (best) | runs |",
        "|---|---|---|",
    ]
    for name, runs in t["runs"].items():
        lines.append(f"| {name} | {t['best'][name]:.1f} | {', '.join(f'{x:.1f}' for x in runs)} |")
    lines += [
        "",
        "The bare-encoder baseline is the best of its token budgets (ItemEncoder.embed, same texts, same "
        "model, in one process); sentence-transformers runs `encode(batch_size=32)`.",
        "",
        "| ratio | best / best | median of per-cycle ratios | goal |",
        "|---|---|---|---|",
    ]
    paired = r["throughput_ratios_paired_median"]
    for per in (1, 8):
        for base, label, goal in (("bare_encoder", "bare encoder", ">= 0.8"),
                                  ("sentence_transformers", "sentence-transformers", ">= 1.0")):
            key = f"http_{per}_vs_{base}"
            lines.append(f"| HTTP ({per} item{'s' if per > 1 else ''}/request) / {label} | {ratios[key]:.2f} | "
                         f"{paired[key]:.2f} | {goal} |")
    lines += [
        "",
        "## Single-item /v1/items/embed latency (sequential)",
        "",
        "| case | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| uncached | {e['uncached_single_item']['p50_ms']:.2f} | {e['uncached_single_item']['p99_ms']:.2f} |",
        f"| cached, in-process LRU hit | {e['cached_single_item_lru']['p50_ms']:.2f} | "
        f"{e['cached_single_item_lru']['p99_ms']:.2f} |",
    ]
    if redis:
        lines.append(f"| cached, Redis hit (LRU off) | {redis['p50_ms']:.2f} | {redis['p99_ms']:.2f} |")
    lines += [
        "",
        f"Speed-up of p50, cached vs uncached: {e['speedup_p50_cached_lru_vs_uncached']:.1f}x (LRU)"
        + (f", {e['speedup_p50_cached_redis_vs_uncached']:.1f}x (Redis)" if redis else "") + ".",
        "",
        f"## /v1/recommend latency ({rec['catalogue_items']} items, history {rec['history_length']}, k {rec['k']})",
        "",
        f"p50 {rec['p50_ms']:.2f} ms, p99 {rec['p99_ms']:.2f} ms over {rec['n']} sequential requests.",
        "",
        f"## Top-k over {k['items']:,} x {k['dim']} items ({k['threads']} threads)",
        "",
        "| operation | ms (best of 15) |",
        "|---|---|",
    ]
    for name, ms in k["streaming_pass_ms"].items():
        lines.append(f"| streaming pass: {name} | {ms:.2f} |")
    for name, ms in k["topk_ms"].items():
        lines.append(f"| top-10 with masks: {name} | {ms:.2f} |")
    lines += ["", f"Top-k as the service runs it / fastest streaming pass ({k['baseline']}): "
                  f"{k['ratio_service_to_streaming']:.2f}x (goal <= 2x); best variant: {k['best_variant']} "
                  f"({k['ratio_best_to_streaming']:.2f}x).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
