"""The one dataset type every stage works on.

Internal item ids run 1..N; 0 is padding everywhere (sequences, score vectors,
item tables), so row i of any item table belongs to internal item i.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Interaction = tuple[str, str, float]  # (external user id, external item id, timestamp)


@dataclass
class Split:
    """Leave-one-out split: the last item is test, the second-to-last valid."""

    train: list[np.ndarray]          # per user, all but the last two items
    valid_history: list[np.ndarray]  # == train
    valid_target: np.ndarray         # [U]
    test_history: list[np.ndarray]   # all but the last item
    test_target: np.ndarray          # [U]


@dataclass
class Dataset:
    name: str
    domain: str                        # names the domain in the prompt instruction
    user_ids: list[str]                # internal user u -> external id
    item_ids: list[str]                # internal item i -> external id at position i-1
    sequences: list[np.ndarray]        # per user, time-ordered internal item ids
    attributes: list[dict[str, Any]]   # attributes of internal item i at position i-1
    filter_log: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ basics
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_index(self) -> dict[str, int]:
        """External item id -> internal id (1-based)."""
        return {ext: i + 1 for i, ext in enumerate(self.item_ids)}

    def item_attributes(self, internal_id: int) -> dict[str, Any]:
        return self.attributes[internal_id - 1]

    # ------------------------------------------------------------ construction
    @classmethod
    def from_interactions(
        cls,
        name: str,
        domain: str,
        interactions: Iterable[Interaction],
        attributes: dict[str, dict[str, Any]],
        user_core: int = 5,
        item_core: int = 5,
        require_attributes: bool = False,
    ) -> Dataset:
        """Build sequences from raw interactions with iterative k-core filtering.

        Ties in time keep the order of the input (stable sort). Users end with at
        least max(user_core, 3) interactions, since leave-one-out needs three.
        """
        rows = list(interactions)
        n_raw = len(rows)
        if require_attributes:
            rows = [r for r in rows if r[1] in attributes]
        n_without_attr = n_raw - len(rows)
        user_min = max(user_core, 3)
        rounds = 0
        while True:
            rounds += 1
            u_count = Counter(r[0] for r in rows)
            i_count = Counter(r[1] for r in rows)
            kept = [r for r in rows if u_count[r[0]] >= user_min and i_count[r[1]] >= item_core]
            if len(kept) == len(rows):
                break
            rows = kept
        if not rows:
            raise ValueError(
                f"{name}: no interactions left after {user_min}-core users / {item_core}-core items filtering"
            )
        by_user: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
        for order, (u, i, t) in enumerate(rows):
            by_user[u].append((float(t), order, i))
        # Items are numbered by first appearance in time order, which is
        # deterministic for a given input.
        item_first: dict[str, tuple[float, int]] = {}
        for u, events in by_user.items():
            for t, order, i in events:
                if i not in item_first or (t, order) < item_first[i]:
                    item_first[i] = (t, order)
        item_ids = sorted(item_first, key=lambda i: item_first[i])
        index = {ext: k + 1 for k, ext in enumerate(item_ids)}
        user_ids = sorted(by_user, key=lambda u: min(by_user[u])[:2])
        sequences = [
            np.asarray([index[i] for _, _, i in sorted(by_user[u])], dtype=np.int64) for u in user_ids
        ]
        attrs = [dict(attributes.get(i, {})) for i in item_ids]
        return cls(
            name=name,
            domain=domain,
            user_ids=list(user_ids),
            item_ids=item_ids,
            sequences=sequences,
            attributes=attrs,
            filter_log={
                "raw_interactions": n_raw,
                "dropped_without_attributes": n_without_attr,
                "user_core": user_min,
                "item_core": item_core,
                "kcore_rounds": rounds,
            },
        )

    def keep_last(self, n: int) -> Dataset:
        """Each user's sequence cut to its `n` most recent items (the sparse regimes:
        most items become rare). Items left without any interaction are dropped and
        the rest renumbered in their old order, so every item still has a sequence."""
        if n < 3:
            raise ValueError(f"keep_last: n must be at least 3 (leave-one-out needs three items), got {n}")
        sequences = [s[-n:] for s in self.sequences]
        used = np.zeros(self.n_items + 1, dtype=bool)
        for s in sequences:
            used[s] = True
        used[0] = False
        kept = np.flatnonzero(used)                      # old internal ids, ascending
        renumber = np.zeros(self.n_items + 1, dtype=np.int64)
        renumber[kept] = np.arange(1, len(kept) + 1)
        return Dataset(
            name=self.name,
            domain=self.domain,
            user_ids=list(self.user_ids),
            item_ids=[self.item_ids[i - 1] for i in kept],
            sequences=[renumber[s] for s in sequences],
            attributes=[self.attributes[i - 1] for i in kept],
            filter_log={**self.filter_log, "last_items": n, "items_before_last_items": self.n_items,
                        "interactions_before_last_items": self.n_interactions},
        )

    # ------------------------------------------------------------------- split
    def split(self) -> Split:
        train = [s[:-2] for s in self.sequences]
        return Split(
            train=train,
            valid_history=train,
            valid_target=np.asarray([s[-2] for s in self.sequences], dtype=np.int64),
            test_history=[s[:-1] for s in self.sequences],
            test_target=np.asarray([s[-1] for s in self.sequences], dtype=np.int64),
        )

    def popularity(self) -> np.ndarray:
        """Interaction counts per item (index 0 = padding) from training parts only."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for s in self.sequences:
            np.add.at(counts, s[:-2], 1)
        return counts

    def user_counts(self) -> np.ndarray:
        """Distinct users per item (index 0 = padding) over whole sequences, validation and test
        items included: the popularity the paper's reference code groups test targets by."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for s in self.sequences:
            counts[np.unique(s)] += 1
        return counts

    def tail_mask(self, head_fraction: float = 0.2) -> np.ndarray:
        """True for long-tail items: outside the `head_fraction` most popular."""
        pop = self.popularity()
        order = np.argsort(-pop[1:], kind="stable") + 1
        n_head = int(round(head_fraction * self.n_items))
        tail = np.ones(self.n_items + 1, dtype=bool)
        tail[0] = False
        tail[order[:n_head]] = False
        return tail

    def stats(self, head_fraction: float = 0.2) -> dict[str, Any]:
        lengths = np.asarray([len(s) for s in self.sequences])
        tail = self.tail_mask(head_fraction)
        pop = self.popularity()
        n_train = int(pop.sum())
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "avg_length": float(lengths.mean()),
            "median_length": float(np.median(lengths)),
            "max_length": int(lengths.max()),
            "head_fraction": head_fraction,
            "tail_items": int(tail.sum()),
            "tail_share_of_train_interactions": float(pop[tail].sum() / max(1, n_train)),
            "tail_share_of_test_targets": float(
                np.mean([tail[s[-1]] for s in self.sequences])
            ),
            "items_with_attributes": int(sum(1 for a in self.attributes if a)),
            **{f"filter_{k}": v for k, v in self.filter_log.items()},
        }

    # --------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lengths = np.asarray([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
        np.savez(d / "sequences.npz", lengths=lengths, items=flat)
        with open(d / "items.jsonl", "w", encoding="utf-8") as f:
            for ext, attrs in zip(self.item_ids, self.attributes):
                f.write(json.dumps({"id": ext, "attributes": attrs}, ensure_ascii=False) + "\n")
        meta = {
            "name": self.name,
            "domain": self.domain,
            "user_ids": self.user_ids,
            "filter_log": self.filter_log,
        }
        (d / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        d = Path(directory)
        meta = json.loads((d / "dataset.json").read_text(encoding="utf-8"))
        arrays = np.load(d / "sequences.npz")
        bounds = np.cumsum(arrays["lengths"])[:-1]
        sequences = [s.astype(np.int64) for s in np.split(arrays["items"], bounds)]
        item_ids, attributes = [], []
        with open(d / "items.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                item_ids.append(row["id"])
                attributes.append(row["attributes"])
        return cls(
            name=meta["name"],
            domain=meta["domain"],
            user_ids=meta["user_ids"],
            item_ids=item_ids,
            sequences=sequences,
            attributes=attributes,
            filter_log=meta.get("filter_log", {}),
        )
