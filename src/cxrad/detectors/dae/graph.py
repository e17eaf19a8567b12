"""The DAE's scoring graph: the median-filtered residual between an image and the U-Net's reconstruction."""
from __future__ import annotations

import torch

from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.parts.median import median_filter
from cxrad.detectors.parts.unet import UNet


def residual_scores(res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, mean of the top 5 %) of a filtered residual map (N, 1, S, S) inside the central box (10-90 % of
    the side)."""
    s = res.shape[-1]
    box = res[:, :, int(0.1 * s):int(0.9 * s), int(0.1 * s):int(0.9 * s)].flatten(1)
    return box.mean(1), box.topk(max(1, box.shape[1] // 20), dim=1).values.mean(1)


class DAEGraph(ScoringGraph):
    outputs = ("box_residual", "top_residual", "score", "map", "recon", "features")

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def measure(self, images):
        x = normalise(images)
        skips = self.net.encode(x)
        recon = self.net.decode(skips)
        res = median_filter((x - recon).abs())
        mean, top = residual_scores(res)
        return {"box_residual": mean, "top_residual": top, "score": mean, "map": res[:, 0],
                "recon": ((recon[:, 0] + 1) / 2).clamp(0, 1), "features": skips[-1].mean((2, 3))}
