"""Synthetic-opacity self-supervised segmenter (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.graph import normalise_array
from cxrad.detectors.opacity.graph import OpacityGraph
from cxrad.detectors.parts.augment import jitter
from cxrad.detectors.parts.unet import UNet
from cxrad.training import fit_epochs, loss_step

#: where synthetic opacities are centred, as fractions of the side: the lung fields of a frontal film
LUNG_BOX = (0.2, 0.8, 0.12, 0.88)  # rows from, to; columns from, to


def synthesise(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a soft-edged patch of another image of the batch (foreign-patch interpolation, FPI) into the lung
    field of about ``p`` of the images, brightened and blurred like an opacity; returns (images, target) where
    the target is the per-pixel blending factor (0 where nothing was changed).

    Every random draw comes from ``gen`` and covers the whole batch, so a batch split over processes is
    corrupted exactly as it would be in one process."""
    n, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen).to(x.device)  # noqa: E731
    chosen = (u(n) < p).float()
    r0, r1, c0, c1 = LUNG_BOX
    cy, cx = r0 + (r1 - r0) * u(n), c0 + (c1 - c0) * u(n)      # centre, fractions of the side
    ry, rx = 0.05 + 0.25 * u(n), 0.05 + 0.2 * u(n)             # radii: from a nodule to a lobe
    alpha = (0.15 + 0.85 * u(n)) * chosen                       # FPI's interpolation factor
    bright = 0.8 * u(n)                                         # opacities are brighter (images span [-1, 1])
    yy = torch.linspace(0, 1, h, device=x.device)[None, :, None]
    xx = torch.linspace(0, 1, w, device=x.device)[None, None, :]
    d = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2
    mask = torch.sigmoid((1 - d.sqrt()) * 8)[:, None]            # soft ellipse, ~1 inside, 0 outside
    # the source: another image of the batch, shifted, blurred (opacities hide fine texture) and brightened
    shift = ((u(n, 2) - 0.5) * 0.4)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    source = F.grid_sample(torch.roll(x, 1, dims=0), F.affine_grid(theta, list(x.shape), align_corners=False),
                           padding_mode="border", align_corners=False)
    source = F.avg_pool2d(source, 5, stride=1, padding=2, count_include_pad=False) + bright[:, None, None, None]
    target = alpha[:, None, None, None] * mask
    return x * (1 - target) + source * target, target


@dataclass(repr=False, eq=False)
class OpacityDetector(TrainedDetector):
    """A U-Net trained to segment synthetic opacities pasted into normal films; on a real film, the share of
    the lung field it segments is the anomaly score.

    Parameters
    ----------
    width : int
        Channels of the U-Net's first level (doubled at each level).
    depth : int
        Levels of the U-Net.
    synthetic_share : float
        Share of training images that get a synthetic opacity (the others teach it what to leave alone).
    augment : bool
        Random shift, scale, brightness and contrast while training.
    top_fraction : float
        The score is the mean of this top share of the predicted map inside the central box.
    """

    kind: ClassVar[str] = "opacity"
    components: ClassVar[tuple[str, ...]] = ("mean_map", "top_map")
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "depth": 3}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "width": (8, 512), "depth": (1, 8),
                              "synthetic_share": (0.0, 1.0), "top_fraction": (0.0, 1.0)}

    image_size: int = 64
    epochs: int = 100
    width: int = 16
    depth: int = 4
    synthetic_share: float = 0.5
    augment: bool = True
    top_fraction: float = 0.05

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        cfg = self.train_config(train, val, "opacity epochs", optimizer="adamw", weight_decay=1e-5,
                                schedule="cosine")
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())

        def corrupt(x, gen):
            return synthesise(jitter(x, gen) if self.augment else x, gen, self.synthetic_share)

        def loss(m, inputs, target):
            return F.binary_cross_entropy_with_logits(m(inputs), target, reduction="none").flatten(1).mean(1)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, corrupt), train, cfg, val=val,
                            val_loss=lambda x, gen: loss(model, *synthesise(x, gen, self.synthetic_share)),
                            prepare=normalise_array)
        self.model_ = model.eval()
        self.record(result)

    def scoring_graph(self) -> OpacityGraph:
        return OpacityGraph(self.model_, self.top_fraction)

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"U-Net segmenter width {self.width} depth {self.depth}"}
