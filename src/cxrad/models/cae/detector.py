"""The seed CAE + latent KDE detector (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.detector import TrainedDetector
from cxrad.training import fit_epochs, load_module, loss_step, map_batches
from cxrad.models.cae.model import CAE, keras_parameter_count

SCORE_MODES = ("either", "recon", "density")
BANDWIDTHS = np.logspace(-1, 1.5, 16)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def kde_log_density(queries: np.ndarray, points: np.ndarray, bandwidth: float, chunk: int = 1024) -> np.ndarray:
    """Exact log-density of a Gaussian KDE (as scikit-learn's KernelDensity defines it), in chunks.

    scikit-learn's tree-based estimate is not exact in high dimensions at small bandwidths: with 128-d latents
    it returned -55.7 where the exact value is -146.1 (tests/models/test_cae.py shows a case)."""
    from scipy.special import logsumexp  # here, not at import: loading any model for scoring skips scipy
    points = np.asarray(points, np.float64)
    d = points.shape[1]
    log_norm = -np.log(len(points)) - 0.5 * d * np.log(2 * np.pi * bandwidth ** 2)
    out = [logsumexp(-squared_distances(np.asarray(q, np.float64), points) / (2 * bandwidth ** 2), axis=1)
           for q in np.array_split(queries, max(1, int(np.ceil(len(queries) / chunk))))]
    return (np.concatenate(out) if out else np.zeros(0)) + log_norm


def kde_bandwidth(z: np.ndarray, bandwidths: np.ndarray = BANDWIDTHS, folds: int = 5) -> float:
    """The Gaussian-KDE bandwidth of highest 5-fold cross-validated log-likelihood, computed exactly.

    The folds and the criterion of ``GridSearchCV(KernelDensity(), {"bandwidth": bandwidths}, cv=folds)``
    (unshuffled folds, total held-out log-likelihood averaged over folds), but every bandwidth reuses one matrix
    of squared distances instead of refitting a tree per bandwidth and fold, and the likelihoods are exact."""
    from scipy.special import logsumexp
    n, d = z.shape
    folds = min(folds, n)
    dist2 = squared_distances(z, z)
    bounds = np.cumsum([0] + [n // folds + (1 if i < n % folds else 0) for i in range(folds)])
    scores = np.zeros(len(bandwidths))
    for k in range(folds):
        test = np.arange(bounds[k], bounds[k + 1])
        train = np.setdiff1d(np.arange(n), test)
        block = dist2[np.ix_(test, train)]
        for j, h in enumerate(bandwidths):
            log_norm = -np.log(len(train)) - 0.5 * d * np.log(2 * np.pi * h * h)
            scores[j] += (logsumexp(-block / (2 * h * h), axis=1) + log_norm).sum() / folds
    return float(bandwidths[int(np.argmax(scores))])


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

    epochs: int = 70
    channels: int = 3
    latent_dim: int = 128
    score_mode: str = "either"
    kde_standardize: bool = True

    def __post_init__(self):
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")

    def network(self) -> CAE:
        return CAE(self.channels, self.latent_dim, self.image_size)

    # ------------------------------------------------------------------------------------------ train
    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
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
        self._fit_kde(self._encode(train))

    def _fit_kde(self, latents: np.ndarray) -> None:
        self.latent_mean_ = latents.mean(0) if self.kde_standardize else np.zeros(latents.shape[1])
        self.latent_sd_ = latents.std(0) + 1e-6 if self.kde_standardize else np.ones(latents.shape[1])
        z = ((latents - self.latent_mean_) / self.latent_sd_).astype(np.float64)
        self.kde_bandwidth_ = kde_bandwidth(z)
        self.kde_latents_ = z.astype(np.float32)

    # ------------------------------------------------------------------------------------------ score
    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _encode(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"z": self.model_.encode(x)}, images, 128, self.channels, self._device())["z"]

    def _forward(self, images: np.ndarray, pictures: bool = False) -> dict[str, np.ndarray]:
        def fn(x):
            recon, z = self.model_(x)
            sq = ((recon - x) ** 2).mean(1)  # per-pixel error, averaged over channels: its mean is the score
            out = {"z": z, "err": sq.mean(dim=(1, 2))}
            if pictures:
                out.update({"err_map": sq, "recon": recon.mean(1)})
            return out
        return map_batches(fn, images, 128, self.channels, self._device())

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        log_density = kde_log_density((out["z"] - self.latent_mean_) / self.latent_sd_, self.kde_latents_,
                                      self.kde_bandwidth_)
        return {"recon_error": out["err"].astype(np.float64), "log_density": log_density}

    def calibrate_components(self, val: dict) -> None:
        self.component_stats_ = {
            "recon_error": (float(np.mean(val["recon_error"])), float(np.std(val["recon_error"]) + 1e-12)),
            "neg_log_density": (float(np.mean(-val["log_density"])), float(np.std(val["log_density"]) + 1e-12)),
        }

    def combine(self, raw: dict) -> dict[str, np.ndarray]:
        (me, se), (md, sd) = self.component_stats_["recon_error"], self.component_stats_["neg_log_density"]
        z_err = (raw["recon_error"] - me) / se
        z_dens = (-raw["log_density"] - md) / sd
        score = {"either": np.maximum(z_err, z_dens), "recon": z_err, "density": z_dens}[self.score_mode]
        return {**raw, "score": score}

    def component_thresholds(self, threshold: float | None = None) -> dict:
        """The write-up's two thresholds implied by a score threshold: error above / log-density below."""
        t = self.threshold_ if threshold is None else threshold
        (me, se), (md, sd) = self.component_stats_["recon_error"], self.component_stats_["neg_log_density"]
        return {"recon_error_above": me + t * se, "log_density_below": -(md + t * sd)}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, pictures=True)["err_map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, pictures=True)["recon"]

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._encode(images)

    # ------------------------------------------------------------------------------------ persistence
    def weights(self) -> dict[str, torch.Tensor]:
        t = {f"net.{k}": v for k, v in self.model_.state_dict().items()}
        t["kde_latents"] = torch.from_numpy(self.kde_latents_)
        t["latent_mean"] = torch.from_numpy(np.asarray(self.latent_mean_, np.float64))
        t["latent_sd"] = torch.from_numpy(np.asarray(self.latent_sd_, np.float64))
        return t

    def state(self) -> dict:
        return {**super().state(), "kde_bandwidth": self.kde_bandwidth_, "component_stats": self.component_stats_}

    def architecture(self) -> dict:
        return {**super().architecture(), "name": "CAE-seed", "channels": self.channels,
                "latent_dim": self.latent_dim, "parameters": keras_parameter_count(self.model_)}

    def restore(self, weights: dict, state: dict) -> None:
        self.model_ = load_module(self.network, {k[4:]: v for k, v in weights.items() if k.startswith("net.")},
                                  self.device)
        self.kde_latents_ = weights["kde_latents"].numpy()
        self.latent_mean_, self.latent_sd_ = weights["latent_mean"].numpy(), weights["latent_sd"].numpy()
        self.kde_bandwidth_ = float(state["kde_bandwidth"])
        self.component_stats_ = {k: tuple(v) for k, v in state["component_stats"].items()}
