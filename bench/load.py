"""Load benchmark: 64 clients for a fixed time over the four request kinds, against a real service.

Kinds (clients split evenly, each client one kind):
- embed_uncached: /v1/items/embed of --uncached-items new items per request (unique titles), closed loop
  (no pause): keeps the model saturated for the whole run;
- embed_cached:   /v1/items/embed of one item embedded before the run (a cache hit);
- recommend:      /v1/recommend, top 10 over the catalogue for a random history of 5-20 bundle items;
- score:          /v1/score of 20 random candidates for such a history.
The cheap kinds (the last three) offer --cheap-rate requests/s in all (default 150, about half of what
the service's one core answers at idle), paced per client; a request's latency counts from its
scheduled time, so a request that could not start on time counts its wait. --cheap-rate 0 makes
them closed loop as well: then 48 clients without pause saturate the event loop itself, and by
Little's law their latency is clients / throughput whatever the model does.

Measured, in one run:
1. idle baseline: each cheap kind alone, one client, --idle-requests requests (p50 / p99);
2. the load: --clients clients for --duration seconds after --warmup seconds; latency p50 / p99 / max
   per kind, requests per second, every non-2xx and transport error, 429s on their own line;
3. memory: RSS of the service process and of its model process at the end of the warm-up, at half
   time and at the end (growth in %, over the whole run and over its second half).
Ratios: loaded p99 / idle p99 per cheap kind.

CPU split: with --pin (default) the service (and its model process) run on --service-cpus and this
load generator on --load-cpus (taskset), so the generator's own work is not counted against the
service. Latency is measured by the generator: it includes its own scheduling delays.

Goals (issue 10): 0 errors; RSS growth under 10%; cached embed p99 <= 50 ms and recommend p99 <= 100 ms
while uncached embedding saturates the model.

Results: bench/results/load.json and load.md.
Usage: python bench/load.py --bundle bundles/ml100k-quick [--duration 60] [--clients 64]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]

from llmemb_testing.servers import RedisServer, ServiceProcess  # noqa: E402

KINDS = ("embed_uncached", "embed_cached", "recommend", "score")
CHEAP = ("embed_cached", "recommend", "score")
GOALS_MS = {"embed_cached": 50.0, "recommend": 100.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    p.add_argument("--uncached-items", type=int, default=4, help="new items per uncached embed request")
    p.add_argument("--cheap-rate", type=float, default=150.0,
                   help="requests/s offered by all cheap clients together, paced (latency counted from each "
                        "request's scheduled time, so a late start counts); 0 = closed loop, no pause")
    p.add_argument("--idle-requests", type=int, default=200)
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--service-cpus", default="1", help="taskset CPU list of the service (with --pin)")
    p.add_argument("--load-cpus", default="0", help="taskset CPU list of this generator (with --pin)")
    p.add_argument("--torch-threads", type=int, default=1, help="LLMEMB_TORCH_THREADS of the service")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--service-root", type=Path, default=ROOT,
                   help="checkout whose service is measured (e.g. a git worktree of an older commit)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of the service (e.g. LLMEMB_MODEL_NICE=0), repeatable")
    p.add_argument("--label", default="", help="suffix of the result files: load<label>.json / .md")
    return p.parse_args(argv)


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, ms: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status.startswith("2"):
            self.latencies_ms.append(ms)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if not s.startswith("2") and s != "429")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(t: Tally, seconds: float) -> dict:
    return {"requests_ok": t.ok, "per_s": round(t.ok / seconds, 1), "statuses": dict(sorted(t.statuses.items())),
            "errors": t.errors, "p50_ms": round(pct(t.latencies_ms, 50), 2),
            "p99_ms": round(pct(t.latencies_ms, 99), 2),
            "max_ms": round(max(t.latencies_ms), 2) if t.latencies_ms else None,
            "mean_ms": round(statistics.fmean(t.latencies_ms), 2) if t.latencies_ms else None}


class Workload:
    """Request bodies of each kind over the bundle's catalogue."""

    def __init__(self, bundle: Path, rng: random.Random, uncached_items: int):
        rows = [json.loads(line) for line in (bundle / "items.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
        self.ids = [r["id"] for r in rows]
        self.cached = [{"items": [{"id": r["id"], "attributes": r["attributes"]}]} for r in rows[:32]]
        self.template = rows[0]["attributes"]
        self.rng = rng
        self.uncached_items = uncached_items

    def history(self) -> list[str]:
        return self.rng.sample(self.ids, self.rng.randint(5, 20))

    def request(self, kind: str) -> tuple[str, dict]:
        if kind == "embed_uncached":
            items = [{"attributes": {**self.template, "title": f"load {uuid.uuid4().hex}"}}
                     for _ in range(self.uncached_items)]
            return "/v1/items/embed", {"items": items}
        if kind == "embed_cached":
            return "/v1/items/embed", self.rng.choice(self.cached)
        if kind == "recommend":
            return "/v1/recommend", {"history": self.history(), "k": 10}
        return "/v1/score", {"history": self.history(), "candidates": self.rng.sample(self.ids, 20)}


async def send(client: httpx.AsyncClient, path: str, body: dict) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        response = await client.post(path, json=body)
        status = str(response.status_code)
    except httpx.HTTPError as e:
        status = f"transport:{type(e).__name__}"
    return status, (time.perf_counter() - started) * 1000


async def idle_baseline(url: str, work: Workload, n: int) -> dict:
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for body in work.cached:  # the cached kind's items, embedded once: from here on they are hits
            await send(client, "/v1/items/embed", body)
        for kind in CHEAP:
            t = Tally()
            for _ in range(10):  # connection and first-call warm-up, not counted
                await send(client, *work.request(kind))
            for _ in range(n):
                t.add(*await send(client, *work.request(kind)))
            out[kind] = summary(t, 1.0) | {"per_s": None}
    return out


async def load(url: str, work: Workload, clients: int, warmup: float, duration: float,
               on_measure_start, on_half_time, on_measure_end, cheap_rate: float = 0.0) -> dict:
    tallies = {k: Tally() for k in KINDS}
    measuring = asyncio.Event()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    n_cheap = sum(1 for i in range(clients) if KINDS[i % len(KINDS)] in CHEAP)
    interval = n_cheap / cheap_rate if cheap_rate > 0 else 0.0

    async def client_loop(index: int, kind: str, client: httpx.AsyncClient) -> None:
        paced = interval > 0 and kind in CHEAP
        loop = asyncio.get_running_loop()
        scheduled = loop.time() + (index / clients) * interval  # spread the clients' phases
        while not stop.is_set():
            if paced:
                await asyncio.sleep(max(0.0, scheduled - loop.time()))
                lateness_ms = (loop.time() - scheduled) * 1000
                scheduled += interval
            else:
                lateness_ms = 0.0
            status, ms = await send(client, *work.request(kind))
            if measuring.is_set() and not stop.is_set():
                tallies[kind].add(status, ms + lateness_ms)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(i, KINDS[i % len(KINDS)], client)) for i in range(clients)]
        await asyncio.sleep(warmup)
        on_measure_start()
        measuring.set()
        started = time.perf_counter()
        await asyncio.sleep(duration / 2)
        on_half_time()
        await asyncio.sleep(duration / 2)
        stop.set()
        seconds = time.perf_counter() - started
        on_measure_end()
        await asyncio.gather(*tasks)
    return {kind: summary(t, seconds) | {"clients": sum(1 for i in range(clients) if KINDS[i % len(KINDS)] == kind)}
            for kind, t in tallies.items()}


def rss_mb(pid: int) -> dict[str, float]:
    """RSS of the service process and of each child (the model process), in MB."""
    proc = psutil.Process(pid)
    out = {"service": proc.memory_info().rss / 2**20}
    for child in proc.children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue  # multiprocessing's bookkeeping process, not the model
            out[f"child {child.pid}"] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return out


def service_version(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()[:100]
    except (OSError, subprocess.CalledProcessError):
        return str(root)


def markdown(result: dict) -> str:
    r = result
    lines = [
        "# Load benchmark (bench/load.py)", "",
        f"{r['when']}, {r['machine']}. Command: `{r['command']}`. Service: {r['service']}.", "",
        f"CPU split: {r['cpu_split']}. Other load on the machine during the run: {r['other_load']}.", "",
        f"{r['clients']} clients for {r['duration_s']:.0f} s after {r['warmup_s']:.0f} s of warm-up; "
        f"uncached requests embed {r['uncached_items']} new items each, closed loop (the model never idles); "
        + (f"the cheap kinds offer {r['cheap_rate']:.0f} requests/s in all, paced, latency counted from each "
           "request's scheduled time." if r["cheap_rate"] else "the cheap kinds are closed loop too (no pause)."),
        "",
        "| kind | clients | requests/s | p50 ms | p99 ms | max ms | errors | statuses | idle p99 ms | "
        "p99 / idle p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for kind in KINDS:
        s = r["load"][kind]
        idle = r["idle"].get(kind)
        ratio = f"{s['p99_ms'] / idle['p99_ms']:.1f}" if idle and idle["p99_ms"] else "-"
        lines.append(f"| {kind} | {s['clients']} | {s['per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | "
                     f"{s['errors']} | {s['statuses']} | {idle['p99_ms'] if idle else '-'} | {ratio} |")
    lines += ["", "| memory (RSS) | MB at start | MB at half time | MB at end | growth, whole run | "
              "growth, second half |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in r["rss"].items():
        lines.append(f"| {name} | {m['start_mb']:.1f} | {m['half_mb']:.1f} | {m['end_mb']:.1f} | "
                     f"{m['growth_pct']:+.2f}% | {m['second_half_growth_pct']:+.2f}% |")
    lines += ["", "Goals:", ""]
    for goal in r["goals"]:
        lines.append(f"- {goal['goal']}: {goal['measured']} — **{'met' if goal['met'] else 'not met'}**")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = Workload(args.bundle, rng, args.uncached_items)
    pin = args.pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmemb-load-{uuid.uuid4().hex[:8]}"
    logdir.mkdir(parents=True)
    if pin:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    other_load = os.getloadavg()
    with RedisServer(logdir) as redis_server:
        env = {"LLMEMB_REDIS_URL": redis_server.url, "LLMEMB_TORCH_THREADS": str(args.torch_threads),
               "OMP_NUM_THREADS": str(args.torch_threads), **dict(e.split("=", 1) for e in args.env)}
        prefix = ["taskset", "-c", args.service_cpus] if pin else []
        with ServiceProcess(args.bundle.resolve(), logdir, env=env, command_prefix=prefix,
                            root=args.service_root) as service:
            print(f"service ready at {service.url} (pid {service.pid})", flush=True)
            idle = asyncio.run(idle_baseline(service.url, work, args.idle_requests))
            marks: dict[str, dict[str, float]] = {}
            result_load = asyncio.run(load(
                service.url, work, args.clients, args.warmup, args.duration,
                lambda: marks.__setitem__("start", rss_mb(service.pid)),
                lambda: marks.__setitem__("half", rss_mb(service.pid)),
                lambda: marks.__setitem__("end", rss_mb(service.pid)), args.cheap_rate))
    rss = {}
    for name in marks["start"]:
        if name in marks["end"] and name in marks["half"]:
            a, h, b = marks["start"][name], marks["half"][name], marks["end"][name]
            label = "service process" if name == "service" else f"model process ({name})"
            rss[label] = {"start_mb": round(a, 1), "half_mb": round(h, 1), "end_mb": round(b, 1),
                          "growth_pct": round(100 * (b - a) / a, 2),
                          "second_half_growth_pct": round(100 * (b - h) / h, 2)}
    errors = sum(s["errors"] for s in result_load.values())
    goals = [
        {"goal": "0 errors (non-2xx other than 429, transport errors)", "measured": errors, "met": errors == 0},
        {"goal": "RSS growth under 10% (each process, over the second half of the run: the first half "
                 "includes the allocator's warm-up on new batch shapes)",
         "measured": ", ".join(f"{k} {v['second_half_growth_pct']:+.2f}% (whole run {v['growth_pct']:+.2f}%)"
                               for k, v in rss.items()),
         "met": all(v["second_half_growth_pct"] < 10 for v in rss.values())},
    ]
    for kind, limit in GOALS_MS.items():
        p99 = result_load[kind]["p99_ms"]
        goals.append({"goal": f"{kind} p99 <= {limit:.0f} ms while uncached embedding saturates the model",
                      "measured": f"{p99} ms", "met": p99 <= limit})
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "service": service_version(args.service_root),
        "cpu_split": (f"service and its model process on CPU {args.service_cpus}, load generator on CPU "
                      f"{args.load_cpus} (taskset); service torch threads {args.torch_threads}") if pin
        else f"not pinned (service torch threads {args.torch_threads})",
        "other_load": f"load average {other_load[0]:.2f} (1 min) when the run started",
        "clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup,
        "uncached_items": args.uncached_items, "cheap_rate": args.cheap_rate, "idle": idle, "load": result_load, "rss": rss, "goals": goals,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"load{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"load{args.label}.md").write_text(markdown(result))
    print(markdown(result))
    shutil.rmtree(logdir, ignore_errors=True)
    return 0 if all(g["met"] for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
