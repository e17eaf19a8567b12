"""Coarse-noise denoising autoencoder (paper and differences: README.md beside this file)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detector import TrainedDetector
from cxrad.training import fit_epochs, load_module, loss_step, map_batches
from cxrad.models.augment import jitter, normalise
from cxrad.models.dae.model import UNet


def coarse_noise(shape, grid: int, std: float, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise on a grid x grid lattice, upsampled bilinearly to the image and rolled by a random shift."""
    n, _, h, w = shape
    low = torch.randn(n, 1, grid, grid, generator=generator) * std
    noise = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(0, h, (2,), generator=generator))
    return torch.roll(noise, shifts=(dy, dx), dims=(2, 3)).to(device)


def residual_scores(res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, mean of the top 5 %) of a filtered residual map (N, 1, S, S) inside the central box (10-90 % of
    the side); the detector and its ONNX graph both score with this."""
    s = res.shape[-1]
    box = res[:, :, int(0.1 * s):int(0.9 * s), int(0.1 * s):int(0.9 * s)].flatten(1)
    return box.mean(1), box.topk(max(1, box.shape[1] // 20), dim=1).values.mean(1)


@functools.lru_cache(maxsize=8)
def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Compare-exchange steps (a, b, keep_min, keep_max) that leave the median of ``n`` (odd) wires on wire
    n // 2: Batcher's odd-even merge sort, minus the steps that cannot reach that wire (for n = 25, 113 of
    140 steps and 202 min/max ops). A step's unused half is skipped: wire a gets the min, wire b the max."""
    size = 1 << (n - 1).bit_length()
    steps, p = [], 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:  # wires >= n are +inf
                        steps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, kept = {n // 2}, []
    for a, b in reversed(steps):
        if a in needed or b in needed:
            kept.append((a, b, a in needed, b in needed))
            needed |= {a, b}
    return tuple(reversed(kept))


def median_filter(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """k x k median of (N, 1, H, W) maps, reflect-padded (as scipy.ndimage.median_filter(mode='mirror')).

    A selection network of elementwise min/max over the k*k shifted maps: equal to torch.median over
    unfolded patches for finite inputs, ~4x faster on CPU, and it exports to ONNX as Min/Max nodes."""
    pad, (h, w) = k // 2, x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    wires = [padded[..., i:i + h, j:j + w] for i in range(k) for j in range(k)]
    for a, b, keep_min, keep_max in median_network(k * k):
        lo = torch.minimum(wires[a], wires[b]) if keep_min else None
        if keep_max:
            wires[b] = torch.maximum(wires[a], wires[b])
        if keep_min:
            wires[a] = lo
    return wires[k * k // 2]


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
    supports_sample_weight: ClassVar[bool] = True

    image_size: int = 64
    epochs: int = 100
    width: int = 16
    depth: int = 4
    noise_std: float = 0.2
    noise_grid: int = 8
    augment: bool = True

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
            return (m(noisy) - clean).pow(2).flatten(1).mean(1)

        def val_loss(x, gen):
            return loss(model, x + coarse_noise(x.shape, self.noise_grid, self.noise_std, gen, device), x)

        result = fit_epochs({"model": net}, {"opt": opt}, loss_step(net, loss, opt, corrupt), train, cfg, val=val,
                            val_loss=val_loss, prepare=normalise, weights=sample_weight)
        self.model_ = model.eval()
        self.record(result)

    def _forward(self, images: np.ndarray, pictures: bool = False) -> dict[str, np.ndarray]:
        def fn(x):
            recon = self.model_(x)
            res = median_filter((x - recon).abs())
            mean, top = residual_scores(res)
            return {"box": mean, "top": top, **({"map": res[:, 0], "recon": (recon[:, 0] + 1) / 2} if pictures else {})}
        return map_batches(fn, normalise(images), 64, 1, next(self.model_.parameters()).device)

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        box = out["box"].astype(np.float64)
        return {"box_residual": box, "top_residual": out["top"].astype(np.float64), "score": box}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, pictures=True)["map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self._forward(images, pictures=True)["recon"], 0, 1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"f": self.model_.encode(x)[-1].mean((2, 3))}, normalise(images), 64, 1,
                           next(self.model_.parameters()).device)["f"]

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def restore(self, weights: dict, state: dict) -> None:
        self.model_ = load_module(self.network, weights, self.device)

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"U-Net width {self.width} depth {self.depth}"}
