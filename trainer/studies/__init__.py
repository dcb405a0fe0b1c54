"""Studies built from runs: quality grids, tuning, encoder comparison, baselines, the quick pipeline, the new-item study."""
