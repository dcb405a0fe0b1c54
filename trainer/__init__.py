"""The offline trainer: SCFT, export, RAT, evaluation and reports, writing the bundle (see README, Layout)."""
