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

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrad.files import atomic_open, remove_stale_temporaries

CHECKPOINT_FILE = "last.safetensors"
OPTIMIZERS = ("adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine")


# ------------------------------------------------------------------------------------------ devices
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one GPU per torchrun process
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(images: np.ndarray, channels: int = 1, device=None) -> torch.Tensor:
    """(N, H, W) -> float (N, C, H, W); uint8 is scaled to [0, 1], float arrays pass as they are (already
    normalised); grey is repeated to C channels."""
    images = np.asarray(images)
    x = torch.tensor(images, device=device).float().unsqueeze(1)  # a copy: memory-mapped arrays are read-only
    if images.dtype == np.uint8:
        x.div_(255.0)
    return x.expand(-1, channels, -1, -1).contiguous() if channels > 1 else x


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


@torch.no_grad()
def map_batches(fn, images: np.ndarray, batch_size: int, channels: int, device) -> dict[str, np.ndarray]:
    """Run ``fn(x) -> dict of tensors`` over images in batches; concatenate as numpy arrays."""
    parts: dict[str, list] = {}
    for idx in batches(len(images), batch_size):
        out = fn(to_tensor(np.asarray(images[idx]), channels, device))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach().float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def progress_bar(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------- distribution
@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (contiguous, sizes differ by at most one)."""
        if self.world == 1:
            return x
        return torch.tensor_split(x, self.world)[self.rank]

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def finish(self) -> None:
        """Wait for every rank, then leave the process group (torchrun expects a clean exit)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (stopping must be collective)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())


def distributed() -> Distributed:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return Distributed()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("CXRAD_DDP_BACKEND") != "gloo" else "gloo"
        torch.distributed.init_process_group(backend)
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())


# --------------------------------------------------------------------------------------- settings
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
        weights = torch.as_tensor(np.asarray(weights, np.float64))
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


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when running under torchrun, else itself."""
    if distributed().world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


# ------------------------------------------------------------------------------------- checkpoints
class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    """Training state in ``<dir>/last.safetensors``: tensors in safetensors, everything else (epoch, history,
    the nesting of optimizer states) as JSON in its header. Nothing in it can execute code when loaded.
    Written atomically by rank 0; every rank resumes from it."""

    def __init__(self, directory, key: str = "", dist: Distributed = Distributed()):
        self.dir = Path(directory) if directory else None
        self.key, self.dist = key, dist

    @property
    def path(self) -> Path | None:
        return self.dir / CHECKPOINT_FILE if self.dir else None

    def save(self, modules, optimizers, gen: torch.Generator, epoch: int, samples: int, history: dict) -> None:
        if self.dir is None or not self.dist.main:
            return
        state = {"modules": {k: unwrap(m).state_dict() for k, m in modules.items()},
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}
        meta = {"key": self.key, "epoch": epoch, "samples": samples, "history": history}
        write_state(self.path, state, meta)

    def resume(self, modules, optimizers, gen: torch.Generator) -> tuple[int, dict, int]:
        """Load a matching checkpoint into the modules; returns (first epoch to run, history, samples seen)."""
        if self.dir is None:
            return 0, {}, 0
        if self.dist.main:
            remove_stale_temporaries(self.dir)
        if not self.path.exists():
            return 0, {}, 0
        try:
            state, meta = read_state(self.path)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}: {exc}; delete it to start afresh") from None
        if meta.get("key") != self.key:
            return 0, {}, 0  # left by a run on other data or settings: start afresh (it is overwritten)
        for k, m in modules.items():
            unwrap(m).load_state_dict(state["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(meta["epoch"]) + 1, meta["history"], int(meta.get("samples", 0))

    def snapshot(self, modules, samples: int, epoch: int, history: dict) -> None:
        if self.dir is None or not self.dist.main:
            return
        tensors = {f"{k}.{n}": v for k, m in modules.items() for n, v in unwrap(m).state_dict().items()}
        write_state(self.dir / "snapshots" / f"samples-{samples:010d}.safetensors", tensors,
                    {"epoch": epoch, "samples": samples, "history": history})


def write_state(path: Path, state, meta: dict) -> None:
    """Nested dicts/lists of tensors and plain values -> one safetensors file (structure in its header)."""
    from safetensors.torch import save
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    header = {"skeleton": json.dumps(skeleton), "meta": json.dumps(meta)}
    with atomic_open(path) as fh:
        fh.write(save(tensors, metadata=header))


def read_state(path: Path, max_bytes: int = 4 * 2**30):
    from safetensors import SafetensorError
    from safetensors.torch import load

    from cxrad.files import UnsafeFileError, read_regular_file
    try:
        data = read_regular_file(path, max_bytes)
        tensors = load(data)
        header = _header(data)
        return _unflatten(json.loads(header["skeleton"]), tensors), json.loads(header["meta"])
    except (UnsafeFileError, SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"]


def _flatten(obj, tensors: dict):
    if torch.is_tensor(obj):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"tensor": name}
    if isinstance(obj, dict):  # keys may be ints (optimizer states are keyed by parameter index)
        return {"dict": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unflatten(node, tensors: dict):
    (kind, value), = node.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value}
    if kind in ("list", "tuple"):
        items = [_unflatten(v, tensors) for v in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return value
    raise ValueError(f"unknown checkpoint node {kind!r}")


def run_key(train: np.ndarray, val: np.ndarray, settings: dict, start: dict | None = None,
            weights: np.ndarray | None = None) -> str:
    """Identifies a training run for its checkpoints: the images, their sampling weights, the settings and the
    starting weights."""
    import hashlib
    h = hashlib.sha256(np.ascontiguousarray(train).tobytes())
    h.update(np.ascontiguousarray(val).tobytes())
    if weights is not None:
        h.update(b"weights" + np.ascontiguousarray(weights, np.float64).tobytes())
    h.update(repr(sorted(settings.items())).encode())
    for name, t in sorted((start or {}).items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_module(factory: Callable[[], nn.Module], weights: dict, device) -> nn.Module:
    """A module built on the meta device (nothing allocated) and filled with ``weights`` (strict): settings in
    a bundle that would build a huge network cannot allocate more than its size-capped weights file holds."""
    with torch.device("meta"):
        module = factory()
    module.load_state_dict(weights, assign=True)
    return module.to(resolve_device(device) if isinstance(device, str) else device).eval()
