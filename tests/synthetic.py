"""A tiny synthetic dataset with a learnable cycle, and a tiny config over it (run_method, run_pool)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llmemb.backbones import BackboneConfig
from llmemb.data.dataset import Dataset
from llmemb.metrics import EvalConfig
from trainer.config import Config, TrainConfig

N_ITEMS = 24


def cyclic_dataset(n_users: int = 30) -> Dataset:
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(n_users):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(5, 10))
        sequences.append(np.asarray([(start + t) % N_ITEMS + 1 for t in range(length)], dtype=np.int64))
    return Dataset(name="cyc", domain="item", user_ids=[f"u{u}" for u in range(n_users)],
                   item_ids=[f"i{i}" for i in range(1, N_ITEMS + 1)], sequences=sequences,
                   attributes=[{"title": f"item {i}"} for i in range(1, N_ITEMS + 1)])


def tiny_config(tmp_path: Path, seed: int = 0) -> Config:
    return Config(
        dataset={"name": "cyc"},
        backbone=BackboneConfig(name="sasrec", hidden=8, max_len=6, n_layers=1, n_heads=1, dropout=0.0),
        train=TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=5, progress=False, seed=seed),
        eval=EvalConfig(n_negatives=5, ks=[10]),
        runs_dir=str(tmp_path / "runs"), reports_dir=str(tmp_path / "reports"),
    )
