"""Score fusion of several detectors (method and differences: README.md beside this file)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.data import DataError, ImageSet, as_imageset
from cxrad.detectors.base import Detector, finite_scores
import cxrad.detectors.thresholds as th
from cxrad.detectors.fusion.graph import FusionGraph
from cxrad.detectors.graph import combine_arrays
from cxrad.detectors.registry import detector_class

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
            self.standardise_[name] = th.robust_scale(s)

    # ------------------------------------------------------------------------ fusion of fitted models
    @classmethod
    def from_fitted(cls, members: list[Detector], normals, rule: str = "mean", specificity: float = 0.95,
                    cache_dir: str | None = None, progress: bool = False) -> "FusionDetector":
        """The fusion of detectors fitted separately (shipped models, bundles of other runs), with no training.

        Each member's score is standardised on its own held-out normal scores, as ``fit`` does. The fusion's
        normal scores and threshold come from the normal images of ``normals`` that no member trained on (by the
        file hashes the members' bundles record; a member that records none shares them with a member of the
        same training-data fingerprint), so percentiles and the threshold are measured on unseen films."""
        if not members:
            raise ValueError("a fusion needs at least one fitted member")
        for m in members:
            m._check_fitted()
        sizes = {}
        for m in members:
            if sizes.setdefault(m.image_size, m.resize) != m.resize:
                raise ValueError(f"members at {m.image_size} px differ in resize ({sizes[m.image_size]!r} and "
                                 f"{m.resize!r}); they would be given the same input")
        big = max(members, key=lambda m: m.image_size)  # the others are resized down from its input
        fusion = cls(members=tuple(m.kind for m in members), image_size=big.image_size, resize=big.resize,
                     rule=rule, specificity=specificity, device=big.device, cache_dir=cache_dir,
                     progress=progress).check_settings()
        fusion.members_ = list(members)
        fusion.standardise_ = {name: th.robust_scale(m.normal_scores_) for name, m in
                               zip(fusion.components, members)}
        seen = _training_hashes(members)
        images = as_imageset(normals, fusion.prep, cache_dir, progress)
        normal = images.subset(images.labels == 0)
        if "sha256" not in normal.frame or (normal.frame["sha256"] == "").any():
            raise DataError("the calibration normals must be image files: their hashes show which ones the members "
                            "trained on")
        unseen = normal.subset(~normal.frame["sha256"].astype(str).str[:16].isin(seen).to_numpy())
        if len(unseen) < 2:
            raise DataError(f"only {len(unseen)} of the {len(normal)} calibration normals are unseen by every "
                            "member; need at least 2 normal films that no member trained on")
        fusion.learn_normal_scores(fusion._run(np.asarray(unseen.images), raw=True), "calibration normal")
        fusion.history_ = {}
        prints = sorted({m.train_fingerprint_ for m in members})
        fusion.train_fingerprint_ = prints[0] if len(prints) == 1 else \
            hashlib.sha256("\n".join(prints).encode()).hexdigest()
        fusion.train_hashes_ = sorted(seen)
        fusion.n_train_, fusion.n_val_ = len(seen), len(unseen)
        fusion.n_calibration_seen_ = len(normal) - len(unseen)  # left out: some member trained on them
        return fusion

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
        return {"members": [{"kind": m.kind, "params": m.learned_params(), "state": m.state(),
                             **_training_data(m)} for m in self.members_],
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
            td = s.get("training_data") or {}  # members fitted apart (from_fitted) keep what they trained on
            if not isinstance(td.get("fingerprint", ""), str) or not isinstance(td.get("n_train", 0), int):
                raise ValueError(f"member {i}'s training_data must hold a text fingerprint and a count")
            if td:
                m.train_fingerprint_, m.n_train_ = td.get("fingerprint"), td.get("n_train")
            self.members_.append(m)
        self.standardise_ = {k: (float(a), float(b)) for k, (a, b) in state["standardise"].items()}
        if not all(np.isfinite(a) and np.isfinite(b) and b > 0 for a, b in self.standardise_.values()):
            raise ValueError("standardise holds a non-finite centre or a scale that is not positive")


def _training_data(member: Detector) -> dict:
    """What a member fitted apart trained on (a member trained inside the fusion shares the fusion's own)."""
    if getattr(member, "train_fingerprint_", None) is None:
        return {}
    return {"training_data": {"fingerprint": member.train_fingerprint_, "n_train": int(member.n_train_)}}


def _training_hashes(members: list[Detector]) -> set[str]:
    """The union of the members' training-file hash prefixes; a member that records none is covered by one with
    the same training-data fingerprint (the same images), else the fusion cannot be calibrated honestly."""
    by_print = {m.train_fingerprint_: m.train_hashes_ for m in members if getattr(m, "train_hashes_", None)}
    seen = set()
    for i, m in enumerate(members):
        hashes = getattr(m, "train_hashes_", None) or by_print.get(getattr(m, "train_fingerprint_", None))
        if not hashes:
            raise DataError(f"member {i} ({m.kind}) records neither its training images' hashes nor a training set "
                            "shared with a member that does: normals it never saw cannot be told apart")
        seen.update(hashes)
    return seen
