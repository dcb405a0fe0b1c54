"""`python -m trainer regimes`: one page comparing the methods across evaluation regimes.

Reads the quality reports (<reports_dir>/<report>/results.json) that exist among
REGIMES, in that order, and writes <reports_dir>/regimes.{md,json}: per regime
a table of SASRec's methods and the issue's goals checked with the report's own
2-sd rule. Nothing is computed from runs here; each regime's results.md has the
detail (every backbone, both protocols, popularity buckets, best epochs). A regime's cold-start
split may be a report of its own, <report>-cold (a quality grid with no backbones on the main
split); its cold rows join the regime's.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmemb.methods import get_method
from trainer.reports.quality_report import LABELS, pm, verdict

DENSE = "Dense: MovieLens-100K, every interaction, full-softmax CE"
PAPER_HARNESS = "the paper's harness (hidden 128, length 200, dropout 0.5, BCE, selection on sampled N@10)"
# (report name, how the regime is described, the backbones shown). Regimes on naturally sparse data
# (the Amazon sets) and MovieLens cut to its last items are checked against the sparse goals.
REGIMES = (
    ("ml100k", DENSE, ("sasrec",)),
    ("ml100k-gru4rec", DENSE, ("gru4rec",)),
    ("ml100k-bert4rec", DENSE, ("bert4rec",)),
    ("ml100k-last10", "Sparse: MovieLens-100K, last 10 items per user, CE", ("sasrec",)),
    ("ml100k-last20", "Sparse: MovieLens-100K, last 20 items per user, CE", ("sasrec",)),
    ("ml1m-last20", "Sparse at scale: MovieLens-1M, last 20 items per user, CE", ("sasrec",)),
    ("ml1m", "Scale check: MovieLens-1M, every interaction, CE, one seed", ("sasrec",)),
    ("ml100k-bce", "Dense, the paper's loss: BCE with one sampled negative per position", ("sasrec",)),
    ("ml100k-last10-bce", "Sparse (last 10), the paper's loss: BCE", ("sasrec",)),
    ("amazon-beauty", "Amazon Beauty (text-rich, most items rare), our harness: CE, full ranking", ("sasrec",)),
    ("amazon-beauty-backbones", "Amazon Beauty, our harness", ("gru4rec", "bert4rec")),
    ("amazon-beauty-paper", f"Amazon Beauty, {PAPER_HARNESS}", ("sasrec",)),
    ("amazon-beauty-paper-smollm2", f"Amazon Beauty, {PAPER_HARNESS}, SmolLM2-135M decoder", ("sasrec",)),
    ("amazon-scientific", "Amazon Industrial & Scientific, our harness: CE, full ranking", ("sasrec",)),
)
SPARSE_DATA = ("amazon-",)   # report-name prefixes of data that is sparse as collected
# A Hybrid variant measured against the report it varies: (report, the report it varies, title)
VARIANTS = (
    ("ml100k-hybrid-drop", "ml100k",
     "Hybrid with the residual dropped for whole items while training (dense, SASRec)"),
)
METHODS = ("none", "llm2x", "llmemb", "hybrid", "wo_scft")
COLUMNS = (  # (protocol, group, metric, header)
    ("full", "overall", "ndcg@10", "full N@10"),
    ("full", "tail", "hr@10", "full tail H@10"),
    ("sampled", "overall", "ndcg@10", "sampled N@10"),
    ("sampled", "tail", "hr@10", "sampled tail H@10"),
    ("full", "rare", "hr@10", "full rare H@10"),
    ("sampled", "paper_tail", "hr@10", "sampled paper-tail H@10"),
)


def goals(summary: dict[str, Any], backbone: str, dense: bool) -> list[dict[str, Any]]:
    """The issue's goals on one regime, each a comparison with its verdict."""
    def cell(split: str, method: str, protocol: str, group: str, metric: str):
        s = summary.get(f"{split}|{backbone}|{method}")
        return None if s is None or group not in s.get(protocol, {}) else s[protocol][group][metric]

    rows = []

    def check(goal: str, a_method: str, b_method: str, protocol: str, group: str, metric: str, want: set[str],
              split: str = "main") -> None:
        a, b = cell(split, a_method, protocol, group, metric), cell(split, b_method, protocol, group, metric)
        if a is None or b is None:
            return
        said = verdict(a, b)
        rows.append({"goal": goal, "method": a_method, "versus": b_method, "protocol": protocol, "group": group,
                     "metric": metric, "mine": a["mean"], "other": b["mean"], "verdict": said,
                     "met": said in want})

    if dense:
        for other in ("none", "llm2x"):
            for group, metric in (("overall", "ndcg@10"), ("tail", "hr@10")):
                check("Hybrid at least as good as None and LLM2X", "hybrid", other, "full", group, metric,
                      {"above", "tie"})
    else:
        for protocol in ("full", "sampled"):
            check("LLMEmb above None on tail HR@10", "llmemb", "none", protocol, "tail", "hr@10", {"above"})
        for other in ("none", "llm2x"):
            for group, metric in (("overall", "ndcg@10"), ("tail", "hr@10")):
                check("Hybrid above None and LLM2X", "hybrid", other, "full", group, metric, {"above"})
    for protocol in ("full", "sampled"):
        check("SCFT helps: LLMEmb above LLMEmb w/o SCFT", "llmemb", "wo_scft", protocol, "overall", "ndcg@10",
              {"above"})
    for protocol in ("full", "sampled"):
        check("Hybrid equal to LLMEmb on cold items", "hybrid", "llmemb", protocol, "cold_targets", "hr@10",
              {"tie"}, split="cold")
    return rows


def _regime_lines(name: str, title: str, results: dict[str, Any], backbone: str) -> tuple[list[str], list[dict]]:
    summary = results["summary"]
    ds = results["dataset"]
    dense = not ds.get("filter_last_items") and not name.startswith(SPARSE_DATA)
    lines = [f"## {title}" + ("" if backbone == "sasrec" else f": {backbone}"), "",
             f"[{name}/results.md]({name}/results.md): {ds['users']} users, {ds['items']} items, "
             f"{ds['interactions']} interactions; tail = {ds['tail_items']} items outside the top 20%; "
             f"{backbone}, seeds {', '.join(map(str, results['quality']['seeds']))}"
             + ("." if "cold_report" not in results else
                f"; cold start from [{results['cold_report']}/results.md]({results['cold_report']}/results.md)."), "",
             "| method | " + " | ".join(h for *_, h in COLUMNS) + " | cold H@10 (full) | best epochs |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for method in METHODS:
        s = summary.get(f"main|{backbone}|{method}")
        if s is None:
            continue
        cells = [("empty" if s[p][g].get("n") == 0 else pm(s[p][g][m])) if g in s[p] else "n/a"
                 for p, g, m, _ in COLUMNS]
        cold = summary.get(f"cold|{backbone}|{method}")
        cold_cell = "n/a" if cold is None or get_method(method).is_id else pm(cold["full"]["cold_targets"]["hr@10"])
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {cold_cell} | "
                     f"{', '.join(map(str, s.get('best_epochs', [])))} |")
    checks = goals(summary, backbone, dense)
    if checks:
        lines += ["", "| goal | comparison | method's | other's | verdict | met |", "|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['goal']} | {LABELS[c['method']]} vs {LABELS[c['versus']]}, {c['protocol']} "
                         f"{c['group']} {c['metric'].upper()} | {c['mine']:.4f} | {c['other']:.4f} | {c['verdict']} | "
                         f"{'yes' if c['met'] else 'no'} |")
    return lines + [""], checks


def _variant_lines(name: str, base: str, title: str, variant: dict[str, Any],
                   original: dict[str, Any]) -> tuple[list[str], list[dict]]:
    """The variant's Hybrid beside the original report's Hybrid and LLMEmb, warm and cold."""
    changed = {k: v for k, v in variant["rat"].items() if original["rat"].get(k) != v}
    rows = [("Hybrid, " + ", ".join(f"{k} {v}" for k, v in changed.items()), variant["summary"], "hybrid"),
            ("Hybrid", original["summary"], "hybrid"), ("LLMEmb", original["summary"], "llmemb")]
    cols = (("main", "full", "overall", "ndcg@10", "full N@10"), ("main", "full", "tail", "hr@10", "full tail H@10"),
            ("main", "sampled", "tail", "hr@10", "sampled tail H@10"),
            ("cold", "full", "cold_targets", "hr@10", "cold H@10 (full)"),
            ("cold", "sampled", "cold_targets", "hr@10", "cold H@10 (sampled)"))
    lines = [f"## {title}", "", f"[{name}/results.md]({name}/results.md) beside [{base}/results.md]({base}/results.md): "
             "the same data, seeds and stopping rule; only the setting named changes.", "",
             "| layer | " + " | ".join(c[-1] for c in cols) + " |", "|---|" + "---|" * len(cols)]

    def cell(summary: dict[str, Any], method: str, split: str, protocol: str, group: str, metric: str):
        s = summary.get(f"{split}|sasrec|{method}")
        return None if s is None or group not in s.get(protocol, {}) else s[protocol][group][metric]

    for label, summary, method in rows:
        cells = [cell(summary, method, *c[:4]) for c in cols]
        lines.append(f"| {label} | " + " | ".join("n/a" if c is None else pm(c) for c in cells) + " |")
    checks = []
    for (label, summary, method), (split, protocol, group, metric, header) in (
            (rows[2], cols[3]), (rows[2], cols[4]), (rows[1], cols[0]), (rows[1], cols[1])):
        a, b = cell(rows[0][1], "hybrid", split, protocol, group, metric), cell(summary, method, split, protocol,
                                                                                group, metric)
        if a is not None and b is not None:
            checks.append({"comparison": f"{rows[0][0]} vs {label}, {header}", "mine": a["mean"], "other": b["mean"],
                           "verdict": verdict(a, b)})
    lines += ["", "| comparison | variant's | other's | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['comparison']} | {c['mine']:.4f} | {c['other']:.4f} | {c['verdict']} |" for c in checks]
    return lines + [""], checks


def write_regimes(reports_dir: str | Path = "reports", backbone: str = "sasrec",
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    root = Path(reports_dir)
    lines = ["# The methods across evaluation regimes", "",
             "Generated by `python -m trainer regimes` from the quality reports below (`make quality`, "
             "`make quality-sparse`, `make regimes`). A difference counts only beyond two standard deviations of "
             "the difference of seed means; otherwise it is a tie. A regime run with one seed has no spread: its "
             "verdicts read \"one seed\" and count as unmet. Rare = at most 4 training interactions.", ""]
    found: dict[str, Any] = {}
    for name, title, backbones in REGIMES:
        path = root / name / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        cold_path = root / f"{name}-cold" / "results.json"
        if cold_path.is_file():   # the regime's cold-start split, run as a report of its own
            cold = json.loads(cold_path.read_text(encoding="utf-8"))
            results["summary"].update({k: v for k, v in cold["summary"].items() if k.startswith("cold|")})
            results["cold_report"] = f"{name}-cold"
        checks = []
        for shown in backbones:
            if not any(key.startswith(f"main|{shown}|") for key in results["summary"]):
                continue   # a backbone this report did not run
            section, more = _regime_lines(name, title, results, shown)
            lines += section
            checks += more
        found[name] = {"title": title, "checks": checks}
    for name, base, title in VARIANTS:
        if (root / name / "results.json").is_file() and (root / base / "results.json").is_file():
            section, checks = _variant_lines(name, base, title, *(
                json.loads((root / r / "results.json").read_text(encoding="utf-8")) for r in (name, base)))
            lines += section
            found[name] = {"title": title, "checks": checks}
    missing = [name for name, *_ in REGIMES if name not in found]
    if missing:
        lines += ["Not run yet: " + ", ".join(missing) + ".", ""]
    (root / "regimes.md").write_text("\n".join(lines), encoding="utf-8")
    (root / "regimes.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {root / 'regimes.md'} ({len(found)} regime(s))")
    return found
