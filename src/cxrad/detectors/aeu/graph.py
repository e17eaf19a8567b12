"""AE-U's scoring graph: the reconstruction error weighted by the predicted per-pixel variance."""
from __future__ import annotations

import torch

from cxrad.detectors.aeu.model import AEU
from cxrad.detectors.graph import ScoringGraph, normalise


def heteroscedastic(mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of exp(-logvar) * (x - mu)^2 + logvar: the AE-U training loss."""
    return (torch.exp(-logvar) * (x - mu) ** 2 + logvar).flatten(1).mean(1)


def weighted_errors(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel squared error, and the same divided by the predicted variance."""
    sq = (x - mu) ** 2
    return sq, torch.exp(-logvar) * sq


class AEUGraph(ScoringGraph):
    outputs = ("mse", "weighted_error", "score", "map", "recon", "features")

    def __init__(self, net: AEU):
        super().__init__()
        self.net = net

    def measure(self, images):
        x = normalise(images)
        z = self.net.encoder(x)
        mu, logvar = self.net.decode(z)
        sq, weighted = weighted_errors(x, mu, logvar)
        score = weighted.mean((1, 2, 3))
        return {"mse": sq.mean((1, 2, 3)), "weighted_error": score, "score": score, "map": weighted[:, 0],
                "recon": ((mu[:, 0] + 1) / 2).clamp(0, 1), "features": z}
