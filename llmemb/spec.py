"""The encoder contract: how item attributes become LLM vectors.

`EncoderSpec` holds everything that changes an item's vector besides the base
model's weights (whose identity the bundle records beside it): the instruction
and prompt format verbatim, pooling, normalisation, max tokens, dtype and EOS
handling. The trainer writes it into the bundle and the service reads it back
from there; both build prompts and encoders through it, so their vectors agree
by construction. This module imports neither torch nor transformers, so a
process that only reads bundles (a backfill actor with every vector cached)
stays light.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from llmemb.prompts import build_prompt

POOLINGS = ("mean", "last")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
PROMPT_FORMAT = '"<instruction>\\n" + "; ".join(f"{key} is {value}")'


@dataclass(frozen=True)
class EncoderSpec:
    """How item attributes become LLM vectors: the contract a bundle carries.

    The base model's identity sits beside it in the manifest (`base_model`);
    runtime choices that do not change a vector (device, token budget) are not
    part of it. `from_dict` is strict: an unknown, missing or ill-typed field is
    an error naming the field, never a silent default.
    """

    instruction: str               # verbatim first line of every prompt
    pooling: str = "mean"
    normalize: bool = False
    max_tokens: int = 256
    dtype: str = "fp32"
    append_eos: bool = False
    max_value_chars: int = 100     # each attribute value is cut to this many characters in the prompt
    prompt_format: str = PROMPT_FORMAT

    def __post_init__(self) -> None:
        for name, kind in (("instruction", str), ("pooling", str), ("normalize", bool), ("max_tokens", int),
                           ("dtype", str), ("append_eos", bool), ("max_value_chars", int), ("prompt_format", str)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"encoder.{name}: expected {kind.__name__}, got {value!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder.pooling: must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"encoder.dtype: must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.max_tokens < (2 if self.append_eos else 1) or self.max_value_chars < 1:
            raise ValueError(f"encoder.max_tokens / encoder.max_value_chars: too small "
                             f"({self.max_tokens}, {self.max_value_chars})")
        if self.prompt_format != PROMPT_FORMAT:
            raise ValueError(f"encoder.prompt_format: this code builds prompts as {PROMPT_FORMAT}, "
                             f"the bundle asks for {self.prompt_format!r}")

    def prompt(self, attributes: Mapping[str, Any], keys: list[str] | None = None) -> str:
        """The prompt of an item: the one place trainer, service and backfill agree on."""
        return build_prompt(attributes, self.instruction, self.max_value_chars, keys=keys)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderSpec:
        if not isinstance(values, dict):
            raise ValueError(f"encoder: expected a mapping, got {type(values).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"encoder.{unknown[0]}: unknown field (this code knows {', '.join(names)})")
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"encoder.{missing[0]}: missing from the bundle's encoder contract")
        return cls(**values)
