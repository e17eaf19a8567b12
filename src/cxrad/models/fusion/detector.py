"""Score fusion: several detectors trained on the same normal images, each score standardised on held-out
normal images, then averaged.

Method: late fusion of heterogeneous outlier detectors by score standardisation and averaging (Aggarwal &
Sathe, "Theoretical foundations and algorithms for outlier ensembles", SIGKDD Explorations 17(1), 2015;
PyOD's ``pyod.models.combination.average`` over standardised scores). Averaging helps when the members make different
mistakes: here a learned pixel model (the coarse-noise DAE, which heals opacities) and hand-crafted regional
statistics (which see brightness and texture shifts directly).

What differs from PyOD: the standardisation is robust (median and IQR / 1.349 instead of mean and sd) and is
taken on the *held-out* normal images only, never on the images being scored, so a single image gets the same
score alone or in a batch. Each member sees the input at its own size (resized like any other input).
"""
from __future__ import annotations

import numpy as np
import torch

from ...bundle import detector_class
from ...data import ImageSet
from ...detector import RUNTIME_PARAMS, Detector, _finite

RULES = ("mean", "max")
_IQR_TO_SD = 1.349  # the IQR of a standard normal distribution


class FusionDetector(Detector):
    kind = "fusion"

    def __init__(self, members: list[str] | tuple[str, ...] = ("dae", "regional"), member_params: dict | None = None,
                 rule: str = "mean", epochs: int | None = None, **common):
        super().__init__(**common)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if not members:
            raise ValueError("a fusion needs at least one member detector")
        self.members = [str(m) for m in members]
        for kind in self.members:
            detector_class(kind)  # an unknown kind fails here, before any training
        self.member_params = {k: dict(v) for k, v in (member_params or {}).items()}
        unused = set(self.member_params) - set(self.members)
        if unused:
            raise ValueError(f"member_params names {sorted(unused)}, which are not members {self.members}")
        self.rule, self.epochs = rule, epochs
        self.components = tuple(k if self.members.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(self.members))

    def _build_members(self) -> list[Detector]:
        """Unfitted members: the fusion's runtime settings and seed, then each kind's ``member_params``."""
        built = []
        for i, kind in enumerate(self.members):
            cls = detector_class(kind)
            params = {"seed": self.seed, "device": self.device, "progress": self.progress,
                      "cache_dir": self.cache_dir, "resize": self.resize, "batch_size": self.batch_size,
                      "checkpoint_dir": f"{self.checkpoint_dir}/{i}-{kind}" if self.checkpoint_dir else None}
            if self.epochs is not None and "epochs" in cls._param_names():
                params["epochs"] = self.epochs
            params.update(self.member_params.get(kind, {}))
            built.append(cls(**params))
        return built

    @staticmethod
    def _at_size(member: Detector, images: np.ndarray) -> np.ndarray:
        return np.asarray(member._as_imageset(ImageSet.from_arrays(images)).images)

    # --------------------------------------------------------------------------------------------- fit
    def _fit(self, train: np.ndarray, val: np.ndarray) -> None:
        self.members_ = self._build_members()
        for m in self.members_:
            m._fit(self._at_size(m, train), self._at_size(m, val))
            # members with their own score calibration (the CAE's OR rule) learn it on the same normals
            m._calibrate_components(m._score(self._at_size(m, val)))
        # the members' loss curves (a statistics member's one-off summaries would flatten the plot)
        self.history_ = {f"{name}.{k}": v for name, m in zip(self.components, self.members_)
                         for k, v in getattr(m, "history_", {}).items() if "loss" in k}

    def _member_scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(m._score(self._at_size(m, images))["score"], np.float64)
                for name, m in zip(self.components, self.members_)}

    def _calibrate_components(self, raw: dict) -> None:
        self.standardise_ = {}
        for name in self.components:
            s = _finite(raw[name], f"{name} normal validation")
            q1, median, q3 = np.percentile(s, [25, 50, 75])
            scale = (q3 - q1) / _IQR_TO_SD
            self.standardise_[name] = (float(median), float(scale if scale > 0 else np.std(s) + 1e-12))

    def _standardised(self, raw: dict) -> dict[str, np.ndarray]:
        return {n: (raw[n] - self.standardise_[n][0]) / self.standardise_[n][1] for n in self.components}

    def _rescore(self, raw: dict) -> np.ndarray:
        z = np.stack(list(self._standardised(raw).values()))
        return z.mean(0) if self.rule == "mean" else z.max(0)

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raw = self._member_scores(images)
        if not hasattr(self, "standardise_"):  # inside fit, before the normal statistics exist
            return {**raw, "score": np.zeros(len(images))}
        return {**self._standardised(raw), "score": self._rescore(raw)}

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
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, m in enumerate(self.members_) for k, v in m._tensors().items()}

    def _meta(self) -> dict:
        return {"members": [{"kind": m.kind, "params": {k: v for k, v in m.get_params().items()
                                                          if k not in RUNTIME_PARAMS},
                             "state": m._meta()} for m in self.members_],
                "standardise": self.standardise_}

    def _architecture(self) -> dict:
        return {**super()._architecture(), "members": [m._architecture() for m in self.members_]}

    def _restore(self, tensors: dict, state: dict) -> None:
        saved = state.get("members", [])
        if [s.get("kind") for s in saved] != self.members:
            raise ValueError(f"the bundle's members {[s.get('kind') for s in saved]} are not {self.members}")
        self.members_ = []
        for i, (kind, s) in enumerate(zip(self.members, saved)):
            m = detector_class(kind)(**s["params"], device=self.device)
            m._restore({k[len(f"{i}."):]: v for k, v in tensors.items() if k.startswith(f"{i}.")}, s["state"])
            self.members_.append(m)
        self.standardise_ = {k: (float(a), float(b)) for k, (a, b) in state["standardise"].items()}
