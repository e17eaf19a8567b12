"""Regional statistics + Gaussian (method and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxrad.detectors.base import Detector
from cxrad.detectors.graph import normalise, run_graph
from cxrad.detectors.regional.graph import RegionalGraph
from cxrad.detectors.regional.model import STATISTICS, RegionalStatistics


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
    tiny: ClassVar[dict] = {"image_size": 32}
    bounds: ClassVar[dict] = {**Detector.bounds, "grid": (1, 64)}
    fitted_arrays: ClassVar[dict] = {"location_": "location", "precision_": "precision", "cell_mean_": "cell_mean",
                                     "cell_sd_": "cell_sd"}

    grid: int = 4
    scales: tuple[int, ...] = (1, 2, 4)

    def _module(self) -> RegionalStatistics:
        return RegionalStatistics(int(self.grid), tuple(int(v) for v in self.scales))

    def _cells(self, images: np.ndarray) -> np.ndarray:
        """(N, features, grid, grid) statistics."""
        module = self._module()
        return run_graph(lambda x: {"features": module(normalise(x))}, [images], "cpu")["features"]

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        from sklearn.covariance import LedoitWolf  # here: loading a model for scoring needs no scikit-learn
        cells = self._cells(train)
        flat = cells.reshape(len(cells), -1).astype(np.float64)
        self.cell_mean_ = cells.mean(0).astype(np.float32)
        self.cell_sd_ = (cells.std(0) + 1e-6).astype(np.float32)
        gauss = LedoitWolf().fit(flat)
        self.location_, self.precision_ = gauss.location_, gauss.precision_
        self.shrinkage_ = float(gauss.shrinkage_)
        mahalanobis = lambda x: np.einsum("ij,jk,ik->i", x - self.location_, self.precision_, x - self.location_)  # noqa: E731
        self.history_ = {"train_mahalanobis": [float(mahalanobis(flat).mean())],
                         "val_mahalanobis": [float(mahalanobis(self._cells(val).reshape(len(val), -1)).mean())]}

    def scoring_graph(self) -> RegionalGraph:
        return RegionalGraph(self._module(), self.location_, self.precision_, self.cell_mean_, self.cell_sd_)

    def state(self) -> dict:
        return {"shrinkage": self.shrinkage_}

    def restore(self, tensors: dict, state: dict) -> None:
        n = len(self.scales) * len(STATISTICS) * int(self.grid) ** 2
        if tensors["location"].shape != (n,) or tensors["cell_mean"].shape != (n // self.grid ** 2, self.grid,
                                                                               self.grid):
            raise ValueError(f"statistics of shape {tuple(tensors['location'].shape)} do not match grid "
                             f"{self.grid} and scales {self.scales}")
        super().restore(tensors, state)
        self.shrinkage_ = float(state.get("shrinkage", 0.0))
        if not 0.0 <= self.shrinkage_ <= 1.0:
            raise ValueError(f"shrinkage {self.shrinkage_} is outside 0 to 1")
