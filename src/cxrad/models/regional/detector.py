"""Regional statistics + Gaussian (method and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detector import Detector
from cxrad.training import map_batches
from cxrad.models.augment import normalise
from cxrad.models.regional.model import STATISTICS, RegionalStatistics


@dataclass(repr=False, eq=False)
class RegionalDetector(Detector):
    """Regional intensity and texture statistics modelled by one Ledoit-Wolf Gaussian; no deep training.

    Parameters
    ----------
    grid : int
        The statistics are averaged over a grid x grid partition of the image.
    scales : tuple
        Average-pooling factors at which the statistics are taken.
    """

    kind: ClassVar[str] = "regional"
    components: ClassVar[tuple[str, ...]] = ("mahalanobis", "intensity_z", "texture_z")

    grid: int = 4
    scales: tuple[int, ...] = (1, 2, 4)

    def _module(self) -> RegionalStatistics:
        return RegionalStatistics(int(self.grid), tuple(int(v) for v in self.scales))

    def _cells(self, images: np.ndarray) -> np.ndarray:
        """(N, features, grid, grid) statistics."""
        module = self._module()
        return map_batches(lambda x: {"f": module(x)}, normalise(images), 256, 1, "cpu")["f"]

    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        cells = self._cells(train)
        flat = cells.reshape(len(cells), -1).astype(np.float64)
        self.cell_mean_ = cells.mean(0)
        self.cell_sd_ = cells.std(0) + 1e-6
        from sklearn.covariance import LedoitWolf  # here: loading a model for scoring needs no scikit-learn
        gauss = LedoitWolf().fit(flat)
        self.location_, self.precision_ = gauss.location_, gauss.precision_
        self.shrinkage_ = float(gauss.shrinkage_)
        val_flat = self._cells(val).reshape(len(val), -1)
        self.history_ = {"train_mahalanobis": [float(self._mahalanobis(flat).mean())],
                         "val_mahalanobis": [float(self._mahalanobis(val_flat).mean())]}

    def _mahalanobis(self, flat: np.ndarray) -> np.ndarray:
        d = flat - self.location_
        return np.einsum("ij,jk,ik->i", d, self.precision_, d)

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
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

    def weights(self) -> dict[str, torch.Tensor]:
        return {"location": torch.from_numpy(self.location_), "precision": torch.from_numpy(self.precision_),
                "cell_mean": torch.from_numpy(self.cell_mean_), "cell_sd": torch.from_numpy(self.cell_sd_)}

    def state(self) -> dict:
        return {"shrinkage": self.shrinkage_}

    def restore(self, tensors: dict, state: dict) -> None:
        n = len(self.scales) * len(STATISTICS) * int(self.grid) ** 2
        if tensors["location"].shape != (n,) or tensors["cell_mean"].shape != (n // self.grid ** 2, self.grid,
                                                                               self.grid):
            raise ValueError(f"statistics of shape {tuple(tensors['location'].shape)} do not match grid "
                             f"{self.grid} and scales {self.scales}")
        self.location_, self.precision_ = tensors["location"].numpy(), tensors["precision"].numpy()
        self.cell_mean_, self.cell_sd_ = tensors["cell_mean"].numpy(), tensors["cell_sd"].numpy()
        self.shrinkage_ = float(state.get("shrinkage", 0.0))
