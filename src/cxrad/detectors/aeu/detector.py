"""AE-U: autoencoder with predicted per-pixel uncertainty (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxrad.detectors.aeu.graph import AEUGraph, heteroscedastic
from cxrad.detectors.aeu.model import AEU
from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.graph import normalise_array
from cxrad.detectors.parts.augment import jitter
from cxrad.training import fit_epochs, loss_step


@dataclass(repr=False, eq=False)
class AEUDetector(TrainedDetector):
    """An autoencoder that predicts a mean and a log-variance per pixel; the score is the uncertainty-weighted
    reconstruction error.

    Parameters
    ----------
    width : int
        Width multiplier of the convolutional stages (16m, 32m, 64m, 64m channels).
    latent_dim : int
        Length of the bottleneck vector.
    hidden : int
        Width of the fully connected layers around the bottleneck.
    augment : bool
        Random shift, scale, brightness and contrast while training.
    """

    kind: ClassVar[str] = "aeu"
    components: ClassVar[tuple[str, ...]] = ("mse", "weighted_error")
    supports_sample_weight: ClassVar[bool] = True
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 4, "hidden": 32}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "width": (1, 256), "latent_dim": (1, 4096),
                              "hidden": (1, 16384)}

    image_size: int = 64
    batch_size: int = 64
    epochs: int = 250
    lr: float = 5e-4
    width: int = 16
    latent_dim: int = 16
    hidden: int = 2048
    augment: bool = True

    def network(self) -> AEU:
        return AEU(self.image_size, self.width, self.latent_dim, self.hidden)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        cfg = self.train_config(train, val, "AE-U epochs", sample_weight, optimizer="adam", betas=(0.5, 0.999))
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())
        step = loss_step(net, lambda m, x, target: heteroscedastic(*m(x), target), opt,
                         corrupt=lambda x, gen: (jitter(x, gen),) * 2 if self.augment else (x, x))
        result = fit_epochs({"model": net}, {"opt": opt},
                            lambda x, gen, dist: step(x, gen, dist) if len(x) > 1 else {},  # BatchNorm1d needs 2
                            train, cfg, val=val, val_loss=lambda x, gen: heteroscedastic(*model(x), x),
                            prepare=normalise_array, weights=sample_weight)
        self.model_ = model.eval()
        self.record(result)

    def scoring_graph(self) -> AEUGraph:
        return AEUGraph(self.model_)
