"""Do new items get recommended? The live-service check, as a recommender would run it.

Against a real service over a bundle (its own Redis pair, started here):
1. K items are drawn among the test targets of the bundle's dataset (leave-one-out, the last item of
   each user); the users whose test target is one of them are the panel. HR@10 of /v1/recommend on
   each panel user's test history (all but the last item), with the bundle's trained vectors.
2. Each drawn item is deleted (DELETE /v1/items/{id}) and put back from its attributes under a new id
   (PUT /v1/items/new-{id}): the service embeds it from text, as any new item. Histories and targets
   name the new ids from then on. HR@10 of the same panel again.
A layer whose new items compete fairly keeps step 2 close to step 1; the gap is what a brand-new
item loses against trained ones. The same procedure on two bundles compares their layers.

Results: bench/results/new_items-<label>.json and .md.
Usage: python bench/new_items.py --bundle bundles/ml100k-quick --config configs/ml100k.yaml [--items 100]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from llmemb.bundle import load_bundle  # noqa: E402
from llmemb_client import LLMEmbClient  # noqa: E402
from llmemb_testing.servers import RedisServer, ServiceProcess  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.stages.prepare import prepared_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="the trainer config the bundle was trained with")
    p.add_argument("--items", type=int, default=100, help="test-target items deleted and put back")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None, help="results file suffix (default: the bundle's method)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def panel(config_path: Path, bundle_ids: list[str], n_items: int, seed: int):
    """(drawn item ids, [(history ids, target id)]) over the users whose test target was drawn."""
    dataset, _ = prepared_dataset(load_config(config_path))
    if list(dataset.item_ids) != list(bundle_ids):
        raise SystemExit("new_items: the bundle's items are not the config's dataset's (another config?)")
    split = dataset.split()
    ids = dataset.item_ids
    targets = sorted({int(t) for t in split.test_target})
    rng = np.random.default_rng(seed)
    drawn = {ids[t - 1] for t in rng.choice(targets, size=min(n_items, len(targets)), replace=False)}
    cases = [([ids[i - 1] for i in history], ids[int(target) - 1])
             for history, target in zip(split.test_history, split.test_target) if ids[int(target) - 1] in drawn]
    return sorted(drawn), cases


def hit_rate(client: LLMEmbClient, cases: list[tuple[list[str], str]], k: int, rename: dict[str, str]) -> float:
    hits = 0
    for history, target in cases:
        top = client.recommend([rename.get(i, i) for i in history], k=k).items
        hits += rename.get(target, target) in {item.id for item in top}
    return hits / len(cases)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = load_bundle(args.bundle)
    drawn, cases = panel(args.config, bundle.item_ids, args.items, args.seed)
    attributes = dict(zip(bundle.item_ids, bundle.item_attributes))
    with tempfile.TemporaryDirectory(prefix="new-items-") as tmp:
        cache, catalogue = RedisServer(Path(tmp) / "cache").start(), RedisServer(Path(tmp) / "catalogue").start()
        # Whole histories, so that every item the user has seen is excluded as offline (ML-100K has users
        # with several hundred ratings; the default limit is 200).
        longest = max(len(history) for history, _ in cases)
        service = ServiceProcess(args.bundle, Path(tmp), env={
            "LLMEMB_REDIS_URL": cache.url, "LLMEMB_CATALOGUE_REDIS_URL": catalogue.url,
            "LLMEMB_MAX_HISTORY": str(max(200, longest))}).start()
        try:
            service.wait_ready(300)
            with LLMEmbClient(service.url, timeout=120) as client:
                trained = hit_rate(client, cases, args.k, {})
                rename = {item: f"new-{item}" for item in drawn}
                for item in drawn:
                    client.delete_item(item)
                    client.put_item(rename[item], attributes[item])
                readded = hit_rate(client, cases, args.k, rename)
        finally:
            service.stop()
            cache.stop()
            catalogue.stop()
    result = {
        "bundle": str(args.bundle), "fingerprint": bundle.fingerprint, "method": bundle.method,
        "config": str(args.config), "items": len(drawn), "users": len(cases), "k": args.k, "seed": args.seed,
        f"hr@{args.k}_trained": trained, f"hr@{args.k}_readded": readded,
        "readded_over_trained": readded / trained if trained else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
    }
    label = args.label or result["method"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"new_items-{label}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"new_items-{label}.md").write_text("\n".join([
        f"# New items through the live service: {label}", "",
        f"{result['date']}, bundle `{args.bundle}` ({bundle.fingerprint[:12]}, method {result['method']}), "
        f"dataset of `{args.config}`. Command: `python bench/new_items.py --bundle {args.bundle} --config "
        f"{args.config} --items {args.items} --seed {args.seed}`.", "",
        f"{len(drawn)} test-target items drawn (seed {args.seed}); {len(cases)} users whose test target is one of "
        "them; HR@{k} of /v1/recommend on their test history, before and after every drawn item was deleted and "
        "put back from its attributes under a new id.".replace("{k}", str(args.k)), "",
        f"| HR@{args.k} with trained vectors | HR@{args.k} re-added as new items | ratio |", "|---:|---:|---:|",
        f"| {trained:.3f} | {readded:.3f} | {result['readded_over_trained'] or float('nan'):.2f} |", ""]))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
