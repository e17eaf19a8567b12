"""Where tensors live: the device, seeding, uint8 arrays to tensors, and modules built from saved weights."""
from __future__ import annotations

import os
import random
from typing import Callable

import numpy as np
import torch
from torch import nn


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


def load_module(factory: Callable[[], nn.Module], weights: dict, device) -> nn.Module:
    """A module built on the meta device (nothing allocated) and filled with ``weights`` (strict): settings in
    a bundle that would build a huge network cannot allocate more than its size-capped weights file holds."""
    with torch.device("meta"):
        module = factory()
    wanted = module.state_dict()
    for name, tensor in weights.items():  # assign=True would keep a float16 or float64 tensor as it is
        if name in wanted and tensor.dtype != wanted[name].dtype:
            raise ValueError(f"weight {name} is {tensor.dtype}, the network needs {wanted[name].dtype}")
    module.load_state_dict(weights, assign=True)
    return module.to(resolve_device(device) if isinstance(device, str) else device).eval()
