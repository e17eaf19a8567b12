"""AE-U: autoencoder with predicted per-pixel uncertainty (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.detector import TrainedDetector
from cxrad.training import fit_epochs, load_module, loss_step, map_batches
from cxrad.models.augment import jitter, normalise
from cxrad.models.aeu.model import AEU


def heteroscedastic(mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of exp(-logvar) * (x - mu)^2 + logvar: the AE-U training loss."""
    return (torch.exp(-logvar) * (x - mu) ** 2 + logvar).flatten(1).mean(1)


def weighted_errors(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel squared error and the same divided by the predicted variance; the detector and its ONNX graph
    both score with this."""
    sq = (x - mu) ** 2
    return sq, torch.exp(-logvar) * sq


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

    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        cfg = self.train_config(train, val, "AE-U epochs", optimizer="adam", betas=(0.5, 0.999))
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())
        step = loss_step(net, lambda m, x, target: heteroscedastic(*m(x), target), opt,
                         corrupt=lambda x, gen: (jitter(x, gen),) * 2 if self.augment else (x, x))
        result = fit_epochs({"model": net}, {"opt": opt},
                            lambda x, gen, dist: step(x, gen, dist) if len(x) > 1 else {},  # BatchNorm1d needs 2
                            train, cfg, val=val, val_loss=lambda x, gen: heteroscedastic(*model(x), x),
                            prepare=normalise)
        self.model_ = model.eval()
        self.record(result)

    def _forward(self, images: np.ndarray, pictures: bool = False) -> dict[str, np.ndarray]:
        def fn(x):
            mu, logvar = self.model_(x)
            sq, weighted = weighted_errors(x, mu, logvar)
            out = {"mse": sq.mean((1, 2, 3)), "weighted": weighted.mean((1, 2, 3))}
            if pictures:
                out.update({"map": weighted[:, 0], "recon": (mu[:, 0] + 1) / 2})
            return out
        return map_batches(fn, normalise(images), 128, 1, next(self.model_.parameters()).device)

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        return {"mse": out["mse"].astype(np.float64), "weighted_error": out["weighted"].astype(np.float64),
                "score": out["weighted"].astype(np.float64)}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, pictures=True)["map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self._forward(images, pictures=True)["recon"], 0, 1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"z": self.model_.encoder(x)}, normalise(images), 128, 1,
                           next(self.model_.parameters()).device)["z"]

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def restore(self, weights: dict, state: dict) -> None:
        self.model_ = load_module(self.network, weights, self.device)
