"""The trainer's stages, one module each: prepare, SCFT, export, the LLM stages, training, evaluation, the bundle."""
