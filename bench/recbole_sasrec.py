"""RecBole 1.2.1's SASRec on MovieLens-100K: the outside reference of bench/train_speed.py's "recbole"
section. Runs in a virtualenv of its own (`make bench-recbole` creates .venv-recbole: RecBole pins
clash with this project's), never imports this project, and prints one JSON line of results.

The same data and protocol as this project's ml100k config: data/ml-100k's atomic files, every
rating an interaction, 5-core users and items, each user's last item the test target and the one
before it the validation target, full ranking, selection on validation NDCG@10, patience 10. The
same model: SASRec, hidden 64, FFN 256, 2 blocks, 1 head, dropout 0.2, GELU, max length 50, CE
over every item, Adam lr 1e-3. RecBole trains on every prefix of every training sequence
(one prediction per sample) in batches of `--batch-size` prefixes.

    .venv-recbole/bin/python bench/recbole_sasrec.py --data-path data --epochs 200 --threads 2
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="data")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(args.threads)
    settings = {
        "data_path": args.data_path, "dataset": "ml-100k", "device": "cpu", "use_gpu": False,
        "seed": args.seed, "reproducibility": True, "show_progress": False, "checkpoint_dir": "/tmp/recbole-saved",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
        "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 1,
        "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "initializer_range": 0.02, "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": 1e-3, "train_batch_size": args.batch_size, "eval_batch_size": 4096,
        "epochs": args.epochs, "stopping_step": args.patience, "eval_step": 1, "worker": 0,
    }
    config = Config(model="SASRec", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)

    # Time the training epochs apart from validation: wrap the epoch and the evaluation calls.
    train_seconds, valid_seconds, curve = [], [], []
    plain_train, plain_valid = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a, **kw):
        start = time.perf_counter()
        out = plain_train(*a, **kw)
        train_seconds.append(time.perf_counter() - start)
        return out

    def timed_valid(*a, **kw):
        start = time.perf_counter()
        out = plain_valid(*a, **kw)
        valid_seconds.append(time.perf_counter() - start)
        curve.append((time.perf_counter() - started, float(out[0])))
        return out

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    started = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    total = time.perf_counter() - started
    test = trainer.stages.evaluate(test_data, load_best_model=True, show_progress=False)
    best_epoch = max(range(len(curve)), key=lambda i: curve[i][1]) + 1
    print(json.dumps({
        "recbole": __import__("recbole").__version__, "torch": torch.__version__, "threads": args.threads,
        "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
        "interactions": int(dataset.inter_num), "training_samples": len(train_data.dataset),
        "batch_size": args.batch_size, "epochs_run": len(train_seconds),
        "seconds_per_epoch": sum(train_seconds) / max(len(train_seconds), 1),
        "valid_seconds_per_epoch": sum(valid_seconds) / max(len(valid_seconds), 1),
        "best_epoch": best_epoch, "best_valid_ndcg@10": float(best_valid), "seconds_to_best": curve[best_epoch - 1][0],
        "total_seconds": total, "test": {k: float(v) for k, v in test.items()},
    }))


if __name__ == "__main__":
    main()
