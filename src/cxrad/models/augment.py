"""Intensity normalisation and train-time augmentation shared by the from-scratch detectors."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, H, W): per image, the 1st-99th intensity percentiles map to [-1, 1]
    (exposure differs between machines). Done once per array, not per batch: percentiles are costly."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    lo, hi = np.percentile(x.reshape(len(x), -1), [1, 99], axis=1)
    span = np.maximum(hi - lo, 1e-3)[:, None, None]
    return np.clip((x - lo[:, None, None]) / span * 2 - 1, -1.5, 1.5).astype(np.float32)


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
