"""Stage 1: supervised contrastive fine-tuning (SCFT) of the encoder's LoRA.

The training loop, all of it in `run_scft`: every step draws the next global
batch of items, two fresh attribute-drop views of each (docs/METHOD.md: fresh views
at every step, not once), embeds this rank's share with the LoRA model,
gathers every rank's embeddings (gradient kept for the local rows) so the whole
global batch serves as negatives, takes the symmetric contrastive loss,
all-reduces the LoRA gradients (sum), clips them and steps AdamW.

Validation: a fixed set of items held out of training, each with two views
drawn once from a fixed seed; view 1 must retrieve view 2 of the same item
among all validation items (top-1 accuracy, MRR). It is measured before and
after training, so the two loss variants can be compared on equal terms.

Launched with torchrun (WORLD_SIZE > 1), every rank draws the same global batch
and views (same seeds) and encodes its slice, so a run on W ranks computes the
same update as one process on the whole batch; only rank 0 writes files.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from llmemb.contrastive import (
    gather_with_grad,
    similarity_matrix,
    symmetric_contrastive_loss,
)
from llmemb.devices import resolve_device
from llmemb.encoder import EncoderConfig, ItemEncoder, LoraSettings
from llmemb.prompts import ViewSampler, has_content
from llmemb.sections import dataclass_from
from llmemb.spec import EncoderSpec

LOSS_VARIANTS = ("paper", "infonce")
# The validation loss always uses this temperature and the InfoNCE form, so
# runs that differ in loss variant or temperature report comparable values.
VAL_TEMPERATURE = 0.05


@dataclass
class SCFTConfig:
    steps: int | None = None        # optimiser steps; None: derived from epochs
    epochs: float = 1.0             # passes over the training items when steps is None
    batch_items: int = 64           # global batch in items (two sequences each), all ranks together
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0           # linear warm-up, then linear decay to zero
    grad_clip: float = 1.0          # max global grad norm; 0 = off
    temperature: float = 0.05
    # paper: positive left out of the denominator | infonce: kept. Default infonce:
    # better on validation on ML-100K with all-MiniLM-L6-v2 (3 epochs, seed 0:
    # held-out MRR 0.651 vs 0.626, top-1 0.566 for both, from 0.530 / 0.480 before).
    loss: str = "infonce"
    similarity: str = "cos"         # cos | dot
    drop_ratio: float = 0.4
    seed: int = 0
    gradient_checkpointing: bool = False
    # Mixed precision: forward and backward under bf16 autocast, LoRA weights and AdamW in fp32.
    # On GPUs it is on whenever the encoder's dtype is bf16; on CPUs with AVX-512 BF16 it makes a
    # SmolLM2-135M step ~2x faster (bench/results/encoders.md). Validation and export stay fp32.
    bf16_autocast: bool = False
    log_every: int = 10             # steps per loss-curve point and progress update
    val_items: int = 256            # held out of training for validation, at most 20% of the items
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSS_VARIANTS:
            raise ValueError(f"loss must be one of {LOSS_VARIANTS}, got {self.loss!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be positive (or None to use epochs)")
        if self.batch_items < 2 or self.log_every < 1 or self.temperature <= 0:
            raise ValueError("batch_items >= 2, log_every >= 1 and temperature > 0 are required")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SCFTConfig:
        return dataclass_from(cls, values, "scft")


# ------------------------------------------------------------------ distributed
@dataclass
class Distributed:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False        # we created the process group, so we destroy it

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """Join the torchrun group named by the environment; one process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)  # before NCCL starts, so it binds the right GPU
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            owns = True
        return cls(world=world, rank=rank, local_rank=local_rank, owns_group=owns)

    @property
    def main(self) -> bool:
        return self.rank == 0


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer: each rank holds its rows' share."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Start every rank from rank 0's LoRA initialisation."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


# ------------------------------------------------------------------- batching
class BatchStream:
    """Endless item batches: a fresh shuffle per epoch, every batch full and free of
    duplicates (a duplicated item would be its own negative); an epoch's last
    partial batch is skipped, and its items lead the next epoch's shuffle."""

    def __init__(self, n_items: int, batch: int, seed: int):
        self.n_items, self.batch = n_items, batch
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos + self.batch > len(self.order):
            self.order = list(range(self.n_items))
            self.rng.shuffle(self.order)
            self.pos = 0
        out = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return out


def global_batch_size(n_train: int, batch_items: int, world: int) -> int:
    size = min(batch_items, n_train)
    size -= size % world  # every rank encodes the same number of items
    if size < max(2, world):
        raise ValueError(f"{n_train} training items cannot fill a batch of >= 2 items over {world} rank(s)")
    return size


def linear_schedule(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# ----------------------------------------------------------------- validation
def split_validation(n_items: int, val_items: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a seeded sample, at most 20% of the items."""
    n_val = min(val_items, n_items // 5)
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def retrieval_metrics(a: torch.Tensor, b: torch.Tensor, similarity: str) -> dict[str, float]:
    """Row i of a must find row i of b. Ties count against (identical views of
    different items are not a success)."""
    sims = similarity_matrix(a, b, similarity)
    target = sims.diagonal().unsqueeze(1)
    rank = (sims >= target).sum(dim=1).float()
    return {
        "top1": float((rank == 1).float().mean()),
        "mrr": float((1.0 / rank).mean()),
        "infonce_loss": float(symmetric_contrastive_loss(a, b, VAL_TEMPERATURE, similarity)),
    }


def validate(encoder: ItemEncoder, views: tuple[list[str], list[str]], similarity: str) -> dict[str, float]:
    if not views[0]:
        return {}
    return retrieval_metrics(encoder.embed(views[0]), encoder.embed(views[1]), similarity)


# ----------------------------------------------------------------------- run
def run_scft(
    encoder_config: EncoderConfig,
    scft_config: SCFTConfig,
    items: list[dict[str, Any]],
    spec: EncoderSpec,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Train LoRA on `items` (attribute dicts, prompted by `spec`); save out_dir/lora and out_dir/scft.json."""
    cfg = scft_config
    wall_start = time.perf_counter()
    if encoder_config.dtype == "fp16":
        raise ValueError("SCFT in fp16 would need loss scaling; train in bf16 or fp32")
    device = str(resolve_device(encoder_config.device, "encoder.device"))   # "auto" -> cpu or cuda:0
    ddp = Distributed.from_env(device)
    if device.startswith("cuda") and ddp.world > 1:
        device = f"cuda:{ddp.local_rank}"
    enc_cfg = replace(encoder_config, device=device, lora=encoder_config.lora or LoraSettings(),
                      gradient_checkpointing=cfg.gradient_checkpointing)

    usable = [i for i, attrs in enumerate(items) if has_content(attrs)]
    train_idx, val_idx = split_validation(len(usable), cfg.val_items, cfg.seed)
    train_items = [items[usable[i]] for i in train_idx]
    val_items = [items[usable[i]] for i in val_idx]
    batch = global_batch_size(len(train_items), cfg.batch_items, ddp.world)
    steps_per_epoch = len(train_items) // batch
    total = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)  # the same LoRA initialisation on every rank
    encoder = ItemEncoder(enc_cfg)
    params = encoder.trainable_parameters()
    if ddp.world > 1:
        broadcast_parameters(params)
    torch.manual_seed(cfg.seed + 1 + ddp.rank)  # dropout masks differ between ranks

    val_sampler = ViewSampler(spec.instruction, cfg.drop_ratio, spec.max_value_chars, seed=cfg.seed + 2)
    val_pairs = [val_sampler.pair(attrs) for attrs in val_items]
    val_views = ([p[0] for p in val_pairs], [p[1] for p in val_pairs])
    val_before = validate(encoder, val_views, cfg.similarity) if ddp.main else {}

    curve, train_seconds = _train_lora(encoder, params, enc_cfg, cfg, spec, train_items, batch, total, ddp)
    summary: dict[str, Any] = {
        "steps": total,
        "final_loss": curve[-1]["loss"],
        "steps_per_s": total / train_seconds,
        "items_per_s": total * batch / train_seconds,
        "train_seconds": train_seconds,
        "loss_curve": curve,
        "batch_items": batch,
        "world_size": ddp.world,
        "train_items": len(train_items),
        "val_items": len(val_items),
        "skipped_items_without_attributes": len(items) - len(usable),
        "epochs_done": total * batch / len(train_items),
        "scft": asdict(cfg),
        "encoder": enc_cfg.to_dict(),
    }
    if ddp.main:
        summary["val_before"] = val_before
        summary["val_after"] = validate(encoder, val_views, cfg.similarity)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        encoder.save_lora(out / "lora")
        summary["lora_dir"] = str(out / "lora")
        summary["wall_seconds"] = time.perf_counter() - wall_start
        (out / "scft.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if ddp.world > 1:
        dist.barrier()  # nobody leaves before rank 0 has saved
        if ddp.owns_group:
            dist.destroy_process_group()
    summary.setdefault("wall_seconds", time.perf_counter() - wall_start)
    return summary


def _train_lora(encoder: ItemEncoder, params, enc_cfg: EncoderConfig, cfg: SCFTConfig, spec: EncoderSpec,
                train_items: list[dict[str, Any]], batch: int, total: int, ddp: Distributed
                ) -> tuple[list[dict[str, float]], float]:
    """`total` contrastive steps on fresh attribute-drop views; returns (loss curve, training seconds)."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, cfg.warmup_steps))
    mixed = cfg.bf16_autocast or (encoder.device.type == "cuda" and enc_cfg.dtype == "bf16")
    autocast = torch.autocast(encoder.device.type, dtype=torch.bfloat16) if mixed else nullcontext()
    per_rank = batch // ddp.world
    stream = BatchStream(len(train_items), batch, seed=cfg.seed)
    sampler = ViewSampler(spec.instruction, cfg.drop_ratio, spec.max_value_chars, seed=cfg.seed + 1)
    exclude_positive = cfg.loss == "paper"
    curve: list[dict[str, float]] = []
    window = torch.zeros((), device=encoder.device)
    window_steps = 0
    bar = tqdm(total=total, desc="scft", disable=not (cfg.progress and ddp.main))
    train_start = time.perf_counter()
    for step in range(total):
        # Every rank draws the whole batch's views so the random streams stay in step.
        pairs = [sampler.pair(train_items[i]) for i in stream.next()]
        mine = pairs[ddp.rank * per_rank:(ddp.rank + 1) * per_rank]
        texts = [p[0] for p in mine] + [p[1] for p in mine]
        with autocast:
            emb = encoder.forward_train(texts)
        view1, view2 = gather_with_grad(emb[:per_rank]), gather_with_grad(emb[per_rank:])
        loss = symmetric_contrastive_loss(view1, view2, cfg.temperature, cfg.similarity, exclude_positive)
        loss.backward()
        if ddp.world > 1:
            all_reduce_gradients(params)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        window += loss.detach()
        window_steps += 1
        if window_steps == cfg.log_every or step == total - 1:
            mean_loss = float(window) / window_steps  # the only host sync, once per window
            elapsed = time.perf_counter() - train_start
            curve.append({"step": step + 1, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean_loss:.4f}", steps_per_s=f"{(step + 1) / elapsed:.2f}")
            window.zero_()
            window_steps = 0
        bar.update(1)
    bar.close()
    return curve, time.perf_counter() - train_start
