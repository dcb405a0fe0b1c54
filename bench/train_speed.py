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

    python bench/train_speed.py [--sections srs,llm] [--threads 2] [--prefix-patience 3] [--scft-steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a
# spinning 2-thread process next to any other busy process runs ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from llmemb.backbones import build_id_backbone  # noqa: E402
from llmemb.metrics import Evaluator  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.prepare import prepared_dataset  # noqa: E402
from trainer.train import fit, seed_everything, training_rows  # noqa: E402

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


def srs_training(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    rows, variants = {}, srs_variants(args)
    for name, (title, layout) in variants.items():
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
        rows[name] = {
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
    from trainer.export import embed_catalogue
    from trainer.llm_stages import (
        encoder_config,
        encoder_spec,
        lora_settings,
        scft_config,
    )
    from trainer.scft import run_scft

    config = load_config(args.config)
    dataset, _ = prepared_dataset(config)
    # As the trainer does it (trainer.llm_stages.ensure_export / ensure_scft): one spec, the
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


def matmul_roofline(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Multiply-adds per second of a large square matmul, fp32 and bf16 (best of `repeats`),
    on `threads` threads: the ceiling an epoch's counted multiply-adds are compared with."""
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[f"{name}_macs_per_s"] = size ** 3 / best
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


def scale_epoch(dataset_name: str, loss: str, threads: int, epochs: int) -> dict[str, Any]:
    """`epochs` training epochs of the None (ID-only) SASRec with `loss`; timings of the last one."""
    import numpy as np

    overrides = ["train.progress=false", f"train.threads={threads}", f"train.epochs={epochs}",
                 f"backbone.loss={loss}", "train.device=cpu"]
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
            "windows": len(rows), "epochs_timed": len(result.history)}


def scale_speed(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Seconds per epoch and the fraction of the matmul roofline, per dataset x loss x threads."""
    datasets = [d.strip() for d in args.scale_datasets.split(",") if d.strip()]
    thread_counts = [int(t) for t in args.scale_threads.split(",")]
    numbers: dict[str, Any] = {"roofline": {}, "runs": {}}
    for threads in thread_counts:
        numbers["roofline"][str(threads)] = matmul_roofline(threads)
        print(f"[scale] roofline, {threads} thread(s): "
              f"{numbers['roofline'][str(threads)]['fp32_macs_per_s'] / 1e9:.1f} GMAC/s fp32", flush=True)
    for name in datasets:
        for loss in SCALE_LOSSES:
            for threads in thread_counts:
                run = scale_epoch(name, loss, threads, args.scale_epochs)
                roof = numbers["roofline"][str(threads)]["fp32_macs_per_s"]
                run["fraction_of_roofline"] = run["macs"]["total"] / run["seconds_per_epoch"] / roof
                numbers["runs"][f"{name}/{loss}/{threads}"] = run
                print(f"[scale] {name} {loss} {threads}t: {run['seconds_per_epoch']:.2f} s/epoch, "
                      f"{run['predictions_per_s']:,.0f} pred/s, {run['fraction_of_roofline']:.1%} of roofline",
                      flush=True)
    lines = ["## SASRec epochs at scale: losses, threads and the matmul roofline", "",
             "SASRec (hidden 64, max length 50, 2 blocks, batch 128), ID embeddings, CPU, fp32; each batch cut to "
             "its longest sequence (length batching where the config asks for it). Seconds of the last of "
             f"{args.scale_epochs} epochs (training only, validation apart). sampled_ce: 256 uniform negatives "
             "shared per batch, logQ-corrected; bce: one negative per position. \"Fraction of the FLOP limit\": "
             "the epoch's counted multiply-adds (forward + 2x for backward; blocks and output layer) per second, "
             "over a 2048^3 fp32 matmul's multiply-adds per second measured in the same run.", "",
             "| threads | fp32 matmul GMAC/s | bf16 matmul GMAC/s |", "|---|---|---|"]
    for threads, roof in numbers["roofline"].items():
        lines.append(f"| {threads} | {roof['fp32_macs_per_s'] / 1e9:.1f} | {roof['bf16_macs_per_s'] / 1e9:.1f} |")
    lines += ["", "| dataset | items | loss | threads | batching | s / epoch | predictions / s | GMAC / epoch "
              "(blocks + output) | fraction of the FLOP limit |", "|---|---|---|---|---|---|---|---|---|"]
    for key, run in numbers["runs"].items():
        name, loss, threads = key.split("/")
        m = run["macs"]
        lines.append(f"| {name} | {run['n_items']:,} | {loss} | {threads} | {run['batching']} | "
                     f"{run['seconds_per_epoch']:.2f} | {run['predictions_per_s']:,.0f} | "
                     f"{m['blocks'] / 1e9:.0f} + {m['output'] / 1e9:.0f} | {run['fraction_of_roofline']:.1%} |")
    lines.append("")
    return numbers, "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {
    "srs": srs_training, "llm": llm_stages, "scale": scale_speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix-patience", type=int, default=3)
    parser.add_argument("--prefix-max-seconds", type=float, default=900.0)
    parser.add_argument("--scft-steps", type=int, default=10)
    parser.add_argument("--scale-datasets", default=",".join(SCALE_DATASETS))
    parser.add_argument("--scale-threads", default="1,2")
    parser.add_argument("--scale-epochs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
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
        results[name] = {"numbers": numbers, "markdown": markdown,
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
