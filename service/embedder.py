"""The item path of the model side: prompt text -> LLM -> PCA -> adapter, built from a bundle.

One object, `ItemEmbedder`, used wherever the service's vectors are computed: in the
service's model process (service/model_process.py), in the backfill jobs, and in
tests that check those vectors. It refuses a base model other than the one the
bundle was trained on. Not thread-safe: one caller at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from llmemb.base_models import ModelError, model_identity, resolve_model_path
from llmemb.bundle import BundleError, LoadedBundle
from llmemb.encoder import EncoderConfig, ItemEncoder
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


def checked_model_path(bundle: LoadedBundle, base_model_path: str | None = None) -> str:
    """The local path of the bundle's base model (or `base_model_path`), refused unless its
    identity (weights and tokenizer hashes) is the one recorded in the manifest."""
    model_id = str(base_model_path) if base_model_path else bundle.base_model_id
    try:
        model_path = resolve_model_path(model_id)
        actual = model_identity(model_path).to_dict()  # the resolved path: no second resolution
    except ModelError as e:
        raise BundleError(f"base_model.id: {e}", "manifest.json") from None
    recorded = bundle.manifest.base_model.identity.to_dict()
    for name, value in actual.items():
        if value != recorded[name]:
            raise BundleError(
                f"base_model.{name}: model {model_id!r} has {value[:12]}..., the bundle was trained on "
                f"{bundle.base_model_id!r} with {recorded[name][:12]}...; refusing to serve it with a "
                "different model", "manifest.json")
    return str(model_path)


class ItemEmbedder:
    def __init__(self, bundle: LoadedBundle, device: str = "cpu", dtype: str | None = None,
                 token_budget: int = 16384, base_model_path: str | None = None):
        spec, dims = bundle.encoder, bundle.dims
        model_path = checked_model_path(bundle, base_model_path)
        if dtype and dtype != spec.dtype:
            log.warning("encoder dtype %s overrides the bundle's %s: new vectors will differ slightly from "
                        "the catalogue table (bench/results/encoders.md measures by how much)", dtype, spec.dtype)
        # The spec builds the encoder, as it did in the trainer's export: the same object, the same vectors.
        config = EncoderConfig.from_spec(spec, model_path, device=device, token_budget=token_budget, dtype=dtype)
        try:
            if bundle.lora_dir is not None:
                self.encoder = ItemEncoder.from_pretrained_lora(config, str(bundle.lora_dir))
            else:
                self.encoder = ItemEncoder(config)
        except ValueError as e:  # a contract field this model cannot honour (e.g. append_eos without EOS)
            raise BundleError(str(e), "manifest.json") from None
        if self.encoder.dim != dims["llm"]:
            raise BundleError(f"encoder width {self.encoder.dim} != bundle dims.llm {dims['llm']}", "manifest.json")
        self.pca = PCA.from_state_dict(bundle.pca_state)
        self.adapter = Adapter.from_state_dict(bundle.adapter_state)
        if (self.adapter.d_in, self.adapter.d_out) != (dims["pca"], dims["item"]):
            raise BundleError(f"adapter maps {self.adapter.d_in} -> {self.adapter.d_out}, the manifest says "
                              f"{dims['pca']} -> {dims['item']}", "adapter.safetensors")
        self.adapter.eval()

    @torch.inference_mode()
    def project(self, llm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM vectors [n, D] -> (PCA [n, d_pca], item [n, d]), the trainer's path for new items."""
        reduced = self.pca.transform(llm.float())
        return reduced, self.adapter(reduced)

    @torch.inference_mode()
    def embed_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(llm [n, D], pca [n, d_pca], item [n, d]) float32 arrays for the prompts `texts`."""
        llm = self.encoder.embed(texts).float()
        reduced, item = self.project(llm)
        return llm.numpy(), reduced.numpy(), item.numpy()

    def embed_batch(self, texts: list[str]) -> list[StageVectors]:
        return stage_vectors(*self.embed_arrays(texts))


def stage_vectors(llm: np.ndarray, pca: np.ndarray, item: np.ndarray) -> list[StageVectors]:
    return [StageVectors(llm[i], pca[i], item[i]) for i in range(llm.shape[0])]
