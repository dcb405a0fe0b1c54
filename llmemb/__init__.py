"""The LLMEmb method as a library: what the trainer and the service must agree on (see README, Layout)."""
