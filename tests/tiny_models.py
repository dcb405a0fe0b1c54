"""Tiny offline models for the encoder and SCFT tests (tests/conftest.py makes them fixtures).

`build_tiny_llama`: a random 2-layer LlamaConfig model with a word-level tokenizer
built here (no LLaMA tokenizer can be downloaded). Like LLaMA's, the tokenizer
adds a BOS token and has no pad token, so the encoder's pad fallback is exercised.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

WORDS = (
    "the movie beauty item has following attributes : is ; , movie_title release_year class "
    "toy story goldeneye four rooms get shorty copycat babe dead man walking richard iii "
    "animation children's comedy action adventure thriller drama crime romance sci-fi horror "
    "war documentary musical mystery western film-noir fantasy 1995 1996 1994 1993 1997"
).split()


def ml100k_like_items() -> list[dict]:
    """40 MovieLens-100K style items: title, year, genres (several share genres)."""
    titles = [
        "Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Babe",
        "Dead Man Walking", "Richard III", "Seven", "Usual Suspects", "Mighty Aphrodite",
        "Postino", "Mr. Holland's Opus", "French Twist", "From Dusk Till Dawn", "White Balloon",
        "Antonia's Line", "Angels and Insects", "Muppet Treasure Island", "Braveheart",
        "Taxi Driver", "Rumble in the Bronx", "Birdcage", "Brothers McMullen", "Bad Boys",
        "Apollo 13", "Batman Forever", "Belle de jour", "Crimson Tide", "Crumb",
        "Desperado", "Doom Generation", "Free Willy 2", "Mad Love", "Nadja",
        "Net", "Strange Days", "To Wong Foo", "Billy Madison", "Clerks",
    ]
    genres = [
        ["Animation", "Children's", "Comedy"], ["Action", "Adventure", "Thriller"], ["Thriller"],
        ["Action", "Comedy", "Drama"], ["Crime", "Drama", "Thriller"], ["Children's", "Comedy", "Drama"],
        ["Drama"], ["Drama", "War"], ["Crime", "Thriller"], ["Crime", "Thriller"],
    ]
    return [
        {"movie_title": t, "release_year": str(1990 + (i * 7) % 8), "class": genres[i % len(genres)]}
        for i, t in enumerate(titles)
    ]


def build_tiny_llama(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(directory)
    return directory
