"""Score fusion of several detectors (method and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.data import ImageSet, as_imageset
from cxrad.detectors.base import Detector, finite_scores
from cxrad.detectors.fusion.graph import FusionGraph
from cxrad.detectors.graph import combine_arrays
from cxrad.detectors.registry import detector_class
from cxrad.detectors.thresholds import robust_scale

RULES = ("mean", "max")


@dataclass(repr=False, eq=False)
class FusionDetector(Detector):
    """Several detectors trained on the same normals; each score is standardised on the held-out normals
    (median, IQR) and the standardised scores are averaged (or their maximum taken).

    Parameters
    ----------
    members : tuple
        Detector kinds to fuse.
    member_params : dict
        Settings per member kind, e.g. {dae: {image_size: 64, epochs: 8}}.
    rule : str
        'mean' or 'max' of the standardised member scores.
    epochs : int
        Epochs of every member trained by gradient descent (None: each member's own).
    checkpoint_dir : str
        Folder whose sub-folders hold each member's training checkpoints.
    """

    kind: ClassVar[str] = "fusion"
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1,
                            "member_params": {"dae": {"width": 8, "depth": 3, "image_size": 32}}}
    choices: ClassVar[dict] = {**Detector.choices, "rule": RULES}

    members: tuple[str, ...] = ("dae", "regional")
    member_params: dict | None = None
    rule: str = "mean"
    epochs: int | None = None
    checkpoint_dir: str | None = None

    def check_settings(self):
        super().check_settings()
        if not self.members:
            raise ValueError("a fusion needs at least one member detector")
        for kind in self.members:
            detector_class(kind)  # an unknown kind fails here, before any training
        unused = set(self.member_params or {}) - set(self.members)
        if unused:
            raise ValueError(f"member_params names {sorted(unused)}, which are not members {list(self.members)}")
        for m in self._build_members():
            m.check_settings()
        return self

    @property
    def components(self) -> tuple[str, ...]:
        """One per member: its kind, numbered when a kind appears twice."""
        kinds = [str(k) for k in self.members]
        return tuple(k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds))

    def _build_members(self) -> list[Detector]:
        """Unfitted members: the fusion's runtime settings and seed, then each kind's ``member_params``."""
        built = []
        for i, kind in enumerate(self.members):
            cls = detector_class(kind)
            names = {s["name"] for s in cls.settings()}
            params = {"seed": self.seed, "device": self.device, "progress": self.progress,
                      "cache_dir": self.cache_dir, "resize": self.resize, "batch_size": self.batch_size}
            if "checkpoint_dir" in names and self.checkpoint_dir:
                params["checkpoint_dir"] = f"{self.checkpoint_dir}/{i}-{kind}"
            if self.epochs is not None and "epochs" in names:
                params["epochs"] = self.epochs
            params.update((self.member_params or {}).get(kind, {}))
            built.append(cls(**params))
        return built

    @staticmethod
    def _at_size(member: Detector, images: np.ndarray) -> np.ndarray:
        return np.asarray(as_imageset(ImageSet.from_arrays(images), member.prep).images)

    # --------------------------------------------------------------------------------------------- fit
    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        self.members_ = self._build_members()
        for m in self.members_:
            m.fit_arrays(self._at_size(m, train), self._at_size(m, val))
        # the members' loss curves (a statistics member's one-off summaries would flatten the plot)
        self.history_ = {f"{name}.{k}": v for name, m in zip(self.components, self.members_)
                         for k, v in getattr(m, "history_", {}).items() if "loss" in k}

    def calibrate_outputs(self, raw: dict) -> None:
        """Each member learns its own calibration (the CAE's OR rule) from its raw outputs on the held-out
        normals; then each member's score is standardised by its median and IQR there."""
        self.standardise_ = {}
        for i, (name, m) in enumerate(zip(self.components, self.members_)):
            mine = {k.partition("/")[2]: v for k, v in raw.items() if k.startswith(f"{i}/")}
            m.calibrate_outputs(mine)
            s = finite_scores(combine_arrays(m.scoring_graph(), mine)["score"], f"{name} normal validation")
            self.standardise_[name] = robust_scale(s)

    def input_specs(self) -> list[dict]:
        specs = super().input_specs()
        for m in self.members_ if hasattr(self, "members_") else self._build_members():
            if all(m.image_size != s["size"] for s in specs):
                specs.append({"name": f"images_{m.image_size}", "size": int(m.image_size), "resize": m.resize})
        return specs

    def scoring_graph(self) -> FusionGraph:
        sizes = [s["size"] for s in self.input_specs()]
        standardise = [getattr(self, "standardise_", {}).get(name, (0.0, 1.0)) for name in self.components]
        return FusionGraph([m.scoring_graph() for m in self.members_], [sizes.index(m.image_size) for m in
                           self.members_], self.components, standardise, self.rule, self.image_size)

    # ---------------------------------------------------------------------------------------- persistence
    def weights(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, m in enumerate(self.members_) for k, v in m.weights().items()}

    def state(self) -> dict:
        return {"members": [{"kind": m.kind, "params": m.learned_params(), "state": m.state()}
                            for m in self.members_],
                "standardise": self.standardise_}

    def architecture(self) -> dict:
        return {**super().architecture(), "members": [m.architecture() for m in self.members_]}

    def restore(self, tensors: dict, state: dict) -> None:
        saved = state.get("members", [])
        if [s.get("kind") for s in saved] != list(self.members):
            raise ValueError(f"the bundle's members {[s.get('kind') for s in saved]} are not {list(self.members)}")
        self.members_ = []
        for i, (kind, s) in enumerate(zip(self.members, saved)):
            m = detector_class(kind)(**s["params"], device=self.device).check_settings()
            m.restore({k[len(f"{i}."):]: v for k, v in tensors.items() if k.startswith(f"{i}.")}, s["state"])
            self.members_.append(m)
        self.standardise_ = {k: (float(a), float(b)) for k, (a, b) in state["standardise"].items()}
        if not all(np.isfinite(a) and np.isfinite(b) and b > 0 for a, b in self.standardise_.values()):
            raise ValueError("standardise holds a non-finite centre or a scale that is not positive")
