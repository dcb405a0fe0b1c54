"""Are the trainer's results unchanged by a change? The same ID-only runs under this checkout and
under a baseline revision (checked out in a git worktree), side by side; results go to
bench/results/train_equivalence.{json,md}.

Each run: configs/ml100k.yaml, one backbone, seed 0, trained to early stopping, then the test
metrics of the restored best epoch under both protocols. The two runs of a pair run side by side,
one thread each; timings are printed, not compared.

    python bench/equivalence.py --baseline 5da38ff [--backbones sasrec,gru4rec,bert4rec]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, sys, time
from trainer.config import load_config
from trainer.stages.prepare import prepared_dataset
from trainer.stages.train import fit, seed_everything
from llmemb.backbones import build_id_backbone
from llmemb.metrics import Evaluator
backbone, threads, runs_dir = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = load_config("configs/ml100k.yaml", ["train.progress=false", f"train.threads={threads}",
                                          f"runs_dir={runs_dir}"], backbone=backbone)
dataset, data_dir = prepared_dataset(cfg)
seed_everything(cfg.train.seed)
model = build_id_backbone(cfg.backbone, dataset.n_items)
evaluator = Evaluator(dataset, cfg.eval, cache_dir=data_dir)
start = time.time()
result = fit(model, dataset, cfg.train, evaluator=evaluator)
test = evaluator.evaluate(model, "test")
print(json.dumps({"seconds": time.time() - start, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                  "valid_ndcg@10": result.best_score, "history": [r.valid_score for r in result.history],
                  "test": {p: {g: {m: test[p][g][m] for m in ("hr@10", "ndcg@10")} for g in ("overall", "tail")}
                           for p in test}}))
"""


def run(tree: Path, backbone: str, threads: int, runs_dir: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", RUN, backbone, str(threads), runs_dir], cwd=tree, env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git revision of the trainer to compare with")
    p.add_argument("--backbones", default="sasrec,gru4rec,bert4rec")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--report-only", action="store_true", help="rewrite the page from the JSON of an earlier run")
    args = p.parse_args()
    if args.report_only:
        earlier = json.loads((Path(args.out) / "train_equivalence.json").read_text())
        write(earlier, Path(args.out), args.backbones.split(","))
        return
    results: dict = {"baseline": args.baseline, "current": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for backbone in args.backbones.split(","):
                trees = {"baseline": worktree, "current": ROOT}
                with ThreadPoolExecutor(2) as pool:   # the pair side by side, one process each
                    done = {name: pool.submit(run, tree, backbone, args.threads, str(Path(tmp) / f"runs-{name}"))
                            for name, tree in trees.items()}
                for name, future in done.items():
                    r = results["runs"][f"{backbone}/{name}"] = future.result()
                    print(f"{backbone} {name}: best epoch {r['best_epoch']}, test full N@10 "
                          f"{r['test']['full']['overall']['ndcg@10']:.6f} ({r['seconds']:.0f} s)", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    results["threads"] = args.threads
    results["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write(results, Path(args.out), args.backbones.split(","))


def curve_difference(base: list[float], cur: list[float]) -> tuple[int, float]:
    """Epochs whose validation NDCG@10 differs, and the largest difference (curves of equal length)."""
    diffs = [abs(a - b) for a, b in zip(base, cur)] + [float("inf")] * abs(len(base) - len(cur))
    return sum(d > 0 for d in diffs), max(diffs, default=0.0)


def write(results: dict, out: Path, backbones: list[str]) -> None:
    """train_equivalence.{json,md} from the results."""
    lines = ["# Trainer results before and after a change", "",
             f"ID-only runs on MovieLens-100K (configs/ml100k.yaml, seed 0, {results.get('threads', 1)} thread(s)), "
             f"trained to early stopping by the baseline revision `{results['baseline']}` and by "
             f"`{results['current']}`; test metrics of the restored best epoch. 'test equal': best epoch and every "
             "test figure identical; 'validation curve': epochs whose validation NDCG@10 differs, and by how much.",
             "", "| backbone | revision | best / run | valid N@10 | full N@10 | full H@10 | full tail H@10 | "
             "sampled N@10 | test equal | validation curve |", "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone in backbones:
        base, cur = results["runs"][f"{backbone}/baseline"], results["runs"][f"{backbone}/current"]
        test_equal = (base["best_epoch"], base["test"]) == (cur["best_epoch"], cur["test"])
        n_diff, largest = curve_difference(base["history"], cur["history"])
        results["runs"][f"{backbone}/same"] = test_equal and n_diff == 0
        results["runs"][f"{backbone}/test_equal"] = test_equal
        results["runs"][f"{backbone}/curve_epochs_differing"] = n_diff
        results["runs"][f"{backbone}/curve_largest_difference"] = largest
        curve = "identical" if n_diff == 0 else f"{n_diff} of {len(base['history'])} epochs differ, by <= {largest:.1e}"
        for name, r in (("baseline", base), ("current", cur)):
            f, s = r["test"]["full"], r["test"]["sampled"]
            lines.append(f"| {backbone} | {results[name]} | {r['best_epoch']} / {r['epochs_run']} | "
                         f"{r['valid_ndcg@10']:.6f} | {f['overall']['ndcg@10']:.6f} | {f['overall']['hr@10']:.6f} | "
                         f"{f['tail']['hr@10']:.6f} | {s['overall']['ndcg@10']:.6f} | "
                         + (f"{'yes' if test_equal else 'NO'} | {curve} |" if name == "current" else " | |"))
    lines += ["", f"Measured {results.get('measured', '?')}.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_equivalence.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "train_equivalence.md").write_text("\n".join(lines))
    print(f"wrote {out / 'train_equivalence.md'}")


if __name__ == "__main__":
    main()
