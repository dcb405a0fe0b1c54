"""The FastAPI service: loads a bundle, embeds new items, scores next items (see README, Layout)."""
