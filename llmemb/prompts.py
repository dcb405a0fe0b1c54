"""Item attributes -> LLM prompt, and the attribute-drop views of SCFT.

Format (docs/METHOD.md): "<instruction>\n" + "; ".join("{key} is {value}").
Lists are joined with ", ", newlines become spaces, each value is cut to
`max_value_chars`.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

DOMAIN_INSTRUCTIONS: dict[str, str] = {
    "movie": "The movie has the following attributes: ",
    "beauty": "The beauty item has the following attributes: ",
    "fashion": "The fashion item has the following attributes: ",
    "poi": "The point of interest has the following attributes: ",
    "scientific": "The industrial and scientific item has the following attributes: ",
    "item": "The item has the following attributes: ",
}


def instruction_for(domain: str) -> str:
    try:
        return DOMAIN_INSTRUCTIONS[domain]
    except KeyError:
        raise ValueError(
            f"unknown domain {domain!r}; known: {', '.join(sorted(DOMAIN_INSTRUCTIONS))}"
        ) from None


def format_value(value: Any, max_value_chars: int) -> str:
    if isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v, max_value_chars) for v in value)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value)) if abs(value) < 1e15 else str(value)
    else:
        text = str(value)
    text = " ".join(text.split())  # newlines and runs of whitespace -> one space
    return text[:max_value_chars]


def is_empty_value(value: Any) -> bool:
    """An attribute value the prompt leaves out: null, the empty string or the empty list."""
    return value is None or value == "" or value == []


def has_content(attributes: Mapping[str, Any]) -> bool:
    """Whether any attribute would appear in the prompt (otherwise it is the instruction alone)."""
    return any(not is_empty_value(v) for v in attributes.values())


def build_prompt(
    attributes: Mapping[str, Any],
    instruction: str,
    max_value_chars: int = 100,
    keys: list[str] | None = None,
) -> str:
    """The prompt of one item under an instruction (verbatim, e.g. `instruction_for(domain)`);
    `keys` chooses and orders the attributes (default: all)."""
    order = list(attributes) if keys is None else keys
    parts = []
    for key in order:
        value = attributes[key]
        if is_empty_value(value):
            continue
        parts.append(f"{key} is {format_value(value, max_value_chars)}")
    return instruction + "\n" + "; ".join(parts)


def drop_view_keys(keys: list[str], rng: random.Random, drop_ratio: float = 0.4) -> list[str]:
    """A random shuffle of the keys with `drop_ratio` of them dropped, at least one kept."""
    if not keys:
        return []
    shuffled = list(keys)
    rng.shuffle(shuffled)
    n_keep = max(1, len(shuffled) - int(round(drop_ratio * len(shuffled))))
    return shuffled[:n_keep]


class ViewSampler:
    """Draws fresh attribute-drop views at every call, reproducibly from a seed."""

    def __init__(self, instruction: str, drop_ratio: float = 0.4, max_value_chars: int = 100, seed: int = 0):
        self.instruction = instruction
        self.drop_ratio = drop_ratio
        self.max_value_chars = max_value_chars
        self.rng = random.Random(seed)

    def view(self, attributes: Mapping[str, Any]) -> str:
        keys = [k for k, v in attributes.items() if not is_empty_value(v)]
        chosen = drop_view_keys(keys, self.rng, self.drop_ratio)
        return build_prompt(attributes, self.instruction, self.max_value_chars, keys=chosen)

    def pair(self, attributes: Mapping[str, Any]) -> tuple[str, str]:
        return self.view(attributes), self.view(attributes)
