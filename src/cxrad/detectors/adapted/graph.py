"""The adapted detector's scoring graph: the reconstructions of the base DAE (normal films of other sites) and of
its copy fine-tuned on a site's unlabelled films, and how much they disagree."""
from __future__ import annotations

from cxrad.detectors.dae.graph import residual_scores
from cxrad.detectors.graph import ScoringGraph, normalise
from cxrad.detectors.parts.median import median_filter
from cxrad.detectors.parts.unet import UNet

SCORES = ("discrepancy", "site_residual", "base_residual")


class AdaptedGraph(ScoringGraph):
    outputs = ("discrepancy", "site_residual", "base_residual", "score", "map", "recon", "features")

    def __init__(self, base: UNet, site: UNet, score_from: str):
        super().__init__()
        self.base, self.site, self.score_from = base, site, score_from

    def measure(self, images):
        x = normalise(images)
        skips = self.site.encode(x)
        site, base = self.site.decode(skips), self.base(x)
        maps = {"discrepancy": median_filter((site - base).abs()), "site_residual": median_filter((x - site).abs()),
                "base_residual": median_filter((x - base).abs())}
        out = {name: residual_scores(m)[0] for name, m in maps.items()}
        return {**out, "score": out[self.score_from], "map": maps[self.score_from][:, 0],
                "recon": ((site[:, 0] + 1) / 2).clamp(0, 1), "features": skips[-1].mean((2, 3))}
