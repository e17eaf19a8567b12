"""The one training loop of every gradient-trained detector, and what it needs.

``fit_epochs`` owns batching, the learning-rate schedule, validation in batches, time-based checkpoints and
exact resume, a time box (``max_minutes``), keeping the best epoch's weights by validation loss and early
stopping on it, weight snapshots for learning curves, progress (with the time left) and history, a CSV log
of the losses, and data-parallel training when started under ``torchrun``. A detector hands it its networks
and a *step*: the usual one (``loss_step``) corrupts a batch, runs the model and returns per-image losses; a
GAN keeps its own two-player step.

Exactness: the shuffling and augmentation draw from one seeded generator over the *global* batch, so a run
stopped at an epoch boundary and resumed, or split over N processes, sees the same batches and the same noise
as one uninterrupted process.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrad.files import atomic_write_text
from cxrad.training.checkpoints import Checkpointer
from cxrad.training.devices import resolve_device, seed_everything, to_tensor
from cxrad.training.distributed import Distributed, distributed, unwrap

OPTIMIZERS = ("adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine")
KEEP = ("last", "best")
#: seconds of training after which the run's length is estimated (sooner if the first epoch ends)
ESTIMATE_AFTER_S = 3.0
log = logging.getLogger("cxrad.training")


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
    identity: dict | None = None     # what the key is made of (run_identity), to say what differs from a checkpoint's
    keep: str = "last"               # "best": end with the weights of the epoch with the lowest validation loss
    patience: int | None = None      # stop when the validation loss has not improved for this many epochs
    log_csv: str | None = None       # write the losses of every epoch to this CSV file (rank 0)

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
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {self.keep!r}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")

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
    best_epoch: int | None = None  # 1-based epoch of the lowest validation loss (when there is one)
    kept: str = "last"      # whose weights the modules hold at the end: the last epoch's or the best one's
    stopped_early: bool = False  # patience ran out before the last epoch


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
    generator seeded the same way each time, so the curve compares like with like; ``cfg.keep="best"`` and
    ``cfg.patience`` (early stopping) go by it. ``weights`` (one per training image) make each epoch len(train)
    weighted draws instead of a permutation. Modules must already be on the device; under torchrun the caller
    wraps them in DistributedDataParallel (``wrap_ddp``).
    """
    dist = distributed()
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    validating = val_loss is not None and val is not None and len(val) > 0
    if (cfg.keep == "best" or cfg.patience) and not validating:
        raise ValueError("keeping the best epoch and early stopping go by the validation loss, and this training "
                         "has none (no held-out images or no validation loss)")
    ckpt = Checkpointer(cfg.checkpoint_dir, cfg.key, dist, cfg.identity)
    start, history, samples, best = ckpt.resume(modules, optimizers, gen)
    history = history or {}
    if start and dist.main:
        log.info(f"resuming from epoch {start} of {cfg.epochs} ({ckpt.path})")
    if validating and best is None and history.get("val_loss"):  # a checkpoint without the best weights
        best = {"epoch": start - 1, "loss": float("inf"), "modules": None}
    train = prepare(train) if prepare is not None else train
    if weights is not None:
        weights = torch.tensor(np.asarray(weights, np.float64))  # a copy: the array may be read-only
        if weights.shape != (len(train),) or not torch.isfinite(weights).all() or (weights < 0).any() \
                or weights.sum() <= 0:
            raise ValueError("training weights must be one finite, non-negative number per image, not all zero")
    val = prepare(val) if prepare is not None and val is not None and len(val) else val
    started = last_save = time.monotonic()
    clock = _Estimate(cfg, start, len(train), started, dist.main)
    epoch, stopped_early = start - 1, _out_of_patience(history, best, cfg, start)  # a resumed run may be done
    with _progress(cfg, dist, start, len(train)) as bar:
        for epoch in range(start, start if stopped_early else cfg.epochs):
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = group.setdefault("initial_lr", group["lr"]) * cfg.lr_factor(epoch)
            for m in modules.values():
                m.train()
            sums: dict[str, float] = {}
            for idx in batches(len(train), cfg.batch_size, shuffle=True, generator=gen, weights=weights):
                for k, v in step(to_tensor(train[idx], 1, device), gen, dist).items():
                    sums[k] = sums.get(k, 0.0) + v
                clock.batch(len(idx))
                if bar is not None:
                    bar.update(len(idx))
            samples += len(train)
            for k, v in sums.items():
                history.setdefault(f"train_{k}" if k == "loss" else k, []).append(dist.all_sum(v) / len(train))
            if validating:
                history.setdefault("val_loss", []).append(_validate(modules, val_loss, val, cfg, device))
                if best is None or history["val_loss"][-1] < best["loss"]:
                    best = {"epoch": epoch, "loss": history["val_loss"][-1], "modules": _copy_state(modules)}
            clock.epoch_done()
            if bar is not None:
                bar.set_postfix({"epoch": f"{epoch + 1}/{cfg.epochs}",
                                 **{k: f"{v[-1]:.4g}" for k, v in history.items() if v and "loss" in k}})
            if dist.main and cfg.log_csv:
                write_loss_log(cfg.log_csv, history, len(train), cfg)
            if on_epoch is not None:
                on_epoch(epoch)
            if cfg.snapshot_every and (samples // cfg.snapshot_every) > \
                    ((samples - len(train)) // cfg.snapshot_every):
                ckpt.snapshot(modules, samples, epoch, history)
            stopped_early = _out_of_patience(history, best, cfg, epoch + 1) and epoch < cfg.epochs - 1
            now = time.monotonic()
            out_of_time = dist.agree(cfg.max_minutes is not None and now - started >= cfg.max_minutes * 60)
            last = epoch == cfg.epochs - 1 or stopped_early
            if last or out_of_time or now - last_save >= cfg.checkpoint_minutes * 60:
                ckpt.save(modules, optimizers, gen, epoch, samples, history, _savable(best))
                last_save = now
            if out_of_time and not last:
                return TrainResult(history, epoch + 1, samples, finished=False, best_epoch=_epoch_no(best))
            if stopped_early:
                break
    if stopped_early and dist.main:
        log.info(f"stopped early after epoch {epoch + 1}: the validation loss has not improved for {cfg.patience} "
                 f"epoch(s) since epoch {best['epoch'] + 1}")
    kept = "last"
    if cfg.keep == "best" and best is not None:
        if best["modules"] is None:
            log.warning("the checkpoint this run resumed from does not hold the best epoch's weights: the model "
                        "keeps the last epoch's")
        else:
            for k, m in modules.items():
                unwrap(m).load_state_dict(best["modules"][k])
            kept = "best"
    for m in modules.values():
        m.eval()
    return TrainResult(history, max(epoch + 1, start), samples, finished=True, best_epoch=_epoch_no(best),
                       kept=kept, stopped_early=stopped_early)


def _copy_state(modules: dict) -> dict:
    """The modules' weights and buffers, copied to the CPU (the best epoch's, kept while training goes on)."""
    return {k: {n: t.detach().to("cpu", copy=True) for n, t in unwrap(m).state_dict().items()}
            for k, m in modules.items()}


def _epoch_no(best: dict | None) -> int | None:
    return None if best is None else int(best["epoch"]) + 1


def _savable(best: dict | None) -> dict | None:
    return best if best is not None and best["modules"] is not None else None


def _out_of_patience(history: dict, best: dict | None, cfg: TrainConfig, epochs_done: int) -> bool:
    """Whether ``cfg.patience`` epochs have passed since the lowest validation loss."""
    if not cfg.patience or best is None or not history.get("val_loss"):
        return False
    return epochs_done - (int(best["epoch"]) + 1) >= int(cfg.patience)


@contextlib.contextmanager
def _progress(cfg: TrainConfig, dist: Distributed, start: int, n: int):
    """A bar over every image of every epoch, so that the time left shows from the first batches on (None when
    progress is off); messages logged while it runs are printed above it, not through it."""
    if not (cfg.progress and dist.main):
        yield None
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm([logging.getLogger("cxrad")]), \
            tqdm(total=cfg.epochs * n, initial=start * n, desc=cfg.desc, unit="img", unit_scale=True,
                 dynamic_ncols=True) as bar:
        yield bar


class _Estimate:
    """Logs, once, how long the run will take: from the first seconds of training (or the first epoch)."""

    def __init__(self, cfg: TrainConfig, start: int, n: int, t0: float, main: bool):
        self.cfg, self.todo, self.n, self.t0, self.start = cfg, (cfg.epochs - start) * n, n, t0, start
        self.seen, self.done = 0, not main or cfg.epochs - start <= 0

    def batch(self, images: int) -> None:
        self.seen += images
        if not self.done and time.monotonic() - self.t0 >= ESTIMATE_AFTER_S:
            self._say()

    def epoch_done(self) -> None:
        if not self.done:
            self._say()

    def _say(self) -> None:
        self.done = True
        per_image = (time.monotonic() - self.t0) / max(self.seen, 1)
        total, epoch = per_image * self.todo, per_image * self.n
        limit = f"; --max-minutes stops it after {self.cfg.max_minutes:g} min" if self.cfg.max_minutes else ""
        left = self.cfg.epochs - self.start
        epochs = f"{left} epoch{'s' if left != 1 else ''}" + (f" (of {self.cfg.epochs})" if self.start else "")
        log.info(f"{self.cfg.desc}: about {_duration(total)} for {epochs} (~{_duration(epoch)} an epoch of "
                 f"{self.n} images, measured on the first ones{limit})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def write_loss_log(path, history: dict, n_train: int, cfg: TrainConfig) -> None:
    """The losses of every epoch so far as CSV (``epoch, samples, lr, <each loss>``), rewritten whole each
    epoch from the history, so that a resumed run's log is the uninterrupted run's."""
    names = [k for k, v in history.items() if isinstance(v, list)]
    epochs = max((len(history[k]) for k in names), default=0)
    lines = [",".join(["epoch", "samples", "lr", *names])]
    for e in range(epochs):
        values = [repr(float(history[k][e])) if e < len(history[k]) else "" for k in names]
        lines.append(",".join([str(e + 1), str((e + 1) * n_train), repr(float(cfg.lr * cfg.lr_factor(e))), *values]))
    atomic_write_text(path, "\n".join(lines) + "\n")


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


