"""The LLM item encoder: a Hugging Face model, a pooling rule and optional LoRA.

One class serves every stage: SCFT trains LoRA through `forward_train`, export
and the service call `embed`, which sorts texts by token length and packs them
into batches under a token budget (padding waste is what makes LLM inference
slow, and the budget is what bounds memory), then returns rows in input order.

Padding is always on the right. For causal models this keeps every real token
at the position it would have alone, so a batched row equals the unbatched
forward; last-token pooling then reads the last non-pad position of each row,
which is real whatever the batch. Decoders append the EOS token (`append_eos`)
so that the pooled last position has read the whole prompt and ends every
prompt the same way.

The vector contract (`llmemb.spec.EncoderSpec`) gives the `EncoderConfig` of this
module its vector settings (`EncoderConfig.from_spec`); trainer and service both go
through it. spec.py imports nothing of this module.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoTokenizer

from llmemb.base_models import DEFAULT_MODEL_ID, model_identity, resolve_model_path
from llmemb.devices import resolve_device
from llmemb.sections import dataclass_from
from llmemb.spec import DTYPE_NAMES, POOLINGS, EncoderSpec

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))

# Architectures whose attention and MLP projections share these names. LoRA
# goes on all of them, as in the reference (every attention and MLP projection).
LLAMA_STYLE = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
    "olmo", "olmo2", "granite",
}
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_STYLE = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}
BERT_TARGETS = ["query", "key", "value", "dense"]
MPNET_TARGETS = ["q", "k", "v", "o", "dense"]
# BERT's pooler also has a "dense" layer; no pooling rule here reads it, so a
# LoRA on it would never receive a gradient.
BERT_EXCLUDED = ["pooler.dense"]


def default_model_path() -> str:
    """The local directory of the default base model (llmemb.base_models.DEFAULT_MODEL_ID)."""
    return resolve_model_path(DEFAULT_MODEL_ID)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] | None = None  # None: chosen from the model's architecture


@dataclass
class EncoderConfig:
    model_path: str = field(default_factory=default_model_path)
    pooling: str = "mean"          # mean | last
    max_tokens: int = 256          # longer prompts are truncated
    dtype: str = "fp32"            # weights' dtype: fp32 | bf16 | fp16
    device: str = "cpu"
    lora: LoraSettings | None = None  # set: a fresh trainable LoRA is attached (SCFT)
    token_budget: int = 8192       # max padded tokens (rows x longest row) per inference forward
    normalize: bool = False        # L2-normalise the pooled vectors
    append_eos: bool = False       # end every prompt with the EOS token (decoders, last-token pooling)
    gradient_checkpointing: bool = False  # trade compute for memory in forward_train

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.max_tokens < 1 or self.token_budget < 1:
            raise ValueError("max_tokens and token_budget must be positive")
        if self.append_eos and self.max_tokens < 2:
            raise ValueError("append_eos needs max_tokens >= 2 (one token of text and the EOS)")
        if isinstance(self.lora, dict):  # from YAML / JSON
            self.lora = LoraSettings(**self.lora)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderConfig:
        """From a config section; unknown keys are errors, `lora` may be a mapping."""
        return dataclass_from(cls, values, "encoder")

    @classmethod
    def from_spec(cls, spec: EncoderSpec, model_path: str, device: str = "cpu", token_budget: int = 8192,
                  dtype: str | None = None, lora: LoraSettings | None = None,
                  gradient_checkpointing: bool = False) -> EncoderConfig:
        """The encoder that computes `spec`'s vectors with the weights at `model_path`: the vector
        settings come from the spec (`dtype` overrides its dtype, explicitly), the rest is runtime."""
        return cls(model_path=model_path, pooling=spec.pooling, max_tokens=spec.max_tokens,
                   dtype=dtype or spec.dtype, device=device, lora=lora, token_budget=token_budget,
                   normalize=spec.normalize, append_eos=spec.append_eos,
                   gradient_checkpointing=gradient_checkpointing)


def lora_targets(model_type: str, settings: LoraSettings) -> tuple[list[str], list[str] | None]:
    """(target module names, excluded module names) for an architecture."""
    if settings.target_modules is not None:
        return list(settings.target_modules), None
    if model_type in LLAMA_STYLE:
        return list(LLAMA_TARGETS), None
    if model_type in BERT_STYLE:
        return list(BERT_TARGETS), list(BERT_EXCLUDED)
    if model_type == "mpnet":
        return list(MPNET_TARGETS), list(BERT_EXCLUDED)
    raise ValueError(
        f"no default LoRA target modules for model_type {model_type!r}; "
        "set LoraSettings.target_modules explicitly"
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, H] states, [B, L] attention mask -> [B, H] fp32."""
    hidden = hidden.float()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    # Last non-pad position of each row, whichever side the padding is on.
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def load_tokenizer(model_path: str):
    """The model's tokenizer, padding on the right, with a pad token (LLaMA
    tokenizers ship without one; any id works because padded positions are
    masked out of attention and pooling)."""
    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    tok.padding_side = "right"
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer of {model_path} has no pad, eos or unk token")
        tok.pad_token = fallback
    return tok


def tokenize(tokenizer, texts: list[str], max_tokens: int, append_eos: bool) -> list[list[int]]:
    """Token ids of each text, at most `max_tokens`; with `append_eos` every row
    ends with the EOS token (the text is cut one token earlier to make room)."""
    if not texts:  # the fast tokenizer fails on an empty batch
        return []
    if not append_eos:
        return tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("append_eos is set but the tokenizer has no EOS token")
    rows = tokenizer(list(texts), truncation=True, max_length=max_tokens - 1, padding=False)["input_ids"]
    return [r if r and r[-1] == eos else [*r, eos] for r in rows]


def length_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped longest first so that rows x longest row <= budget (>= 1 row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        longest = max(1, lengths[order[start]])
        size = max(1, token_budget // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


class ItemEncoder:
    """Texts -> pooled last hidden states of a Hugging Face model."""

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.device = resolve_device(config.device, "encoder.device")
        self.tokenizer = load_tokenizer(config.model_path)
        self.pad_id = int(self.tokenizer.pad_token_id)
        if config.append_eos and self.tokenizer.eos_token_id is None:
            raise ValueError(f"encoder.append_eos: the tokenizer of {config.model_path} has no EOS token")
        model = AutoModel.from_pretrained(
            config.model_path, local_files_only=True, dtype=DTYPES[config.dtype]
        )
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # no KV cache: every forward is a full encode
        model.requires_grad_(False)
        model.to(self.device)
        if config.lora is not None:
            targets, excluded = lora_targets(model.config.model_type, config.lora)
            lora_config = LoraConfig(
                r=config.lora.r,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=targets,
                exclude_modules=excluded,
            )
            model = get_peft_model(model, lora_config)
        if config.gradient_checkpointing:
            # Non-reentrant checkpointing lets gradients reach LoRA weights even
            # though the inputs (frozen embeddings) do not require grad.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.eval()
        self.model = model

    @classmethod
    def from_pretrained_lora(cls, config: EncoderConfig, lora_dir: str | Path) -> ItemEncoder:
        """Base model + a saved LoRA, merged into the weights: inference costs as the base."""
        encoder = cls(replace(config, lora=None, gradient_checkpointing=False))
        merged = PeftModel.from_pretrained(encoder.model, str(lora_dir)).merge_and_unload()
        merged.requires_grad_(False)
        encoder.model = merged.eval()
        return encoder

    # ----------------------------------------------------------------- basics
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, self.config.max_tokens, self.config.append_eos)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenize(texts)]

    def model_fingerprint(self) -> str:
        """sha256 over the base model's identity (config, weights, tokenizer) and
        the settings that change outputs."""
        body = {
            "model": model_identity(self.config.model_path).to_dict(),
            "pooling": self.config.pooling,
            "max_tokens": self.config.max_tokens,
            "normalize": self.config.normalize,
            "append_eos": self.config.append_eos,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    # ---------------------------------------------------------------- forward
    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = pool(hidden, mask, self.config.pooling)
        if self.config.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[n, D] fp32 on CPU, no grad, rows in input order."""
        rows = self.tokenize(texts)
        out = torch.empty((len(rows), self.dim), dtype=torch.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in length_batches([len(r) for r in rows], self.config.token_budget):
                    ids, mask = self._pad([rows[i] for i in batch])
                    out[torch.tensor(batch)] = self._encode(ids, mask).float().cpu()
        finally:
            self.model.train(was_training)
        return out

    def forward_train(self, texts: list[str]) -> torch.Tensor:
        """[n, D] fp32 on the model's device, with grad; one forward, in train mode
        (LoRA dropout on). The caller keeps the batch within memory."""
        self.model.train()
        ids, mask = self._pad(self.tokenize(texts))
        return self._encode(ids, mask)

    def save_lora(self, directory: str | Path) -> None:
        if not isinstance(self.model, PeftModel):
            raise ValueError("this encoder has no trainable LoRA to save (EncoderConfig.lora is None)")
        self.model.save_pretrained(str(directory))
