"""ItemEncoder: pooling, batching, dtypes, LoRA targeting and merging."""
from __future__ import annotations

import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from llmemb.encoder import (
    EncoderConfig,
    ItemEncoder,
    LoraSettings,
    length_batches,
    lora_targets,
    pool,
)

TEXTS = [
    "The movie has the following attributes: \nmovie_title is Toy Story; release_year is 1995; class is Animation, Children's, Comedy",
    "The movie has the following attributes: \nclass is Drama",
    "The movie has the following attributes: \nmovie_title is Richard III; class is Drama, War",
    "The movie has",
    "The movie has the following attributes: \nrelease_year is 1996; movie_title is Babe; class is Children's, Comedy, Drama",
]
LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def one_by_one(encoder: ItemEncoder, texts: list[str]) -> torch.Tensor:
    return torch.cat([encoder.embed([t]) for t in texts])


def randomise_lora(encoder: ItemEncoder) -> None:
    """LoRA B starts at zero (a no-op adapter); give it weights so it changes outputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in encoder.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


# ------------------------------------------------------------------ LoRA targets
def test_llama_lora_wraps_every_attention_and_mlp_projection(tiny_llama_dir):
    enc = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last", lora=LoraSettings()))
    assert isinstance(enc.model, PeftModel)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in enc.model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    assert wrapped == LLAMA_TARGETS
    per_layer = [n for n, m in enc.model.named_modules() if hasattr(m, "base_layer") and ".layers.1." in n]
    assert len(per_layer) == 7
    trainable = [n for n, p in enc.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # LLaMA-style tokenizers have no pad token: the encoder falls back to EOS.
    assert enc.tokenizer.pad_token == "</s>"
    assert enc.tokenizer.padding_side == "right"


def test_bert_lora_targets_skip_the_unused_pooler(minilm_dir):
    enc = ItemEncoder(EncoderConfig(minilm_dir, lora=LoraSettings(r=4)))
    wrapped = [n for n, m in enc.model.named_modules() if hasattr(m, "base_layer")]
    suffixes = {n.rsplit(".", 1)[-1] for n in wrapped}
    assert suffixes == {"query", "key", "value", "dense"}
    assert len(wrapped) == 6 * 6  # per layer: q, k, v, attention.output.dense, intermediate.dense, output.dense
    assert not any("pooler" in n for n in wrapped)


def test_unknown_architecture_needs_explicit_targets():
    with pytest.raises(ValueError, match="target_modules"):
        lora_targets("gpt2", LoraSettings())
    assert lora_targets("gpt2", LoraSettings(target_modules=["c_attn"])) == (["c_attn"], None)
    for model_type in ("llama", "mistral", "qwen2"):
        targets, excluded = lora_targets(model_type, LoraSettings())
        assert set(targets) == LLAMA_TARGETS and excluded is None
    assert lora_targets("bert", LoraSettings()) == (["query", "key", "value", "dense"], ["pooler.dense"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        EncoderConfig("x", pooling="cls")
    with pytest.raises(ValueError):
        EncoderConfig("x", dtype="int8")
    assert EncoderConfig("x", lora={"r": 4}).lora == LoraSettings(r=4)
    assert EncoderConfig.from_dict({"model_path": "x", "lora": {"alpha": 16}}).lora.alpha == 16
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({"model_path": "x", "pooling_type": "mean"})


# ---------------------------------------------------------------------- pooling
def test_pool_masks_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    mean = pool(hidden, mask, "mean")
    assert torch.allclose(mean[0], hidden[0, :3].mean(0))
    assert torch.allclose(mean[1], hidden[1, 0])
    last = pool(hidden, mask, "last")
    assert torch.equal(last[0], hidden[0, 2]) and torch.equal(last[1], hidden[1, 0])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])  # left padding works too
    assert torch.equal(pool(hidden, left, "last"), hidden[:, 3])


def test_last_token_pooling_reads_the_last_real_token(tiny_llama_dir):
    enc = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last"))
    batched = enc.embed(TEXTS)
    # Reference: each text alone, unpadded, state of its final token.
    for text, row in zip(TEXTS, batched):
        ids = torch.tensor([enc.tokenize([text])[0]])
        with torch.no_grad():
            states = enc.model(input_ids=ids).last_hidden_state[0]
        assert torch.allclose(row, states[-1], atol=1e-5)
    assert len(set(enc.token_lengths(TEXTS))) > 1  # the batch really was padded


def test_mean_pooling_matches_sentence_transformers(minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(minilm_dir, device="cpu")
    reference = st.encode(TEXTS, convert_to_tensor=True).cpu()
    enc = ItemEncoder(EncoderConfig(minilm_dir, pooling="mean", normalize=True))
    assert enc.dim == 384
    assert torch.allclose(enc.embed(TEXTS), reference, atol=1e-5)


def test_bf16_runs_on_cpu_and_stays_close_to_fp32(tiny_llama_dir):
    fp32 = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="mean")).embed(TEXTS)
    bf16_enc = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="mean", dtype="bf16"))
    assert next(bf16_enc.model.parameters()).dtype == torch.bfloat16
    bf16 = bf16_enc.embed(TEXTS)
    assert bf16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(bf16, fp32, dim=1)
    assert cos.min() > 0.99
    assert not torch.equal(bf16, fp32)  # it really ran in lower precision


# --------------------------------------------------------------------- batching
def test_length_batches_respect_the_budget():
    lengths = [5, 40, 12, 40, 3, 33, 7]
    batches = length_batches(lengths, token_budget=80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 80 or len(b) == 1
    assert length_batches([100], token_budget=10) == [[0]]  # an over-long text still runs alone


def test_embed_returns_input_order_whatever_the_batching(minilm_dir):
    texts = TEXTS + [t.upper() for t in TEXTS]
    enc = ItemEncoder(EncoderConfig(minilm_dir, token_budget=64))
    lengths = enc.token_lengths(texts)
    assert len(length_batches(lengths, 64)) > 2  # several batches, reordered by length
    out = enc.embed(texts)
    assert out.shape == (len(texts), 384) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.allclose(out, one_by_one(enc, texts), atol=1e-5)
    assert enc.embed([]).shape == (0, 384)


def test_token_lengths_are_capped(minilm_dir):
    enc = ItemEncoder(EncoderConfig(minilm_dir, max_tokens=8))
    lengths = enc.token_lengths(TEXTS)
    assert max(lengths) == 8 and min(lengths) < 8


def test_fingerprint_is_stable_and_tracks_pooling(tiny_llama_dir, tmp_path):
    a = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last"))
    b = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last"))
    c = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="mean"))
    d = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last", max_tokens=64))
    e = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last", append_eos=True))
    f = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last", normalize=True))
    assert a.model_fingerprint() == b.model_fingerprint()
    prints = [x.model_fingerprint() for x in (a, c, d, e, f)]
    assert len(set(prints)) == 5

    # The model's files, not its location: a copy fingerprints the same, other weights do not.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    assert ItemEncoder(EncoderConfig(str(copy), pooling="last")).model_fingerprint() == a.model_fingerprint()
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert ItemEncoder(EncoderConfig(str(copy), pooling="last")).model_fingerprint() not in prints


# ------------------------------------------------------------------ training/LoRA
def test_forward_train_gives_gradients_to_lora_only(tiny_llama_dir):
    cfg = EncoderConfig(str(tiny_llama_dir), pooling="last", lora=LoraSettings(dropout=0.0))
    enc = ItemEncoder(cfg)
    randomise_lora(enc)
    out = enc.forward_train(TEXTS)
    assert out.requires_grad and out.dtype == torch.float32
    # Dropout off: the training forward computes what inference computes.
    assert torch.allclose(out.detach(), enc.embed(TEXTS), atol=1e-5)
    out.pow(2).sum().backward()
    grads = {n: p.grad for n, p in enc.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir):
    def lora_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        cfg = EncoderConfig(str(tiny_llama_dir), pooling="mean", lora=LoraSettings(dropout=0.0),
                            gradient_checkpointing=checkpointing)
        enc = ItemEncoder(cfg)
        assert any(getattr(m, "gradient_checkpointing", False) for m in enc.model.modules()) == checkpointing
        randomise_lora(enc)
        enc.forward_train(TEXTS).sum().backward()
        return {n: p.grad.clone() for n, p in enc.model.named_parameters() if p.grad is not None}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_saved_lora_merged_matches_the_unmerged_model(tiny_llama_dir, tmp_path):
    cfg = EncoderConfig(str(tiny_llama_dir), pooling="last", lora=LoraSettings())
    enc = ItemEncoder(cfg)
    randomise_lora(enc)
    unmerged = enc.embed(TEXTS)  # eval mode: LoRA dropout off
    enc.save_lora(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()

    merged_enc = ItemEncoder.from_pretrained_lora(cfg, tmp_path / "lora")
    assert not isinstance(merged_enc.model, PeftModel)
    assert not any("lora_" in n for n, _ in merged_enc.model.named_parameters())
    assert torch.allclose(merged_enc.embed(TEXTS), unmerged, atol=1e-5)
    base = ItemEncoder(EncoderConfig(str(tiny_llama_dir), pooling="last")).embed(TEXTS)
    assert not torch.allclose(base, unmerged, atol=1e-3)  # the LoRA mattered


def test_save_lora_without_lora_is_an_error(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="LoRA"):
        ItemEncoder(EncoderConfig(str(tiny_llama_dir))).save_lora(tmp_path)
