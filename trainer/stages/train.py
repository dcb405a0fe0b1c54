"""Training a sequential backbone: the loop (`fit`) and the `train` stage around it.

Training data: each user's training sequence is cut into windows of max_len+1
items, tiled back from its most recent item every `stride` items, and the
backbone is trained on whole windows at once (one forward pass, a loss at many
positions) instead of materialising every prefix as its own sample:

- a window is responsible for the targets at its last `stride` positions (the
  oldest window of a user for all of its targets), so every training
  interaction is a target exactly once per epoch, seen with at least
  max_len - stride + 1 items of context (or the user's whole history before it);
- stride = max_len (the default, 0): non-overlapping windows, a loss at every
  position, the cheapest layout; smaller strides give each target a longer
  context for max_len / stride times the forward passes;
- stride = 1 is prefix-materialised training (every prefix a sample with a loss
  at its last position, RecBole's and some reference code's layout); it needs
  no separate code path and serves bench/train_speed.py as the comparison;
- windows = "last" keeps only each user's most recent window (original SASRec).

The tiling is deterministic, not randomly cropped: positions at the start of a
window already see short contexts in every epoch, so random crops add noise
more than variety. Bidirectional models (BERT4Rec) see every position of their
window, so they need non-overlapping windows (stride = max_len).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llmemb.backbones import BackboneConfig, SequentialBackbone
from llmemb.data.dataset import Dataset
from llmemb.devices import autocast, check_precision, resolve_device
from llmemb.losses import LOSSES, NegativeSampler, recommendation_loss
from llmemb.methods import ExtraLoss
from llmemb.metrics import EvalConfig, Evaluator
from trainer.config import TrainConfig


@dataclass
class EpochRecord:
    epoch: int
    loss: float                 # mean training loss per prediction (extra_loss included)
    extra_loss: float           # the mean extra_loss term alone (0 without one)
    predictions: int            # positions with a target this epoch
    train_seconds: float
    predictions_per_s: float
    valid_score: float          # the early-stopping metric on the validation split
    eval_seconds: float
    elapsed_seconds: float      # wall time since fit started, evaluation included


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    seconds_to_best: float      # wall time from the start of fit to the end of the best epoch
    epochs_run: int
    train_seconds: float        # time in training steps only (no evaluation)
    total_seconds: float
    stop_reason: str            # patience | epochs | max_seconds | callback
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------ training rows
@dataclass
class TrainingRows:
    """Training samples as (user, end) pairs into one flat array of item ids, as tensors on
    the training device: a batch is cut out there, with no host copy per batch."""

    flat: torch.Tensor      # all training sequences concatenated
    offsets: torch.Tensor   # start of each user's sequence in flat
    users: torch.Tensor     # per sample: the user
    ends: torch.Tensor      # per sample: exclusive end index inside the user's sequence
    width: int              # max_len + 1
    stride: int             # each row is responsible for the targets of its last `stride` positions

    def __len__(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> torch.Tensor:
        """Per sample: its real (non-padding) items, at most width."""
        return self.ends.clamp(max=self.width)

    def to(self, device: torch.device | str) -> TrainingRows:
        return TrainingRows(self.flat.to(device), self.offsets.to(device), self.users.to(device),
                            self.ends.to(device), self.width, self.stride)

    def batch(self, index: torch.Tensor | np.ndarray, trim: bool = False) -> torch.Tensor:
        """[len(index), width] left-padded rows ending at each sample's end; trim=True cuts the
        columns that are padding in every row (the batch is as wide as its longest row)."""
        index = torch.as_tensor(index, device=self.users.device)
        width = int(self.lengths[index].max()) if trim and len(index) else self.width
        start = self.offsets[self.users[index]]
        first = start + self.ends[index] - width
        positions = first[:, None] + torch.arange(width, device=first.device)[None, :]
        return torch.where(positions >= start[:, None], self.flat[positions.clamp(min=0)], 0)

    def order(self, rng: np.random.Generator, batching: str, batch_size: int) -> list[torch.Tensor]:
        """One epoch's batches (index tensors on the rows' device). shuffle: a random permutation
        cut into batches; length: the permutation sorted by length (ties stay in random order),
        cut into batches of similar length, the batches in random order. Every sample is in
        exactly one batch either way."""
        perm = torch.from_numpy(rng.permutation(len(self)))
        if batching == "length":
            lengths = self.lengths.cpu()[perm]
            perm = perm[torch.sort(lengths, stable=True).indices]
        batches = list(torch.split(perm.to(self.users.device), batch_size))
        if batching == "length":
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches


BATCHINGS = ("shuffle", "length")


def training_rows(train: Sequence[np.ndarray], max_len: int, stride: int = 0, windows: str = "all") -> TrainingRows:
    """Windows ending every `stride` items back from each user's last training item
    (stride 0 = max_len); windows="last" keeps only the most recent one."""
    stride = max_len if stride <= 0 else stride
    if stride > max_len:
        raise ValueError(f"stride {stride} > max_len {max_len} would skip targets")
    if windows not in ("all", "last"):
        raise ValueError(f"unknown windows {windows!r}; known: all, last")
    lengths = np.asarray([len(s) for s in train], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.concatenate(list(train)).astype(np.int64) if lengths.sum() else np.zeros(1, np.int64)
    users, ends = [], []
    for u, n in enumerate(lengths):
        if n < 2:
            continue
        e = np.arange(n, 1, -stride) if windows == "all" else np.asarray([n])
        users.append(np.full(len(e), u))
        ends.append(e)
    if not users:
        raise ValueError("no user has two training items: nothing to train on")
    return TrainingRows(torch.from_numpy(flat), torch.from_numpy(offsets), torch.from_numpy(np.concatenate(users)),
                        torch.from_numpy(np.concatenate(ends).astype(np.int64)), max_len + 1, stride)


# ----------------------------------------------------------------- the loop
@dataclass
class StepContext:
    """What every training step of one fit shares."""

    rows: TrainingRows
    train_cfg: TrainConfig
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    generator: torch.Generator
    device: torch.device
    extra_loss: ExtraLoss | None
    loss_items: torch.Tensor | None
    sampler: NegativeSampler | None
    n_items: int


def _train_epoch(model: SequentialBackbone, batches: list[torch.Tensor], ctx: StepContext,
                 epoch: int) -> tuple[float, float, int]:
    """One pass over the training windows in `batches`; returns (loss sum, extra loss sum, predictions).
    The sums stay on the device until the end of the epoch (no synchronisation per step)."""
    model.train()
    rows, train_cfg = ctx.rows, ctx.train_cfg
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    extra_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    n_pred = torch.zeros((), dtype=torch.long, device=ctx.device)
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not train_cfg.progress, unit="batch")
    for index in bar:
        sequences = rows.batch(index, trim=True)
        inputs, targets = model.training_pairs(sequences, ctx.generator)
        if rows.stride < targets.shape[1]:  # earlier positions belong to the previous window
            targets = torch.cat([torch.zeros_like(targets[:, :-rows.stride]), targets[:, -rows.stride:]], 1)
        with autocast(ctx.device, train_cfg.precision):
            states = model.hidden_states(inputs)
            loss = recommendation_loss(model.config.loss, states, targets, model.item_embedding, ctx.generator,
                                       allowed=ctx.loss_items, sampler=ctx.sampler, n_items=ctx.n_items)
            extra = ctx.extra_loss(model, inputs, targets) if ctx.extra_loss is not None else None
        if extra is not None:
            loss = loss + extra
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ctx.params, train_cfg.grad_clip)
        ctx.optimizer.step()
        n = (targets > 0).sum()
        loss_sum += loss.detach() * n
        if extra is not None:
            extra_sum += extra.detach() * n
        n_pred += n
        if train_cfg.progress:
            bar.set_postfix(loss=f"{float(loss_sum) / max(int(n_pred), 1):.4f}")
    bar.close()
    return float(loss_sum), float(extra_sum), int(n_pred)


def loss_sampler(config: BackboneConfig, n_items: int, rows: TrainingRows, allowed: torch.Tensor | None,
                 device: torch.device) -> NegativeSampler | None:
    """sampled_ce's NegativeSampler over the items the loss may score (popularity: each item's
    training interactions), or None for the other losses; an unknown loss is refused here."""
    if config.loss not in LOSSES:
        raise ValueError(f"backbone.loss: unknown loss {config.loss!r}; known: {', '.join(LOSSES)}")
    if config.loss != "sampled_ce":
        return None
    popularity = np.bincount(rows.flat.cpu().numpy(), minlength=n_items + 1)[: n_items + 1]
    popularity[0] = 0
    return NegativeSampler(n_items, config.loss_negatives, config.loss_sampler, popularity,
                           None if allowed is None else allowed.cpu(), device)


def _stop(record: EpochRecord, model: SequentialBackbone, callbacks, best_epoch: int,
          train_cfg: TrainConfig) -> str | None:
    """Why training stops after this epoch (callback, patience, max_seconds), or None."""
    if any(cb(record, model) for cb in callbacks):
        return "callback"
    if record.epoch - best_epoch >= train_cfg.patience:
        return "patience"
    if train_cfg.max_seconds > 0 and record.elapsed_seconds >= train_cfg.max_seconds:
        return "max_seconds"
    return None


def _validate(model: SequentialBackbone, evaluator: Evaluator, epoch: int, sums: tuple[float, float, int],
              train_seconds: float, started: float) -> EpochRecord:
    """The epoch's record: its training sums (loss, extra loss, predictions) and the validation score."""
    loss_sum, extra_sum, n_pred = sums
    eval_start = time.perf_counter()
    score = evaluator.selection_score(model)
    now = time.perf_counter()
    return EpochRecord(
        epoch=epoch,
        loss=loss_sum / max(n_pred, 1),
        extra_loss=extra_sum / max(n_pred, 1),
        predictions=n_pred,
        train_seconds=train_seconds,
        predictions_per_s=n_pred / max(train_seconds, 1e-9),
        valid_score=score,
        eval_seconds=now - eval_start,
        elapsed_seconds=now - started,
    )


def _print_epoch(record: EpochRecord, metric: str) -> None:
    tqdm.write(f"epoch {record.epoch:3d}  loss {record.loss:.4f}  valid {metric} {record.valid_score:.4f}  "
               f"{record.predictions_per_s:,.0f} pred/s  {record.train_seconds:.1f}s")


def fit(
    model: SequentialBackbone,
    dataset: Dataset,
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig | None = None,
    *,
    extra_loss: ExtraLoss | None = None,
    callbacks: Sequence[Callable[[EpochRecord, SequentialBackbone], bool | None]] = (),
    evaluator: Evaluator | None = None,
    loss_items: torch.Tensor | None = None,
) -> FitResult:
    """Train `model` on `dataset`'s training split with early stopping on validation.

    The loss is model.config.loss (ce | bce) at every target position, plus
    `extra_loss(model, inputs, targets)` when given (RAT's alpha * L_align).
    A callback returning True stops training. The best epoch's weights are
    restored before returning. Seed the model's initialisation yourself
    (seed_everything) before building it; fit reseeds for data order and masks.
    `loss_items` (bool [N+1]) limits the items the loss may score, as targets'
    rivals and as sampled negatives (cold start: held-out items never train).
    """
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    if train_cfg.batching not in BATCHINGS:
        raise ValueError(f"train.batching: unknown {train_cfg.batching!r}; known: {', '.join(BATCHINGS)}")
    check_precision(train_cfg.precision, "train.precision")
    device = resolve_device(train_cfg.device, "train.device")
    seed_everything(train_cfg.seed)
    evaluator = evaluator or Evaluator(dataset, eval_cfg)
    model.to(device)
    rows = training_rows(evaluator.split.train, model.config.max_len, train_cfg.stride, train_cfg.windows)
    if rows.stride < model.config.max_len and not model.causal:
        raise ValueError(f"overlapping windows (stride {rows.stride} < max_len) need a causal backbone; "
                         f"{model.config.name} is bidirectional")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    allowed = None if loss_items is None else torch.as_tensor(loss_items).to(device)
    ctx = StepContext(rows.to(device), train_cfg, optimizer, params,
                      torch.Generator(device=device).manual_seed(train_cfg.seed), device, extra_loss, allowed,
                      loss_sampler(model.config, dataset.n_items, rows, allowed, device), dataset.n_items)
    rng = np.random.default_rng(train_cfg.seed)

    history: list[EpochRecord] = []
    best_score, best_epoch, best_elapsed, best_state = float("-inf"), 0, 0.0, None
    stop_reason, train_seconds, started = "epochs", 0.0, time.perf_counter()
    for epoch in range(1, train_cfg.epochs + 1):
        epoch_start = time.perf_counter()
        loss_sum, extra_sum, n_pred = _train_epoch(model, ctx.rows.order(rng, train_cfg.batching,
                                                                         train_cfg.batch_size), ctx, epoch)
        epoch_train = time.perf_counter() - epoch_start
        train_seconds += epoch_train

        record = _validate(model, evaluator, epoch, (loss_sum, extra_sum, n_pred), epoch_train, started)
        history.append(record)
        if train_cfg.progress:
            _print_epoch(record, evaluator.config.select_metric)
        score = record.valid_score
        if score > best_score:
            best_score, best_epoch, best_elapsed = score, epoch, record.elapsed_seconds
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reason = _stop(record, model, callbacks, best_epoch, train_cfg)
        if reason is not None:
            stop_reason = reason
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        best_epoch=best_epoch,
        best_score=best_score,
        seconds_to_best=best_elapsed,
        epochs_run=len(history),
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        stop_reason=stop_reason,
        history=history,
    )
