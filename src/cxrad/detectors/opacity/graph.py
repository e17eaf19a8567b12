"""The opacity segmenter's scoring graph: the share of the lung field it segments."""
from __future__ import annotations

import torch

from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.parts.unet import UNet

SCORE_BOX = (0.1, 0.9)


def map_scores(prob: torch.Tensor, top_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, mean of the top share) of the opacity probabilities (N, 1, S, S) inside the score box."""
    s = prob.shape[-1]
    lo, hi = int(SCORE_BOX[0] * s), int(SCORE_BOX[1] * s)
    box = prob[:, :, lo:hi, lo:hi].flatten(1)
    k = max(1, int(box.shape[1] * top_fraction))
    return box.mean(1), box.topk(k, dim=1).values.mean(1)


class OpacityGraph(ScoringGraph):
    outputs = ("mean_map", "top_map", "score", "map", "features")

    def __init__(self, net: UNet, top_fraction: float):
        super().__init__()
        self.net, self.top_fraction = net, float(top_fraction)

    def measure(self, images):
        skips = self.net.encode(normalise(images))
        prob = torch.sigmoid(self.net.decode(skips))
        mean, top = map_scores(prob, self.top_fraction)
        return {"mean_map": mean, "top_map": top, "score": top, "map": prob[:, 0], "features": skips[-1].mean((2, 3))}
