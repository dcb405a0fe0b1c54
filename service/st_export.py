"""A bundle's item stage as a sentence-transformers folder, for standard embedding servers.

prompt -> base model with the LoRA merged -> pooling -> [normalise] -> one Dense layer. The
Dense layer is PCA followed by the adapter, both affine, folded into one map:
    item = W2 (W1 ((x - mean) C^T) + b1) + b2 = W x + b,
    W = W2 W1 C,   b = W2 (b1 - W1 C mean) + b2.
So infinity, TEI-style servers or sentence-transformers itself serve the bundle's item vectors
from the same prompt text the service builds (`/v1/embeddings` takes that text too).
The folder follows sentence-transformers' on-disk layout (modules.json, 1_Pooling, 2_Dense).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmemb.bundle import LoadedBundle
from llmemb.projection import PCA, Adapter
from service.embedder import ItemEmbedder


def folded_dense(pca: PCA, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, D], b [d]) with W x + b == adapter(pca.transform(x)) for every x."""
    w1, b1 = adapter.W1.weight.detach().double(), adapter.W1.bias.detach().double()
    w2, b2 = adapter.W2.weight.detach().double(), adapter.W2.bias.detach().double()
    c, mean = pca.components.double(), pca.mean.double()
    weight = w2 @ w1 @ c
    bias = w2 @ (b1 - w1 @ (c @ mean)) + b2
    return weight.float().contiguous(), bias.float().contiguous()


def _write_json(path: Path, value: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def export_item_stage(bundle: LoadedBundle, out: str | Path, base_model_path: str | None = None) -> Path:
    """Write the folder; refuses a bundle whose prompts need what the format cannot say."""
    spec = bundle.encoder
    if spec.append_eos:
        raise ValueError("encoder.append_eos: sentence-transformers does not append an EOS token to every "
                         "text; this bundle's item stage cannot be exported as such a folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embedder = ItemEmbedder(bundle, device="cpu", dtype="fp32", base_model_path=base_model_path)
    encoder = embedder.encoder
    encoder.model.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": spec.max_tokens, "do_lower_case": False})
    width = encoder.dim
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": width, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": spec.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": spec.pooling == "last", "include_prompt": True})
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    dense = f"{len(modules)}_Dense"
    weight, bias = folded_dense(embedder.pca, embedder.adapter)
    _write_json(out / dense / "config.json", {"in_features": width, "out_features": int(weight.shape[0]),
                                               "bias": True, "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({"linear.weight": weight, "linear.bias": bias}, str(out / dense / "model.safetensors"))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense,
                    "type": "sentence_transformers.models.Dense"})
    _write_json(out / "modules.json", modules)
    _write_json(out / "config_sentence_transformers.json", {
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "dot",
        "llmemb": {"bundle_fingerprint": bundle.fingerprint, "stage": "item",
                   "note": "embed the service's prompt text (POST /v1/embeddings takes the same)"}})
    return out
