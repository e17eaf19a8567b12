"""The seed CAE + latent KDE detector (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.cae.graph import CAEGraph
from cxrad.detectors.cae.model import CAE, keras_parameter_count
from cxrad.detectors.graph import images_to_unit, run_graph
from cxrad.detectors.parts.kde import kde_bandwidth
from cxrad.training import fit_epochs, loss_step

SCORE_MODES = ("either", "recon", "density")


@dataclass(repr=False, eq=False)
class CAEDetector(TrainedDetector):
    """The seed convolutional autoencoder with a kernel density estimate of its latent vectors.

    Parameters
    ----------
    channels : int
        Input channels; the grey image is repeated (the write-up uses 3).
    latent_dim : int
        Length of the latent vector (Dense layer).
    score_mode : str
        'either' (the write-up's OR rule), 'recon' (reconstruction error) or 'density' (latent KDE).
    kde_standardize : bool
        Standardise each latent dimension before the KDE.
    """

    kind: ClassVar[str] = "cae"
    components: ClassVar[tuple[str, ...]] = ("recon_error", "log_density")
    lower_is_anomalous: ClassVar[tuple[str, ...]] = ("log_density",)
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "latent_dim": 16}
    choices: ClassVar[dict] = {**TrainedDetector.choices, "score_mode": SCORE_MODES}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "channels": (1, 4), "latent_dim": (1, 4096)}
    fitted_modules: ClassVar[dict] = {"model_": "net."}
    fitted_arrays: ClassVar[dict] = {"kde_latents_": "kde_latents", "latent_mean_": "latent_mean",
                                     "latent_sd_": "latent_sd"}

    epochs: int = 70
    channels: int = 3
    latent_dim: int = 128
    score_mode: str = "either"
    kde_standardize: bool = True

    def network(self) -> CAE:
        return CAE(self.channels, self.latent_dim, self.image_size)

    # ------------------------------------------------------------------------------------------ train
    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        cfg = self.train_config(train, val, "CAE epochs", optimizer="adam")
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())

        def grey_to_channels(x, gen=None):
            x = x.expand(-1, self.channels, -1, -1)
            return x, x

        def loss(m, x, target):
            return (m(x)[0] - target).pow(2).flatten(1).mean(1)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, grey_to_channels), train, cfg,
                            val=val, val_loss=lambda x, gen: loss(model, *grey_to_channels(x)))
        self.model_ = model.eval()
        self.record(result)
        self.fit_after_training(train)

    def fit_after_training(self, train: np.ndarray) -> None:
        self._fit_kde(self._encode(train))

    def _fit_kde(self, latents: np.ndarray) -> None:
        self.latent_mean_ = latents.mean(0).astype(np.float64) if self.kde_standardize else np.zeros(latents.shape[1])
        self.latent_sd_ = latents.std(0).astype(np.float64) + 1e-6 if self.kde_standardize else np.ones(latents.shape[1])
        z = ((latents - self.latent_mean_) / self.latent_sd_).astype(np.float64)
        self.kde_bandwidth_ = kde_bandwidth(z)
        self.kde_latents_ = z.astype(np.float32)

    # ------------------------------------------------------------------------------------------ score
    def _encode(self, images: np.ndarray) -> np.ndarray:
        device = next(self.model_.parameters()).device
        encode = lambda x: {"features": self.model_.encode(images_to_unit(x).expand(-1, self.channels, -1, -1))}  # noqa: E731
        return run_graph(encode, [images], device)["features"]

    def scoring_graph(self) -> CAEGraph:
        stats = getattr(self, "component_stats_", None) or {"recon_error": (0.0, 1.0), "neg_log_density": (0.0, 1.0)}
        return CAEGraph(self.model_, self.channels, self.kde_latents_, self.latent_mean_, self.latent_sd_,
                        self.kde_bandwidth_, [*stats["recon_error"], *stats["neg_log_density"]], self.score_mode)

    def calibrate_outputs(self, raw: dict) -> None:
        self.component_stats_ = {
            "recon_error": (float(np.mean(raw["recon_error"])), float(np.std(raw["recon_error"]) + 1e-12)),
            "neg_log_density": (float(np.mean(-raw["log_density"])), float(np.std(raw["log_density"]) + 1e-12)),
        }

    def component_thresholds(self, threshold: float | None = None) -> dict:
        """The write-up's two thresholds implied by a score threshold: error above / log-density below."""
        t = self.threshold_ if threshold is None else threshold
        (me, se), (md, sd) = self.component_stats_["recon_error"], self.component_stats_["neg_log_density"]
        return {"recon_error_above": me + t * se, "log_density_below": -(md + t * sd)}

    # ------------------------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {**super().state(), "kde_bandwidth": self.kde_bandwidth_, "component_stats": self.component_stats_}

    def architecture(self) -> dict:
        return {**super().architecture(), "name": "CAE-seed", "channels": self.channels,
                "latent_dim": self.latent_dim, "parameters": keras_parameter_count(self.model_)}

    def restore(self, weights: dict, state: dict) -> None:
        super().restore(weights, state)
        self.kde_bandwidth_ = float(state["kde_bandwidth"])
        if not (np.isfinite(self.kde_bandwidth_) and self.kde_bandwidth_ > 0):
            raise ValueError(f"kde_bandwidth {self.kde_bandwidth_} is not a positive finite number")
        self.component_stats_ = {k: tuple(v) for k, v in state["component_stats"].items()}
