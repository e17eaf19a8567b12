"""Score fusion of several detectors (method and differences: README.md beside this file)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.data import ImageSet, as_imageset
from cxrad.detector import Detector, detector_class, finite_scores

RULES = ("mean", "max")
_IQR_TO_SD = 1.349  # the IQR of a standard normal distribution


def _digest(images: np.ndarray) -> str:
    arr = np.ascontiguousarray(images)
    return f"{arr.shape}{arr.dtype}" + hashlib.blake2b(arr.data, digest_size=16).hexdigest()


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

    members: tuple[str, ...] = ("dae", "regional")
    member_params: dict | None = None
    rule: str = "mean"
    epochs: int | None = None
    checkpoint_dir: str | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if not self.members:
            raise ValueError("a fusion needs at least one member detector")
        for kind in self.members:
            detector_class(kind)  # an unknown kind fails here, before any training
        unused = set(self.member_params or {}) - set(self.members)
        if unused:
            raise ValueError(f"member_params names {sorted(unused)}, which are not members {list(self.members)}")

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
    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        self.members_ = self._build_members()
        val_scores = {}
        for name, m in zip(self.components, self.members_):
            m.fit_arrays(self._at_size(m, train), self._at_size(m, val))
            # members with their own score calibration (the CAE's OR rule) learn it on the same normals
            raw = m.score_components(self._at_size(m, val))
            m.calibrate_components(raw)
            val_scores[name] = np.asarray(m.combine(raw)["score"], np.float64)
        # fit() scores the same held-out normals next; keep these so no member scores them twice
        self._fitted_val = (_digest(val), val_scores)
        # the members' loss curves (a statistics member's one-off summaries would flatten the plot)
        self.history_ = {f"{name}.{k}": v for name, m in zip(self.components, self.members_)
                         for k, v in getattr(m, "history_", {}).items() if "loss" in k}

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's own score, on the input resized to the member's size."""
        kept = self.__dict__.pop("_fitted_val", None)
        if kept is not None and kept[0] == _digest(images):
            return kept[1]
        return {name: np.asarray(m.score_arrays(self._at_size(m, images))["score"], np.float64)
                for name, m in zip(self.components, self.members_)}

    def calibrate_components(self, raw: dict) -> None:
        self.standardise_ = {}
        for name in self.components:
            s = finite_scores(raw[name], f"{name} normal validation")
            q1, median, q3 = np.percentile(s, [25, 50, 75])
            scale = (q3 - q1) / _IQR_TO_SD
            self.standardise_[name] = (float(median), float(scale if scale > 0 else np.std(s) + 1e-12))

    def _standardised(self, raw: dict) -> dict[str, np.ndarray]:
        return {n: (raw[n] - self.standardise_[n][0]) / self.standardise_[n][1] for n in self.components}

    def combine(self, raw: dict) -> dict[str, np.ndarray]:
        z = self._standardised(raw)
        stacked = np.stack(list(z.values()))
        return {**z, "score": stacked.mean(0) if self.rule == "mean" else stacked.max(0)}

    # ------------------------------------------------------------------ pictures: the first member that has them
    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._first("anomaly_map", images)

    def reconstruct(self, images: np.ndarray) -> np.ndarray | None:
        try:
            return self._first("reconstruct", images)
        except NotImplementedError:
            return None

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._first("features", images)

    def _first(self, method: str, images: np.ndarray) -> np.ndarray:
        """The first member's output that exists (not raising NotImplementedError, not None), with maps
        resized back to the fusion's input size."""
        for m in self.members_:
            try:
                out = getattr(m, method)(self._at_size(m, images))
            except NotImplementedError:
                continue
            if out is None:
                continue
            out = np.asarray(out, np.float32)
            if method == "features" or out.shape[1:] == (self.image_size, self.image_size):
                return out
            return torch.nn.functional.interpolate(torch.from_numpy(out)[:, None], size=(self.image_size,) * 2,
                                                   mode="bilinear", align_corners=False)[:, 0].numpy()
        raise NotImplementedError(f"no member of this fusion ({', '.join(self.members)}) has {method}")

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
            m = detector_class(kind)(**s["params"], device=self.device)
            m.restore({k[len(f"{i}."):]: v for k, v in tensors.items() if k.startswith(f"{i}.")}, s["state"])
            self.members_.append(m)
        self.standardise_ = {k: (float(a), float(b)) for k, (a, b) in state["standardise"].items()}
