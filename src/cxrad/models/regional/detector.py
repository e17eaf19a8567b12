"""Regional statistics + Gaussian: a classical one-class baseline that needs no deep training.

Each image is scaled to its 1st-99th intensity percentiles, then described by the intensity, gradient
energy and local standard deviation averaged over a 4x4 grid at three scales (144 numbers). The training
normals' vectors are modelled by one multivariate Gaussian with Ledoit-Wolf shrinkage (Ledoit & Wolf, 2004,
scikit-learn ``LedoitWolf``); the anomaly score is the squared Mahalanobis distance. The Gaussian modelling
follows PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021), which fits Gaussians to *CNN* patch features; here the features are hand-crafted,
so nothing comes from outside the project and fitting takes seconds on a CPU.

Why it works on radiographs: consolidation and effusion make lung regions brighter and hazier (less edge
and texture energy) in a spatially organised way that a regional descriptor captures and a pixel
reconstruction error misses (hazy images are *easier* to reconstruct). The anomaly map shows each cell's
share of the distance (standardised squared deviation summed over its statistics).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from ...detector import Detector
from ...training import map_batches
from ..augment import normalise
from .model import STATISTICS, RegionalStatistics


class RegionalDetector(Detector):
    kind = "regional"
    components = ("mahalanobis", "intensity_z", "texture_z")

    def __init__(self, grid: int = 4, scales: tuple[int, ...] = (1, 2, 4), epochs: int = 0, **common):
        super().__init__(**common)
        self.grid, self.scales = int(grid), tuple(int(s) for s in scales)
        self.epochs = epochs  # nothing is trained iteratively; kept so `--epochs` is accepted uniformly

    def _module(self) -> RegionalStatistics:
        return RegionalStatistics(self.grid, self.scales)

    def _cells(self, images: np.ndarray) -> np.ndarray:
        """(N, features, grid, grid) statistics."""
        module = self._module()
        return map_batches(lambda x: {"f": module(x)}, normalise(images), 256, 1, "cpu")["f"]

    def _fit(self, train: np.ndarray, val: np.ndarray) -> None:
        cells = self._cells(train)
        flat = cells.reshape(len(cells), -1).astype(np.float64)
        self.cell_mean_ = cells.mean(0)
        self.cell_sd_ = cells.std(0) + 1e-6
        gauss = LedoitWolf().fit(flat)
        self.location_, self.precision_ = gauss.location_, gauss.precision_
        self.shrinkage_ = float(gauss.shrinkage_)
        val_flat = self._cells(val).reshape(len(val), -1)
        self.history_ = {"train_mahalanobis": [float(self._mahalanobis(flat).mean())],
                         "val_mahalanobis": [float(self._mahalanobis(val_flat).mean())]}

    def _mahalanobis(self, flat: np.ndarray) -> np.ndarray:
        d = flat - self.location_
        return np.einsum("ij,jk,ik->i", d, self.precision_, d)

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        cells = self._cells(images)
        maha = self._mahalanobis(cells.reshape(len(cells), -1).astype(np.float64))
        z2 = ((cells - self.cell_mean_) / self.cell_sd_) ** 2
        per_stat = z2.reshape(len(cells), len(self.scales), len(STATISTICS), -1).mean(axis=(1, 3))
        return {"mahalanobis": maha, "intensity_z": per_stat[:, 0] ** 0.5,
                "texture_z": per_stat[:, 1:].mean(1) ** 0.5, "score": maha}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        z2 = ((self._cells(images) - self.cell_mean_) / self.cell_sd_) ** 2
        cell_map = torch.from_numpy(z2.mean(1, keepdims=True).astype(np.float32))
        return F.interpolate(cell_map, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)[:, 0].numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._cells(images).reshape(len(images), -1)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"location": torch.from_numpy(self.location_), "precision": torch.from_numpy(self.precision_),
                "cell_mean": torch.from_numpy(self.cell_mean_), "cell_sd": torch.from_numpy(self.cell_sd_)}

    def _meta(self) -> dict:
        return {"shrinkage": self.shrinkage_}

    def _restore(self, tensors: dict, state: dict) -> None:
        n = len(self.scales) * len(STATISTICS) * self.grid ** 2
        if tensors["location"].shape != (n,) or tensors["cell_mean"].shape != (n // self.grid ** 2, self.grid,
                                                                               self.grid):
            raise ValueError(f"statistics of shape {tuple(tensors['location'].shape)} do not match grid "
                             f"{self.grid} and scales {self.scales}")
        self.location_, self.precision_ = tensors["location"].numpy(), tensors["precision"].numpy()
        self.cell_mean_, self.cell_sd_ = tensors["cell_mean"].numpy(), tensors["cell_sd"].numpy()
        self.shrinkage_ = float(state.get("shrinkage", 0.0))
