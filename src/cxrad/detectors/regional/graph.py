"""The regional statistics' scoring graph: the Mahalanobis distance of the cell statistics to the normals'
Gaussian (float64), and per-statistic z-scores."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.regional.model import STATISTICS, RegionalStatistics


class RegionalGraph(ScoringGraph):
    outputs = ("mahalanobis", "intensity_z", "texture_z", "score", "map", "features")

    def __init__(self, stats: RegionalStatistics, location, precision, cell_mean, cell_sd):
        super().__init__()
        self.stats = stats
        self.register_buffer("location", torch.as_tensor(location, dtype=torch.float64))
        self.register_buffer("precision", torch.as_tensor(precision, dtype=torch.float64))
        self.register_buffer("cell_mean", torch.as_tensor(cell_mean))
        self.register_buffer("cell_sd", torch.as_tensor(cell_sd))

    def measure(self, images):
        cells = self.stats(normalise(images))
        d = cells.flatten(1).double() - self.location
        maha = ((d @ self.precision) * d).sum(1)
        z2 = ((cells - self.cell_mean) / self.cell_sd) ** 2
        per_stat = z2.flatten(2).unflatten(1, (len(self.stats.scales), len(STATISTICS))).mean(dim=(1, 3))
        side = images.shape[-1]
        cell_map = F.interpolate(z2.mean(1, keepdim=True), size=(side, side), mode="bilinear", align_corners=False)
        return {"mahalanobis": maha, "intensity_z": per_stat[:, 0] ** 0.5, "texture_z": per_stat[:, 1:].mean(1) ** 0.5,
                "score": maha, "map": cell_map[:, 0], "features": cells.flatten(1)}
