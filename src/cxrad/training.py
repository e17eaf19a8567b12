"""Pieces every training loop shares: device choice, seeding, batching, and resumable checkpoints."""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from .bundle import atomic_write_bytes


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
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


def batches(n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size].numpy()


class Checkpointer:
    """Atomic, resumable training state in ``<dir>/last.pt`` (loaded with ``weights_only=True``).

    A killed run restarts from the last completed epoch when the same ``dir`` is given again. ``modules``
    are nn.Modules, optimizers or torch.Generators (the shuffling generator must be saved too, or a resumed
    run shuffles differently from an uninterrupted one).
    """

    def __init__(self, directory, every: int = 1, key: str | None = None):
        self.dir = Path(directory) if directory else None
        self.every = max(1, int(every))
        self.key = key  # identifies the run (data + settings); a checkpoint of another run is not resumed

    @property
    def path(self) -> Path | None:
        return self.dir / "last.pt" if self.dir else None

    def save(self, epoch: int, modules: dict, history: dict, force: bool = False) -> None:
        if self.dir is None or (not force and (epoch + 1) % self.every):
            return
        state = {"epoch": epoch, "history": history, "rng": torch.get_rng_state(),
                 "key": self.key, "state": {name: _state_of(m) for name, m in modules.items()}}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def resume(self, modules: dict) -> tuple[int, dict]:
        """Load state into ``modules``; returns (first epoch to run, history)."""
        if self.path is None or not self.path.exists():
            return 0, {}
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, foreign or a pickle payload that weights_only refused
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeError(f"{self.path}: unreadable checkpoint ({first}); delete it to start afresh") from None
        if self.key is not None and state.get("key") != self.key:
            return 0, {}  # left by a run on other data or settings: start afresh (it is overwritten)
        for name, m in modules.items():
            if isinstance(m, torch.Generator):
                m.set_state(state["state"][name])
            else:
                m.load_state_dict(state["state"][name])
        torch.set_rng_state(state["rng"])
        return int(state["epoch"]) + 1, state["history"]

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            os.unlink(self.path)


def _state_of(m):
    return m.get_state() if isinstance(m, torch.Generator) else m.state_dict()


@torch.no_grad()
def map_batches(fn, images: np.ndarray, batch_size: int, channels: int, device) -> dict[str, np.ndarray]:
    """Run ``fn(x) -> dict of tensors`` over uint8 images in batches; concatenate as numpy arrays."""
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
