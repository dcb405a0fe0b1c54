"""The `prepare` stage: raw files -> Dataset, saved with its statistics.

Later stages call `prepared_dataset`, which reuses the saved Dataset while the
config's dataset spec is unchanged and prepares it again otherwise.
"""
from __future__ import annotations

from pathlib import Path

from llmemb.data import load_dataset
from llmemb.data.dataset import Dataset
from trainer.config import Config
from trainer.runs.store import dataset_dir, is_done, recompute, write_json

STATS_FILE = "stats.json"


def prepare(config: Config) -> tuple[Dataset, Path]:
    """Load the dataset from its raw files and save it under runs/<dataset>/data."""
    dataset = load_dataset(dict(config.dataset))
    with recompute(dataset_dir(config), config.dataset) as directory:
        dataset.save(directory)
        write_json(directory / STATS_FILE, dataset.stats(config.eval.head_fraction))
    return dataset, directory


def prepared_dataset(config: Config) -> tuple[Dataset, Path]:
    """The saved Dataset if it was prepared from the same spec, else a fresh `prepare`."""
    directory = dataset_dir(config)
    if is_done(directory, config.dataset, "dataset.json"):
        return Dataset.load(directory), directory
    return prepare(config)
