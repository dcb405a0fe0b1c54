"""Throughput against infinity-emb: the service and infinity serve the same item stage, same CPU.

The bundle's item stage is exported as a sentence-transformers folder (service/st_export.py: the
merged MiniLM, mean pooling, one Dense layer = PCA then adapter), which infinity serves on its
torch engine; the service serves the bundle itself. Both get the same OpenAI-style request,
POST /embeddings (infinity) or /v1/embeddings (service), one prompt text per request, built from
the bundle's catalogue with a unique suffix so that nothing is a cache hit.

Measured, in one run:
1. equal vectors: the same 32 prompts through both; max |difference| and min cosine;
2. rounds alternating service / infinity (--rounds each): --clients concurrent clients in a closed
   loop for --duration seconds after --warmup seconds; texts per second, p50 / p99 latency, errors.
Both servers run with --threads torch threads (OMP_NUM_THREADS); the load generator runs beside them.
Ratio: the service's texts/s over infinity's, median over rounds.

infinity-emb pins numpy<2 and sentence-transformers<4, so it lives in its own virtualenv
(--infinity-python; `make bench-infinity` creates .venv-infinity).
Results: bench/results/infinity.json and infinity.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from load import Tally, summary  # noqa: E402  (bench/load.py, beside this file)

from llmemb.bundle import load_bundle  # noqa: E402
from llmemb_testing.servers import ServiceProcess, free_port, wait_for  # noqa: E402
from service.st_export import export_item_stage  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--infinity-python", default=str(ROOT / ".venv-infinity" / "bin" / "python"))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--infinity-batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "infinity")
    p.add_argument("--note", default="", help="what else ran on the machine")
    return p.parse_args(argv)


class Prompts:
    def __init__(self, bundle_dir: Path):
        bundle = load_bundle(bundle_dir)
        rows = [json.loads(line) for line in (bundle_dir / "items.jsonl").read_text().splitlines() if line.strip()]
        self.texts = [bundle.encoder.prompt(r["attributes"]) for r in rows]
        self.i = 0

    def next_unique(self) -> str:
        self.i += 1
        return f"{self.texts[self.i % len(self.texts)]} #{uuid.uuid4().hex[:8]}"


class Infinity:
    """infinity_emb v2 over the exported folder, on a free loopback port."""

    def __init__(self, python: str, folder: Path, threads: int, batch_size: int, logdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / "infinity.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        cli = Path(python).parent / "infinity_emb"
        self.proc = subprocess.Popen(
            [str(cli), "v2", "--model-id", str(folder), "--served-model-name", "item-stage",
             "--engine", "torch", "--device", "cpu", "--batch-size", str(batch_size), "--host", "127.0.0.1",
             "--port", str(self.port), "--dtype", "float32", "--no-bettertransformer"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, timeout, what="infinity ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def embed(url: str, path: str, model: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}{path}", json={"model": model, "input": texts}, timeout=120)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


async def closed_loop(url: str, path: str, model: str, prompts: Prompts, clients: int, warmup: float,
                      duration: float) -> dict:
    tally = Tally()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client(http: httpx.AsyncClient) -> None:
        while (now := time.perf_counter()) < stop_at:
            t0 = now
            try:
                r = await http.post(path, json={"model": model, "input": [prompts.next_unique()]})
                status = str(r.status_code)
            except httpx.TransportError as e:
                status = type(e).__name__
            if t0 >= measure_from:
                tally.add(status, (time.perf_counter() - t0) * 1000)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return summary(tally, duration)


def markdown(result: dict) -> str:
    rows = [f"| {r['server']} | {r['round']} | {r['per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
            for r in result["rounds"]]
    eq = result["equal_vectors"]
    return "\n".join([
        "# The service against infinity-emb, same item stage, same CPU",
        "",
        f"{result['when']}; {result['machine']}; {result['clients']} clients, closed loop, one text per request, "
        f"{result['duration_s']} s per round after {result['warmup_s']} s warm-up; {result['threads']} torch threads per "
        f"server; infinity {result['infinity_version']} (torch engine, batch size {result['infinity_batch_size']}). "
        f"Also running: {result['note'] or 'nothing noted'}.",
        "",
        f"Equal vectors: {eq['n']} prompts, min cosine {eq['min_cosine']:.6f}, max |difference| after normalising the "
        f"service's vectors {eq['max_abs_diff_normalised']:.2e} (infinity returns unit vectors: norms "
        f"{eq['infinity_norms'][0]:.4f}-{eq['infinity_norms'][1]:.4f}).",
        "",
        "| server | round | texts/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median texts/s: service {result['service_per_s']}, infinity {result['infinity_per_s']}; "
        f"ratio service / infinity **{result['ratio']}** (goal: at least 1).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.infinity_python).exists():
        sys.exit(f"no infinity environment at {args.infinity_python}: run `make bench-infinity`")
    work = Path(tempfile.mkdtemp(prefix="llmemb-infinity-"))
    try:
        folder = export_item_stage(load_bundle(args.bundle), work / "item-stage")
        prompts = Prompts(args.bundle)
        version = subprocess.run([args.infinity_python, "-c", "import infinity_emb; print(infinity_emb.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        # Cache off (every text is new anyway) and the model process at the priority of infinity's:
        # the default nice 10 favours the service's cheap requests over its own model, and on a machine
        # shared with other jobs would hand the CPU to them as well.
        service = ServiceProcess(args.bundle, work, env={"LLMEMB_CACHE_ENABLED": "false",
                                                         "LLMEMB_MODEL_NICE": "0",
                                                         "LLMEMB_TORCH_THREADS": str(args.threads),
                                                         "OMP_NUM_THREADS": str(args.threads)})
        infinity = Infinity(args.infinity_python, folder, args.threads, args.infinity_batch_size, work)
        rounds = []
        with service:
            service.wait_ready()
            infinity.wait_ready()
            sample = [prompts.texts[i] for i in range(32)]
            ours = embed(service.url, "/v1/embeddings", "llmemb", sample)
            theirs = embed(infinity.url, "/embeddings", "item-stage", sample)
            # infinity L2-normalises every vector it returns: compare directions, and values after
            # normalising the service's (the item space is scored by dot product, so the norm matters
            # to a recommender: a standard server serves the direction only).
            norms = np.linalg.norm(ours, axis=1, keepdims=True)
            cos = (ours * theirs).sum(1) / (norms[:, 0] * np.linalg.norm(theirs, axis=1))
            equal = {"n": len(sample), "max_abs_diff_normalised": float(np.abs(ours / norms - theirs).max()),
                     "min_cosine": float(cos.min()), "infinity_norms": [float(np.linalg.norm(theirs, axis=1).min()),
                                                                        float(np.linalg.norm(theirs, axis=1).max())]}
            for r in range(args.rounds):
                for name, url, path, model in (("service", service.url, "/v1/embeddings", "llmemb"),
                                               ("infinity", infinity.url, "/embeddings", "item-stage")):
                    res = asyncio.run(closed_loop(url, path, model, prompts, args.clients, args.warmup, args.duration))
                    rounds.append({"server": name, "round": r + 1, **res})
                    print(f"{name} round {r + 1}: {res['per_s']} texts/s, p99 {res['p99_ms']} ms", flush=True)
            infinity.stop()
        per = {s: statistics.median(x["per_s"] for x in rounds if x["server"] == s) for s in ("service", "infinity")}
        result = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "clients": args.clients,
                  "duration_s": args.duration, "warmup_s": args.warmup, "threads": args.threads,
                  "infinity_version": version, "infinity_batch_size": args.infinity_batch_size, "note": args.note,
                  "equal_vectors": equal, "rounds": rounds, "service_per_s": per["service"],
                  "infinity_per_s": per["infinity"], "ratio": round(per["service"] / per["infinity"], 2)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
