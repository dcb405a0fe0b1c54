"""The model side of the service: encoder + PCA + adapter + backbone, built from a bundle.

Thread ownership (nothing here locks):
- `embed_batch` runs only in the inference thread (the micro-batcher's executor);
- `user_vectors` runs only in the scoring thread;
- `prompt` and `token_lengths` run in the event loop, with a tokenizer instance
  of their own (a fast tokenizer shared across threads can fail with
  "Already borrowed" when its truncation settings are touched concurrently).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from llmemb.backbones import build_backbone
from llmemb.backbones.base import ItemEmbedding, left_pad
from llmemb.bundle import BundleError, LoadedBundle
from llmemb.encoder import ItemEncoder, load_tokenizer, tokenize
from llmemb.models import ModelError, model_identity, resolve_model_path
from llmemb.projection import PCA, Adapter

log = logging.getLogger("llmemb.service")


@dataclass(frozen=True)
class StageVectors:
    """The three vectors of one text: pooled LLM (D), PCA (d_pca), item space (d)."""

    llm: np.ndarray
    pca: np.ndarray
    item: np.ndarray

    def stage(self, name: str) -> np.ndarray:
        return getattr(self, name)


class CatalogueEmbedding(ItemEmbedding):
    """An item-embedding layer that reads the current catalogue table without copying it."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.dim = int(table.shape[1])
        self.current = table

    def table(self) -> torch.Tensor:
        return self.current

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.current[ids]


class Engine:
    def __init__(self, bundle: LoadedBundle, device: str = "cpu", dtype: str | None = None,
                 token_budget: int = 16384, base_model_path: str | None = None):
        self.bundle = bundle
        self.spec = bundle.encoder
        self.dims = bundle.dims
        model_id = str(base_model_path) if base_model_path else bundle.base_model_id
        try:
            model_path = resolve_model_path(model_id)
            actual = model_identity(model_path).to_dict()  # the resolved path: no second resolution
        except ModelError as e:
            raise BundleError(f"base_model.id: {e}", "manifest.json") from None
        recorded = bundle.manifest["base_model"]
        for name, value in actual.items():
            if value != recorded[name]:
                raise BundleError(
                    f"base_model.{name}: model {model_id!r} has {value[:12]}..., the bundle was trained on "
                    f"{bundle.base_model_id!r} with {recorded[name][:12]}...; refusing to serve it with a "
                    "different model", "manifest.json")
        if dtype and dtype != self.spec.dtype:
            log.warning("encoder dtype %s overrides the bundle's %s: new vectors will differ slightly from "
                        "the catalogue table (bench/results/encoders.md measures by how much)", dtype, self.spec.dtype)
        # The spec builds the encoder, as it did in the trainer's export: the same object, the same vectors.
        config = self.spec.encoder_config(model_path, device=device, token_budget=token_budget, dtype=dtype)
        try:
            if bundle.lora_dir is not None:
                self.encoder = ItemEncoder.from_pretrained_lora(config, str(bundle.lora_dir))
            else:
                self.encoder = ItemEncoder(config)
        except ValueError as e:  # a contract field this model cannot honour (e.g. append_eos without EOS)
            raise BundleError(str(e), "manifest.json") from None
        if self.encoder.dim != self.dims["llm"]:
            raise BundleError(f"encoder width {self.encoder.dim} != bundle dims.llm {self.dims['llm']}", "manifest.json")
        self.length_tokenizer = load_tokenizer(model_path)
        self.pca = PCA.from_state_dict(bundle.pca_state)
        self.adapter = Adapter.from_state_dict(bundle.adapter_state)
        if (self.adapter.d_in, self.adapter.d_out) != (self.dims["pca"], self.dims["item"]):
            raise BundleError(f"adapter maps {self.adapter.d_in} -> {self.adapter.d_out}, the manifest says "
                              f"{self.dims['pca']} -> {self.dims['item']}", "adapter.safetensors")
        self.adapter.eval()
        self.item_embedding = CatalogueEmbedding(bundle.item_table)
        # Hybrid bundles: e_i = Adapter(PCA(E_llm))_i + r_i. New items have no residual (r = 0);
        # a bundle item whose attributes are replaced keeps its own.
        self.method = bundle.method
        self.residual = bundle.residual
        self.bundle_rows = {ext: row for row, ext in enumerate(bundle.item_ids, start=1)}
        self.backbone = build_backbone(bundle.backbone_config, self.item_embedding)
        self.backbone.load_backbone_state_dict(bundle.backbone_state)
        self.backbone.eval()

    def catalogue_vector(self, item_id: str, adapted: np.ndarray) -> np.ndarray:
        """The catalogue vector of `item_id` from its LLM-path vector: plus the bundle's
        residual for a bundle item of a hybrid bundle, unchanged otherwise."""
        row = self.bundle_rows.get(item_id)
        if self.residual is None or row is None:
            return adapted
        return (adapted + self.residual[row].numpy()).astype(np.float32)

    # ------------------------------------------------------------- event loop
    def prompt(self, attributes: Mapping[str, Any]) -> str:
        return self.spec.prompt(attributes)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenize(self.length_tokenizer, texts, self.spec.max_tokens, self.spec.append_eos)]

    # --------------------------------------------------------- inference thread
    @torch.inference_mode()
    def project(self, llm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM vectors [n, D] -> (PCA [n, d_pca], item [n, d]), the trainer's path for new items."""
        reduced = self.pca.transform(llm.float())
        return reduced, self.adapter(reduced)

    @torch.inference_mode()
    def embed_batch(self, texts: list[str]) -> list[StageVectors]:
        llm = self.encoder.embed(texts).float()
        reduced, item = self.project(llm)
        llm_np, pca_np, item_np = llm.numpy(), reduced.numpy(), item.numpy()
        return [StageVectors(llm_np[i], pca_np[i], item_np[i]) for i in range(len(texts))]

    # ---------------------------------------------------------- scoring thread
    @torch.inference_mode()
    def user_vectors(self, histories: list[list[int]], table: torch.Tensor) -> torch.Tensor:
        """Histories of catalogue rows (oldest first) -> [B, d] user vectors over `table`."""
        self.item_embedding.current = table
        inputs = left_pad(histories, self.bundle.backbone_config.max_len)
        return self.backbone.encode(inputs)
