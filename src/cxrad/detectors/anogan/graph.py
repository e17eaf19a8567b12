"""The GAN detectors' scoring graphs. f-AnoGAN maps an image to z with its encoder (one forward pass); AnoGAN
finds z by gradient descent for each image, which runs in PyTorch but is not a graph ONNX can hold."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from cxrad.detectors.anogan.model import Discriminator, Encoder, Generator
from cxrad.detectors.graph import ScoringGraph


def signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> (N, 1, S, S) in [-1, 1], the GAN's range."""
    return (images.float() / 255.0)[:, None] * 2 - 1


def izif_terms(x: torch.Tensor, gz: torch.Tensor, D: Discriminator, kappa: float) -> tuple[torch.Tensor, ...]:
    """f-AnoGAN's per-image terms for images x and their reconstructions G(E(x)), both in [-1, 1]: mean squared
    pixel residual (grey levels in [0, 1]), feature residual, and their sum weighted by kappa."""
    residual = ((x - gz) / 2).pow(2).flatten(1).mean(1)
    discrimination = (D.features(x) - D.features(gz)).pow(2).mean(1)
    return residual, discrimination, residual + kappa * discrimination


def pictures(x: torch.Tensor, gz: torch.Tensor, D: Discriminator) -> dict[str, torch.Tensor]:
    """The residual map |x - G(z)| and the reconstruction, in grey levels of [0, 1], and D's features."""
    return {"map": (x - gz).abs()[:, 0] / 2, "recon": (gz[:, 0] + 1) / 2, "features": D.features(x)}


class FAnoGANGraph(ScoringGraph):
    outputs = ("residual", "discrimination", "score", "map", "recon", "features")

    def __init__(self, E: Encoder, G: Generator, D: Discriminator, kappa: float):
        super().__init__()
        self.E, self.G, self.D, self.kappa = E, G, D, float(kappa)

    def measure(self, images):
        x = signed(images)
        gz = self.G(self.E(x))
        residual, discrimination, score = izif_terms(x, gz, self.D, self.kappa)
        return {"residual": residual, "discrimination": discrimination, "score": score, **pictures(x, gz, self.D)}


class AnoGANGraph(ScoringGraph):
    """Schlegl et al.'s latent mapping: Adam on z for ``iters`` steps, loss (1-λ)·Σ|x-G(z)| + λ·Σ|f(x)-f(G(z))|.

    Each image's start point is drawn from a seed made of ``seed`` and the image's own bytes, and its loss depends
    on its own z only (G and D are in eval mode), so a score does not depend on the images scored with it. An image
    whose loss turns NaN or inf is frozen and gets NaN scores instead of stopping the others."""

    outputs = ("residual", "discrimination", "score", "map", "recon", "features")
    not_exportable = ("it maps each image to the latent space by gradient steps, not one forward pass; train an "
                      "f-AnoGAN (a trained encoder does the mapping) to export a GAN detector")

    def __init__(self, G: Generator, D: Discriminator, lam: float, iters: int, lr: float, seed: int, z_dim: int):
        super().__init__()
        self.G, self.D = G, D
        self.lam, self.iters, self.lr, self.seed, self.z_dim = float(lam), int(iters), float(lr), int(seed), z_dim

    def start(self, images: torch.Tensor) -> torch.Tensor:
        z = []
        for im in images.cpu().numpy():
            digest = hashlib.sha256(np.ascontiguousarray(im).tobytes() + self.seed.to_bytes(8, "little", signed=True))
            gen = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1))
            z.append(torch.randn(self.z_dim, generator=gen))
        return torch.stack(z).to(images.device)

    def losses(self, x, fx, gz):
        residual = (x - gz).abs().flatten(1).sum(1) / 2
        discrimination = (fx - self.D.features(gz)).abs().sum(1)
        return residual, discrimination, (1 - self.lam) * residual + self.lam * discrimination

    def measure(self, images):
        x = signed(images)
        with torch.no_grad():
            fx = self.D.features(x)
        z = self.start(images).requires_grad_(True)
        bad = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.enable_grad():
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.iters):
                loss = self.losses(x, fx, self.G(z))[2]
                bad |= ~torch.isfinite(loss)
                if bad.all():
                    break
                opt.zero_grad()
                loss.masked_fill(bad, 0.0).sum().backward()
                z.grad[bad] = 0.0
                opt.step()
        with torch.no_grad():
            gz = self.G(z)
            residual, discrimination, score = self.losses(x, fx, gz)
            out = {"residual": residual, "discrimination": discrimination, "score": score, **pictures(x, gz, self.D)}
        nan = torch.tensor(float("nan"), device=x.device)
        return {k: torch.where(bad.view(-1, *[1] * (v.ndim - 1)), nan, v) for k, v in out.items()}
