"""Train-time augmentation shared by the from-scratch detectors (intensity scaling is in ``graph.normalise``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, generator: torch.Generator, shift: float = 0.05, intensity: float = 0.1) -> torch.Tensor:
    """Random translation (fraction of the side), brightness and contrast; no flips (the heart is on the left)."""
    n = x.shape[0]
    rand = lambda *s: torch.rand(*s, generator=generator).to(x.device)  # noqa: E731
    theta = torch.zeros(n, 2, 3, device=x.device)
    scale = 1 + (rand(n) - 0.5) * 0.1
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (rand(n, 2) - 0.5) * 2 * shift * 2  # grid coordinates span 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast = 1 + (rand(n, 1, 1, 1) - 0.5) * 2 * intensity
    bright = (rand(n, 1, 1, 1) - 0.5) * 2 * intensity
    return x * contrast + bright
