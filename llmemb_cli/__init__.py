"""The installed `llmemb` command: one entry point over the trainer, the service and the backfill."""
