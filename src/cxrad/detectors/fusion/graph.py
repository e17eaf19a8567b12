"""A fusion's scoring graph: every member's graph on its own input, each member's score standardised by the
median and IQR of its held-out normal scores, then averaged (or the maximum taken)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrad.detectors.graph import ScoringGraph


class FusionGraph(ScoringGraph):
    """``inputs[i]`` is the input index of member i; ``names`` are the fusion's components, one per member."""

    def __init__(self, members: list[ScoringGraph], inputs: list[int], names: tuple[str, ...], standardise,
                 rule: str, size: int):
        super().__init__()
        self.members, self.inputs, self.names, self.rule, self.size = nn.ModuleList(members), inputs, names, rule, size
        self.outputs = (*names, "score", *[p for p in ("map", "recon", "features") if self._first(p) is not None])
        # (median, scale) of each member's score on the held-out normals
        self.register_buffer("standardise", torch.tensor(standardise, dtype=torch.float64).reshape(-1, 2))
        self.not_exportable = next((m.not_exportable for m in members if m.not_exportable), None)

    def _first(self, picture: str) -> int | None:
        return next((i for i, m in enumerate(self.members) if picture in m.outputs), None)

    def measure(self, *inputs):
        raw = {}
        for i, (member, k) in enumerate(zip(self.members, self.inputs)):
            raw.update({f"{i}/{name}": v for name, v in member.measure(inputs[k]).items()})
        for picture in ("map", "recon", "features"):  # the first member that has one gives it, at the fusion's size
            i = self._first(picture)
            if i is not None:
                v = raw[f"{i}/{picture}"]
                if picture != "features" and v.shape[-1] != self.size:
                    v = F.interpolate(v[:, None], size=(self.size, self.size), mode="bilinear",
                                      align_corners=False)[:, 0]
                raw[picture] = v
        return raw

    def combine(self, raw):
        z = []
        for i, member in enumerate(self.members):
            mine = {k.partition("/")[2]: v for k, v in raw.items() if k.startswith(f"{i}/")}
            z.append((member.combine(mine)["score"].double() - self.standardise[i, 0]) / self.standardise[i, 1])
        stacked = torch.stack(z, dim=1)
        score = stacked.mean(1) if self.rule == "mean" else stacked.amax(1)
        return {**dict(zip(self.names, z)), "score": score,
                **{p: raw[p] for p in ("map", "recon", "features") if p in raw}}
