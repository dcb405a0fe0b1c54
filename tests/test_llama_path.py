"""The production LLaMA path end to end, on a tiny random LLaMA saved to a temp dir.

SCFT trains a LoRA (trainer.stages.scft.run_scft, 2 steps) -> the merged model exports
the catalogue -> PCA, adapter, SASRec -> write_bundle with the model directory as
base_model_id and last-token pooling -> load_bundle + service ScoringModel (CPU) must
reproduce the bundle's item table, pool the final non-pad token, and refuse a
base model whose config.json or weights are not the ones the bundle was trained on.

Run for the weights' dtypes fp32 and bf16. Tolerances:
- fp32: the service runs the trainer's computation again, atol 1e-4;
- bf16: weights and activations carry 8 significant bits (unit roundoff
  2**-8 = 3.9e-3). Batches of another composition change the shapes of the
  bf16 matmuls and so their rounding; a few roundings over 2 layers, then PCA
  centring (which removes the common part of the vectors), stay well under a
  per-row relative error of 2e-2 (~5 bf16 ulps), far below the change the
  LoRA makes. (Measured on CPU: < 1e-6 for both dtypes.) A few items are closer
  than 2e-2 to each other, so the test also checks that every served vector is
  nearest to its own bundle row.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaModel

from llmemb.backbones import BackboneConfig, build_backbone
from llmemb.backbones.base import left_pad
from llmemb.base_models import model_identity
from llmemb.bundle import BundleError, BundleParts, load_bundle, write_bundle
from llmemb.encoder import DTYPES, EncoderConfig, ItemEncoder, LoraSettings
from llmemb.item_tables import AdaptedItemEmbedding, with_padding_row
from llmemb.projection import PCA, Adapter
from llmemb.prompts import build_prompt, instruction_for
from llmemb.spec import EncoderSpec
from service.embedder import ItemEmbedder
from service.scoring_model import ScoringModel
from tests.tiny_models import ml100k_like_items
from trainer.stages.scft import SCFTConfig, run_scft

DOMAIN = "movie"
MAX_TOKENS = 64
MAX_VALUE_CHARS = 100
D_PCA, D_ITEM = 16, 24  # the tiny LLaMA's hidden size is 32
BF16_REL_TOL = 2e-2
FP32_ATOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row ||a - b|| / ||b||."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)


def assert_same_vectors(actual: torch.Tensor, expected: torch.Tensor, dtype: str) -> None:
    if dtype == "fp32":
        err = (actual - expected).abs().max().item()
        assert err <= FP32_ATOL, f"max abs error {err:.2e} > {FP32_ATOL}"
    else:
        err = rel_err(actual, expected).max().item()
        assert err < BF16_REL_TOL, f"max row relative error {err:.2e} >= {BF16_REL_TOL}"


@dataclass
class Case:
    dtype: str
    model_dir: Path
    lora_dir: Path
    bundle_dir: Path
    parts: BundleParts
    scft_summary: dict
    prompts: list[str]
    e_llm: torch.Tensor          # [N, D] merged-model export, pooled last token
    e_base: torch.Tensor         # [N, D] the same prompts through the base model (no LoRA)
    backbone: torch.nn.Module          # the trainer's SASRec over AdaptedItemEmbedding


_CASES: dict[str, Case] = {}


def build_case(dtype: str, model_dir: Path, root: Path) -> Case:
    """SCFT -> merged export -> PCA/adapter/SASRec -> bundle, as the trainer does it."""
    if dtype in _CASES:
        return _CASES[dtype]
    items = ml100k_like_items()
    work = root / dtype
    spec = EncoderSpec(instruction=instruction_for(DOMAIN), pooling="last", max_tokens=MAX_TOKENS, dtype=dtype,
                       max_value_chars=MAX_VALUE_CHARS)
    # 1. SCFT: a LoRA on every projection of the tiny LLaMA, two optimiser steps.
    encoder_config = EncoderConfig.from_spec(spec, str(model_dir), lora=LoraSettings())
    scft = SCFTConfig(steps=2, batch_items=8, lr=5e-3, val_items=4, log_every=1, seed=0, progress=False)
    summary = run_scft(encoder_config, scft, items, spec, work / "scft")
    lora_dir = Path(summary["lora_dir"])

    # 2. Export with the merged model, PCA, adapter, backbone, bundle.
    plain = replace(encoder_config, lora=None)
    encoder = ItemEncoder.from_pretrained_lora(plain, lora_dir)
    assert next(encoder.model.parameters()).dtype == DTYPES[dtype]
    prompts = [build_prompt(a, instruction_for(DOMAIN), MAX_VALUE_CHARS) for a in items]
    e_llm = encoder.embed(prompts)
    e_base = ItemEncoder(plain).embed(prompts)
    torch.manual_seed(0)
    pca = PCA.fit(e_llm, D_PCA)
    adapter = Adapter(D_PCA, D_ITEM)
    layer = AdaptedItemEmbedding(with_padding_row(pca.transform(e_llm)), adapter)
    config = BackboneConfig(name="sasrec", hidden=D_ITEM, max_len=10, n_layers=1, n_heads=1, dropout=0.0)
    backbone = build_backbone(config, layer).eval()
    with torch.no_grad():
        table = layer.table().detach().clone()
    parts = BundleParts(
        base_model_id=str(model_dir),
        encoder=spec,
        pca_state=pca.state_dict(),
        adapter_state=adapter.state_dict(),
        backbone_config=config,
        backbone_state=backbone.backbone_state_dict(),
        item_table=table,
        item_ids=[f"m{i}" for i in range(1, len(items) + 1)],
        item_attributes=items,
        lora_dir=lora_dir,
        dataset={"name": "tiny-llama-path", "items": len(items)},
        metrics={"note": "untrained test bundle"},
    )
    bundle_dir = work / "bundle"
    write_bundle(bundle_dir, parts)
    _CASES[dtype] = Case(dtype, Path(model_dir), lora_dir, bundle_dir, parts, summary, prompts, e_llm, e_base,
                         backbone)
    return _CASES[dtype]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama-path")


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def case(request, tiny_llama_dir, workdir) -> Case:
    return build_case(request.param, tiny_llama_dir, workdir)


@pytest.fixture(scope="module")
def engines() -> dict[str, tuple[ItemEmbedder, ScoringModel]]:
    return {}


def engine_for(case: Case, engines: dict[str, tuple[ItemEmbedder, ScoringModel]]) -> tuple[ItemEmbedder, ScoringModel]:
    """The service's two halves over the case's bundle: the model process's embedder, the scoring engine."""
    if case.dtype not in engines:
        bundle = load_bundle(case.bundle_dir)
        engines[case.dtype] = ItemEmbedder(bundle, device="cpu"), ScoringModel(bundle)
    return engines[case.dtype]


def merged_reference(case: Case) -> torch.nn.Module:
    """The SCFT model rebuilt with transformers + peft alone (no llmemb code)."""
    base = AutoModel.from_pretrained(case.model_dir, local_files_only=True, dtype=DTYPES[case.dtype])
    return PeftModel.from_pretrained(base, str(case.lora_dir)).merge_and_unload().eval()


# ------------------------------------------------------------------------ SCFT
def test_scft_trains_a_lora_that_changes_the_exported_vectors(case):
    assert case.scft_summary["steps"] == 2
    assert case.scft_summary["encoder"]["dtype"] == case.dtype
    assert case.scft_summary["encoder"]["pooling"] == "last"
    lora = load_file(str(case.lora_dir / "adapter_model.safetensors"))
    b_mats = [name for name in lora if "lora_B" in name]
    assert len(b_mats) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    assert all(lora[name].abs().max() > 0 for name in b_mats), "B starts at zero: every one must have trained"
    # Merged into the weights, the LoRA moves every item's vector far beyond bf16 noise.
    assert rel_err(case.e_llm, case.e_base).min() > 5 * BF16_REL_TOL


# ---------------------------------------------------------------------- bundle
def test_bundle_records_the_llama_encoder(case):
    bundle = load_bundle(case.bundle_dir)
    assert bundle.base_model_id == str(case.model_dir)
    assert bundle.encoder == case.parts.encoder
    assert (bundle.encoder.pooling, bundle.encoder.dtype) == ("last", case.dtype)
    assert bundle.dims == {"llm": 32, "pca": D_PCA, "item": D_ITEM}
    assert bundle.lora_dir is not None and (bundle.lora_dir / "adapter_model.safetensors").is_file()
    identity = model_identity(str(case.model_dir))
    assert bundle.manifest.base_model.to_dict() == {"id": str(case.model_dir), **identity.to_dict()}
    assert bundle.manifest.base_model.identity.config_sha256 == config_sha256(case.model_dir)
    weights_sha = hashlib.sha256(f"model.safetensors:{file_sha256(case.model_dir / 'model.safetensors')}\n".encode())
    assert bundle.manifest.base_model.identity.weights_sha256 == weights_sha.hexdigest()


# ---------------------------------------------------------------------- engine
def test_engine_item_vectors_equal_the_bundle_table(case, engines):
    embedder, engine = engine_for(case, engines)
    bundle = engine.bundle
    assert next(embedder.encoder.model.parameters()).dtype == DTYPES[case.dtype]
    assert not isinstance(embedder.encoder.model, PeftModel)  # the LoRA is merged
    table = bundle.item_table
    assert torch.equal(table[0], torch.zeros(D_ITEM))
    prompts = [engine.prompt(a) for a in bundle.item_attributes]
    assert prompts == case.prompts

    # The whole catalogue in one batch, as the trainer exported it.
    stages = embedder.embed_batch(prompts)
    llm = torch.from_numpy(np.stack([s.llm for s in stages]))
    item = torch.from_numpy(np.stack([s.item for s in stages]))
    assert_same_vectors(llm, case.e_llm, case.dtype)
    assert_same_vectors(item, table[1:], case.dtype)
    if case.dtype == "fp32":
        assert torch.allclose(item, table[1:], atol=FP32_ATOL)

    # Micro-batches of other compositions, sizes and order (other padding, other matmul shapes),
    # single texts included: what the service's micro-batcher hands the model.
    order = list(reversed(range(len(prompts))))
    rows, start, sizes = {}, 0, [1, 3, 7]
    while start < len(order):
        chunk = order[start:start + sizes[start % 3]]
        for i, s in zip(chunk, embedder.embed_batch([prompts[i] for i in chunk])):
            rows[i] = torch.from_numpy(s.item)
        start += len(chunk)
    rebatched = torch.stack([rows[i] for i in range(len(prompts))])
    assert_same_vectors(rebatched, table[1:], case.dtype)

    # Some items are only a few 1e-3 apart (titles outside the tiny vocabulary all become <unk>),
    # closer than the bf16 tolerance: every served vector must still be nearest to its own row
    # (ties only between items whose token ids are identical).
    tokens = embedder.encoder.tokenize(prompts)
    for served in (item, rebatched):
        nearest = torch.cdist(served, table[1:]).argmin(dim=1).tolist()
        assert all(tokens[j] == tokens[i] for i, j in enumerate(nearest))

    # The backbone scores over the served table as the trainer's model did.
    histories = [[1, 2, 3], [5, 9, 13, 40, 7], [11]]
    served = engine.user_vectors(histories, table)
    with torch.no_grad():
        trained = case.backbone.encode(left_pad(histories, case.backbone.config.max_len))
    assert torch.allclose(served, trained, atol=1e-5)


def test_engine_pools_the_final_non_pad_token(case, engines):
    embedder, engine = engine_for(case, engines)
    short = engine.prompt({"movie_title": "Babe", "class": ["Comedy"]})
    long = engine.prompt(case.parts.item_attributes[0])
    n_short, n_long = engine.token_lengths([short, long])
    assert n_short < n_long  # in one batch the short text is right-padded
    llm = [torch.from_numpy(s.llm) for s in embedder.embed_batch([short, long])]

    model = merged_reference(case)
    tokenizer = AutoTokenizer.from_pretrained(case.model_dir, local_files_only=True)
    for text, n, vector in zip((short, long), (n_short, n_long), llm):
        ids = tokenizer(text)["input_ids"]
        assert len(ids) == n and ids[0] == tokenizer.bos_token_id
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
        assert_same_vectors(vector[None], states[-1][None], case.dtype)
        # Not the mean, not the first (BOS) token, not the one before the last.
        for other in (states.mean(dim=0), states[0], states[-2]):
            assert rel_err(vector[None], other[None]).item() > 2 * BF16_REL_TOL


# -------------------------------------------------------------- base model check
def build_other_llama(directory: Path, tokenizer_from: Path, hidden: int) -> Path:
    """Another tiny LLaMA with the same tokenizer and a different hidden size."""
    AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True).save_pretrained(directory)
    config = LlamaConfig.from_pretrained(tokenizer_from, local_files_only=True)
    config.hidden_size, config.intermediate_size = hidden, 2 * hidden
    torch.manual_seed(1)
    LlamaModel(config).save_pretrained(directory)
    return directory


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_sha256(model_dir: Path) -> str:
    """The manifest's base_model.config_sha256: a hash over "config.json:<sha256 of the file>\\n"."""
    return hashlib.sha256(f"config.json:{file_sha256(model_dir / 'config.json')}\n".encode()).hexdigest()


def sha_prefix(model_dir: Path) -> str:
    return config_sha256(model_dir)[:12]


@pytest.mark.process
def test_a_base_model_of_another_size_is_refused(tiny_llama_dir, workdir, monkeypatch):
    case = build_case("fp32", tiny_llama_dir, workdir)
    other = build_other_llama(workdir / "other-llama", case.model_dir, hidden=48)
    bundle = load_bundle(case.bundle_dir)
    expected = bundle.manifest.base_model.identity.config_sha256[:12]
    with pytest.raises(BundleError, match="refusing to serve it with a different model") as info:
        ItemEmbedder(bundle, device="cpu", base_model_path=str(other))
    message = str(info.value)
    assert info.value.file == "manifest.json"
    assert message.startswith("manifest.json: base_model.config_sha256: ")
    assert repr(str(other)) in message and repr(str(case.model_dir)) in message
    assert sha_prefix(other) in message and expected in message

    # The same through the service: LLMEMB_BASE_MODEL_PATH -> start-up fails, and says why.
    from service.runtime import Runtime
    from service.settings import Settings

    monkeypatch.setenv("LLMEMB_BUNDLE_PATH", str(case.bundle_dir))
    monkeypatch.setenv("LLMEMB_BASE_MODEL_PATH", str(other))
    monkeypatch.delenv("LLMEMB_REDIS_URL", raising=False)
    runtime = Runtime(Settings(_env_file=None))
    try:
        asyncio.run(runtime._load())
    finally:
        runtime.score_pool.shutdown()
    assert runtime.model is not None and runtime.model.state == "failed"  # the model process said why
    assert runtime.status == "failed" and runtime.scoring is None
    assert "BundleError" in runtime.error and "base_model.config_sha256:" in runtime.error
    assert str(other) in runtime.error


def bundle_on_copy(case, workdir: Path, name: str) -> tuple[Path, Path]:
    """A private copy of the case's base model, and a bundle that names it."""
    model = workdir / name
    shutil.copytree(case.model_dir, model)
    bundle_dir = workdir / f"bundle-on-{name}"
    write_bundle(bundle_dir, replace(case.parts, base_model_id=str(model)))
    return model, bundle_dir


def test_an_edited_base_model_config_is_refused(tiny_llama_dir, workdir):
    case = build_case("fp32", tiny_llama_dir, workdir)
    model, bundle_dir = bundle_on_copy(case, workdir, "edited-llama")
    ItemEmbedder(load_bundle(bundle_dir), device="cpu")  # the untouched copy serves

    # Same shapes, different numerics: the weights would load and silently give other vectors.
    config = json.loads((model / "config.json").read_text())
    trained_sha = sha_prefix(model)
    config["rms_norm_eps"] = config["rms_norm_eps"] * 10
    (model / "config.json").write_text(json.dumps(config, indent=2))
    bundle = load_bundle(bundle_dir)  # the bundle itself is intact
    with pytest.raises(BundleError, match="base_model.config_sha256:") as info:
        ItemEmbedder(bundle, device="cpu")
    assert info.value.file == "manifest.json"
    assert str(info.value).startswith("manifest.json: base_model.config_sha256: ")
    assert str(model) in str(info.value) and trained_sha in str(info.value) and sha_prefix(model) in str(info.value)


def test_a_base_model_with_the_same_config_and_other_weights_is_refused(tiny_llama_dir, workdir):
    case = build_case("fp32", tiny_llama_dir, workdir)
    model, bundle_dir = bundle_on_copy(case, workdir, "finetuned-llama")
    trained = model_identity(str(model))

    # A fine-tune: config.json and tokenizer untouched, one weight changed.
    weights = load_file(str(model / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert config_sha256(model) == trained.config_sha256
    with pytest.raises(BundleError, match="refusing to serve it with a different model") as info:
        ItemEmbedder(load_bundle(bundle_dir), device="cpu")
    message = str(info.value)
    assert info.value.file == "manifest.json"
    assert message.startswith("manifest.json: base_model.weights_sha256: ")
    assert repr(str(model)) in message and trained.weights_sha256[:12] in message
    assert model_identity(str(model)).weights_sha256[:12] in message


def test_the_scoring_engine_takes_the_device_rule(case):
    bundle = load_bundle(case.bundle_dir)
    engine = ScoringModel(bundle, device="auto")
    table = engine.scoring_table(bundle.item_table)
    assert table.device == engine.device and engine.scoring_table(bundle.item_table) is table
    assert engine.user_vectors([[1, 2]], table).device == engine.device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="LLMEMB_SCORING_DEVICE: 'cuda' asks for CUDA"):
            ScoringModel(bundle, device="cuda")
