"""The opacity segmenter's scoring graph: the share of the lung field it segments, and (AnatPaste's scoring) the
distance of its encoder's features to the normals' Gaussian."""
from __future__ import annotations

import torch

from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.parts.unet import UNet

SCORE_BOX = (0.1, 0.9)
SCORES = ("top_map", "features", "both")


def map_scores(prob: torch.Tensor, top_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, mean of the top share) of the opacity probabilities (N, 1, S, S) inside the score box."""
    s = prob.shape[-1]
    lo, hi = int(SCORE_BOX[0] * s), int(SCORE_BOX[1] * s)
    box = prob[:, :, lo:hi, lo:hi].flatten(1)
    k = max(1, int(box.shape[1] * top_fraction))
    return box.mean(1), box.topk(k, dim=1).values.mean(1)


class OpacityGraph(ScoringGraph):
    def __init__(self, net: UNet, top_fraction: float, score_from: str = "top_map", feature_mean=None,
                 feature_precision=None, standardise: dict | None = None):
        super().__init__()
        self.net, self.top_fraction, self.score_from = net, float(top_fraction), score_from
        self.gaussian = feature_mean is not None
        if self.gaussian:
            self.register_buffer("feature_mean", torch.as_tensor(feature_mean, dtype=torch.float64))
            self.register_buffer("feature_precision", torch.as_tensor(feature_precision, dtype=torch.float64))
        scale = standardise or {}
        self.register_buffer("scale", torch.tensor([scale.get("top_map", (0.0, 1.0)),
                                                    scale.get("feature_distance", (0.0, 1.0))], dtype=torch.float64))
        self.outputs = ("mean_map", "top_map", *(("feature_distance",) if score_from != "top_map" else ()),
                        "score", "map", "features")

    def measure(self, images):
        skips = self.net.encode(normalise(images))
        prob = torch.sigmoid(self.net.decode(skips))
        mean, top = map_scores(prob, self.top_fraction)
        feats = skips[-1].mean((2, 3))
        out = {"mean_map": mean, "top_map": top, "map": prob[:, 0], "features": feats}
        if self.gaussian:
            d = feats.double() - self.feature_mean
            out["feature_distance"] = ((d @ self.feature_precision) * d).sum(1)
        return out

    def combine(self, raw):
        if self.score_from == "top_map":
            return {**raw, "score": raw["top_map"]}
        z_map = (raw["top_map"].double() - self.scale[0, 0]) / self.scale[0, 1]
        z_feat = (raw["feature_distance"] - self.scale[1, 0]) / self.scale[1, 1]
        return {**raw, "score": z_feat if self.score_from == "features" else (z_map + z_feat) / 2}
