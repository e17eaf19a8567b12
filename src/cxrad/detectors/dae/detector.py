"""Coarse-noise denoising autoencoder (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.dae.graph import DAEGraph
from cxrad.detectors.graph import normalise_array
from cxrad.detectors.parts.augment import jitter
from cxrad.detectors.parts.unet import UNet
from cxrad.training import fit_epochs, loss_step


def coarse_noise(shape, grid: int, std: float, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise on a grid x grid lattice, upsampled bilinearly to the image and rolled by a random shift."""
    n, _, h, w = shape
    low = torch.randn(n, 1, grid, grid, generator=generator) * std
    noise = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(0, h, (2,), generator=generator))
    return torch.roll(noise, shifts=(dy, dx), dims=(2, 3)).to(device)


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
    trim : float
        Robust loss: each batch leaves out this share of its images with the largest losses (for training on films
        that may hold abnormal ones, such as a site's unlabelled backlog); 0 is the plain mean.
    """

    kind: ClassVar[str] = "dae"
    components: ClassVar[tuple[str, ...]] = ("box_residual", "top_residual")
    supports_sample_weight: ClassVar[bool] = True
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "depth": 3}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "width": (8, 512), "depth": (1, 8), "noise_std": (0, 10),
                              "noise_grid": (1, 512), "trim": (0.0, 0.9)}

    image_size: int = 64
    epochs: int = 100
    width: int = 16
    depth: int = 4
    noise_std: float = 0.2
    noise_grid: int = 8
    augment: bool = True
    trim: float = 0.0

    def check_settings(self):
        super().check_settings()
        if self.width % 8:  # the U-Net's GroupNorm splits every layer's channels into 8 groups
            raise ValueError(f"setting width must be a multiple of 8, not {self.width}")
        return self

    def learned_params(self) -> dict:
        params = super().learned_params()
        if not self.trim:  # bundles and run keys of plain DAEs stay as they were
            params.pop("trim")
        return params

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        cfg = self.train_config(train, val, "DAE epochs", sample_weight, optimizer="adamw", weight_decay=1e-5,
                                schedule="cosine")
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())

        def corrupt(x, gen):
            clean = jitter(x, gen) if self.augment else x
            return clean + coarse_noise(clean.shape, self.noise_grid, self.noise_std, gen, device), clean

        def loss(m, noisy, clean):
            per_image = (m(noisy) - clean).pow(2).flatten(1).mean(1)
            if self.trim and m.training:  # the share of the batch that fits worst is left out (a trimmed mean)
                per_image = per_image.sort().values[:max(1, int(round(len(per_image) * (1 - self.trim))))]
            return per_image

        def val_loss(x, gen):
            return loss(model, x + coarse_noise(x.shape, self.noise_grid, self.noise_std, gen, device), x)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, corrupt), train, cfg, val=val,
                            val_loss=val_loss, prepare=normalise_array, weights=sample_weight)
        self.model_ = model.eval()
        self.record(result)

    def scoring_graph(self) -> DAEGraph:
        return DAEGraph(self.model_)

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"U-Net width {self.width} depth {self.depth}"}
