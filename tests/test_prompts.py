"""Prompts: the exact format, and the attribute-drop views of SCFT."""
import random

import pytest

from llmemb.prompts import (
    DOMAIN_INSTRUCTIONS,
    ViewSampler,
    build_prompt,
    drop_view_keys,
    format_value,
    instruction_for,
)

ITEM = {
    "title": "Rose Oil",
    "brand": "Acme",
    "categories": ["Skin Care", "Face"],
    "price": 12.5,
    "description": "Gentle\nface oil",
}
BEAUTY = instruction_for("beauty")
ITEM_INSTRUCTION = instruction_for("item")


def parts_of(prompt: str) -> list[str]:
    instruction, _, body = prompt.partition("\n")
    return body.split("; ") if body else []


def test_build_prompt_exact_format():
    prompt = build_prompt(ITEM, BEAUTY, max_value_chars=100)
    assert prompt == (
        "The beauty item has the following attributes: \n"
        "title is Rose Oil; brand is Acme; categories is Skin Care, Face; "
        "price is 12.5; description is Gentle face oil"
    )


def test_values_cut_newlines_removed_and_empties_skipped():
    attrs = {"title": "A" * 30, "notes": "one\n\ntwo\tthree", "brand": None, "tags": [], "size": ""}
    prompt = build_prompt(attrs, ITEM_INSTRUCTION, max_value_chars=10)
    assert "\n" not in prompt.partition("\n")[2]
    assert parts_of(prompt) == ["title is " + "A" * 10, "notes is one two th"]


def test_format_value_rules():
    assert format_value(["a", "b", "c"], 100) == "a, b, c"
    assert format_value(["abcdef", "gh"], 4) == "abcd"
    assert format_value(12.0, 100) == "12"
    assert format_value(4.5, 100) == "4.5"
    assert format_value(1995, 100) == "1995"
    assert format_value("  spaced \r\n out  ", 100) == "spaced out"


def test_keys_choose_and_order_attributes():
    prompt = build_prompt(ITEM, BEAUTY, keys=["price", "title"])
    assert parts_of(prompt) == ["price is 12.5", "title is Rose Oil"]


def test_every_domain_has_an_instruction_and_unknown_domain_fails():
    for domain, instruction in DOMAIN_INSTRUCTIONS.items():
        assert instruction_for(domain) == instruction
        assert build_prompt({"title": "x"}, instruction_for(domain)).startswith(instruction + "\n")
    with pytest.raises(ValueError, match="unknown domain 'cars'"):
        instruction_for("cars")


def test_the_instruction_is_used_verbatim():
    assert build_prompt({"title": "x"}, "Describe this car:") == "Describe this car:\ntitle is x"
    view = ViewSampler("Describe this car:", seed=0).view({"title": "x"})
    assert view == "Describe this car:\ntitle is x"


def test_views_drop_the_configured_share_and_keep_full_prompt_parts():
    full = set(parts_of(build_prompt(ITEM, BEAUTY)))
    sampler = ViewSampler(BEAUTY, drop_ratio=0.4, seed=3)
    for _ in range(50):
        view = sampler.view(ITEM)
        assert view.startswith(DOMAIN_INSTRUCTIONS["beauty"] + "\n")
        parts = parts_of(view)
        assert len(parts) == 3  # 5 attributes, 40% dropped
        assert set(parts) <= full
        assert len(set(parts)) == 3


@pytest.mark.parametrize(
    "n_keys,drop_ratio,expected", [(1, 0.9, 1), (2, 0.4, 1), (3, 0.4, 2), (10, 0.4, 6), (4, 0.0, 4)]
)
def test_drop_view_keys_counts(n_keys, drop_ratio, expected):
    keys = [f"k{i}" for i in range(n_keys)]
    chosen = drop_view_keys(keys, random.Random(0), drop_ratio)
    assert len(chosen) == expected
    assert set(chosen) <= set(keys)


def test_at_least_one_attribute_is_kept():
    sampler = ViewSampler(ITEM_INSTRUCTION, drop_ratio=1.0, seed=0)
    for _ in range(20):
        assert len(parts_of(sampler.view(ITEM))) == 1
    assert parts_of(sampler.view({"title": "only", "brand": None})) == ["title is only"]


def test_fresh_views_at_every_call():
    sampler = ViewSampler(BEAUTY, drop_ratio=0.4, seed=0)
    views = {sampler.view(ITEM) for _ in range(40)}
    # 5 attributes, 3 kept, in any order: 60 possible views; 40 draws give many distinct ones.
    assert len(views) > 10
    pairs = [sampler.pair(ITEM) for _ in range(40)]
    assert any(a != b for a, b in pairs)


def test_seeded_reproducibility():
    a = ViewSampler(BEAUTY, seed=7)
    b = ViewSampler(BEAUTY, seed=7)
    c = ViewSampler(BEAUTY, seed=8)
    seq_a = [a.pair(ITEM) for _ in range(10)]
    seq_b = [b.pair(ITEM) for _ in range(10)]
    seq_c = [c.pair(ITEM) for _ in range(10)]
    assert seq_a == seq_b
    assert seq_a != seq_c
