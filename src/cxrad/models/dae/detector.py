"""Coarse-noise denoising autoencoder (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...detector import TrainedDetector
from ...training import fit_epochs, load_module, loss_step, map_batches, resolve_device, wrap_ddp
from ..augment import jitter, normalise
from .model import UNet


def coarse_noise(shape, grid: int, std: float, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise on a grid x grid lattice, upsampled bilinearly to the image and rolled by a random shift."""
    n, _, h, w = shape
    low = torch.randn(n, 1, grid, grid, generator=generator) * std
    noise = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(0, h, (2,), generator=generator))
    return torch.roll(noise, shifts=(dy, dx), dims=(2, 3)).to(device)


def median_filter(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """k x k median of (N, 1, H, W) maps, reflect-padded (as scipy.ndimage.median_filter(mode='mirror'))."""
    pad = k // 2
    patches = F.pad(x, (pad, pad, pad, pad), mode="reflect").unfold(2, k, 1).unfold(3, k, 1)
    return patches.reshape(*x.shape, k * k).median(dim=-1).values


@dataclass(repr=False, eq=False)
class DAEDetector(TrainedDetector):
    """A U-Net trained to remove coarse noise from normal images; what it "heals" is the anomaly.

    Parameters
    ----------
    width : int
        Channels of the U-Net's first level (doubled at each level).
    depth : int
        Levels of the U-Net.
    noise_std : float
        Standard deviation of the coarse noise (images span [-1, 1]).
    noise_grid : int
        The noise is drawn on a grid x grid lattice and upsampled (coarser noise: smaller grid).
    augment : bool
        Random shift, scale, brightness and contrast while training.
    """

    kind: ClassVar[str] = "dae"
    components: ClassVar[tuple[str, ...]] = ("box_residual", "top_residual")

    image_size: int = 64
    epochs: int = 100
    width: int = 16
    depth: int = 4
    noise_std: float = 0.2
    noise_grid: int = 8
    augment: bool = True

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        cfg = self.train_config(train, val, "DAE epochs", optimizer="adamw", weight_decay=1e-5, schedule="cosine")
        device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        model = (self.model_ if self.warm_start and self.is_fitted_network() else self.network()).to(device)
        net = wrap_ddp(model, device)
        opt = cfg.make_optimizer(model.parameters())

        def corrupt(x, gen):
            clean = jitter(x, gen) if self.augment else x
            return clean + coarse_noise(clean.shape, self.noise_grid, self.noise_std, gen, device), clean

        def loss(m, noisy, clean):
            return (m(noisy) - clean).pow(2).flatten(1).mean(1)

        def val_loss(x, gen):
            return loss(model, x + coarse_noise(x.shape, self.noise_grid, self.noise_std, gen, device), x)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, corrupt), train, cfg, val=val,
                            val_loss=val_loss, prepare=normalise)
        self.model_ = model.eval()
        self.record(result)

    def _forward(self, images: np.ndarray, pictures: bool = False) -> dict[str, np.ndarray]:
        s = self.image_size
        lo, hi = int(0.1 * s), int(0.9 * s)

        def fn(x):
            recon = self.model_(x)
            res = median_filter((x - recon).abs())
            box = res[:, :, lo:hi, lo:hi].flatten(1)
            out = {"box": box.mean(1), "top": box.topk(max(1, box.shape[1] // 20), dim=1).values.mean(1)}
            if pictures:
                out.update({"map": res[:, 0], "recon": (recon[:, 0] + 1) / 2})
            return out
        return map_batches(fn, normalise(images), 64, 1, next(self.model_.parameters()).device)

    def score_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        box = out["box"].astype(np.float64)
        return {"box_residual": box, "top_residual": out["top"].astype(np.float64), "score": box}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, pictures=True)["map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self._forward(images, pictures=True)["recon"], 0, 1)

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps of a normalised batch, finest first."""
        feats = []
        for i, block in enumerate(self.model_.down):
            x = block(x if i == 0 else self.model_.pool(x))
            feats.append(x)
        return feats

    def features(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"f": self.encoder_features(x)[-1].mean((2, 3))}, normalise(images), 64, 1,
                           next(self.model_.parameters()).device)["f"]

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def restore(self, weights: dict, state: dict) -> None:
        self.model_ = load_module(self.network, weights, self.device)

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"U-Net width {self.width} depth {self.depth}"}
