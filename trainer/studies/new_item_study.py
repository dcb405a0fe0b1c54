"""A study for the next item layer: how could new items compete with trained ones?

`python -m trainer.studies.new_item_study --hybrid RUN [RUN ...] --llmemb RUN [RUN ...] [--report NAME]` reads
Hybrid runs and LLMEmb runs (one pair per training seed) of the same cold-start split (`trainer quality` with quality.cold_fraction > 0: runs under
<runs>/<dataset>/quality/<report>/cold/) and re-ranks their test users under full ranking, with the
cold items (no training interaction, so no residual in Hybrid) given a vector or a place by one of
these serving rules, none of which retrains anything:
- "mean residual": r_new = the mean residual of the trained items (s times it);
- "ridge residual": r_new predicted from the item's text path a = Adapter(PCA(E_llm)) by a ridge
  regression fitted on the trained items' (a, r), for several penalties;
- "rank matching": each cold item placed among the trained items where the text-only model (the LLMEmb
  run) ranks it for this user, its place among them multiplied by g (g = 1: exactly LLMEmb's place).
Warm users (test target trained) and cold users (test target cold) are reported apart: warm full
NDCG@10 against cold full HR@10, the trade-off the item layer must escape; mean and sample standard
deviation over the seeds given. One cold split: with a few dozen cold users (n is printed), a
difference of a few hits is noise.
Writes reports/new-item-study/<report>.md and .json.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from llmemb.data.coldstart import cold_start_split
from llmemb.metrics import group_metrics
from trainer.runs.store import ITEM_LAYER_FILE, load_run
from trainer.stages.prepare import prepared_dataset


def full_scores(model, histories: list[np.ndarray], table: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """[U, N+1] scores of every item for each history (its last max_len items, left-padded)."""
    width = model.config.max_len
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(histories), batch):
            rows = [np.asarray(h)[-width:] for h in histories[start:start + batch]]
            x = torch.zeros(len(rows), width, dtype=torch.long)
            for i, h in enumerate(rows):
                x[i, width - len(h):] = torch.from_numpy(h)
            out.append(model.encode(x) @ table.T)
    return torch.cat(out)


def masked(scores: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
    """The full protocol: padding and every item of the history never ranked."""
    out = scores.clone()
    out[:, 0] = -float("inf")
    for u, h in enumerate(histories):
        out[u, torch.from_numpy(np.asarray(h))] = -float("inf")
    return out


def plain_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (scores > scores[torch.arange(len(targets)), targets][:, None]).sum(1)


def matched_ranks(hybrid: torch.Tensor, text: torch.Tensor, cold: torch.Tensor, targets: torch.Tensor,
                  g: float) -> torch.Tensor:
    """Ranks when each cold item sits among the warm items at g x its place under `text` (the warm items
    it scores below, in the text-only model), the warm items in `hybrid`'s order."""
    ranks = torch.empty(len(targets), dtype=torch.long)
    for u in range(len(targets)):
        t = int(targets[u])
        valid = torch.isfinite(hybrid[u])
        warm, new = valid & ~cold, valid & cold
        places = (text[u][warm][None, :] > text[u][new][:, None]).sum(1).float() * g
        if cold[t]:
            place = float((text[u][warm] > text[u, t]).sum()) * g
            # the cold items ahead: placed before it, or at the same place and scored above it by `text`
            ahead_new = (places < place) | ((places == place) & (text[u][new] > text[u, t]))
            ranks[u] = int(min(place, float(warm.sum()))) + int(ahead_new.sum())
        else:
            ahead = int((hybrid[u][warm] > hybrid[u, t]).sum())
            ranks[u] = ahead + int((places <= ahead).sum())
    return ranks


def summary(ranks: torch.Tensor, cold_users: np.ndarray) -> dict[str, Any]:
    warm = group_metrics(ranks, ~cold_users, [10])
    new = group_metrics(ranks, cold_users, [10])
    return {"warm_ndcg@10": warm["ndcg@10"], "warm_hr@10": warm["hr@10"], "cold_hr@10": new["hr@10"],
            "cold_ndcg@10": new["ndcg@10"], "warm_users": warm["n"], "cold_users": new["n"]}


def study(hybrid_dir: Path, llmemb_dir: Path, cold_fraction: float, cold_seed: int,
          label: str = "Hybrid (no residual for new items)", rules: bool = True) -> dict[str, dict[str, Any]]:
    """The rows of one seed: LLMEmb, the Hybrid run as trained (under `label`), and with `rules` the
    serving rules applied to it (they assume new items carry no residual in the run)."""
    config, hybrid = load_run(hybrid_dir)
    _, llmemb = load_run(llmemb_dir)
    dataset, _ = prepared_dataset(config)
    split_info = cold_start_split(dataset, cold_fraction, cold_seed)
    split = split_info.dataset.split()
    cold_users = split_info.cold_test_users()
    histories, targets = split.test_history, torch.from_numpy(np.asarray(split.test_target)).long()
    cold = torch.from_numpy(split_info.cold)
    table = hybrid.item_embedding.table().detach().clone()
    residual = load_file(str(hybrid_dir / ITEM_LAYER_FILE))["residual"]
    text_path = table - residual                   # Adapter(PCA(E_llm)) of every item
    trained = residual.abs().sum(1) > 0
    if rules and bool((trained & cold).any()):
        raise ValueError("a cold item carries a residual: these runs are not of the same cold split")
    text_scores = masked(full_scores(llmemb, histories, llmemb.item_embedding.table()), histories)
    rows: dict[str, dict[str, Any]] = {}

    def with_cold(new_rows: torch.Tensor) -> torch.Tensor:
        t = table.clone()
        t[cold] = text_path[cold] + new_rows
        return masked(full_scores(hybrid, histories, t), histories)

    hybrid_scores = masked(full_scores(hybrid, histories, table), histories)
    rows["LLMEmb"] = summary(plain_ranks(text_scores, targets), cold_users)
    rows[label] = summary(plain_ranks(hybrid_scores, targets), cold_users)
    if not rules:
        return rows
    mean = residual[trained].mean(0)
    n_cold = int(cold.sum())
    for s in (0.5, 1.0):
        rows[f"mean residual x {s}"] = summary(plain_ranks(with_cold(s * mean.expand(n_cold, -1)), targets), cold_users)
    features = torch.cat([text_path, torch.ones(len(text_path), 1)], 1)
    fit_x, fit_r = features[trained], residual[trained]
    for penalty in (0.1, 1.0, 10.0):
        weights = torch.linalg.solve(fit_x.T @ fit_x + penalty * torch.eye(fit_x.shape[1]), fit_x.T @ fit_r)
        rows[f"ridge residual, penalty {penalty}"] = summary(
            plain_ranks(with_cold(features[cold] @ weights), targets), cold_users)
    for g in (1.0, 1.5, 2.0, 5.0):
        rows[f"rank matching, g = {g}"] = summary(matched_ranks(hybrid_scores, text_scores, cold, targets, g),
                                                  cold_users)
    return rows


METRICS = ("warm_ndcg@10", "warm_hr@10", "cold_hr@10", "cold_ndcg@10")


def markdown(per_seed: list[dict[str, dict[str, Any]]], command: str) -> str:
    first = next(iter(per_seed[0].values()))

    def cell(name: str, metric: str) -> str:
        values = np.array([rows[name][metric] for rows in per_seed])
        return f"{values.mean():.4f}" + (f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else "")

    lines = ["# New items among trained ones: serving rules over one cold-start split", "",
             f"Generated by `{command}`. Full ranking; {first['warm_users']} warm test users (target trained), "
             f"{first['cold_users']} cold ones (target held out of training); mean ± sample sd over "
             f"{len(per_seed)} training seed(s).", "",
             "| rule | warm N@10 | warm HR@10 | cold HR@10 | cold N@10 |", "|---|---:|---:|---:|---:|"]
    for name in per_seed[0]:
        lines.append(f"| {name} | " + " | ".join(cell(name, m) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hybrid", type=Path, nargs="+", required=True, help="Hybrid runs of the cold-start split")
    p.add_argument("--llmemb", type=Path, nargs="+", required=True, help="LLMEmb runs of the same split, same seeds")
    p.add_argument("--cold-fraction", type=float, default=0.1)
    p.add_argument("--cold-seed", type=int, default=0)
    p.add_argument("--report", default="study", help="reports/new-item-study/<report>.md")
    p.add_argument("--hybrid-label", default="Hybrid (no residual for new items)", help="the Hybrid runs' row")
    p.add_argument("--no-rules", action="store_true", help="only the runs as trained (e.g. Hybrid runs whose new "
                   "items already get a residual: rat.text_residual)")
    args = p.parse_args(argv)
    if len(args.hybrid) != len(args.llmemb):
        p.error("give one LLMEmb run per Hybrid run (the same seeds, in the same order)")
    per_seed = [study(h, e, args.cold_fraction, args.cold_seed, args.hybrid_label, not args.no_rules)
                for h, e in zip(args.hybrid, args.llmemb)]
    command = (f"python -m trainer.studies.new_item_study --hybrid {' '.join(map(str, args.hybrid))} "
               f"--llmemb {' '.join(map(str, args.llmemb))} --report {args.report}"
               + (f" --hybrid-label '{args.hybrid_label}' --no-rules" if args.no_rules else ""))
    out = Path("reports") / "new-item-study"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.report}.json").write_text(json.dumps({"command": command, "per_seed": per_seed}, indent=1) + "\n")
    (out / f"{args.report}.md").write_text(markdown(per_seed, command))
    log(markdown(per_seed, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
