"""The bundle carries the whole encoder contract, and the service honours it.

Every field of the manifest's `encoder` section and every hash of its
`base_model` section is either honoured (the service's vector for a catalogue
item equals the row the trainer's path computed under that field) or refused
with a message naming the field. A field changed in the manifest alone (the
table left as it was) changes the served vectors: proof that the service reads
it from the manifest rather than from its own code. (A base model whose weights
differ under an identical config is refused in tests/test_llama_path.py.)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from llmemb.bundle import MANIFEST, BundleError, load_bundle, manifest_fingerprint
from llmemb.prompts import instruction_for
from llmemb.spec import EncoderSpec
from llmemb_testing.servers import build_test_bundle
from service.embedder import ItemEmbedder
from tests.tiny_models import build_tiny_llama

BASE = EncoderSpec(instruction=instruction_for("movie"), pooling="mean", max_tokens=64)
N_ITEMS = 6

# field -> the changed value; each is served exactly when the table was made under it
HONOURED = {
    "instruction": "Describe the film in one line: ",
    "pooling": "last",
    "normalize": True,
    "max_tokens": 6,
    "dtype": "bf16",
    "max_value_chars": 3,
}


def served_rows(bundle_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors the service's engine computes for the catalogue items, their bundle rows)."""
    bundle = load_bundle(bundle_dir)
    vectors = ItemEmbedder(bundle).embed_batch([bundle.encoder.prompt(a) for a in bundle.item_attributes])
    return torch.from_numpy(np.stack([v.item for v in vectors])), bundle.item_table[1:]


def edit_manifest(src: Path, dst: Path, edit) -> Path:
    """A copy of a bundle whose manifest was changed by `edit(manifest)` and re-fingerprinted,
    as a trainer with other settings would have written it."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    edit(manifest)
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory):
    return build_test_bundle(tmp_path_factory.mktemp("contract") / "base", n_items=N_ITEMS, spec=BASE, lora=False)


@pytest.mark.parametrize("field", sorted(HONOURED))
def test_each_field_is_served_as_the_trainer_computed_it(field, base_bundle, tmp_path):
    spec = replace(BASE, **{field: HONOURED[field]})
    bundle_dir = build_test_bundle(tmp_path / "bundle", n_items=N_ITEMS, spec=spec, lora=False)
    assert load_bundle(bundle_dir).encoder == spec
    served, rows = served_rows(bundle_dir)
    assert torch.allclose(served, rows, atol=1e-5), (served - rows).abs().max()

    # The same field written into the base bundle's manifest (its table made under BASE):
    # the service follows the manifest, so its vectors no longer match those rows.
    edited = edit_manifest(base_bundle, tmp_path / "edited",
                           lambda m: m["encoder"].__setitem__(field, HONOURED[field]))
    served, rows = served_rows(edited)
    assert (served - rows).abs().max() > 1e-3


def test_append_eos_is_served_as_trained_on_a_decoder(tmp_path):
    llama = build_tiny_llama(tmp_path / "tiny-llama")
    spec = replace(BASE, pooling="last", append_eos=True, max_tokens=12)
    bundle_dir = build_test_bundle(tmp_path / "bundle", n_items=N_ITEMS, spec=spec, lora=False,
                                   base_model_id=str(llama))
    served, rows = served_rows(bundle_dir)
    assert torch.allclose(served, rows, atol=1e-5)
    edited = edit_manifest(bundle_dir, tmp_path / "edited", lambda m: m["encoder"].__setitem__("append_eos", False))
    served, rows = served_rows(edited)
    assert (served - rows).abs().max() > 1e-3


REFUSED = {
    "encoder.pooling": lambda m: m["encoder"].__setitem__("pooling", "max"),
    "encoder.dtype": lambda m: m["encoder"].__setitem__("dtype", "int4"),
    "encoder.prompt_format": lambda m: m["encoder"].__setitem__("prompt_format", '"{title}"'),
    "encoder.max_tokens": lambda m: m["encoder"].__setitem__("max_tokens", "64"),
    "encoder.normalize": lambda m: m["encoder"].pop("normalize"),
    "encoder.temperature": lambda m: m["encoder"].__setitem__("temperature", 0.5),
    "base_model.weights_sha256": lambda m: m["base_model"].__setitem__("weights_sha256", "0" * 64),
    "base_model.tokenizer_sha256": lambda m: m["base_model"].__setitem__("tokenizer_sha256", "0" * 64),
    "base_model.config_sha256": lambda m: m["base_model"].__setitem__("config_sha256", "0" * 64),
    "base_model.id": lambda m: m["base_model"].__setitem__("id", "package:no-such-model-package"),
}


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_a_contract_the_service_cannot_honour_is_refused_naming_the_field(field, base_bundle, tmp_path):
    edited = edit_manifest(base_bundle, tmp_path / "edited", REFUSED[field])
    with pytest.raises(BundleError, match=f"^{MANIFEST}: {field}"):
        ItemEmbedder(load_bundle(edited))


def test_append_eos_on_a_tokenizer_without_eos_is_refused(base_bundle, tmp_path):
    edited = edit_manifest(base_bundle, tmp_path / "edited", lambda m: m["encoder"].__setitem__("append_eos", True))
    with pytest.raises(BundleError, match=f"^{MANIFEST}: encoder.append_eos"):
        ItemEmbedder(load_bundle(edited))
