"""The detector protocol every cxrad model follows (scikit-learn / PyOD style).

    det = SomeDetector(image_size=128).fit(normal_images)     # holds out a normal validation part
    table = det.score(images_or_paths)                        # one row per image, higher score = more anomalous
    det.calibrate(labelled_val, rule="crossing")              # optional: thresholds that need labels
    det.predict(images)                                       # 1 anomalous, 0 normal, -1 unreadable
    det.save("model/"); SomeDetector.load("model/")

Inputs are an :class:`~cxrad.data.ImageSet`, a uint8 array (N, H, W), a manifest DataFrame, or a list of
paths; unreadable paths become error rows in the score table instead of stopping the batch.

A subclass implements ``_fit(train, val)`` (uint8 arrays), ``_score(images) -> dict of per-image arrays``
with at least ``score``, ``_tensors()`` and ``_restore(tensors, doc)``; optionally ``anomaly_map``,
``reconstruct`` and ``features``. Fitted state ends in ``_``.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import thresholds as th
from .bundle import BundleError, load_bundle, save_bundle
from .data import DataError, ImageSet, load_images, patient_groups, split_by_patient
from .io import Preprocessing, resize

RUNTIME_PARAMS = {"device", "progress", "checkpoint_dir", "cache_dir"}


class NotFittedError(RuntimeError):
    pass


class Detector:
    kind = "base"
    #: names of the per-image score components (besides ``score``), for tables and reports
    components: tuple[str, ...] = ()
    #: components where a *lower* value is more anomalous (e.g. a log-density)
    lower_is_anomalous: tuple[str, ...] = ()

    def __init__(self, image_size: int = 128, resize: str = "stretch", seed: int = 0, device: str = "auto",
                 val_fraction: float = 0.1, specificity: float = 0.95, batch_size: int = 32,
                 progress: bool = False, checkpoint_dir: str | None = None, cache_dir: str | None = None):
        self.image_size = image_size
        self.resize = resize
        self.seed = seed
        self.device = device
        self.val_fraction = val_fraction
        self.specificity = specificity
        self.batch_size = batch_size
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir
        self.cache_dir = cache_dir

    # ------------------------------------------------------------------------------------------ params
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if "__init__" in klass.__dict__ and klass is not object:
                names += [p for p in inspect.signature(klass.__init__).parameters
                          if p not in ("self", "kwargs", "args", "common") and p not in names]
        return names

    def get_params(self) -> dict:
        return {n: getattr(self, n) for n in self._param_names()}

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.resize)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k not in RUNTIME_PARAMS)
        return f"{type(self).__name__}({shown})"

    # ------------------------------------------------------------------------------------------ inputs
    def _as_imageset(self, data) -> ImageSet:
        if isinstance(data, ImageSet):
            if data.images.shape[1:] == (self.image_size, self.image_size):
                return data
            images = np.stack([resize(im.astype(np.float32) / 255.0, self.prep) for im in data.images]) \
                if len(data) else np.zeros((0, self.image_size, self.image_size), np.uint8)
            return ImageSet(images, data.frame, self.prep, data.errors)
        if isinstance(data, np.ndarray) or torch.is_tensor(data):
            arr = np.asarray(data)
            if arr.ndim == 2:
                arr = arr[None]
            return self._as_imageset(ImageSet.from_arrays(arr))
        if isinstance(data, (str, Path)) or isinstance(data, (list, tuple, pd.DataFrame)):
            return load_images(data, self.prep, cache_dir=self.cache_dir, progress=self.progress)
        raise TypeError(f"cannot score data of type {type(data).__name__}")

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, data, val=None) -> "Detector":
        """Train on normal images. Abnormal rows (label 1) in ``data`` are ignored. Without ``val``, a
        patient-level ``val_fraction`` of the normals is held out to set the normal score distribution."""
        images = self._as_imageset(data)
        if len(images) == 0:
            raise DataError("the training set is empty (no readable images)")
        normal = images.subset(images.labels == 0)
        if len(normal) == 0:
            raise DataError("the training set has no normal images; detectors learn from normal images only")
        if val is None:
            train, val = self._hold_out_validation(normal)
        else:
            train, val = normal, self._as_imageset(val)
            val = val.subset(val.labels == 0)
        if len(val) < 2:
            raise DataError("need at least 2 normal validation images")
        if len(train) == 0:
            raise DataError("no normal training images are left after holding out the validation ones")
        self.history_: dict = {}
        self._fit(np.asarray(train.images), np.asarray(val.images))
        self.n_train_, self.n_val_ = len(train), len(val)
        self.train_fingerprint_ = _fingerprint(train)
        val_components = self._score(np.asarray(val.images))  # scored once: mapping-based scores are costly
        self._calibrate_components(val_components)
        val_scores = _finite(self._rescore(val_components), "normal validation")
        self.normal_scores_ = np.sort(val_scores.astype(np.float64))
        self.thresholds_ = {"quantile": th.quantile_threshold(val_scores, self.specificity)}
        self.threshold_rule_ = "quantile"
        self.threshold_ = self.thresholds_["quantile"]
        return self

    def _hold_out_validation(self, normal: ImageSet) -> tuple[ImageSet, ImageSet]:
        """Split normal images into (train, validation) by patient, ``val_fraction`` of them held out."""
        if len(normal) < 10:
            raise DataError(f"need at least 10 normal images to hold out validation ones, got {len(normal)}")
        if "patient_id" not in normal.frame:
            rng = np.random.default_rng(self.seed)
            is_val = np.zeros(len(normal), bool)
            is_val[rng.permutation(len(normal))[:max(2, int(round(self.val_fraction * len(normal))))]] = True
        else:
            part = split_by_patient(normal.frame, {"train": 1 - self.val_fraction, "val": self.val_fraction},
                                    seed=self.seed)
            is_val = (part == "val").to_numpy().copy()
            if is_val.sum() < 2:  # small sets: hold out whole patients, in seeded order, until 2 images
                groups = patient_groups(normal.frame).to_numpy()
                for g in np.random.default_rng(self.seed).permutation(np.unique(groups)):
                    is_val |= groups == g
                    if is_val.sum() >= 2:
                        break
        return normal.subset(~is_val), normal.subset(is_val)

    def _run_key(self, train: np.ndarray, val: np.ndarray, settings: list[str] | None = None) -> str:
        """Identifies a training run for checkpoints: data and the named settings (default: all), less
        ``epochs`` (so a finished run can be extended) and the runtime ones."""
        h = hashlib.sha256(np.ascontiguousarray(train).tobytes())
        h.update(np.ascontiguousarray(val).tobytes())
        settings = self._param_names() if settings is None else settings
        h.update(repr(sorted((k, getattr(self, k)) for k in settings
                             if k not in RUNTIME_PARAMS | {"epochs"})).encode())
        return h.hexdigest()

    def _calibrate_components(self, val_components: dict) -> None:
        """Hook: learn how to combine components from normal validation scores (before thresholds)."""

    def _rescore(self, components: dict) -> np.ndarray:
        """The score from already computed components, after ``_calibrate_components``."""
        return components["score"]

    def calibrate(self, data, rule: str = "crossing", specificity: float | None = None,
                  sensitivity: float | None = None, value: float | None = None, activate: bool = True) -> float:
        """Set a threshold from a labelled validation set (normal + abnormal). Returns the threshold."""
        self._check_fitted()
        images = self._as_imageset(data)
        scores = self._score(np.asarray(images.images))["score"] if len(images) else np.zeros(0)
        normal = _finite(scores[images.labels == 0], "normal calibration", minimum=0)
        abnormal = _finite(scores[images.labels == 1], "abnormal calibration", minimum=0)
        if sensitivity is not None:
            t, name = th.sensitivity_threshold(abnormal, sensitivity), f"sensitivity@{sensitivity:g}"
        elif rule == "quantile":
            spec = self.specificity if specificity is None else specificity
            base = normal if len(normal) else self.normal_scores_
            t, name = th.quantile_threshold(base, spec), "quantile"
        else:
            t, name = th.compute_threshold(rule, normal, abnormal, value=value), rule
        self.thresholds_[name] = float(t)
        if activate:
            self.threshold_rule_, self.threshold_ = name, float(t)
        return float(t)

    def set_threshold(self, rule: str | None = None, value: float | None = None,
                      specificity: float | None = None) -> float:
        """Switch the operating point: a stored rule, a fixed value, or a target specificity on the
        held-out normal scores."""
        self._check_fitted()
        if value is not None:
            self.thresholds_["fixed"] = float(value)
            rule = "fixed"
        elif specificity is not None:
            rule = f"specificity@{specificity:g}"
            self.thresholds_[rule] = th.quantile_threshold(self.normal_scores_, specificity)
        if rule not in self.thresholds_:
            raise ValueError(f"no {rule!r} threshold stored; have {', '.join(self.thresholds_)} "
                             "(labelled rules are set with calibrate())")
        self.threshold_rule_, self.threshold_ = rule, self.thresholds_[rule]
        return self.threshold_

    # ----------------------------------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted; call fit() or load() first")

    def score(self, data) -> pd.DataFrame:
        """Per-image table: ``score`` (higher = more anomalous), its components, ``percentile`` among
        held-out normal scores, ``anomalous`` at the active threshold, and ``error`` for unreadable files."""
        self._check_fitted()
        images = self._as_imageset(data)
        comps = self._score(np.asarray(images.images)) if len(images) else \
            {k: np.zeros(0) for k in ("score", *self.components)}
        table = images.frame.copy()
        for name in self.components:
            table[name] = comps[name]
        table["score"] = comps["score"]
        table["percentile"] = th.percentile_of(self.normal_scores_, comps["score"])
        table["anomalous"] = comps["score"] > self.threshold_
        table["error"] = ""
        if len(images.errors):
            errors = images.errors.copy()
            for col in table.columns:
                if col not in errors:
                    errors[col] = np.nan if col != "anomalous" else False
            table = pd.concat([table, errors[table.columns]], ignore_index=True)
        bad = ~np.isfinite(table["score"].to_numpy(float)) & (table["error"] == "")
        table.loc[bad, "error"] = "score is not finite (the model diverged on this image)"
        return table

    def predict(self, data) -> np.ndarray:
        """1 anomalous, 0 normal, -1 for inputs that could not be scored."""
        table = self.score(data)
        return np.where(table["error"] != "", -1, table["anomalous"].astype(int)).astype(int)

    # optional capabilities; a detector without them raises NotImplementedError
    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel anomaly map (N, H, W) for uint8 images at the model's size."""
        raise NotImplementedError(f"{type(self).__name__} has no anomaly map")

    def reconstruct(self, images: np.ndarray) -> np.ndarray | None:
        """Grey reconstructions (N, H, W) in [0, 1], or None for detectors that do not reconstruct."""
        return None

    def features(self, images: np.ndarray) -> np.ndarray:
        """Per-image feature vectors (N, D) for t-SNE maps."""
        raise NotImplementedError(f"{type(self).__name__} exposes no features")

    # ------------------------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k not in RUNTIME_PARAMS}
        meta = {
            "params": params,
            "preprocessing": self.prep.to_dict(),
            "thresholds": self.thresholds_, "threshold_rule": self.threshold_rule_,
            "threshold": self.threshold_,
            "history": self.history_,
            "training_data": {"fingerprint": self.train_fingerprint_, "n_train": self.n_train_,
                              "n_val": self.n_val_},
            "architecture": self._architecture(),
            # held-out normal scores: every scored image's percentile is taken among them
            "normal_scores": [float(v) for v in self.normal_scores_],
            "state": self._meta(),
        }
        tensors = {f"model.{k}": v for k, v in self._tensors().items()}
        return save_bundle(path, self.kind, meta, tensors)

    @classmethod
    def load(cls, path, device: str = "auto") -> "Detector":
        from .training import resolve_device
        resolve_device(device)  # an unavailable device is the user's error, not a broken bundle
        doc, tensors = load_bundle(path)
        if doc.get("kind") != cls.kind:
            raise BundleError(f"{path}: holds a {doc.get('kind')!r} model, not a {cls.kind!r} one")
        params = dict(doc.get("params", {}))
        unknown = set(params) - set(cls._param_names())
        if unknown:
            raise BundleError(f"{path}: parameters {sorted(unknown)} are unknown to this cxrad's {cls.kind}")
        try:
            det = cls(**params, device=device)
            if "preprocessing" in doc and Preprocessing(**doc["preprocessing"]) != det.prep:
                raise BundleError(f"{path}: preprocessing {doc['preprocessing']} does not match the model's "
                                  f"input ({det.prep.to_dict()})")
            det.thresholds_ = {k: float(v) for k, v in doc["thresholds"].items()}
            det.threshold_rule_, det.threshold_ = doc["threshold_rule"], float(doc["threshold"])
            det.history_ = doc.get("history", {})
            td = doc.get("training_data", {})
            det.train_fingerprint_, det.n_train_, det.n_val_ = td.get("fingerprint"), td.get("n_train"), \
                td.get("n_val")
            scores = doc["normal_scores"] if "normal_scores" in doc else tensors.pop("normal_scores").tolist()
            det.normal_scores_ = np.sort(np.asarray(scores, dtype=np.float64))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"{path}: malformed model.json ({type(exc).__name__}: {exc})") from None
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            det._restore(model, doc.get("state", {}))
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise BundleError(f"{path}: weights do not fit a {cls.kind} of this architecture/size ({first})") \
                from None
        return det

    # -------------------------------------------------------------------------------- subclass hooks
    def _fit(self, train: np.ndarray, val: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _meta(self) -> dict:
        return {}

    def _architecture(self) -> dict:
        """What the weights are (written to model.json for people and tools; loading checks the weights)."""
        return {"detector": type(self).__name__, "input_size": [self.image_size, self.image_size]}

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        raise NotImplementedError


def _finite(scores: np.ndarray, what: str, minimum: int = 2) -> np.ndarray:
    """Drop scores that diverged (NaN/inf, e.g. a latent mapping that blew up) before setting thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(scores)
    if not ok.all():
        warnings.warn(f"{int((~ok).sum())} {what} image(s) got a non-finite score and were left out of the "
                      "thresholds", RuntimeWarning, stacklevel=3)
    if ok.sum() < minimum:
        raise DataError(f"only {int(ok.sum())} {what} image(s) have a finite score; need at least {minimum}")
    return scores[ok]


def _fingerprint(images: ImageSet) -> str:
    """Order-independent hash of the training images' content."""
    if "sha256" in images.frame and (images.frame["sha256"] != "").all():
        items = sorted(images.frame["sha256"])
    else:
        items = sorted(hashlib.sha256(im.tobytes()).hexdigest() for im in np.asarray(images.images))
    return hashlib.sha256("\n".join(items).encode()).hexdigest()
