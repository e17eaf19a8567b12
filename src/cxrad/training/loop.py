"""The one training loop of every gradient-trained detector, and what it needs.

``fit_epochs`` owns batching, the learning-rate schedule, validation in batches, time-based checkpoints and
exact resume, a time box (``max_minutes``), weight snapshots for learning curves, progress and history, and
data-parallel training when started under ``torchrun``. A detector hands it its networks and a *step*: the
usual one (``loss_step``) corrupts a batch, runs the model and returns per-image losses; a GAN keeps its own
two-player step.

Exactness: the shuffling and augmentation draw from one seeded generator over the *global* batch, so a run
stopped at an epoch boundary and resumed, or split over N processes, sees the same batches and the same noise
as one uninterrupted process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrad.training.checkpoints import Checkpointer
from cxrad.training.devices import resolve_device, seed_everything, to_tensor
from cxrad.training.distributed import Distributed, distributed

OPTIMIZERS = ("adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine")


def batches(n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            weights: torch.Tensor | None = None):
    """Index batches over n items: in order, shuffled, or (``weights``) n draws with replacement in proportion
    to the weights, as torch's WeightedRandomSampler does."""
    if weights is not None:
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size].numpy()


def progress_bar(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


@dataclass
class TrainConfig:
    """How to train; a detector fills it from its own settings."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"      # or "cosine": annealed to 0 over ``epochs``, stepped per epoch
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_minutes: float = 5.0  # a checkpoint at the first epoch end after this many minutes
    max_minutes: float | None = None  # stop (resumably) at the first epoch end after this many minutes
    snapshot_every: int | None = None  # save the weights every this many training samples (learning curves)
    progress: bool = False
    desc: str = "training"
    key: str = ""                    # identifies the run; another run's checkpoint is never resumed

    def __post_init__(self):
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")

    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.lr if lr is None else lr
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=tuple(self.betas), weight_decay=self.weight_decay)

    def lr_factor(self, epoch: int) -> float:
        if self.schedule == "cosine":
            return 0.5 * (1 + np.cos(np.pi * epoch / self.epochs))
        return 1.0


@dataclass
class TrainResult:
    history: dict = field(default_factory=dict)
    epochs_done: int = 0
    samples_seen: int = 0
    finished: bool = True   # False when max_minutes stopped it early (a checkpoint holds the state)


# A step takes the global batch (uint8-scaled tensor on the device), the shared generator and this process's
# place, runs forward/backward/optimiser steps, and returns the batch's summed losses by name.
Step = Callable[[torch.Tensor, torch.Generator, Distributed], dict]


def loss_step(model: nn.Module, loss: Callable, optimizer: torch.optim.Optimizer,
              corrupt: Callable | None = None) -> Step:
    """The usual step: ``corrupt(x, gen) -> (inputs, targets)`` on the global batch (identity by default),
    ``loss(model, inputs, targets) -> per-image losses`` on this rank's share, one optimiser step.

    The share's loss sum is divided by the *global* batch size and multiplied by the number of processes, so
    DDP's gradient average equals the gradient of the global batch mean."""
    def step(x, gen, dist):
        inputs, targets = corrupt(x, gen) if corrupt is not None else (x, x)
        per_image = loss(model, dist.local(inputs), dist.local(targets))
        optimizer.zero_grad()
        (per_image.sum() * dist.world / len(x)).backward()
        optimizer.step()
        return {"loss": float(per_image.detach().sum())}
    return step


def fit_epochs(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer], step: Step,
               train: np.ndarray, cfg: TrainConfig, val: np.ndarray | None = None,
               val_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               prepare: Callable[[np.ndarray], np.ndarray] | None = None,
               on_epoch: Callable[[int], None] | None = None, weights: np.ndarray | None = None) -> TrainResult:
    """Train ``modules`` with ``step`` for ``cfg.epochs`` epochs over ``train`` (uint8 or float arrays).

    ``prepare`` turns an array of images into model input once (e.g. intensity normalisation);
    ``val_loss(x, gen) -> per-image losses`` is evaluated in batches on ``val`` after every epoch with a
    generator seeded the same way each time, so the curve compares like with like. ``weights`` (one per training
    image) make each epoch len(train) weighted draws instead of a permutation. Modules must already be on
    the device; under torchrun the caller wraps them in DistributedDataParallel (``wrap_ddp``).
    """
    dist = distributed()
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    ckpt = Checkpointer(cfg.checkpoint_dir, cfg.key, dist)
    start, history, samples = ckpt.resume(modules, optimizers, gen)
    history = history or {}
    train = prepare(train) if prepare is not None else train
    if weights is not None:
        weights = torch.tensor(np.asarray(weights, np.float64))  # a copy: the array may be read-only
        if weights.shape != (len(train),) or not torch.isfinite(weights).all() or (weights < 0).any() \
                or weights.sum() <= 0:
            raise ValueError("training weights must be one finite, non-negative number per image, not all zero")
    val = prepare(val) if prepare is not None and val is not None and len(val) else val
    started = last_save = time.monotonic()
    epochs = progress_bar(range(start, cfg.epochs), cfg.progress and dist.main, desc=cfg.desc, initial=start,
                          total=cfg.epochs, unit="epoch")
    epoch = start - 1
    for epoch in epochs:
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * cfg.lr_factor(epoch)
        for m in modules.values():
            m.train()
        sums: dict[str, float] = {}
        for idx in batches(len(train), cfg.batch_size, shuffle=True, generator=gen, weights=weights):
            for k, v in step(to_tensor(train[idx], 1, device), gen, dist).items():
                sums[k] = sums.get(k, 0.0) + v
        samples += len(train)
        for k, v in sums.items():
            history.setdefault(f"train_{k}" if k == "loss" else k, []).append(dist.all_sum(v) / len(train))
        if val_loss is not None and val is not None and len(val):
            history.setdefault("val_loss", []).append(_validate(modules, val_loss, val, cfg, device))
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: f"{v[-1]:.4g}" for k, v in history.items() if v and "loss" in k})
        if on_epoch is not None:
            on_epoch(epoch)
        if cfg.snapshot_every and (samples // cfg.snapshot_every) > ((samples - len(train)) // cfg.snapshot_every):
            ckpt.snapshot(modules, samples, epoch, history)
        now = time.monotonic()
        out_of_time = dist.agree(cfg.max_minutes is not None and now - started >= cfg.max_minutes * 60)
        last = epoch == cfg.epochs - 1
        if last or out_of_time or now - last_save >= cfg.checkpoint_minutes * 60:
            ckpt.save(modules, optimizers, gen, epoch, samples, history)
            last_save = now
        if out_of_time and not last:
            return TrainResult(history, epoch + 1, samples, finished=False)
    for m in modules.values():
        m.eval()
    return TrainResult(history, max(epoch + 1, start), samples, finished=True)


@torch.no_grad()
def _validate(modules, val_loss, val: np.ndarray, cfg: TrainConfig, device) -> float:
    for m in modules.values():
        m.eval()
    total = 0.0
    for i, idx in enumerate(batches(len(val), max(cfg.batch_size, 64))):
        total += float(val_loss(to_tensor(val[idx], 1, device), torch.Generator().manual_seed(10_007 + i)).sum())
    for m in modules.values():
        m.train()
    return total / len(val)


