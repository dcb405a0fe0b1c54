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


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {"srs": srs_training, "llm": llm_stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix-patience", type=int, default=3)
    parser.add_argument("--prefix-max-seconds", type=float, default=900.0)
    parser.add_argument("--scft-steps", type=int, default=10)
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
