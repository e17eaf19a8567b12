"""The seed CAE's scoring graph: reconstruction error and the latent vector's log-density under a Gaussian KDE
of the training latents, combined by the write-up's OR rule on standardised values."""
from __future__ import annotations

import torch

from cxrad.detectors.cae.model import CAE
from cxrad.detectors.graph import ScoringGraph, images_to_unit
from cxrad.detectors.parts.kde import log_density, squared_distances


class CAEGraph(ScoringGraph):
    outputs = ("recon_error", "log_density", "score", "map", "recon", "features")

    def __init__(self, net: CAE, channels: int, latents, latent_mean, latent_sd, bandwidth: float, stats,
                 score_mode: str):
        super().__init__()
        self.net, self.channels, self.bandwidth, self.score_mode = net, int(channels), float(bandwidth), score_mode
        self.register_buffer("latents", torch.as_tensor(latents).double())
        self.register_buffer("latent_mean", torch.as_tensor(latent_mean).double())
        self.register_buffer("latent_sd", torch.as_tensor(latent_sd).double())
        # (mean, sd) of the error and of the negative log-density on held-out normals
        self.register_buffer("stats", torch.tensor(stats, dtype=torch.float64))

    def measure(self, images):
        x = images_to_unit(images).expand(-1, self.channels, -1, -1)
        recon, z = self.net(x)
        sq = ((recon - x) ** 2).mean(1)  # per-pixel error, averaged over channels: its mean is the score
        zs = (z.double() - self.latent_mean) / self.latent_sd
        density = log_density(squared_distances(zs, self.latents), self.latents.shape[0], self.latents.shape[1],
                              self.bandwidth)
        return {"recon_error": sq.mean((1, 2)).double(), "log_density": density, "map": sq,
                "recon": recon.mean(1), "features": z}

    def combine(self, raw):
        me, se, md, sd = self.stats
        z_err = (raw["recon_error"] - me) / se
        z_dens = (-raw["log_density"] - md) / sd
        score = {"either": torch.maximum(z_err, z_dens), "recon": z_err, "density": z_dens}[self.score_mode]
        return {**raw, "score": score}
