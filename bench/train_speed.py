"""Training-speed benchmarks; results go to bench/results/train_speed.{json,md}.

Each section is a function returning a dict of numbers plus a markdown block;
`SECTIONS` maps its name to it.

Section "srs": SASRec (hidden 64, max length 50, full-softmax CE) on
MovieLens-100K, trained to early stopping on valid NDCG@10 (full protocol)
with whole-window training (windows of max_len+1 items every `stride` items, a
loss at the last `stride` positions of each: stride 50, 25, 10, or only each
user's last window) and with prefix-materialised training (stride 1: every
prefix its own sample). Reported: seconds
per epoch, training predictions per second, epochs and wall seconds to the
best validation epoch, and the test metrics of the restored best checkpoint.

Section "llm": the LLM stages with the config's encoder (all-MiniLM-L6-v2 on
the CPU by default). Export: catalogue items per second through ItemEncoder.embed
(length-sorted batches under a token budget) against a plain transformers loop
in the same run (fixed batches of 64 prompts in catalogue order, padded to the
longest), with the largest difference between their vectors. SCFT: optimiser
steps per second (64 items, 128 views a step, LoRA r=8 on every projection),
with and without gradient checkpointing.

Section "scale": one epoch of SASRec (ID embeddings) per dataset (ML-100K, Amazon Beauty,
MovieLens-1M on every interaction) x loss (ce, sampled_ce, bce) x threads (1, 2), and on 2 threads
with the fast dropout masks too: seconds per epoch, predictions per second and the fraction of the FLOP limit (the epoch's counted
multiply-adds per second over a large matmul's, measured in the same run, fp32 and bf16).

Section "ce": the output layer alone (full-softmax CE with its gradient, one batch shaped like Beauty's
and ML-1M's), this checkout's chunked form against a baseline revision's, same process.

Section "adapter": LLMEmb's item layer over the whole catalogue, forward and backward, the adapter
as two layers against its one-matrix form, same process.

Section "profile": torch.profiler over a few training steps shaped like ML-1M's and Beauty's
batches, with torch's and the fast dropout masks: where a step's time goes.

Section "eval": full-ranking validation in item chunks of several sizes (seconds, the bound on
the scores held at once, ranks equal to the one-pass count).

Section "losses" (hours; `make bench-losses`): full CE against sampled CE over 3 seeds (and BCE,
one seed), trained to early stopping, on ML-100K, Beauty and ML-1M: time to the best validation
NDCG@10, test metrics, the 2-sd verdict and the speed-up.

Section "recbole" (`make bench-recbole`): RecBole 1.2.1's SASRec on the same ML-100K split, run by
bench/recbole_sasrec.py in .venv-recbole, as the outside reference.

    python bench/train_speed.py [--sections srs,llm,scale,eval] [--threads 2] [--scale-datasets ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a
# spinning 2-thread process next to any other busy process runs ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from llmemb.backbones import build_id_backbone  # noqa: E402
from llmemb.metrics import Evaluator  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.stages.prepare import prepared_dataset  # noqa: E402
from trainer.stages.train import fit, seed_everything, training_rows  # noqa: E402

GOAL_SECONDS_TO_BEST = 120.0


def srs_variants(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """name -> (column title, config overrides) of the training layouts compared."""
    return {
        "sequence": ("windows, stride 50 (default)", ["train.stride=0", "train.windows=all"]),
        "stride25": ("windows, stride 25", ["train.stride=25", "train.windows=all"]),
        "stride10": ("windows, stride 10", ["train.stride=10", "train.windows=all"]),
        "last": ("last window only", ["train.stride=0", "train.windows=last"]),
        # each prefix epoch costs ~max_len times the forward passes: stop it sooner
        "prefix": ("every prefix a sample (stride 1)", ["train.stride=1", "train.windows=all",
                                                        f"train.patience={args.prefix_patience}",
                                                        f"train.max_seconds={args.prefix_max_seconds}"]),
    }


def srs_run(args: argparse.Namespace, title: str, layout: list[str]) -> dict[str, Any]:
    """This project's SASRec (hidden 64, max length 50, full-softmax CE) on the config's data under one
    training layout, trained to early stopping: its speed, its path to the best epoch, its metrics."""
    overrides = layout + ["train.progress=false", f"train.threads={args.threads}",
                          "backbone.hidden=64", "backbone.max_len=50", "backbone.loss=ce"]
    cfg = load_config(args.config, overrides, backbone="sasrec")
    dataset, data_dir = prepared_dataset(cfg)
    seed_everything(cfg.train.seed)
    model = build_id_backbone(cfg.backbone, dataset.n_items)
    evaluator = Evaluator(dataset, cfg.eval, cache_dir=data_dir)
    print(f"[srs] {title}: SASRec on {dataset.name}, {args.threads} threads", flush=True)
    result = fit(model, dataset, cfg.train, evaluator=evaluator,
                 callbacks=[lambda r, m: print(f"  epoch {r.epoch}: valid {r.valid_score:.4f}, "
                                               f"{r.train_seconds:.1f}s, {r.predictions_per_s:,.0f} pred/s",
                                               flush=True) and False])
    test = evaluator.evaluate(model, "test", ("full", "sampled"))
    return {
        "config": {"train": vars(cfg.train), "backbone": cfg.backbone.to_dict()},
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "seconds_per_epoch": statistics.fmean(r.train_seconds for r in result.history),
        "eval_seconds_per_epoch": statistics.fmean(r.eval_seconds for r in result.history),
        "predictions_per_epoch": result.history[0].predictions,
        "sequences_per_epoch": len(training_rows(evaluator.split.train, cfg.backbone.max_len,
                                                 cfg.train.stride, cfg.train.windows)),
        "predictions_per_s": statistics.fmean(r.predictions_per_s for r in result.history),
        "best_epoch": result.best_epoch,
        "seconds_to_best": result.seconds_to_best,
        "total_seconds": result.total_seconds,
        "valid_ndcg@10": result.best_score,
        "test": {p: {k: test[p]["overall"][k] for k in ("hr@10", "ndcg@10")} for p in test},
    }


def srs_training(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    variants = srs_variants(args)
    rows = {name: srs_run(args, title, layout) for name, (title, layout) in variants.items()}
    seq = rows["sequence"]
    goal = {"seconds_to_best_at_most": GOAL_SECONDS_TO_BEST, "met": seq["seconds_to_best"] <= GOAL_SECONDS_TO_BEST}
    fmt = {
        "seconds per epoch (training)": lambda r: f"{r['seconds_per_epoch']:.2f}",
        "training predictions / s": lambda r: f"{r['predictions_per_s']:,.0f}",
        "sequences per epoch (forward passes)": lambda r: f"{r['sequences_per_epoch']:,}",
        "predictions per epoch": lambda r: f"{r['predictions_per_epoch']:,}",
        "best epoch / epochs run": lambda r: f"{r['best_epoch']} / {r['epochs_run']} ({r['stop_reason']})",
        "wall seconds to best (incl. validation)": lambda r: f"{r['seconds_to_best']:.1f}",
        "valid NDCG@10 (full)": lambda r: f"{r['valid_ndcg@10']:.4f}",
        "test NDCG@10 / HR@10 (full)": lambda r: f"{r['test']['full']['ndcg@10']:.4f} / {r['test']['full']['hr@10']:.4f}",
        "test NDCG@10 / HR@10 (sampled)":
            lambda r: f"{r['test']['sampled']['ndcg@10']:.4f} / {r['test']['sampled']['hr@10']:.4f}",
    }
    lines = [
        "## SASRec on MovieLens-100K: training layouts",
        "",
        "SASRec, hidden 64, max length 50, 2 blocks, full-softmax CE, batch 128, lr 1e-3, "
        "early stopping on valid NDCG@10 (full protocol); test metrics of the restored best epoch.",
        "",
        "| | " + " | ".join(title for title, _ in variants.values()) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for label, cell in fmt.items():
        lines.append(f"| {label} | " + " | ".join(cell(rows[name]) for name in variants) + " |")
    lines += [
        "",
        f"Goal: best checkpoint within {GOAL_SECONDS_TO_BEST:.0f} s of training with the default layout: "
        f"{'met' if goal['met'] else 'NOT met'} ({seq['seconds_to_best']:.1f} s).",
        f"Prefix training ran with patience {args.prefix_patience} and a {args.prefix_max_seconds:.0f} s cap.",
        "",
    ]
    rows["goal"] = goal
    return rows, "\n".join(lines)


def llm_stages(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    import tempfile
    from dataclasses import replace

    from transformers import AutoModel

    from llmemb.encoder import ItemEncoder, load_tokenizer, pool, tokenize
    from trainer.stages.export import embed_catalogue
    from trainer.stages.llm_stages import (
        encoder_config,
        encoder_spec,
        lora_settings,
        scft_config,
    )
    from trainer.stages.scft import run_scft

    config = load_config(args.config)
    dataset, _ = prepared_dataset(config)
    # As the trainer does it (trainer.stages.llm_stages.ensure_export / ensure_scft): one spec, the
    # export on the base model, SCFT with the config's LoRA settings.
    spec = encoder_spec(config, dataset.domain)
    enc = encoder_config(config, spec)
    encoder = ItemEncoder(enc)
    embed_catalogue(encoder, dataset.attributes[:64], spec, progress=False)  # warm-up
    table, summary = embed_catalogue(encoder, dataset.attributes, spec, progress=False)

    # Baseline: the plain transformers loop, catalogue order, fixed batches, same pooling
    # and the same token ids (the spec's truncation and EOS handling).
    prompts = [spec.prompt(a) for a in dataset.attributes]
    tokenizer = load_tokenizer(enc.model_path)
    model = AutoModel.from_pretrained(enc.model_path, local_files_only=True).eval()
    start = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for begin in range(0, len(prompts), 64):
            ids = tokenize(tokenizer, prompts[begin:begin + 64], enc.max_tokens, enc.append_eos)
            batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            pooled = pool(hidden, batch["attention_mask"], enc.pooling)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1) if enc.normalize else pooled)
    plain_seconds = time.perf_counter() - start
    plain = torch.cat(rows)
    max_diff = float((plain - table).abs().max())

    scft_rows = {}
    for name, checkpointing in (("plain", False), ("checkpointing", True)):
        cfg = replace(scft_config(config), steps=args.scft_steps, val_items=0, progress=False,
                      gradient_checkpointing=checkpointing)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_scft(encoder_config(config, spec, lora=lora_settings(config)), cfg, dataset.attributes,
                              spec, tmp)
        scft_rows[name] = {"steps_per_s": result["steps_per_s"],
                           "items_per_s": result["steps_per_s"] * cfg.batch_items}
    numbers = {
        "export": {"items": len(prompts), "items_per_s": summary["items_per_s"],
                   "plain_loop_items_per_s": len(prompts) / plain_seconds,
                   "speedup": summary["items_per_s"] / (len(prompts) / plain_seconds), "max_abs_diff": max_diff},
        "scft": {"steps": args.scft_steps, "batch_items": scft_config(config).batch_items, **scft_rows},
    }
    e, sc = numbers["export"], numbers["scft"]
    lines = [
        "## LLM stages: export and SCFT", "",
        f"Encoder `{config.sections.get('encoder', {}).get('model')}` ({enc.pooling} pooling, {enc.dtype}, "
        f"{enc.device}), {len(prompts)} catalogue items of {dataset.name}.", "",
        "| stage | measure | value |", "|---|---|---|",
        f"| export | items / s, ItemEncoder.embed (length-sorted, token budget {enc.token_budget}) | {e['items_per_s']:.1f} |",
        f"| export | items / s, plain transformers loop (batches of 64, catalogue order) | {e['plain_loop_items_per_s']:.1f} |",
        f"| export | speed-up over the plain loop | {e['speedup']:.2f}x |",
        f"| export | largest difference between the two tables | {e['max_abs_diff']:.2e} |",
        f"| SCFT | steps / s ({sc['batch_items']} items, two views each; {sc['steps']} steps) | {sc['plain']['steps_per_s']:.3f} |",
        f"| SCFT | items / s | {sc['plain']['items_per_s']:.1f} |",
        f"| SCFT | steps / s with gradient checkpointing | {sc['checkpointing']['steps_per_s']:.3f} |",
        "",
    ]
    return numbers, "\n".join(lines)


# ----------------------------------------------------------- scale section
SCALE_DATASETS = {"ml100k": "configs/ml100k.yaml", "amazon-beauty": "configs/amazon-beauty.yaml",
                  "ml1m": "configs/regimes/ml1m.yaml"}
SCALE_LOSSES = ("ce", "sampled_ce", "bce")


def matmul_roofline(threads: int, repeats: int = 5) -> dict[str, float]:
    """Multiply-adds per second of a large square matmul, fp32 and bf16 (best of `repeats`),
    on `threads` threads: the ceiling an epoch's counted multiply-adds are compared with. The size
    (512 to 2048) is chosen from a 512 probe so one product takes about half a second: on a CPU
    without bf16 units a 2048 bf16 product takes minutes."""
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        probe = torch.randn(512, 512, dtype=dtype)
        start = time.perf_counter()
        probe @ probe
        rate = 512 ** 3 / (time.perf_counter() - start)
        size = int(min(2048, max(512, (0.5 * rate) ** (1 / 3))))
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[f"{name}_macs_per_s"] = size ** 3 / best
        out[f"{name}_size"] = size
    return out


def epoch_macs(rows, batches, backbone, n_items: int, loss: str) -> dict[str, int]:
    """Multiply-adds of one training epoch of SASRec, forward and backward (backward counted as
    twice the forward, the usual rule), split into the transformer blocks and the output layer.
    Per block and row of width L: QKV, output and the two FFN projections, L x (4 d^2 + 2 d inner),
    plus attention's two L x L x d products; the output layer scores each prediction against N items
    (ce), the batch's shared negatives plus its target (sampled_ce) or two items (bce)."""
    d, inner = backbone.hidden, backbone.inner_size or 4 * backbone.hidden
    blocks = output = 0
    for index in batches:
        batch = rows.batch(index, trim=True)
        width = batch.shape[1] - 1
        predictions = int(((batch[:, :-1] != 0) & (batch[:, 1:] != 0)).sum())
        blocks += backbone.n_layers * len(index) * (width * (4 * d * d + 2 * d * inner) + 2 * width * width * d)
        per = {"ce": n_items, "sampled_ce": backbone.loss_negatives + 1, "bce": 2}[loss]
        output += predictions * per * d
    return {"blocks": 3 * blocks, "output": 3 * output, "total": 3 * (blocks + output)}


def scale_epoch(dataset_name: str, loss: str, threads: int, epochs: int, masks: str = "torch") -> dict[str, Any]:
    """`epochs` training epochs of the None (ID-only) SASRec with `loss` and dropout `masks`;
    timings of the last one."""
    import numpy as np

    overrides = ["train.progress=false", f"train.threads={threads}", f"train.epochs={epochs}",
                 f"backbone.loss={loss}", f"backbone.dropout_masks={masks}", "train.device=cpu"]
    cfg = load_config(SCALE_DATASETS[dataset_name], overrides, backbone="sasrec")
    dataset, data_dir = prepared_dataset(cfg)
    seed_everything(cfg.train.seed)
    model = build_id_backbone(cfg.backbone, dataset.n_items)
    evaluator = Evaluator(dataset, cfg.eval, cache_dir=data_dir)
    result = fit(model, dataset, cfg.train, evaluator=evaluator)
    last = result.history[-1]
    rows = training_rows(evaluator.split.train, cfg.backbone.max_len, cfg.train.stride, cfg.train.windows)
    macs = epoch_macs(rows, rows.order(np.random.default_rng(0), cfg.train.batching, cfg.train.batch_size),
                      cfg.backbone, dataset.n_items, loss)
    return {"seconds_per_epoch": last.train_seconds, "predictions": last.predictions,
            "predictions_per_s": last.predictions_per_s, "eval_seconds": last.eval_seconds,
            "macs": macs, "batching": cfg.train.batching, "n_items": dataset.n_items,
            "windows": len(rows), "epochs_timed": len(result.history), "masks": masks}


def scale_speed(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Seconds per epoch and the fraction of the matmul roofline, per dataset x loss x threads."""
    datasets = [d.strip() for d in args.scale_datasets.split(",") if d.strip()]
    thread_counts = [int(t) for t in args.scale_threads.split(",")]
    fast_threads = [int(t) for t in args.scale_fast_threads.split(",") if t.strip()]
    numbers: dict[str, Any] = {"roofline": {}, "runs": {}}
    for threads in thread_counts:
        numbers["roofline"][str(threads)] = matmul_roofline(threads)
        print(f"[scale] roofline, {threads} thread(s): "
              f"{numbers['roofline'][str(threads)]['fp32_macs_per_s'] / 1e9:.1f} GMAC/s fp32", flush=True)
    for threads in fast_threads:
        if str(threads) not in numbers["roofline"]:
            numbers["roofline"][str(threads)] = matmul_roofline(threads)
    plan = [(threads, "torch") for threads in thread_counts] + [(threads, "fast") for threads in fast_threads]
    for name in datasets:
        for loss in SCALE_LOSSES:
            for threads, masks in plan:
                run = scale_epoch(name, loss, threads, args.scale_epochs, masks)
                roof = numbers["roofline"][str(threads)]["fp32_macs_per_s"]
                run["fraction_of_roofline"] = run["macs"]["total"] / run["seconds_per_epoch"] / roof
                numbers["runs"][f"{name}/{loss}/{threads}/{masks}"] = run
                print(f"[scale] {name} {loss} {threads}t {masks} masks: {run['seconds_per_epoch']:.2f} s/epoch, "
                      f"{run['predictions_per_s']:,.0f} pred/s, {run['fraction_of_roofline']:.1%} of roofline",
                      flush=True)
    lines = ["## SASRec epochs at scale: losses, threads and the matmul roofline", "",
             "SASRec (hidden 64, max length 50, 2 blocks, batch 128), ID embeddings, CPU, fp32; each batch cut to "
             "its longest sequence (length batching where the config asks for it). Seconds of the last of "
             f"{args.scale_epochs} epochs (training only, validation apart). sampled_ce: 256 uniform negatives "
             "shared per batch, logQ-corrected; bce: one negative per position. \"Fraction of the FLOP limit\": "
             "the epoch's counted multiply-adds (forward + 2x for backward; blocks and output layer) per second, "
             "over a large square fp32 matmul's multiply-adds per second measured in the same run (size in the "
             "table). Dropout masks: torch's (the default) or `backbone.dropout_masks: fast`.", "",
             "| threads | fp32 matmul GMAC/s (size) | bf16 matmul GMAC/s (size) |", "|---|---|---|"]
    for threads, roof in numbers["roofline"].items():
        lines.append(f"| {threads} | {roof['fp32_macs_per_s'] / 1e9:.1f} ({roof['fp32_size']}) | "
                     f"{roof['bf16_macs_per_s'] / 1e9:.2f} ({roof['bf16_size']}) |")
    lines += ["", "| dataset | items | loss | threads | masks | batching | s / epoch | predictions / s | GMAC / epoch "
              "(blocks + output) | fraction of the FLOP limit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, run in numbers["runs"].items():
        name, loss, threads, masks = key.split("/")
        m = run["macs"]
        lines.append(f"| {name} | {run['n_items']:,} | {loss} | {threads} | {masks} | {run['batching']} | "
                     f"{run['seconds_per_epoch']:.2f} | {run['predictions_per_s']:,.0f} | "
                     f"{m['blocks'] / 1e9:.0f} + {m['output'] / 1e9:.0f} | {run['fraction_of_roofline']:.1%} |")
    lines.append("")
    return numbers, "\n".join(lines)


# -------------------------------------------------------------- ce section
CE_SHAPES = {  # name: (predictions per batch, items): a Beauty batch (128 users, ~6 items each), an ML-1M one
    "beauty": (1200, 12101), "ml1m": (6400, 3416)}


def baseline_ce(revision: str):
    """The chunked-CE autograd function and chunk size of `revision` (llmemb/losses.py read with git show,
    loaded as a module of its own)."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(["git", "show", f"{revision}:llmemb/losses.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_losses.py"
    path.write_text(source.replace("from .", "from llmemb."))
    spec = importlib.util.spec_from_file_location("baseline_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._ChunkedSoftmaxCE, module.CE_CHUNK_ROWS


def interleaved_best(candidates: dict[str, Callable[[], Any]], rounds: int = 10, calls: int = 3) -> dict[str, float]:
    """Seconds per call of each candidate: the best of `rounds` rounds of `calls` calls, the candidates
    taking turns within each round (so that a noisy neighbour slows them alike)."""
    best = {key: float("inf") for key in candidates}
    for _ in range(rounds):
        for key, run in candidates.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best[key] = min(best[key], (time.perf_counter() - start) / calls)
    return best


def ce_kernels(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Full-softmax CE with its gradient (the output layer of a CE epoch) at Beauty's and ML-1M's batch
    shapes, hidden 64: this checkout's chunked form against `--ce-baseline`'s, interleaved, best of 10
    rounds of 3, on 1 and 2 threads; multiply-adds per second (3 matmuls) and the ratio."""
    from llmemb import losses

    old_fn, old_chunk = baseline_ce(args.ce_baseline)
    numbers: dict[str, Any] = {"baseline": args.ce_baseline, "baseline_chunk": old_chunk,
                               "chunk": losses.CE_CHUNK_ROWS, "runs": {}}
    lines = ["## The output layer alone: chunked CE before and after", "",
             f"Loss and gradients of full-softmax CE for one batch (hidden 64), this checkout's chunked form "
             f"({losses.CE_CHUNK_ROWS} rows a chunk) against revision `{args.ce_baseline}`'s ({old_chunk} rows), "
             "timed in the same process, interleaved, best of 10 rounds of 3 calls.", "",
             "| shape | predictions x items | threads | before ms | after ms | after GMAC/s | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (rows, items) in CE_SHAPES.items():
            gen = torch.Generator().manual_seed(0)
            h = (torch.randn(rows, 64, generator=gen) * 0.3).requires_grad_()
            table = (torch.randn(items, 64, generator=gen) * 0.3).requires_grad_()
            y = torch.randint(0, items, (rows,), generator=gen)
            best = interleaved_best({
                "before": lambda: old_fn.apply(h, table, y, old_chunk).backward(),
                "after": lambda: losses._ChunkedSoftmaxCE.apply(h, table, y, losses.CE_CHUNK_ROWS).backward()})
            macs = 3 * rows * items * 64
            run = {"before_ms": best["before"] * 1e3, "after_ms": best["after"] * 1e3,
                   "after_gmac_per_s": macs / best["after"] / 1e9, "speedup": best["before"] / best["after"]}
            numbers["runs"][f"{name}/{threads}"] = run
            print(f"[ce] {name} {threads}t: {run['before_ms']:.1f} -> {run['after_ms']:.1f} ms "
                  f"({run['speedup']:.2f}x)", flush=True)
            lines.append(f"| {name} | {rows} x {items:,} | {threads} | {run['before_ms']:.1f} | {run['after_ms']:.1f} | "
                         f"{run['after_gmac_per_s']:.1f} | {run['speedup']:.2f}x |")
    torch.set_num_threads(args.threads)
    lines.append("")
    return numbers, "\n".join(lines)


ADAPTER_SHAPES = {
    # name: (items, PCA dimension, backbone hidden): MiniLM's 384 on Beauty and ML-1M at hidden 64,
    # the paper's LLaMA sizes (PCA 1536) on Beauty at hidden 128
    "beauty-minilm": (12101, 384, 64),
    "ml1m-minilm": (3416, 384, 64),
    "beauty-llama": (12101, 1536, 128),
}


def adapter_kernels(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """LLMEmb's item layer over the whole catalogue (what every full-softmax CE step computes), forward
    and backward: the adapter as two layers W2(W1 x) against its one-matrix form x @ (W1^T W2^T) + c,
    interleaved in one process, best of 10 rounds of 3, on 1 and 2 threads."""
    from llmemb.item_tables import AdaptedItemEmbedding
    from llmemb.projection import Adapter

    numbers: dict[str, Any] = {}
    lines = ["## LLMEmb's item layer over the catalogue: two layers against one matrix", "",
             "Adapter(PCA(E_llm)) for every item, forward and backward (the source frozen), as one training step "
             "under full-softmax CE computes it; the two-layer form (`Adapter.forward`) against the item layer's "
             "one-matrix form (`Adapter.affine`), same weights, interleaved, best of 10 rounds of 3.", "",
             "| shape | items x PCA -> hidden -> d | threads | two layers ms | one matrix ms | speed-up |",
             "|---|---|---|---|---|---|"]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (items, d_pca, d) in ADAPTER_SHAPES.items():
            gen = torch.Generator().manual_seed(0)
            source = torch.randn(items + 1, d_pca, generator=gen)
            source[0] = 0
            adapter = Adapter(d_pca, d)
            layer = AdaptedItemEmbedding(source, adapter)
            weights = torch.randn(items + 1, d, generator=gen)
            keep = (torch.arange(items + 1) != 0).unsqueeze(-1).float()
            best = interleaved_best({"two": lambda: ((adapter(layer.source) * keep) * weights).sum().backward(),
                                     "one": lambda: (layer.table() * weights).sum().backward()})
            run = {"two_layers_ms": best["two"] * 1e3, "one_matrix_ms": best["one"] * 1e3,
                   "speedup": best["two"] / best["one"]}
            numbers[f"{name}/{threads}"] = run
            print(f"[adapter] {name} {threads}t: {run['two_layers_ms']:.1f} -> {run['one_matrix_ms']:.1f} ms "
                  f"({run['speedup']:.2f}x)", flush=True)
            lines.append(f"| {name} | {items:,} x {d_pca} -> {adapter.hidden} -> {d} | {threads} | "
                         f"{run['two_layers_ms']:.1f} | {run['one_matrix_ms']:.1f} | {run['speedup']:.2f}x |")
    torch.set_num_threads(args.threads)
    lines.append("")
    return numbers, "\n".join(lines)


# --------------------------------------------------------- profile section
PROFILE_CASES = {
    # name: (items, batch rows, width, loss): ML-1M-like full windows, Beauty-like short ones
    "ml1m-sampled_ce": (3416, 128, 51, "sampled_ce"),
    "ml1m-ce": (3416, 128, 51, "ce"),
    "beauty-ce": (12101, 128, 9, "ce"),
}


def profile_steps(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Where a training step's time goes (torch.profiler, self CPU time by operator), for a few
    synthetic batches shaped like ML-1M's and Beauty's, with torch's and the fast dropout masks."""
    from torch.profiler import ProfilerActivity, profile

    from llmemb.backbones import BackboneConfig
    from llmemb.losses import NegativeSampler, recommendation_loss

    torch.set_num_threads(args.threads)
    numbers: dict[str, Any] = {}
    lines = ["## Where a training step goes", "",
             f"torch.profiler over 5 steps of SASRec (hidden 64, 2 blocks, dropout 0.2), {args.threads} threads, "
             "synthetic batches shaped like the datasets' (rows x width); self CPU time by operator.", "",
             "| case | dropout masks | ms / step | top operators (share of self CPU time) |", "|---|---|---|---|"]
    for name, (n_items, rows, width, loss) in PROFILE_CASES.items():
        for masks in ("torch", "fast"):
            seed_everything(0)
            cfg = BackboneConfig(name="sasrec", hidden=64, max_len=50, loss=loss, dropout_masks=masks)
            model = build_id_backbone(cfg, n_items).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            sequences = torch.randint(1, n_items + 1, (rows, width))
            sampler = NegativeSampler(n_items, cfg.loss_negatives) if loss == "sampled_ce" else None

            def step() -> None:
                inputs, targets = model.training_pairs(sequences)
                states = model.hidden_states(inputs)
                value = recommendation_loss(loss, states, targets, model.item_embedding, sampler=sampler,
                                            n_items=n_items)
                optimizer.zero_grad()
                value.backward()
                optimizer.step()

            for _ in range(3):
                step()
            start = time.perf_counter()
            for _ in range(10):
                step()
            ms = (time.perf_counter() - start) / 10 * 1000
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    step()
            ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ops)
            top = [(e.key, e.self_cpu_time_total / total) for e in ops[:6]]
            numbers[f"{name}/{masks}"] = {"ms_per_step": ms, "top": top}
            lines.append(f"| {name} ({rows} x {width}) | {masks} | {ms:.0f} | "
                         + ", ".join(f"{k.removeprefix('aten::')} {v:.0%}" for k, v in top) + " |")
    lines.append("")
    return numbers, "\n".join(lines)


# ---------------------------------------------------------- losses section
def loss_run(task: tuple[str, str, int, int, int, str]) -> dict[str, Any]:
    """One ID-only SASRec run to early stopping (in a worker process): timings and test metrics."""
    dataset_name, loss, seed, threads, negatives, sampler = task
    os.chdir(ROOT)
    overrides = ["train.progress=false", f"train.threads={threads}", f"backbone.loss={loss}", f"train.seed={seed}",
                 "train.device=cpu", f"backbone.loss_negatives={negatives}", f"backbone.loss_sampler={sampler}"]
    cfg = load_config(SCALE_DATASETS[dataset_name], overrides, backbone="sasrec")
    dataset, data_dir = prepared_dataset(cfg)
    seed_everything(seed)
    model = build_id_backbone(cfg.backbone, dataset.n_items)
    evaluator = Evaluator(dataset, cfg.eval, cache_dir=data_dir)
    result = fit(model, dataset, cfg.train, evaluator=evaluator)
    test = evaluator.evaluate(model, "test", ("full", "sampled"))
    return {"dataset": dataset_name, "loss": loss, "seed": seed, "threads": threads,
            "seconds_per_epoch": statistics.fmean(r.train_seconds for r in result.history),
            "eval_seconds_per_epoch": statistics.fmean(r.eval_seconds for r in result.history),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
            "seconds_to_best": result.seconds_to_best, "total_seconds": result.total_seconds,
            "valid_ndcg@10": result.best_score,
            "test": {p: {g: {m: test[p][g][m] for m in ("hr@10", "ndcg@10")} for g in ("overall", "tail")}
                     for p in test}}


def loss_comparison(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Full CE against sampled CE (and BCE, one seed) trained to early stopping, seeds side by side
    on `--workers` processes of one thread each."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from trainer.reports.quality_report import mean_std, separation

    datasets = [d.strip() for d in args.loss_datasets.split(",") if d.strip()]
    seeds = [int(x) for x in args.loss_seeds.split(",")]
    neg, sampler = args.loss_negatives, args.loss_sampler
    tasks = [(d, loss, seed, 1, neg, sampler) for d in datasets for loss in ("ce", "sampled_ce") for seed in seeds]
    tasks += [(d, "bce", seeds[0], 1, neg, sampler) for d in datasets if args.loss_bce]
    runs = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for run in pool.map(loss_run, tasks):
            print(f"[losses] {run['dataset']} {run['loss']} seed {run['seed']}: test full N@10 "
                  f"{run['test']['full']['overall']['ndcg@10']:.4f}, {run['seconds_per_epoch']:.2f} s/epoch, "
                  f"best epoch {run['best_epoch']}, {run['seconds_to_best']:.0f} s to best", flush=True)
            runs.append(run)
    summary: dict[str, Any] = {}
    lines = ["## Full CE against sampled CE, trained to early stopping", "",
             f"SASRec, ID embeddings, seeds {', '.join(map(str, seeds))}, each run on one thread with "
             f"{args.workers} runs side by side (so seconds are those of one core beside another busy one). "
             f"sampled_ce: {neg} {sampler} negatives shared per batch, logQ-corrected. Test metrics of the restored "
             "best epoch, mean ± sd over seeds; tail = items outside the 20% most popular.", "",
             "| dataset | loss | s / epoch | best epoch | s to best (with validation) | valid N@10 | "
             "test N@10 full | tail H@10 full | test N@10 sampled |", "|---|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        for loss in ("ce", "sampled_ce", "bce"):
            mine = [r for r in runs if r["dataset"] == d and r["loss"] == loss]
            if not mine:
                continue
            s = {"seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in mine]),
                 "best_epoch": mean_std([r["best_epoch"] for r in mine]),
                 "seconds_to_best": mean_std([r["seconds_to_best"] for r in mine]),
                 "valid_ndcg@10": mean_std([r["valid_ndcg@10"] for r in mine]),
                 "full_ndcg@10": mean_std([r["test"]["full"]["overall"]["ndcg@10"] for r in mine]),
                 "full_tail_hr@10": mean_std([r["test"]["full"]["tail"]["hr@10"] or 0.0 for r in mine]),
                 "sampled_ndcg@10": mean_std([r["test"]["sampled"]["overall"]["ndcg@10"] for r in mine])}
            summary[f"{d}/{loss}"] = s
            lines.append(f"| {d} | {loss} | {pm(s['seconds_per_epoch'], 2)} | {pm(s['best_epoch'], 1)} | "
                         f"{pm(s['seconds_to_best'], 0)} | {pm(s['valid_ndcg@10'])} | {pm(s['full_ndcg@10'])} | "
                         f"{pm(s['full_tail_hr@10'])} | {pm(s['sampled_ndcg@10'])} |")
    lines.append("")
    for d in datasets:
        ce, sampled = summary.get(f"{d}/ce"), summary.get(f"{d}/sampled_ce")
        if ce and sampled:
            diff, sd, _ = separation(sampled["full_ndcg@10"], ce["full_ndcg@10"])
            speed = ce["seconds_per_epoch"]["mean"] / sampled["seconds_per_epoch"]["mean"]
            verdict = "within 2 sd" if abs(diff) <= 2 * sd else ("above" if diff > 0 else "below") + " by more than 2 sd"
            summary[f"{d}/verdict"] = {"diff": diff, "sd": sd, "within_2sd": abs(diff) <= 2 * sd, "speedup": speed}
            lines.append(f"- {d}: sampled CE minus full CE on test full NDCG@10 = {diff:+.4f} (2 sd = {2 * sd:.4f}): "
                         f"{verdict}; epochs {speed:.2f}x as fast.")
    lines.append("")
    return {"runs": runs, "summary": summary}, "\n".join(lines)


def pm(s: dict[str, Any], digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f}" if s["n"] == 1 else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


# ----------------------------------------------------------- eval section
def eval_scaling(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Full-ranking validation of a fresh SASRec in item chunks of several sizes: seconds, the bound
    on scores held at once, and the ranks' agreement with the one-pass count."""
    import resource

    import numpy as np

    numbers: dict[str, Any] = {}
    lines = ["## Full-ranking evaluation in item chunks", "",
             "Validation ranks of every user under the full protocol (untrained SASRec, hidden 64, CPU, "
             f"{args.threads} threads), 512 users at a time; \"scores held\" is the bound batch x chunk "
             "(fp32 scores plus a bool mask per score).", "",
             "| dataset | users | items | chunk (items) | seconds | scores held at once (MB) | ranks equal to one pass |",
             "|---|---|---|---|---|---|---|"]
    for name in [d.strip() for d in args.eval_datasets.split(",") if d.strip()]:
        cfg = load_config(SCALE_DATASETS[name], ["train.device=cpu"], backbone="sasrec")
        dataset, data_dir = prepared_dataset(cfg)
        seed_everything(0)
        model = build_id_backbone(cfg.backbone, dataset.n_items).eval()
        evaluator = Evaluator(dataset, cfg.eval, cache_dir=data_dir)
        evaluator.ranks(model, "valid", "full")  # builds the cases once
        reference = None
        for chunk in (1 << 16, 4096, 1024):
            evaluator.config.chunk_items = chunk
            start = time.perf_counter()
            ranks = evaluator.ranks(model, "valid", "full")
            seconds = time.perf_counter() - start
            reference = ranks if reference is None else reference
            held = evaluator.config.batch_size * min(chunk, dataset.n_items + 1) * 5 / 2 ** 20
            row = {"users": len(ranks), "items": dataset.n_items, "seconds": seconds, "held_mb": held,
                   "equal": bool(np.array_equal(ranks.numpy(), reference.numpy()))}
            numbers[f"{name}/{chunk}"] = row
            lines.append(f"| {name} | {row['users']:,} | {row['items']:,} | {chunk:,} | {seconds:.2f} | {held:.0f} | "
                         f"{'yes' if row['equal'] else 'NO'} |")
    numbers["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append("")
    return numbers, "\n".join(lines)


# --------------------------------------------------------- recbole section
def recbole_reference(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """RecBole 1.2.1's SASRec on the same ML-100K data (bench/recbole_sasrec.py in .venv-recbole)."""
    import subprocess
    import tempfile

    python = ROOT / ".venv-recbole" / "bin" / "python"
    if not python.is_file():
        raise SystemExit("the recbole section needs .venv-recbole: run `make bench-recbole`")
    cmd = [str(python), str(ROOT / "bench" / "recbole_sasrec.py"), "--data-path", str(ROOT / "data"),
           "--threads", str(args.threads), "--epochs", str(args.recbole_epochs)]
    # RecBole writes log_tensorboard/ and log/ into its working directory: a scratch one, not the checkout.
    with tempfile.TemporaryDirectory(prefix="recbole-") as scratch:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=scratch,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    # This project's SASRec on the same data and settings, in the same run, one after the other.
    title, layout = srs_variants(args)["sequence"]
    ours = srs_run(args, title, layout)
    numbers["this_project"] = ours
    ratio = numbers["seconds_per_epoch"] / ours["seconds_per_epoch"]
    numbers["epoch_seconds_ratio_recbole_over_ours"] = ratio
    rows = [
        ("seconds per epoch (training)", f"{numbers['seconds_per_epoch']:.2f}", f"{ours['seconds_per_epoch']:.2f}"),
        ("training samples (forward passes) an epoch", f"{numbers['training_samples']:,} prefixes",
         f"{ours['sequences_per_epoch']:,} windows"),
        ("best epoch / epochs run", f"{numbers['best_epoch']} / {numbers['epochs_run']}",
         f"{ours['best_epoch']} / {ours['epochs_run']}"),
        ("wall seconds to best (with validation)", f"{numbers['seconds_to_best']:.0f}", f"{ours['seconds_to_best']:.0f}"),
        ("best valid NDCG@10 (full)", f"{numbers['best_valid_ndcg@10']:.4f}", f"{ours['valid_ndcg@10']:.4f}"),
        ("test NDCG@10 / HR@10 (full)", f"{numbers['test'].get('ndcg@10', float('nan')):.4f} / "
         f"{numbers['test'].get('hit@10', float('nan')):.4f}",
         f"{ours['test']['full']['ndcg@10']:.4f} / {ours['test']['full']['hr@10']:.4f}"),
    ]
    lines = ["## Outside reference: RecBole 1.2.1's SASRec on the same MovieLens-100K split", "",
             f"RecBole {numbers['recbole']} (torch {numbers['torch']}, {numbers['threads']} threads) and this "
             "project's trainer, one after the other in this run: same data, 5-core, leave-one-out, full ranking, "
             "SASRec hidden 64 / FFN 256 / 2 blocks / 1 head / dropout 0.2 / max length 50 / CE / lr 1e-3, "
             f"patience 10, at most {args.recbole_epochs} epochs for RecBole. RecBole trains on every prefix "
             f"(batches of {numbers['batch_size']}); this project on windows of 51 items every 50 "
             "(train.stride 0), a loss at every position.", "",
             f"Users / items / interactions (RecBole's count): {numbers['users']:,} / {numbers['items']:,} / "
             f"{numbers['interactions']:,}. RecBole's epoch takes {ratio:.2f}x this project's.", "",
             "| | RecBole 1.2.1 | this project |", "|---|---|---|",
             *[f"| {name} | {a} | {b} |" for name, a, b in rows], ""]
    return numbers, "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {
    "srs": srs_training, "llm": llm_stages, "scale": scale_speed, "ce": ce_kernels, "adapter": adapter_kernels, "profile": profile_steps, "losses": loss_comparison, "eval": eval_scaling,
    "recbole": recbole_reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="srs,llm,scale,ce,adapter,eval,profile",
                        help="comma-separated: " + ", ".join(SECTIONS) + " (losses and recbole take hours: asked by name)")
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix-patience", type=int, default=3)
    parser.add_argument("--prefix-max-seconds", type=float, default=900.0)
    parser.add_argument("--scft-steps", type=int, default=10)
    parser.add_argument("--scale-datasets", default=",".join(SCALE_DATASETS))
    parser.add_argument("--scale-threads", default="1,2")
    parser.add_argument("--scale-epochs", type=int, default=1)
    parser.add_argument("--scale-fast-threads", default="2",
                        help="thread counts also run with backbone.dropout_masks=fast ('' for none)")
    parser.add_argument("--ce-baseline", default="ae494f6", help="revision whose chunked CE section ce compares with")
    parser.add_argument("--loss-datasets", default="ml100k,amazon-beauty,ml1m")
    parser.add_argument("--loss-seeds", default="0,1,2")
    parser.add_argument("--loss-bce", type=int, default=1, help="also one BCE run per dataset (1) or not (0)")
    parser.add_argument("--loss-negatives", type=int, default=256, help="sampled_ce's shared negatives per batch")
    parser.add_argument("--loss-sampler", default="uniform", help="sampled_ce's sampler: uniform | popularity")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-datasets", default="amazon-beauty,ml1m")
    parser.add_argument("--recbole-epochs", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default="", help="kept beside an earlier result of the same section (e.g. 1024neg)")
    args = parser.parse_args()
    os.chdir(ROOT)  # configs name their data and run paths relative to the repository root
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "train_speed.json", out / "train_speed.md"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
        numbers, markdown = SECTIONS[name](args)
        results[name + (f"-{args.tag}" if args.tag else "")] = {"numbers": numbers, "markdown": markdown,
                         "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "environment": f"python {platform.python_version()}, torch {torch.__version__}, "
                                        f"{args.threads} threads, {platform.machine()}"}
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Training speed", ""]
    for name, section in results.items():
        md += [section["markdown"], f"Measured {section['measured']}; {section['environment']}.", ""]
    md_path.write_text("\n".join(md))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
