"""service/st_export.py: the item stage as a sentence-transformers folder gives the bundle's vectors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from llmemb.bundle import load_bundle
from llmemb.projection import PCA, Adapter
from llmemb_testing.servers import shared_test_bundle
from service.embedder import ItemEmbedder
from service.st_export import export_item_stage, folded_dense


def test_pca_then_adapter_folds_into_one_affine_map():
    torch.manual_seed(0)
    x = torch.randn(50, 12)
    pca = PCA.fit(x, 6)
    adapter = Adapter(6, 4)
    weight, bias = folded_dense(pca, adapter)
    with torch.no_grad():
        expected = adapter(pca.transform(x))
    assert torch.allclose(x @ weight.T + bias, expected, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    bundle = load_bundle(shared_test_bundle())
    return bundle, export_item_stage(bundle, tmp_path_factory.mktemp("st") / "item-stage")


def test_sentence_transformers_serves_the_bundles_item_vectors(exported):
    from sentence_transformers import SentenceTransformer

    bundle, folder = exported
    embedder = ItemEmbedder(bundle)
    prompts = [bundle.encoder.prompt(a)
               for a in [{"title": "Heat (1995)", "genres": ["Action", "Crime"]},
                         {"title": "A Close Shave (1995)", "genres": ["Animation", "Comedy"]},
                         {"title": "Toy Story (1995)"}]]
    ours = embedder.embed_arrays(prompts)[2]
    model = SentenceTransformer(str(folder), device="cpu")
    theirs = model.encode(prompts, convert_to_numpy=True, batch_size=2)
    assert theirs.shape == ours.shape == (3, bundle.dims["item"])
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.process
def test_the_command_refuses_a_missing_bundle(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llmemb_cli", "export-st", "--bundle", str(tmp_path / "none"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "export refused" in out.stderr
