"""The quality report: results.json, results.md and two figures (paper Figs. 5 and 6).

Everything here is derived from the runs' metrics.json files gathered by
trainer.studies.quality; nothing is typed in by hand.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llmemb.base_models import DEFAULT_MODEL_ID  # noqa: E402
from llmemb.methods import METHODS, get_method  # noqa: E402
from llmemb.metrics import ITEM_GROUPS  # noqa: E402
from trainer.runs.store import CHECKPOINT_FILE, load_item_table  # noqa: E402

LABELS = {name: m.label for name, m in METHODS.items()}
COLOURS = {name: m.colour for name, m in METHODS.items() if m.colour is not None}
FIGURE_METHODS = tuple(COLOURS)   # the methods drawn in the figures
# (method, rivals): the comparisons the report counts, each on overall NDCG@10 and tail HR@10.
CLAIMS = (("llmemb", ("none", "llm2x")), ("hybrid", ("none", "llm2x")))


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n-1; 0 for a single value) of per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


def pm(s: dict[str, Any] | None) -> str:
    """mean ± std of a `mean_std` summary, 4 decimals; the value alone for one seed (n/a when missing)."""
    if s is None:
        return "n/a"
    return f"{s['mean']:.4f}" if s.get("n") == 1 else f"{s['mean']:.4f} ± {s['std']:.4f}"


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
            for group in (*ITEM_GROUPS, "short", "long", "rare", "frequent", "paper_tail", "paper_popular"):
                if group in items[0]["test"][protocol]:
                    per_group[group] = {m: mean_std([r["test"][protocol][group][m] or 0.0 for r in items])
                                        for m in ("hr@10", "ndcg@10")}
                    per_group[group]["n"] = items[0]["test"][protocol][group]["n"]
            per_group["popularity"] = [
                {"bucket": b["bucket"], "min_pop": b["min_pop"], "max_pop": b["max_pop"], "n": b["n"],
                 "items": b.get("items"),
                 "hr@10": mean_std([r["test"][protocol]["popularity"][i]["hr@10"] or 0.0 for r in items])}
                for i, b in enumerate(items[0]["test"][protocol]["popularity"])
            ]
            for name in items[0].get("test_groups") or {}:
                per_group[name] = {m: mean_std([r["test_groups"][name][protocol][m] for r in items])
                                   for m in ("hr@10", "ndcg@10")}
            summary[protocol] = per_group
        summary["seconds"] = mean_std([r["fit"]["total_seconds"] for r in items])
        summary["best_epoch"] = mean_std([r["fit"]["best_epoch"] for r in items])
        summary["best_epochs"] = [r["fit"]["best_epoch"] for r in sorted(items, key=lambda r: r["seed"])]
        summary["epochs_run"] = [r["fit"]["epochs_run"] for r in sorted(items, key=lambda r: r["seed"])]
        summary["stop_reasons"] = sorted({r["fit"]["stop_reason"] for r in items})
        out[key] = summary
    return out


ONE_SEED = "one seed"   # the verdict where either side has a single seed: no spread, nothing can count


def _seeds(s: dict[str, Any]) -> int:
    return int(s.get("n", 2))


def separation(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, bool]:
    """(difference of means, std of the difference, difference > 2 std with two or more seeds a side).

    The std of the difference of two independent seed means is sqrt(sa^2 + sb^2). With one seed
    the std is unknown (not zero), so no difference counts."""
    diff = a["mean"] - b["mean"]
    sd = math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    return diff, sd, min(_seeds(a), _seeds(b)) >= 2 and diff > 2 * sd


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'above' / 'below' when a's mean is beyond 2 sd over / under b's, else 'tie'; ONE_SEED when
    either side has a single seed."""
    if min(_seeds(a), _seeds(b)) < 2:
        return ONE_SEED
    if separation(a, b)[2]:
        return "above"
    return "below" if separation(b, a)[2] else "tie"


def claim_rows(agg, backbones: list[str], protocols: list[str]) -> list[dict[str, Any]]:
    """Each method of CLAIMS against each rival, with its `verdict`."""
    rows = []
    for method, rivals in CLAIMS:
        for backbone in backbones:
            for protocol in protocols:
                mine = agg.get(("main", backbone, method))
                if mine is None:
                    continue
                for other in rivals:
                    theirs = agg.get(("main", backbone, other))
                    if theirs is None:
                        continue
                    for group, metric in (("overall", "ndcg@10"), ("tail", "hr@10")):
                        a, b = mine[protocol][group][metric], theirs[protocol][group][metric]
                        diff, sd, above = separation(a, b)
                        rows.append({"method": method, "backbone": backbone, "protocol": protocol, "versus": other,
                                     "group": group, "metric": metric, "mine": a["mean"], "other": b["mean"],
                                     "diff": diff, "sd": sd, "holds": above, "verdict": verdict(a, b)})
    return rows


def bucket_label(b: dict[str, Any]) -> str:
    return str(b["min_pop"]) if b["min_pop"] == b["max_pop"] else f"{b['min_pop']}–{b['max_pop']}"


# ------------------------------------------------------------------ figures
def popularity_figure(agg, backbone: str, protocols: list[str], path: Path) -> bool:
    methods = [m for m in FIGURE_METHODS if ("main", backbone, m) in agg]
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
        ax.set_xticks(x, [bucket_label(b) + f"\nn={b['n']}" for b in buckets])
        ax.set_xlabel("target popularity (training interactions), disjoint buckets; n = test targets")
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
    for m in FIGURE_METHODS:
        directory = run_root / "main" / f"{m}-{backbone}-seed{seed}"
        if (directory / CHECKPOINT_FILE).is_file():
            tables[m] = load_item_table(directory)[1:].float()
    if not tables:
        return False
    colour = np.log1p(popularity[1:])
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.0), squeeze=False)
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
def _header(results: dict[str, Any]) -> list[str]:
    ds = results["dataset"]
    q = results["quality"]
    ev = results["config"]["eval"]
    cut = ds.get("filter_last_items")
    regime = (f"Sparse regime: each user's sequence cut to its last {cut} items before the split "
              f"({ds.get('filter_interactions_before_last_items')} → {ds['interactions']} interactions, "
              f"{ds.get('filter_items_before_last_items')} → {ds['items']} items)."
              if cut else "Dense regime: every interaction kept.")
    rare = (f" Rare = at most {ev['tail_count']} training interactions (the reference's fixed-count rule)."
            if ev.get("tail_count") is not None else "")
    if ev.get("paper_tail_below") is not None:
        rare += (f" Paper tail = fewer than {ev['paper_tail_below']} distinct users over whole sequences (validation "
                 "and test included), the rule of the paper's code.")
    return [
        f"# LLMEmb on {ds['name']}: quality report",
        "",
        f"Generated by `python -m trainer quality --config {results.get('config_path', '?')}`; every number below "
        "comes from the runs' metrics.json files, gathered in results.json.",
        "",
        f"- {regime}",
        f"- Data: {ds['users']} users, {ds['items']} items, {ds['interactions']} interactions, "
        f"{ds['avg_length']:.1f} per user, leave-one-out. Tail = items outside the {ds['head_fraction']:.0%} most "
        f"popular by training interactions ({ds['tail_items']} items; {ds['tail_share_of_test_targets']:.1%} of "
        f"test targets).{rare}",
        f"- Encoder: `{results['config'].get('encoder', {}).get('model', DEFAULT_MODEL_ID)}`; "
        f"training loss {results['config']['backbone']['loss']}; RAT settings: {json.dumps(results['rat'])}.",
        f"- Seeds {', '.join(map(str, q['seeds']))}; every run stops after {results['config']['train']['patience']} "
        f"epochs without a better validation {ev['select_protocol']} {ev['select_metric']} (cap "
        f"{results['config']['train']['epochs']} epochs; BERT4Rec's patience may differ per backbone) and is "
        "tested once at its best epoch; mean ± sample std over seeds.",
        f"- Wall time {results['wall_seconds'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in results['stage_seconds'].items())}); "
        f"{results['environment']}. Only what this invocation computed counts here: a table or run "
        "finished by an earlier one is reused, and each run's own time is in the Training table.",
        "",
    ]


def _group_tables(results: dict[str, Any], agg) -> list[str]:
    q = results["quality"]
    lines: list[str] = []
    for protocol in results["config"]["eval"]["protocols"]:
        first = next((v for k, v in agg.items() if k[0] == "main"), None)
        groups = [*ITEM_GROUPS, *[g for g in ("rare", "paper_tail") if first and g in first[protocol]]]
        ns = ", ".join(f"{g} n={first[protocol][g]['n']}" for g in groups) if first else ""
        lines += [f"## Overall, tail and head items: {protocol} protocol", "", f"Test targets: {ns}.", "",
                  "| backbone | method | " + " | ".join(f"{g} H@10 | {g} N@10" for g in groups) + " |",
                  "|---|---|" + "---|" * (2 * len(groups))]
        for backbone in q["backbones"]:
            for method in q["methods"]:
                s = agg.get(("main", backbone, method))
                if s is not None:
                    cells = [pm(s[protocol][g][m]) for g in groups for m in ("hr@10", "ndcg@10")]
                    lines.append(f"| {backbone} | {LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _claim_table(claims: list[dict[str, Any]]) -> list[str]:
    lines = ["## Comparisons", "",
             "A method is counted above (below) another when the difference of seed means exceeds two standard "
             "deviations of that difference (sqrt(sd_a² + sd_b²)); otherwise it is a tie.", "",
             "| method | backbone | protocol | versus | metric | method's | other's | difference | 2 sd | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {LABELS[c['method']]} | {c['backbone']} | {c['protocol']} | {LABELS[c['versus']]} | "
                     f"{c['group']} {c['metric'].upper()} | {c['mine']:.4f} | {c['other']:.4f} | {c['diff']:+.4f} | "
                     f"{2 * c['sd']:.4f} | {c['verdict']} |")
    return lines + [""]


def _popularity_table(results: dict[str, Any], agg) -> list[str]:
    backbone = results["quality"]["ablation_backbone"]
    methods = [m for m in FIGURE_METHODS if ("main", backbone, m) in agg]
    if not methods:
        return []
    lines: list[str] = []
    for protocol in results["config"]["eval"]["protocols"]:
        buckets = agg[("main", backbone, methods[0])][protocol]["popularity"]
        lines += [f"## Test HR@10 by target popularity ({backbone}, {protocol} protocol)", "",
                  "Buckets of about equal item counts by training interactions; an interaction count never "
                  "spans two buckets.", "",
                  "| training interactions | items | test targets | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|---|---|---|" + "---|" * len(methods)]
        for i, b in enumerate(buckets):
            cells = [pm(agg[("main", backbone, m)][protocol]["popularity"][i]["hr@10"]) for m in methods]
            lines.append(f"| {bucket_label(b)} | {b['items']} | {b['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _training_table(results: dict[str, Any], agg) -> list[str]:
    lines = ["## Training", "",
             "Best epoch and epochs run of each seed; a run that stopped on the epoch cap rather than on "
             "patience would show `epochs` as its stop reason.", "",
             "| split | backbone | method | best epoch per seed | epochs run per seed | stop | seconds per run |",
             "|---|---|---|---|---|---|---|"]
    q = results["quality"]
    order = {m: i for i, m in enumerate([*q["methods"], *q.get("ablations", []), *q.get("cold_methods", [])])}
    backbones = {b: i for i, b in enumerate(q["backbones"])}

    def position(key):
        split, backbone, method = key
        return split != "main", backbones.get(backbone, 99), order.get(method, 99)

    for (split, backbone, method), s in sorted(agg.items(), key=lambda kv: position(kv[0])):
        lines.append(f"| {split} | {backbone} | {LABELS[method]} | {', '.join(map(str, s['best_epochs']))} | "
                     f"{', '.join(map(str, s['epochs_run']))} | {', '.join(s['stop_reasons'])} | "
                     f"{s['seconds']['mean']:.0f} |")
    return lines + [""]


def _ablation_tables(results: dict[str, Any], agg) -> list[str]:
    q = results["quality"]
    ab = q["ablation_backbone"]
    if not any(("main", ab, m) in agg for m in q["ablations"]):
        return []
    lines: list[str] = []
    for protocol in results["config"]["eval"]["protocols"]:
        lines += [f"## Ablations ({ab}, {protocol} protocol)", "",
                  "| variant | overall H@10 | overall N@10 | tail H@10 | tail N@10 |", "|---|---|---|---|---|"]
        for m in ["llmemb", *q["ablations"]]:
            s = agg.get(("main", ab, m))
            if s is not None:
                lines.append(f"| {LABELS[m]} | {pm(s[protocol]['overall']['hr@10'])} | "
                             f"{pm(s[protocol]['overall']['ndcg@10'])} | {pm(s[protocol]['tail']['hr@10'])} | "
                             f"{pm(s[protocol]['tail']['ndcg@10'])} |")
        lines.append("")
    return lines


def _cold_tables(results: dict[str, Any], agg) -> list[str]:
    cold, q = results.get("cold_start"), results["quality"]
    if not cold:
        return []
    cb = q["cold_backbone"]
    lines = ["## Cold start", "",
             f"{cold['items']} items ({cold['fraction']:.0%}, seed {cold['seed']}) are held out of every "
             f"training sequence, of SCFT (a LoRA of its own, {cold.get('scft_steps', '?')} steps on warm items) and "
             "of the PCA fit; a user keeps one only as the test target "
             f"({cold['test_users_with_cold_target']} of {cold['users']} users). Their vectors come only from their "
             "attributes, and the training loss never scores them (Hybrid gives them no residual).", ""]
    for protocol in results["config"]["eval"]["protocols"]:
        lines += [f"### {protocol} protocol ({cb})", "",
                  "| method | cold targets H@10 | cold targets N@10 | all targets H@10 | all targets N@10 |",
                  "|---|---|---|---|---|"]
        for m in q["cold_methods"]:
            s = agg.get(("cold", cb, m))
            if s is None:
                continue
            if get_method(m).is_id:
                cold_cells = "no vector (ID embeddings of unseen items are untrained noise) | n/a"
            else:
                cold_cells = f"{pm(s[protocol]['cold_targets']['hr@10'])} | {pm(s[protocol]['cold_targets']['ndcg@10'])}"
            lines.append(f"| {LABELS[m]} | {cold_cells} | {pm(s[protocol]['overall']['hr@10'])} | "
                         f"{pm(s[protocol]['overall']['ndcg@10'])} |")
        lines.append("")
    return lines


def _scft_lines(results: dict[str, Any]) -> list[str]:
    scft = results.get("scft")
    if not scft:
        return []
    return ["## SCFT", "",
            f"{scft['steps']} steps of {scft['batch_items']} items ({scft['epochs_done']:.1f} epochs over "
            f"{scft['train_items']} items), loss {scft['scft']['loss']}, temperature "
            f"{scft['scft']['temperature']}; final loss {scft['final_loss']:.4f}; "
            f"{scft['steps_per_s']:.2f} steps/s. Held-out view retrieval ({scft['val_items']} items): "
            f"before {json.dumps(scft.get('val_before'))}, after {json.dumps(scft.get('val_after'))}.", ""]


def _figure_lines(results: dict[str, Any], figures: dict[str, str]) -> list[str]:
    lines: list[str] = []
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
    return lines


def results_markdown(results: dict[str, Any], agg, claims, figures: dict[str, str]) -> str:
    main = any(k[0] == "main" for k in agg)   # a cold-start-only report has no main-split tables
    return "\n".join([
        *_header(results), *(_group_tables(results, agg) + _claim_table(claims) if main else []),
        *_popularity_table(results, agg),
        *_training_table(results, agg), *_ablation_tables(results, agg), *_cold_tables(results, agg),
        *_scft_lines(results), *_figure_lines(results, figures),
    ])


def write_report(results: dict[str, Any], out: Path, run_root: Path, log: Callable[[str], None] = print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["report_dir"] = str(out)
    scft_path = results.get("scft_summary_path")  # None when no method of the grid ran SCFT
    if scft_path and Path(scft_path).is_file():
        results["scft"] = {k: v for k, v in json.loads(Path(scft_path).read_text()).items() if k != "loss_curve"}
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
