"""The estimator contract every cxrad detector follows (scikit-learn / PyOD style).

    det = DAEDetector(epochs=50).fit(normal_images)   # holds out normal validation images by patient
    table = det.score(images_or_paths)                 # one row per image; higher score = more anomalous
    det.decision_function(images)                      # the score column alone
    det.calibrate(labelled_val, rule="crossing")       # optional: thresholds that need labels
    det.predict(images)                                # 1 anomalous, 0 normal, -1 unreadable
    det.save("model/"); DAEDetector.load("model/")

Detectors are dataclasses, so every setting is an explicit ``__init__`` argument and ``get_params``,
``set_params`` and ``sklearn.base.clone`` work; fitted state ends in ``_``. A subclass names its ``kind``
(which registers it) and implements the hooks at the bottom: ``fit_arrays``, ``score_components``,
``weights`` and ``restore``, optionally ``calibrate_components``/``combine``, ``anomaly_map``, ``reconstruct``
and ``features``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from cxrad import thresholds as th
from cxrad.bundle import read_bundle, resolve, write_bundle
from cxrad.data import DataError, ImageSet, as_imageset, fingerprint, hold_out_normals, with_labels
from cxrad.errors import BundleError, NotFittedError
from cxrad.io import Preprocessing
from cxrad.params import ParamsMixin
from cxrad.training import TrainConfig, resolve_device, run_key, wrap_ddp

#: settings that change how a run executes, not what it learns: left out of bundles and run keys
RUNTIME_PARAMS = frozenset({"device", "progress", "checkpoint_dir", "cache_dir", "max_minutes",
                            "checkpoint_minutes", "snapshot_every", "warm_start"})
#: kind -> detector class, filled as detector modules are imported (``cxrad.models`` imports them all)
REGISTRY: dict[str, type["Detector"]] = {}


@dataclass(repr=False, eq=False)
class Detector(ParamsMixin):
    """Settings every detector has.

    Parameters
    ----------
    image_size : int
        Square input side in pixels.
    resize : str
        'stretch' to a square (as the seed CAE did) or 'pad' to keep the aspect ratio.
    seed : int
        Seed of the weights, the shuffling and the validation hold-out.
    val_fraction : float
        Share of the normal images (whole patients) held out to learn the normal score distribution.
    specificity : float
        Target specificity of the label-free quantile threshold.
    batch_size : int
        Images per training or scoring batch.
    device : str
        auto (CUDA if available), cpu or cuda[:N].
    progress : bool
        Show progress bars.
    cache_dir : str
        Preprocessing cache used when inputs are given as paths (None: no cache).
    """

    kind: ClassVar[str] = ""
    #: per-image score components besides ``score``, for tables and reports
    components: ClassVar[tuple[str, ...]] = ()
    #: components where a *lower* value is more anomalous (e.g. a log-density)
    lower_is_anomalous: ClassVar[tuple[str, ...]] = ()
    #: whether ``fit_arrays`` takes ``sample_weight`` (a manifest's sampling weights)
    supports_sample_weight: ClassVar[bool] = False

    image_size: int = 128
    resize: str = "stretch"
    seed: int = 0
    val_fraction: float = 0.1
    specificity: float = 0.95
    batch_size: int = 32
    device: str = "auto"
    progress: bool = False
    cache_dir: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            REGISTRY[cls.kind] = cls

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.resize)

    @classmethod
    def settings(cls) -> list[dict]:
        """Each setting's name, type, default and help line (from the signature and the class docstrings)."""
        import inspect
        helps: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            helps.update(_parameter_help(klass.__doc__ or ""))
        sig = inspect.signature(cls.__init__)
        return [{"name": p.name, "type": _type_name(p.annotation), "default": p.default,
                 "help": helps.get(p.name, "")} for p in sig.parameters.values() if p.name != "self"]

    @classmethod
    def unknown_settings(cls, params: dict) -> list[str]:
        """The names in ``params`` that are not settings of this detector."""
        return sorted(set(params) - {s["name"] for s in cls.settings()})

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, X, y=None, val=None) -> "Detector":
        """Train on the normal images of ``X`` (rows labelled abnormal, in its manifest or ``y``, are left
        out). Without ``val``, a patient-level ``val_fraction`` of the normals is held out to learn the normal
        score distribution and the label-free threshold."""
        images = as_imageset(X if y is None else with_labels(X, y), self.prep, self.cache_dir, self.progress)
        labels = images.labels
        if len(images) == 0:
            raise DataError("the training set is empty (no readable images)")
        normal = images.subset(labels == 0)
        if len(normal) == 0:
            raise DataError("the training set has no normal images; detectors learn from normal images only")
        if val is None:
            train, val = hold_out_normals(normal, self.val_fraction, self.seed)
        else:
            train, val = normal, as_imageset(val, self.prep, self.cache_dir)
            val = val.subset(val.labels == 0)
        if len(val) < 2:
            raise DataError("need at least 2 normal validation images")
        if len(train) == 0:
            raise DataError("no normal training images are left after holding out the validation ones")
        self.history_ = {}
        weighting = {}
        if "sample_weight" in train.frame:
            if not self.supports_sample_weight:
                raise DataError(f"the {self.kind} detector does not take sampling weights (a sample_weight column)")
            weighting["sample_weight"] = train.frame["sample_weight"].to_numpy(np.float64)
        self.fit_arrays(np.asarray(train.images), np.asarray(val.images), **weighting)
        self.n_train_, self.n_val_ = len(train), len(val)
        self.train_fingerprint_ = fingerprint(train)
        raw = self.score_components(np.asarray(val.images))  # scored once: mapping-based scores are costly
        self.calibrate_components(raw)
        val_scores = finite_scores(self.combine(raw)["score"], "normal validation")
        self.normal_scores_ = np.sort(val_scores)
        self.thresholds_ = {"quantile": th.quantile_threshold(val_scores, self.specificity)}
        self.threshold_rule_, self.threshold_ = "quantile", self.thresholds_["quantile"]
        return self

    def calibrate(self, data, rule: str = "crossing", specificity: float | None = None,
                  sensitivity: float | None = None, value: float | None = None, activate: bool = True) -> float:
        """Set a threshold from a labelled validation set (normal + abnormal). Returns the threshold."""
        self._check_fitted()
        images = as_imageset(data, self.prep, self.cache_dir)
        scores = self.score_arrays(np.asarray(images.images))["score"] if len(images) else np.zeros(0)
        normal = finite_scores(scores[images.labels == 0], "normal calibration", minimum=0)
        abnormal = finite_scores(scores[images.labels == 1], "abnormal calibration", minimum=0)
        if sensitivity is not None:
            t, name = th.sensitivity_threshold(abnormal, sensitivity), f"sensitivity@{sensitivity:g}"
        elif rule == "quantile":  # a target other than the model's own is stored beside the label-free one
            spec = self.specificity if specificity is None else specificity
            name = "quantile" if spec == self.specificity else f"specificity@{spec:g}"
            t = th.quantile_threshold(normal if len(normal) else self.normal_scores_, spec)
        else:
            t, name = th.compute_threshold(rule, normal, abnormal, value=value), rule
        self.thresholds_[name] = float(t)
        if activate:
            self.threshold_rule_, self.threshold_ = name, float(t)
        return float(t)

    def set_operating_point(self, point: th.OperatingPoint) -> float:
        """Make ``point`` (see ``thresholds.operating_point``) the active threshold."""
        self._check_fitted()
        self.thresholds_[point.rule] = point.threshold
        self.threshold_rule_, self.threshold_ = point.rule, point.threshold
        return point.threshold

    def set_threshold(self, rule: str | None = None, value: float | None = None,
                      specificity: float | None = None) -> float:
        """Switch the operating point: a stored rule, a fixed value, or a target specificity on the
        held-out normal scores."""
        self._check_fitted()
        if value is not None:
            return self.set_operating_point(th.operating_point(self, "fixed", value=value))
        if specificity is not None:
            return self.set_operating_point(th.operating_point(self, "specificity", target=specificity))
        return self.set_operating_point(th.operating_point(self, "stored", rule=rule))

    # ----------------------------------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted; call fit() or load() first")

    def score(self, X) -> pd.DataFrame:
        """Per-image table: the manifest columns, each component, ``score`` (higher = more anomalous),
        ``percentile`` among held-out normal scores, ``anomalous`` at the active threshold, and ``error``
        (empty when scored). Unreadable inputs are error rows whose score and verdict are empty."""
        self._check_fitted()
        images = as_imageset(X, self.prep, self.cache_dir, self.progress)
        comps = self.score_arrays(np.asarray(images.images)) if len(images) else \
            {k: np.zeros(0) for k in ("score", *self.components)}
        return score_table(images, comps, self.components, self.normal_scores_, self.threshold_)

    def decision_function(self, X) -> np.ndarray:
        """The anomaly score of each input (NaN for unreadable ones), in input order for arrays."""
        return self.score(X)["score"].to_numpy(float)

    def predict(self, X) -> np.ndarray:
        """1 anomalous, 0 normal, -1 for inputs that could not be scored."""
        table = self.score(X)
        return np.where(table["error"] != "", -1, table["anomalous"].fillna(False).astype(int)).astype(int)

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
    def learned_params(self) -> dict:
        """The settings that define what was learned (runtime settings left out)."""
        return {k: v for k, v in self.get_params(deep=False).items() if k not in RUNTIME_PARAMS}

    def save(self, path):
        """Write the fitted detector as a bundle folder (all-or-nothing, weights checksummed)."""
        self._check_fitted()
        meta = {
            "params": self.learned_params(),
            "preprocessing": self.prep.to_dict(),
            "thresholds": self.thresholds_, "threshold_rule": self.threshold_rule_, "threshold": self.threshold_,
            "history": self.history_,
            "training_data": {"fingerprint": self.train_fingerprint_, "n_train": self.n_train_,
                              "n_val": self.n_val_},
            "architecture": self.architecture(),
            # held-out normal scores: every scored image's percentile is taken among them
            "normal_scores": [float(v) for v in self.normal_scores_],
            "state": self.state(),
        }
        return write_bundle(path, self.kind, meta, {f"model.{k}": v for k, v in self.weights().items()})

    @classmethod
    def load(cls, path, device: str = "auto", allow_unverified: bool = False) -> "Detector":
        """A saved detector from a bundle folder or the name of a model shipped with cxrad. Format-1 bundles
        (no weights checksum) load only with ``allow_unverified``, to be upgraded."""
        resolve_device(device)  # an unavailable device is the user's error, not a broken bundle
        path = resolve(path)
        doc, tensors = read_bundle(path, allow_unverified=allow_unverified)
        if doc.get("kind") != cls.kind:
            raise BundleError(f"{path}: holds a {doc.get('kind')!r} model, not a {cls.kind!r} one")
        det = cls.from_document(doc, device, where=str(path))
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            det.restore(model, doc.get("state", {}))
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: weights do not fit a {cls.kind} of this architecture/size ({first})") \
                from None
        return det

    @classmethod
    def from_document(cls, doc: dict, device: str = "auto", where: str = "bundle") -> "Detector":
        """An unweighted detector with a bundle document's settings, thresholds and normal scores."""
        params = dict(doc.get("params") or {})
        unknown = cls.unknown_settings(params)
        if unknown:
            raise BundleError(f"{where}: settings {unknown} are unknown to this cxrad's {cls.kind}")
        defaults = {s["name"]: s["default"] for s in cls.settings()}
        for k, v in params.items():  # JSON has no tuples: give tuple-valued settings their type back
            if isinstance(defaults.get(k), tuple) and isinstance(v, list):
                params[k] = tuple(v)
        try:
            det = cls(**params, device=device)
            if Preprocessing(**doc["preprocessing"]) != det.prep:
                raise BundleError(f"{where}: preprocessing {doc['preprocessing']} does not match the model's "
                                  f"input ({det.prep.to_dict()})")
            det.thresholds_ = {str(k): float(v) for k, v in doc["thresholds"].items()}
            det.threshold_rule_, det.threshold_ = str(doc["threshold_rule"]), float(doc["threshold"])
            det.history_ = doc.get("history", {})
            td = doc.get("training_data", {})
            det.train_fingerprint_, det.n_train_, det.n_val_ = td.get("fingerprint"), td.get("n_train"), \
                td.get("n_val")
            det.normal_scores_ = np.sort(np.asarray(doc["normal_scores"], dtype=np.float64))
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed model.json ({type(exc).__name__}: {exc})") from None
        values = [det.threshold_, *det.thresholds_.values()]
        if not np.all(np.isfinite(values)) or det.normal_scores_.size < 2 or \
                not np.all(np.isfinite(det.normal_scores_)):
            raise BundleError(f"{where}: thresholds and normal scores must be finite numbers (at least 2 scores)")
        return det

    # -------------------------------------------------------------------------------- subclass hooks
    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        """Learn from uint8 normal images (N, H, W) at the model's size; ``val`` is held out."""
        raise NotImplementedError

    def score_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image arrays for uint8 images at the model's size: ``score`` and every name in ``components``."""
        return self.combine(self.score_components(images))

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The detector's raw per-image arrays (before any calibration learnt in ``fit``)."""
        raise NotImplementedError

    def calibrate_components(self, raw: dict) -> None:
        """Learn how to combine raw components from the held-out normals' (before thresholds are set)."""

    def combine(self, raw: dict) -> dict[str, np.ndarray]:
        """The components and ``score`` from raw components, after ``calibrate_components``."""
        return raw

    def weights(self) -> dict[str, torch.Tensor]:
        """The fitted arrays, for the bundle's safetensors file."""
        raise NotImplementedError

    def state(self) -> dict:
        """Fitted values other than arrays (JSON), for the bundle's model.json."""
        return {}

    def restore(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        """Rebuild the fitted model from ``weights()`` and ``state()`` of a saved detector."""
        raise NotImplementedError

    def architecture(self) -> dict:
        """What the weights are (written to model.json for people and tools; loading checks the weights)."""
        return {"detector": type(self).__name__, "input_size": [self.image_size, self.image_size]}


@dataclass(repr=False, eq=False)
class TrainedDetector(Detector):
    """Settings of detectors trained by gradient descent (through ``cxrad.training.fit_epochs``).

    Parameters
    ----------
    epochs : int
        Passes over the training images.
    lr : float
        Learning rate.
    checkpoint_dir : str
        Folder for the resumable training state (None: no checkpoints).
    checkpoint_minutes : float
        Minutes between checkpoints (written at the next epoch end).
    max_minutes : float
        Stop at the first epoch end after this many minutes; fitting again with the same checkpoint_dir continues.
    warm_start : bool
        Start from the current (fitted or loaded) weights instead of new ones: fine-tuning.
    snapshot_every : int
        Also keep the weights every this many training samples, in checkpoint_dir/snapshots (learning curves).
    """

    #: whether ``warm_start`` (fine-tuning from saved weights, ``cxrad train --init``) is implemented
    supports_warm_start: ClassVar[bool] = True

    epochs: int = 50
    lr: float = 1e-3
    checkpoint_dir: str | None = None
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None
    warm_start: bool = False
    snapshot_every: int | None = None

    def train_config(self, train: np.ndarray, val: np.ndarray, desc: str, sample_weight=None,
                     **settings) -> TrainConfig:
        """The loop's settings for this detector; the run key ties checkpoints to the data (and its sampling
        weights), the learned settings (less ``epochs``, so a finished run can be extended) and the starting
        weights."""
        start = self.weights() if self.warm_start and hasattr(self, "threshold_") else {}
        key = run_key(train, val, {k: v for k, v in self.learned_params().items() if k != "epochs"}, start,
                      sample_weight)
        cfg = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
               "device": self.device, "checkpoint_dir": self.checkpoint_dir,
               "checkpoint_minutes": self.checkpoint_minutes, "max_minutes": self.max_minutes,
               "snapshot_every": self.snapshot_every, "progress": self.progress, "desc": desc, "key": key}
        return TrainConfig(**{**cfg, **settings})

    def start_network(self, network):
        """The network to train, on the device: the fitted one when warm-starting, else ``network()`` with
        weights drawn from ``seed``; and the same wrapped for data-parallel training under torchrun."""
        device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        fitted = getattr(self, "model_", None) if self.warm_start and hasattr(self, "threshold_") else None
        model = (fitted if fitted is not None else network()).to(device)
        return model, wrap_ddp(model, device), device

    def record(self, result) -> None:
        """Keep the loop's history, and whether a time box stopped it before the last epoch."""
        self.history_ = {**getattr(self, "history_", {}), **result.history}
        self.epochs_done_, self.training_finished_ = result.epochs_done, result.finished

    def state(self) -> dict:
        return {"epochs_done": getattr(self, "epochs_done_", self.epochs),
                "training_finished": bool(getattr(self, "training_finished_", True))}

    @classmethod
    def from_document(cls, doc: dict, device: str = "auto", where: str = "bundle") -> "Detector":
        det = super().from_document(doc, device, where)
        state = doc.get("state") or {}
        det.epochs_done_ = state.get("epochs_done", det.epochs)
        det.training_finished_ = bool(state.get("training_finished", True))
        return det


def detector_class(kind: str) -> type[Detector]:
    """The registered class of a detector kind (``cxrad.models`` must be imported to register them all)."""
    if kind not in REGISTRY:
        raise BundleError(f"unknown detector kind {kind!r}; this cxrad knows {', '.join(sorted(REGISTRY)) or 'none'}")
    return REGISTRY[kind]


def finite_scores(scores, what: str, minimum: int = 2) -> np.ndarray:
    """Drop scores that diverged (NaN/inf, e.g. a latent mapping that blew up) before setting thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(scores)
    if not ok.all():
        warnings.warn(f"{int((~ok).sum())} {what} image(s) got a non-finite score and were left out of the "
                      "thresholds", RuntimeWarning, stacklevel=3)
    if ok.sum() < minimum:
        raise DataError(f"only {int(ok.sum())} {what} image(s) have a finite score; need at least {minimum}")
    return scores[ok]


def score_table(images: ImageSet, comps: dict, components, normal_scores, threshold: float) -> pd.DataFrame:
    """The rows of ``Detector.score``: scored images in order, then unreadable ones (empty score/verdict)."""
    table = images.frame.copy()
    for name in components:
        table[name] = np.asarray(comps[name], np.float64)
    scores = np.asarray(comps["score"], np.float64)
    table["score"] = scores
    table["percentile"] = th.percentile_of(normal_scores, scores)
    table["anomalous"] = pd.array(scores > threshold, dtype="boolean")
    table["error"] = ""
    bad = ~np.isfinite(scores)
    table.loc[bad, "error"] = "score is not finite (the model diverged on this image)"
    if len(images.errors):
        errors = images.errors.copy()
        for col in table.columns:
            if col not in errors:
                errors[col] = pd.NA if col == "anomalous" else np.nan
        table = pd.concat([table, errors[table.columns]], ignore_index=True)
        table["anomalous"] = table["anomalous"].astype("boolean")
    table.loc[table["error"] != "", ["score", "percentile", "anomalous"]] = [np.nan, np.nan, pd.NA]
    return table


def _parameter_help(doc: str) -> dict[str, str]:
    """numpydoc 'Parameters' entries: 'name : type' followed by an indented help line."""
    section = re.split(r"\n\s*Parameters\s*\n\s*-+\s*\n", doc, maxsplit=1)
    if len(section) < 2:
        return {}
    out = {}
    for m in re.finditer(r"^\s*(\w+) : [^\n]*\n\s+(.+)$", section[1], re.MULTILINE):
        out[m.group(1)] = m.group(2).strip()
    return out


def _type_name(annotation) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
