"""Synthetic-opacity self-supervised segmenter (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.graph import normalise_array
from cxrad.detectors.opacity.graph import SCORES, OpacityGraph
from cxrad.detectors.parts.augment import jitter
from cxrad.detectors.parts.unet import UNet
from cxrad.detectors.thresholds import robust_scale
from cxrad.training import fit_epochs, loss_step

#: where synthetic opacities are centred, as fractions of the side: the lung fields of a frontal film
LUNG_BOX = (0.2, 0.8, 0.12, 0.88)  # rows from, to; columns from, to


def lung_mask(x: torch.Tensor, dark_share: float = 0.45) -> torch.Tensor:
    """A soft mask (N, 1, H, W) of the lung fields of normalised frontal films, without labels: inside the lung
    box, the darkest ``dark_share`` of the smoothed image (the air-filled lungs are darker than the mediastinum,
    the diaphragm and the chest wall), as AnatPaste's unsupervised segmentation does by thresholding."""
    n, _, h, w = x.shape
    k = max(3, (h // 16) | 1)
    smooth = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    r0, r1, c0, c1 = LUNG_BOX
    box = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.bool)
    box[..., int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)] = True
    inside = smooth[box.expand_as(smooth)].reshape(n, -1)
    level = inside.quantile(dark_share, dim=1)[:, None, None, None]
    return ((smooth <= level) & box).float()


def synthesise(x: torch.Tensor, gen: torch.Generator, p: float = 0.5,
               anatomy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a soft-edged patch of another image of the batch (foreign-patch interpolation, FPI) into the lung
    field of about ``p`` of the images, brightened and blurred like an opacity; returns (images, target) where
    the target is the per-pixel blending factor (0 where nothing was changed). With ``anatomy``, the patch is
    kept inside the lung fields that ``lung_mask`` finds (AnatPaste's anatomy-aware pasting).

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
    if anatomy:
        target = target * lung_mask(x)
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
        The segmentation score is the mean of this top share of the predicted map inside the central box.
    anatomy : bool
        Paste the synthetic opacities only inside the lung fields (AnatPaste's anatomy-aware pasting).
    score_from : str
        'top_map' (the segmentation), 'features' (Mahalanobis distance of the encoder's bottleneck features to a
        Ledoit-Wolf Gaussian of the training normals', as CutPaste and AnatPaste score) or 'both' (the mean of the
        two, each standardised by its median and IQR on the held-out normals).
    """

    kind: ClassVar[str] = "opacity"
    supports_sample_weight: ClassVar[bool] = True
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "depth": 3}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "width": (8, 512), "depth": (1, 8),
                              "synthetic_share": (0.0, 1.0), "top_fraction": (0.0, 1.0)}
    choices: ClassVar[dict] = {**TrainedDetector.choices, "score_from": SCORES}
    fitted_arrays: ClassVar[dict] = {"feature_mean_": "feature_mean", "feature_precision_": "feature_precision"}

    image_size: int = 64
    epochs: int = 100
    width: int = 16
    depth: int = 4
    synthetic_share: float = 0.5
    augment: bool = True
    top_fraction: float = 0.05
    anatomy: bool = False
    score_from: str = "top_map"

    @property
    def components(self) -> tuple[str, ...]:
        return ("mean_map", "top_map") + (() if self.score_from == "top_map" else ("feature_distance",))

    def learned_params(self) -> dict:
        params = super().learned_params()
        for name, plain in (("anatomy", False), ("score_from", "top_map")):
            if params[name] == plain:  # bundles and run keys of the plain segmenter stay as they were
                params.pop(name)
        return params

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        cfg = self.train_config(train, val, "opacity epochs", sample_weight, optimizer="adamw", weight_decay=1e-5,
                                schedule="cosine")
        model, net, device = self.start_network(self.network)
        opt = cfg.make_optimizer(model.parameters())

        def corrupt(x, gen):
            return synthesise(jitter(x, gen) if self.augment else x, gen, self.synthetic_share, self.anatomy)

        def loss(m, inputs, target):
            return F.binary_cross_entropy_with_logits(m(inputs), target, reduction="none").flatten(1).mean(1)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, corrupt), train, cfg, val=val,
                            val_loss=lambda x, gen: loss(model, *synthesise(x, gen, self.synthetic_share,
                                                                             self.anatomy)),
                            prepare=normalise_array, weights=sample_weight)
        self.model_ = model.eval()
        self.record(result)
        self.fit_after_training(train)

    def fit_after_training(self, train: np.ndarray) -> None:
        if self.score_from != "top_map":
            from sklearn.covariance import LedoitWolf  # here: scoring needs no scikit-learn
            # (every training image once: sampling weights shape what the segmenter sees, not this Gaussian)
            feats = self._run(train, keep=("features",), raw=True)["features"].astype(np.float64)
            gauss = LedoitWolf().fit(feats)
            self.feature_mean_, self.feature_precision_ = gauss.location_, gauss.precision_

    def calibrate_outputs(self, raw: dict) -> None:
        self.standardise_ = {name: robust_scale(raw[name]) for name in ("top_map", "feature_distance")
                             if name in raw}

    def scoring_graph(self) -> OpacityGraph:
        return OpacityGraph(self.model_, self.top_fraction, self.score_from, getattr(self, "feature_mean_", None),
                            getattr(self, "feature_precision_", None), getattr(self, "standardise_", {}))

    def state(self) -> dict:
        return {**super().state(), "standardise": getattr(self, "standardise_", {})}

    def restore(self, weights: dict, state: dict) -> None:
        super().restore(weights, state)
        self.standardise_ = {k: (float(a), float(b)) for k, (a, b) in state.get("standardise", {}).items()}

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"U-Net segmenter width {self.width} depth {self.depth}"}
