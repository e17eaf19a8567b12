"""DDAD's scoring graph: the normative ensemble (AE-Us trained on normals) and the unknown ensemble (trained on
normals + an unlabelled pool) reconstruct each image; the anomaly maps are their discrepancies, divided by the
normative ensemble's predicted variance (the AE-U form of the paper's scores)."""
from __future__ import annotations

import torch
from torch import nn

from cxrad.detectors.graph import ScoringGraph, normalise

SCORES = ("inter", "intra", "rec")


class DDADGraph(ScoringGraph):
    outputs = ("inter", "intra", "rec", "score", "map", "recon", "features")

    def __init__(self, normative: list[nn.Module], unknown: list[nn.Module], score_from: str):
        super().__init__()
        self.normative, self.unknown, self.score_from = nn.ModuleList(normative), nn.ModuleList(unknown), score_from
        if score_from not in SCORES:
            raise ValueError(f"score_from must be one of {SCORES}")

    def measure(self, images):
        x = normalise(images)
        z = self.normative[0].encoder(x)
        outs = [self.normative[0].decode(z)] + [net(x) for net in self.normative[1:]]
        mu_b = torch.stack([mu for mu, _ in outs])                       # (K, N, 1, S, S)
        var = torch.stack([logvar.exp() for _, logvar in outs]).mean(0)  # the normative uncertainty
        mean_b = mu_b.mean(0)
        maps = {"rec": (x - mean_b) ** 2 / var}
        maps["intra"] = (mu_b.var(0, unbiased=True) / var).sqrt() if len(outs) > 1 else torch.zeros_like(x)
        if len(self.unknown):
            mean_a = torch.stack([net(x)[0] for net in self.unknown]).mean(0)
            maps["inter"] = ((mean_a - mean_b) ** 2 / var).sqrt()
        else:
            maps["inter"] = torch.zeros_like(x)
        out = {name: m.mean((1, 2, 3)) for name, m in maps.items()}
        return {**out, "score": out[self.score_from], "map": maps[self.score_from][:, 0],
                "recon": ((mean_b[:, 0] + 1) / 2).clamp(0, 1), "features": z}
