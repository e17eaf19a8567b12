"""Regional intensity and texture statistics of a radiograph, as one fixed (not learned) torch module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STATISTICS = ("intensity", "gradient", "local_sd")


class RegionalStatistics(nn.Module):
    """(N, 1, H, W) normalised images -> (N, len(scales) * len(STATISTICS), grid, grid) cell statistics.

    At each scale (average-pooling factor) three maps are averaged over a grid x grid partition of the image:
    the intensity, the gradient magnitude (edge energy: sharp ribs and vessels vs haze), and the local
    standard deviation in a 3x3 window (fine texture).
    """

    def __init__(self, grid: int = 4, scales: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.grid, self.scales = grid, tuple(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = []
        for s in self.scales:
            xs = F.avg_pool2d(x, s) if s > 1 else x
            gx = F.pad(xs[..., :, 1:] - xs[..., :, :-1], (0, 1, 0, 0), mode="replicate")
            gy = F.pad(xs[..., 1:, :] - xs[..., :-1, :], (0, 0, 0, 1), mode="replicate")
            mean = F.avg_pool2d(xs, 3, 1, 1, count_include_pad=False)
            var = F.avg_pool2d(xs ** 2, 3, 1, 1, count_include_pad=False) - mean ** 2
            for m in (xs, (gx ** 2 + gy ** 2).sqrt(), var.clamp_min(0).sqrt()):
                maps.append(F.adaptive_avg_pool2d(m, self.grid))
        return torch.cat(maps, dim=1)
