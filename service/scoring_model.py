"""The scoring side of the service, built from a bundle: prompts, token counts, the
RAT-trained backbone over the catalogue table, and the catalogue vector of an item.

The item path (LLM -> PCA -> adapter) is service/embedder.py, run in the model
process (service/model_process.py). This object never loads the LLM, only its
tokenizer, to count the tokens the micro-batcher packs by.

Thread ownership (nothing here locks):
- `user_vectors` runs only in the scoring thread;
- `prompt` and `token_lengths` run in the event loop, with a tokenizer instance
  of their own.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from llmemb.backbones import build_backbone
from llmemb.backbones.base import FixedItemEmbedding, left_pad
from llmemb.base_models import ModelError, resolve_model_path
from llmemb.bundle import BundleError, LoadedBundle
from llmemb.devices import resolve_device
from llmemb.encoder import load_tokenizer, tokenize


class ScoringModel:
    def __init__(self, bundle: LoadedBundle, base_model_path: str | None = None, device: str = "cpu"):
        self.bundle = bundle
        self.device = resolve_device(device, "LLMEMB_SCORING_DEVICE")
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # (snapshot table, its copy on device)
        self.spec = bundle.encoder
        self.dims = bundle.dims
        try:  # the tokenizer only: the model process checks the model's identity and loads it
            model_path = resolve_model_path(str(base_model_path) if base_model_path else bundle.base_model_id)
        except ModelError as e:
            raise BundleError(f"base_model.id: {e}", "manifest.json") from None
        self.length_tokenizer = load_tokenizer(model_path)
        self.item_embedding = FixedItemEmbedding(bundle.item_table)
        self.method = bundle.method
        self.backbone = build_backbone(bundle.backbone_config, self.item_embedding)
        self.backbone.load_backbone_state_dict(bundle.backbone_state)
        self.backbone.to(self.device)
        self.backbone.eval()

    # ------------------------------------------------------------- event loop
    def prompt(self, attributes: Mapping[str, Any]) -> str:
        return self.spec.prompt(attributes)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenize(self.length_tokenizer, texts, self.spec.max_tokens, self.spec.append_eos)]

    # ---------------------------------------------------------- scoring thread
    def scoring_table(self, table: torch.Tensor) -> torch.Tensor:
        """A catalogue snapshot's table on the scoring device: the table itself on the CPU; on a GPU
        a copy made once per snapshot (snapshots are immutable) and kept while it is the latest."""
        if table.device == self.device:
            return table
        if self._table is None or self._table[0] is not table:
            self._table = (table, table.to(self.device))
        return self._table[1]

    @torch.inference_mode()
    def user_vectors(self, histories: list[list[int]], table: torch.Tensor) -> torch.Tensor:
        """Histories of catalogue rows (oldest first) -> [B, d] user vectors over `table` (a
        scoring_table), on the scoring device."""
        self.item_embedding.use(table)
        inputs = left_pad(histories, self.bundle.backbone_config.max_len).to(self.device)
        return self.backbone.encode(inputs)
