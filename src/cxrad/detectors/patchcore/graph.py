"""PatchCore's scoring graph: patch features of the encoder, each patch's distance to the memory bank (k-NN) or
to its position's Gaussian (PaDiM), and the image's worst patches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.parts.unet import UNet

SCORE_BOX = (0.1, 0.9)
#: memory-bank patches compared at once: bounds the (chunk, patches, bank) distance matrix
BANK_BLOCK = 4096


def patch_features(encoder: UNet, x: torch.Tensor, levels) -> torch.Tensor:
    """(N, P, D) patch features: the chosen encoder levels, each averaged over a 3x3 neighbourhood (as
    PatchCore aggregates), resized to the coarsest level's grid and concatenated."""
    maps = encoder.encode(x)
    chosen = [maps[i] for i in levels]
    side = chosen[-1].shape[-1]
    out = [F.adaptive_avg_pool2d(F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False), side)
           for f in chosen]
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


def knn_patch_scores(feats: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N, P) distance of each patch to its nearest memory-bank patch, a block of the bank at a time."""
    best = None
    for start in range(0, bank.shape[0], BANK_BLOCK):
        d = torch.cdist(feats, bank[start:start + BANK_BLOCK][None].expand(feats.shape[0], -1, -1)).amin(2)
        best = d if best is None else torch.minimum(best, d)
    return best


def gaussian_patch_scores(feats: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, P) squared Mahalanobis distance of each patch to its position's Gaussian."""
    diff = feats - mean[None]
    return torch.einsum("npd,pde,npe->np", diff, precision, diff)


def image_scores(patch: torch.Tensor, top_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, mean of the top share) of the patch scores (N, side, side) inside the score box."""
    side = patch.shape[-1]
    lo, hi = int(SCORE_BOX[0] * side), max(int(SCORE_BOX[0] * side) + 1, int(round(SCORE_BOX[1] * side)))
    box = patch[:, lo:hi, lo:hi].flatten(1)
    k = max(1, int(box.shape[1] * top_fraction))
    return box.amax(1), box.topk(k, dim=1).values.mean(1)


class PatchCoreGraph(ScoringGraph):
    outputs = ("max_patch", "top_patches", "score", "map", "features")

    def __init__(self, encoder: UNet, levels, top_fraction: float, bank=None, mean=None, precision=None):
        super().__init__()
        self.encoder, self.levels, self.top_fraction = encoder, tuple(int(v) for v in levels), float(top_fraction)
        self.method = "knn" if bank is not None else "gaussian"
        for name, value in (("bank", bank), ("mean", mean), ("precision", precision)):
            if value is not None:
                self.register_buffer(name, torch.as_tensor(value))

    def measure(self, images):
        feats = patch_features(self.encoder, normalise(images), self.levels)
        patch = knn_patch_scores(feats, self.bank) if self.method == "knn" else \
            gaussian_patch_scores(feats, self.mean, self.precision)
        side = int(round(feats.shape[1] ** 0.5))
        patch = patch.reshape(-1, side, side)
        worst, top = image_scores(patch, self.top_fraction)
        size = images.shape[-1]
        amap = F.interpolate(patch[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return {"max_patch": worst, "top_patches": top, "score": top, "map": amap, "features": feats.mean(1)}
