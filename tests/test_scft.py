"""SCFT: batching, validation measure, a real short run, and DDP equivalence."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from llmemb.contrastive import symmetric_contrastive_loss
from llmemb.encoder import EncoderConfig, ItemEncoder, LoraSettings
from llmemb.prompts import ViewSampler, instruction_for
from llmemb.spec import EncoderSpec
from tests.tiny_models import ml100k_like_items
from trainer.stages.scft import (
    BatchStream,
    SCFTConfig,
    global_batch_size,
    linear_schedule,
    retrieval_metrics,
    run_scft,
    split_validation,
)

MOVIE = EncoderSpec(instruction=instruction_for("movie"), max_value_chars=100)


def test_batch_stream_batches_are_full_distinct_and_cover_each_epoch():
    stream = BatchStream(n_items=10, batch=4, seed=0)
    epoch = [stream.next() for _ in range(2)]  # 10 // 4 = 2 full batches per epoch
    for batch in epoch:
        assert len(batch) == 4 and len(set(batch)) == 4
    assert len(set(epoch[0]) | set(epoch[1])) == 8
    following = [stream.next() for _ in range(6)]
    assert all(len(set(b)) == 4 for b in following)
    again = BatchStream(n_items=10, batch=4, seed=0)
    assert [again.next() for _ in range(8)] == epoch + following  # seeded


def test_global_batch_fits_items_and_ranks():
    assert global_batch_size(n_train=1000, batch_items=64, world=1) == 64
    assert global_batch_size(n_train=30, batch_items=64, world=4) == 28
    with pytest.raises(ValueError):
        global_batch_size(n_train=1, batch_items=64, world=1)


def test_validation_split_is_seeded_disjoint_and_capped():
    train, val = split_validation(100, val_items=256, seed=3)
    assert len(val) == 20 and not set(train) & set(val) and len(train) + len(val) == 100
    assert split_validation(100, 256, 3) == (train, val)
    assert split_validation(100, 5, 3)[1] != val and len(split_validation(100, 5, 3)[1]) == 5
    assert split_validation(4, 256, 0)[1] == []


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = linear_schedule(total=10, warmup=2)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
    assert f(9) == pytest.approx(1 / 8) and f(10) == 0.0


def test_retrieval_metrics_count_ties_against():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, -1.0]])
    # Rows 0 and 1 find their partner first; row 2 is orthogonal to b2 and
    # closer to b0 and b1 (rank 3).
    m = retrieval_metrics(a, b, "cos")
    assert m["top1"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    tied = retrieval_metrics(torch.ones(2, 2), torch.ones(2, 2), "cos")
    assert tied["top1"] == 0.0  # two identical items cannot be told apart


def test_config_from_dict_rejects_unknown_keys():
    assert SCFTConfig.from_dict({"steps": 5, "loss": "infonce"}).steps == 5
    with pytest.raises(ValueError, match="unknown"):
        SCFTConfig.from_dict({"stpes": 5})
    with pytest.raises(ValueError, match="unknown"):  # prompts are the EncoderSpec's business
        SCFTConfig.from_dict({"max_value_chars": 100})
    with pytest.raises(ValueError):
        SCFTConfig(loss="triplet")


def fixed_view_loss(encoder: ItemEncoder, items: list[dict]) -> float:
    """The training objective on views drawn once, so before/after compare without noise."""
    pairs = [ViewSampler(MOVIE.instruction, 0.4, MOVIE.max_value_chars, seed=123).pair(attrs) for attrs in items]
    a = encoder.embed([p[0] for p in pairs])
    b = encoder.embed([p[1] for p in pairs])
    return float(symmetric_contrastive_loss(a, b, 0.05, "cos"))


def test_short_run_on_minilm_reduces_the_loss_and_saves_lora(minilm_dir, tmp_path):
    items = ml100k_like_items()
    items.append({"movie_title": "", "class": []})  # nothing to embed: skipped
    cfg = SCFTConfig(steps=10, batch_items=8, lr=2e-3, log_every=5, loss="infonce", seed=0, progress=False)
    summary = run_scft(EncoderConfig(minilm_dir), cfg, items, MOVIE, tmp_path)

    assert [p["step"] for p in summary["loss_curve"]] == [5, 10]
    assert summary["steps"] == 10 and summary["final_loss"] == summary["loss_curve"][-1]["loss"]
    assert summary["skipped_items_without_attributes"] == 1
    assert (summary["train_items"], summary["val_items"]) == (32, 8)
    assert summary["steps_per_s"] > 0 and summary["wall_seconds"] >= summary["train_seconds"]
    for measured in (summary["val_before"], summary["val_after"]):
        assert 0.0 <= measured["top1"] <= measured["mrr"] <= 1.0 and measured["infonce_loss"] > 0
    assert json.loads((tmp_path / "scft.json").read_text())["steps"] == 10

    # The saved LoRA loads and merges, and the tuned model has a lower loss
    # than the base model on the items it trained on.
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    tuned = ItemEncoder.from_pretrained_lora(EncoderConfig(minilm_dir), tmp_path / "lora")
    base = ItemEncoder(EncoderConfig(minilm_dir))
    assert fixed_view_loss(tuned, items[:40]) < fixed_view_loss(base, items[:40])


def test_bf16_autocast_on_the_cpu_trains_fp32_lora_that_lowers_the_loss(minilm_dir, tmp_path):
    items = ml100k_like_items()
    cfg = SCFTConfig(steps=10, batch_items=8, lr=2e-3, log_every=5, seed=0, progress=False, bf16_autocast=True)
    summary = run_scft(EncoderConfig(minilm_dir), cfg, items, MOVIE, tmp_path)
    assert summary["scft"]["bf16_autocast"] is True and summary["encoder"]["dtype"] == "fp32"
    saved = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    tuned = ItemEncoder.from_pretrained_lora(EncoderConfig(minilm_dir), tmp_path / "lora")
    assert fixed_view_loss(tuned, items) < fixed_view_loss(ItemEncoder(EncoderConfig(minilm_dir)), items)


# ------------------------------------------------------------------------- DDP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run_configs(model_dir: str) -> tuple[EncoderConfig, SCFTConfig, EncoderSpec]:
    # No dropout anywhere, so one process and two ranks must compute the same updates.
    spec = replace(MOVIE, pooling="last")
    encoder = EncoderConfig.from_spec(spec, model_dir, lora=LoraSettings(dropout=0.0))
    scft = SCFTConfig(steps=4, batch_items=8, lr=5e-3, log_every=2, loss="paper", seed=7, progress=False)
    return encoder, scft, spec


def _scft_rank(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
    )
    encoder, scft, spec = tiny_run_configs(model_dir)
    summary = run_scft(encoder, scft, ml100k_like_items(), spec, out_dir)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(summary["loss_curve"], f)


@pytest.mark.process
def test_two_ranks_train_exactly_like_one_process_on_the_whole_batch(tiny_llama_dir, tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    mp.spawn(_scft_rank, args=(2, free_port(), str(tiny_llama_dir), str(ddp_dir)), nprocs=2, join=True)
    encoder, scft, spec = tiny_run_configs(str(tiny_llama_dir))
    single = run_scft(encoder, scft, ml100k_like_items(), spec, single_dir)

    ddp_summary = json.loads((ddp_dir / "scft.json").read_text())  # written by rank 0 only
    assert ddp_summary["world_size"] == 2 and ddp_summary["batch_items"] == 8
    curves = [json.loads((ddp_dir / f"rank{r}.json").read_text()) for r in range(2)]
    for curve in curves:  # every rank saw the global loss
        assert [p["loss"] for p in curve] == pytest.approx([p["loss"] for p in single["loss_curve"]], rel=1e-5)
    ddp_lora = load_file(str(ddp_dir / "lora" / "adapter_model.safetensors"))
    single_lora = load_file(str(single_dir / "lora" / "adapter_model.safetensors"))
    assert ddp_lora.keys() == single_lora.keys()
    moved = 0
    for name in single_lora:
        assert torch.allclose(ddp_lora[name], single_lora[name], atol=1e-5), name
        moved += int(not torch.all(single_lora[name] == 0))
    assert moved == len(single_lora)  # every LoRA matrix trained (B starts at zero)
