"""A Hybrid bundle (docs/METHOD.md, beyond the paper) served by a real service process with Redis:
catalogue items keep their trained residual, items added with PUT get none, so their
vector is exactly the LLMEmb path Adapter(PCA(LLM(prompt)))."""
from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch

from llmemb.base_models import resolve_model_path
from llmemb.bundle import BundleError, BundleParts, load_bundle, write_bundle
from llmemb.encoder import EncoderConfig, ItemEncoder
from llmemb.projection import PCA, Adapter
from llmemb_testing.servers import RedisServer, ServiceProcess, build_test_bundle

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)

NEW_ITEM = {"title": "A Film Nobody Has Rated", "year": 2026, "genres": ["Drama", "Mystery"]}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    bundle = load_bundle(build_test_bundle(root / "bundle", hybrid=True))
    redis_server = RedisServer(root / "redis").start()
    service = ServiceProcess(bundle.path, root, env={"LLMEMB_REDIS_URL": redis_server.url,
                                                     "LLMEMB_CATALOGUE_POLL_MS": "100"}).start()
    try:
        service.wait_ready()
        yield bundle, service
    finally:
        service.stop()
        redis_server.stop()


def llmemb_path(bundle, attributes: dict) -> torch.Tensor:
    """Adapter(PCA(LLM(prompt))) computed here with the library, not by the service."""
    spec = bundle.encoder
    encoder = ItemEncoder.from_pretrained_lora(EncoderConfig.from_spec(spec, resolve_model_path(bundle.base_model_id)),
                                               str(bundle.lora_dir))
    with torch.no_grad():
        e = encoder.embed([spec.prompt(attributes)])
        return Adapter.from_state_dict(bundle.adapter_state)(PCA.from_state_dict(bundle.pca_state).transform(e))[0]


def item(service, item_id: str) -> dict:
    response = httpx.get(f"{service.url}/v1/items/{item_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_bundle_records_the_method_and_its_residual(hybrid):
    bundle, service = hybrid
    assert bundle.method == "hybrid" and bundle.manifest.method == "hybrid"
    r = bundle.residual
    assert r.shape == bundle.item_table.shape
    assert torch.equal(r[0], torch.zeros(r.shape[1])) and torch.equal(r[-5:], torch.zeros(5, r.shape[1]))
    assert r[1:-5].abs().sum(1).min() > 0
    assert httpx.get(f"{service.url}/v1/info", timeout=10).json()["method"] == "hybrid"


def test_a_catalogue_item_is_its_bundle_row_and_a_put_item_the_llmemb_path(hybrid):
    bundle, service = hybrid
    for row in (1, 7, bundle.n_items):
        got = item(service, bundle.item_ids[row - 1])
        assert got["source"] == "bundle" and got["attributes"] == bundle.item_attributes[row - 1]
        assert torch.allclose(torch.tensor(got["embedding"]), bundle.item_table[row], atol=1e-6)
    # the bundle row really is the LLMEmb path plus r (the residual is what makes them differ)
    first = bundle.item_attributes[0]
    assert torch.allclose(bundle.item_table[1], llmemb_path(bundle, first) + bundle.residual[1], atol=1e-4)

    response = httpx.put(f"{service.url}/v1/items/new-film", json={"attributes": NEW_ITEM}, timeout=60)
    assert response.status_code == 201, response.text
    got = item(service, "new-film")
    assert got["source"] == "added" and got["attributes"] == NEW_ITEM
    assert torch.allclose(torch.tensor(got["embedding"]), llmemb_path(bundle, NEW_ITEM), atol=1e-4)


def test_replacing_a_bundle_items_attributes_keeps_its_residual(hybrid):
    bundle, service = hybrid
    row = 3
    item_id, attributes = bundle.item_ids[row - 1], bundle.item_attributes[row - 1]
    response = httpx.put(f"{service.url}/v1/items/{item_id}", json={"attributes": attributes}, timeout=60)
    assert response.status_code == 200, response.text
    got = torch.tensor(item(service, item_id)["embedding"])
    assert torch.allclose(got, bundle.item_table[row], atol=1e-4)   # same text, same residual: same row
    changed = {**attributes, "title": "Renamed"}
    assert httpx.put(f"{service.url}/v1/items/{item_id}", json={"attributes": changed}, timeout=60).status_code == 200
    got = torch.tensor(item(service, item_id)["embedding"])
    assert torch.allclose(got, llmemb_path(bundle, changed) + bundle.residual[row], atol=1e-4)


def test_an_unknown_item_is_404_naming_the_path(hybrid):
    _, service = hybrid
    response = httpx.get(f"{service.url}/v1/items/no-such-item", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "path.item_id"


def test_a_hybrid_bundle_without_its_residual_is_refused(hybrid, tmp_path):
    bundle, _ = hybrid
    parts = dict(base_model_id=bundle.base_model_id, encoder=bundle.encoder, pca_state=bundle.pca_state,
                 adapter_state=bundle.adapter_state, backbone_config=bundle.backbone_config,
                 backbone_state=bundle.backbone_state, item_table=bundle.item_table, item_ids=bundle.item_ids,
                 item_attributes=bundle.item_attributes)
    with pytest.raises(BundleError, match="hybrid bundle needs its residual"):
        write_bundle(tmp_path / "a", BundleParts(**parts, method="hybrid"))
    with pytest.raises(BundleError, match="residual has shape"):
        write_bundle(tmp_path / "b", BundleParts(**parts, method="hybrid", residual=bundle.residual[1:]))
    # a manifest that says hybrid over a directory without residual.safetensors
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    (copy / "residual.safetensors").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"].pop("residual.safetensors")
    from llmemb.bundle import manifest_fingerprint
    manifest.pop("fingerprint")
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="residual"):
        load_bundle(copy)


def test_a_batch_upsert_is_one_change_with_each_vector_on_its_path(hybrid):
    bundle, service = hybrid
    info = httpx.get(f"{service.url}/v1/info", timeout=10).json()["catalogue"]
    row = 5
    items = [{"id": "batch-a", "attributes": {"title": "Batch A", "genres": ["Drama"]}},
             {"id": bundle.item_ids[row - 1], "attributes": bundle.item_attributes[row - 1]},
             {"id": "batch-b", "attributes": {"title": "Batch B", "year": 1999}}]
    response = httpx.put(f"{service.url}/v1/items", json={"items": items}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["created"] for r in body["items"]] == [True, False, True]
    assert body["catalogue_version"] == info["version"] + 1                # one step for the batch
    assert torch.allclose(torch.tensor(item(service, "batch-a")["embedding"]),
                          llmemb_path(bundle, items[0]["attributes"]), atol=1e-4)
    assert torch.allclose(torch.tensor(item(service, bundle.item_ids[row - 1])["embedding"]),
                          bundle.item_table[row], atol=1e-4)
    assert item(service, "batch-b")["attributes"] == {"title": "Batch B", "year": 1999}
    dup = httpx.put(f"{service.url}/v1/items", json={"items": [items[0], items[0]]}, timeout=30)
    assert dup.status_code == 422 and dup.json()["error"]["field"] == "items[1].id"
    bad = httpx.put(f"{service.url}/v1/items", content=b'{"items":[{"id":"x","attributes":{"t":"\\ud800"}}]}',
                    headers={"Content-Type": "application/json"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["field"].startswith("items[0].attributes")
