"""Cold-start split: a held-out share of items that never appear in training.

Cold items are removed from every history and every training / validation
position; a user keeps a cold item only as its test target. Such an item's
vector can then come only from its attributes (LLM -> PCA -> adapter), which is
what the cold-start rows of the report measure. Item ids are unchanged, so
export tables and attributes line up with the full dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset


@dataclass
class ColdStartSplit:
    dataset: Dataset          # sequences with cold items removed except as test targets
    cold: np.ndarray          # bool [N+1]: True for held-out items (index 0 False)

    @property
    def warm_rows(self) -> np.ndarray:
        """Rows of an export table (row r = item r+1) of the warm items."""
        return np.flatnonzero(~self.cold[1:])

    def cold_test_users(self) -> np.ndarray:
        """bool [U]: users whose test target is a cold item."""
        return np.asarray([self.cold[s[-1]] for s in self.dataset.sequences], dtype=bool)


def cold_start_split(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> ColdStartSplit:
    if not 0 < fraction < 1:
        raise ValueError(f"cold-start fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n_cold = max(1, int(round(fraction * dataset.n_items)))
    cold = np.zeros(dataset.n_items + 1, dtype=bool)
    cold[1 + rng.choice(dataset.n_items, size=n_cold, replace=False)] = True
    users, sequences, dropped = [], [], 0
    for user, seq in zip(dataset.user_ids, dataset.sequences):
        kept = np.concatenate([seq[:-1][~cold[seq[:-1]]], seq[-1:]])
        if len(kept) < 3:  # leave-one-out needs train, valid and test items
            dropped += 1
            continue
        users.append(user)
        sequences.append(kept)
    split = Dataset(
        name=f"{dataset.name}-cold",
        domain=dataset.domain,
        user_ids=users,
        item_ids=list(dataset.item_ids),
        sequences=sequences,
        attributes=list(dataset.attributes),
        filter_log={
            **dataset.filter_log,
            "cold_fraction": fraction,
            "cold_seed": seed,
            "cold_items": int(n_cold),
            "cold_dropped_users": dropped,
        },
    )
    return ColdStartSplit(split, cold)
