"""The estimator contract every cxrad detector follows (scikit-learn / PyOD style).

    det = DAEDetector(epochs=50).fit(normal_images)   # holds out normal validation images by patient
    table = det.score(images_or_paths)                 # one row per image; higher score = more anomalous
    table, pictures = det.explain(images)              # the same, with maps, reconstructions, features
    det.decision_function(images)                      # the score column alone
    det.set_operating_point(operating_point(det, "crossing", labelled=val))   # the one way to move the threshold
    det.predict(images)                                # 1 anomalous, 0 normal, NaN unreadable (no verdict)
    det.save("model/"); DAEDetector.load("model/")

Detectors are dataclasses, so every setting is an explicit ``__init__`` argument and ``get_params``,
``set_params`` and ``sklearn.base.clone`` work; settings are checked at ``fit`` (and when a bundle is loaded), as
scikit-learn does. Fitted state ends in ``_``. A subclass names its ``kind`` (which registers it), declares
``tiny`` settings (the registry's tests train it with them) and implements the hooks at the bottom.
"""
from __future__ import annotations

import re
import types
import typing
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from cxrad.bundles import check_pinned, read_bundle, resolve, write_bundle
from cxrad.data import DataError, ImageSet, as_imageset, fingerprint, hold_out_normals, with_labels
import cxrad.detectors.thresholds as th
from cxrad.detectors.chunks import PICTURES, graph_inputs, is_picture
from cxrad.detectors.graph import ScoringGraph, combine_arrays, graph_device, named, run_graph
from cxrad.detectors.params import ParamsMixin
from cxrad.detectors.registry import REGISTRY
from cxrad.detectors.results import score_table
from cxrad.errors import BundleError, NotFittedError
from cxrad.imaging import Preprocessing
from cxrad.training import TrainConfig, load_module, read_state, resolve_device, run_identity, run_key, wrap_ddp

#: settings that change how a run executes, not what it learns: left out of bundles and run keys
RUNTIME_PARAMS = frozenset({"device", "progress", "checkpoint_dir", "cache_dir", "max_minutes",
                            "checkpoint_minutes", "snapshot_every", "warm_start", "loss_log"})
#: learned settings left out of run keys: they do not change the training up to any epoch (only how long it
#: runs, and which epoch's weights it ends with), so a checkpoint serves a run that changes them
NOT_IN_RUN_KEY = frozenset({"epochs", "keep", "patience"})


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
        Images per training batch.
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
    #: whether ``fit_arrays`` takes ``unlabelled`` (a pool of films of unknown label, ``cxrad train --unlabelled``)
    supports_unlabelled: ClassVar[bool] = False
    #: the smallest settings that still train a real model (a few seconds at 32 px): the registry's tests use them
    tiny: ClassVar[dict] = {}
    #: what ``weights``/``restore`` keep: fitted torch modules (attribute -> key prefix; ``networks`` builds them)
    #: and fitted arrays (attribute -> key)
    fitted_modules: ClassVar[dict[str, str]] = {}
    fitted_arrays: ClassVar[dict[str, str]] = {}
    #: allowed values of string settings, and (low, high) bounds of numeric ones, checked by ``check_settings``
    choices: ClassVar[dict[str, tuple]] = {"resize": ("stretch", "pad")}
    bounds: ClassVar[dict[str, tuple]] = {"image_size": (8, 2048), "val_fraction": (0.0, 1.0),
                                          "specificity": (0.0, 1.0), "batch_size": (1, 2**16)}

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

    # -------------------------------------------------------------------------------------------- settings
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

    def check_settings(self) -> "Detector":
        """Raise ValueError naming the first setting whose value has the wrong type, is not one of its choices or
        is out of bounds. ``fit`` and ``load`` call it; so does the CLI, before reading any image."""
        hints = typing.get_type_hints(type(self))
        for name in self._get_param_names():
            value = getattr(self, name)
            want = _allowed_types(hints.get(name))
            if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                names = " or ".join(sorted({t.__name__ if t is not type(None) else "None" for t in want}))
                raise ValueError(f"setting {name} must be {names}, not {value!r} ({type(value).__name__})")
            if name in self.choices and value is not None and value not in self.choices[name]:
                raise ValueError(f"setting {name} must be one of {', '.join(map(str, self.choices[name]))}, "
                                 f"not {value!r}")
            lo, hi = self.bounds.get(name, (None, None))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    not np.isfinite(value) or lo is not None and value < lo or hi is not None and value > hi):
                raise ValueError(f"setting {name} must be between {lo} and {hi}, not {value!r}")
        return self

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, X, y=None, val=None, sample_weight=None, unlabelled=None) -> "Detector":
        """Train on the normal images of ``X`` (rows labelled abnormal, in its manifest or ``y``, are left
        out). Without ``val``, a patient-level ``val_fraction`` of the normals is held out to learn the normal
        score distribution and the label-free threshold. ``sample_weight`` (or a manifest's ``sample_weight``
        column) sets how often each image is drawn in training, for detectors that take weights. ``unlabelled``
        is a pool of films of unknown label, for detectors that learn from one (the held-out normals are left
        out of it)."""
        self.check_settings()
        if sample_weight is not None:
            X = _with_column(X, "sample_weight", sample_weight)
        images = as_imageset(X if y is None else with_labels(X, y), self.prep, self.cache_dir, self.progress)
        if len(images) == 0:
            raise DataError("the training set is empty (no readable images)")
        normal = images.subset(images.labels == 0)
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
        weighting = {}
        if "sample_weight" in train.frame:
            if not self.supports_sample_weight:
                raise DataError(f"the {self.kind} detector does not take sampling weights (a sample_weight column)")
            weighting["sample_weight"] = train.frame["sample_weight"].to_numpy(np.float64)
        if unlabelled is not None:
            if not self.supports_unlabelled:
                raise DataError(f"the {self.kind} detector does not learn from unlabelled films")
            pool = as_imageset(unlabelled, self.prep, self.cache_dir, self.progress)
            if "sha256" in pool.frame and "sha256" in val.frame:
                pool = pool.subset(~pool.frame["sha256"].isin(set(val.frame["sha256"])).to_numpy())
            weighting["unlabelled"] = np.asarray(pool.images)
            self.unlabelled_fingerprint_ = fingerprint(pool)
        self.history_ = {}
        self.fit_arrays(np.asarray(train.images), np.asarray(val.images), **weighting)
        self.n_train_, self.n_val_ = len(train), len(val)
        self.train_fingerprint_ = fingerprint(train)
        self.train_hashes_ = _short_hashes(train)
        # the held-out normals are measured once: the calibration and the thresholds both come from that pass
        raw = self._run(np.asarray(val.images), raw=True)
        self.calibrate_outputs(raw)
        self.learn_normal_scores(raw, "normal validation")
        return self

    def learn_normal_scores(self, raw: dict, what: str) -> None:
        """From the raw outputs on held-out normal images: the normal scores (every percentile is taken among
        them) and the label-free quantile threshold at ``specificity``, made the active one."""
        scores = finite_scores(combine_arrays(self.scoring_graph(), raw)["score"], what)
        self.normal_scores_ = np.sort(scores)
        self.thresholds_ = {"quantile": th.quantile_threshold(scores, self.specificity)}
        self.threshold_rule_ = "quantile"

    def use_weights(self, weights: dict[str, torch.Tensor], train: np.ndarray, val: np.ndarray) -> "Detector":
        """Swap in other weights for the fitted networks (a training snapshot) and learn again what ``fit``
        learns after training, from the same training images and held-out normals (uint8 arrays at the
        model's size): a feature Gaussian, the outputs' calibration, the normal scores and threshold. Without
        that, a snapshot would be scored with the last epoch's calibration."""
        self._check_fitted()
        if self.fitted_arrays and type(self).fit_after_training is Detector.fit_after_training:
            raise NotImplementedError(f"the {self.kind} detector does not relearn its fitted arrays for other weights")
        self.restore(weights, self.state())
        self.fit_after_training(np.asarray(train))
        raw = self._run(np.asarray(val), raw=True)
        self.calibrate_outputs(raw)
        self.learn_normal_scores(raw, "normal validation")
        return self

    # ------------------------------------------------------------------------------------- operating point
    @property
    def threshold_(self) -> float:
        """The active threshold: ``thresholds_[threshold_rule_]``."""
        try:
            return self.thresholds_[self.threshold_rule_]
        except (AttributeError, KeyError):
            raise AttributeError("threshold_") from None

    def set_operating_point(self, point: th.OperatingPoint) -> float:
        """Make ``point`` (from ``thresholds.operating_point``) the active threshold; it is stored under its rule."""
        self._check_fitted()
        self.thresholds_[point.rule] = float(point.threshold)
        self.threshold_rule_ = point.rule
        return float(point.threshold)

    # ----------------------------------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted; call fit() or load() first")

    def _run(self, images: np.ndarray, keep=None, raw: bool = False) -> dict[str, np.ndarray]:
        """The scoring graph over uint8 images at the model's size: every output (or those in ``keep``)."""
        graph = self.scoring_graph()
        inputs = graph_inputs(np.asarray(images), self.input_specs())
        return run_graph(graph.measure if raw else named(graph), inputs, graph_device(graph), keep)

    def input_specs(self) -> list[dict]:
        """The scoring graph's inputs: uint8 images at the model's size (a fusion adds its members' sizes)."""
        return [{"name": "images", "size": int(self.image_size), "resize": self.resize}]

    def score_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``score`` and every component for uint8 images (N, S, S) at the model's size."""
        self._check_fitted()
        return self._run(images, keep=("score", *self.components))

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the scoring graph gives for uint8 images at the model's size, from one forward pass:
        the scores, and ``map``, ``recon`` and ``features`` where the detector has them."""
        self._check_fitted()
        return self._run(images)

    def score(self, X) -> pd.DataFrame:
        """Per-image table: the manifest columns, each component, ``score`` (higher = more anomalous),
        ``percentile`` among held-out normal scores, ``anomalous`` at the active threshold, and ``error``
        (empty when scored). Unreadable inputs are error rows whose score and verdict are empty; rows keep the
        order of the input."""
        return self.explain(X, pictures=())[0]

    def explain(self, X, pictures=PICTURES) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """``score``'s table and, from the same forward pass, the ``pictures`` the detector has among ``map``,
        ``recon`` and ``features``, for its scored rows (in the table's order, error rows left out)."""
        self._check_fitted()
        images = as_imageset(X, self.prep, self.cache_dir, self.progress)
        keep = ("score", *self.components, *pictures)
        out = self._run(np.asarray(images.images), keep=keep) if len(images) else \
            {k: np.zeros(0) for k in ("score", *self.components)}
        table = score_table(images, out, self.components, self.normal_scores_, self.threshold_)
        return table, {k: v for k, v in out.items() if is_picture(k)}

    def decision_function(self, X) -> np.ndarray:
        """The anomaly score of each input (NaN for unreadable ones), in input order."""
        return self.score(X)["score"].to_numpy(float)

    def predict(self, X) -> np.ndarray:
        """1.0 anomalous, 0.0 normal, NaN for inputs that could not be scored (they get no verdict)."""
        table = self.score(X)
        return table["anomalous"].astype("Float64").to_numpy(np.float64, na_value=np.nan)

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
                              "n_val": self.n_val_, "image_sha256_prefixes": getattr(self, "train_hashes_", None),
                              "unlabelled_fingerprint": getattr(self, "unlabelled_fingerprint_", None)},
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
        check_pinned(path, doc)  # a shipped bundle must be the released one
        if doc.get("kind") != cls.kind:
            raise BundleError(f"{path}: holds a {doc.get('kind')!r} model, not a {cls.kind!r} one")
        det = cls.from_document(doc, device, where=str(path))
        det.source_ = str(path)
        det.weights_sha256_ = (doc.get("weights") or {}).get("sha256")
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            det.restore(model, doc.get("state") or {})
            det.scoring_graph()  # everything the model needs is there
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: weights do not fit a {cls.kind} of this architecture/size ({first})") \
                from None
        return det

    @classmethod
    def from_document(cls, doc: dict, device: str = "auto", where: str = "bundle") -> "Detector":
        """An unweighted detector with a bundle document's settings, thresholds and normal scores."""
        params = doc.get("params")
        if not isinstance(params, dict):
            raise BundleError(f"{where}: malformed model.json (params must be a mapping)")
        params = dict(params)
        unknown = cls.unknown_settings(params)
        if unknown:
            raise BundleError(f"{where}: settings {unknown} are unknown to this cxrad's {cls.kind}")
        defaults = {s["name"]: s["default"] for s in cls.settings()}
        for k, v in params.items():  # JSON has no tuples: give tuple-valued settings their type back
            if isinstance(defaults.get(k), tuple) and isinstance(v, list):
                params[k] = tuple(v)
        _check_document(doc, where)
        try:
            det = cls(**params, device=device).check_settings()
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed model.json ({exc})") from None
        try:
            prep = Preprocessing(**doc["preprocessing"])
        except ValueError as exc:
            raise BundleError(f"{where}: malformed model.json (preprocessing: {exc})") from None
        if prep != det.prep:
            raise BundleError(f"{where}: preprocessing {doc['preprocessing']} does not match the model's "
                              f"input ({det.prep.to_dict()})")
        det.thresholds_ = {k: float(v) for k, v in doc["thresholds"].items()}
        det.threshold_rule_ = doc["threshold_rule"]
        if det.threshold_rule_ not in det.thresholds_ or det.threshold_ != float(doc["threshold"]):
            raise BundleError(f"{where}: the active threshold is not one of the stored ones")
        det.history_ = doc.get("history") or {}
        td = doc.get("training_data") or {}
        det.train_fingerprint_, det.n_train_, det.n_val_ = td.get("fingerprint"), td.get("n_train"), \
            td.get("n_val")
        det.train_hashes_ = td.get("image_sha256_prefixes")
        det.normal_scores_ = np.sort(np.asarray(doc["normal_scores"], dtype=np.float64))
        return det

    # -------------------------------------------------------------------------------- subclass hooks
    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        """Learn from uint8 normal images (N, H, W) at the model's size; ``val`` is held out (for validation
        losses). ``sample_weight`` is passed only to detectors with ``supports_sample_weight``."""
        raise NotImplementedError

    def scoring_graph(self) -> ScoringGraph:
        """The fitted model's scoring as one torch module (see ``cxrad.detectors.graph``)."""
        raise NotImplementedError

    def fit_after_training(self, train: np.ndarray) -> None:
        """Learn what the score needs from the training images once the networks are trained (most detectors:
        nothing); ``fit_arrays`` calls it last, and ``use_weights`` again for other weights."""

    def calibrate_outputs(self, raw: dict[str, np.ndarray]) -> None:
        """Learn from the held-out normals' raw outputs how ``combine`` makes the score (most detectors: nothing)."""

    def networks(self) -> dict:
        """A builder (no arguments -> an unweighted module) for each of ``fitted_modules``."""
        return {}

    def weights(self) -> dict[str, torch.Tensor]:
        """The fitted modules' and arrays' tensors, for the bundle's safetensors file."""
        tensors = {prefix + k: v for attr, prefix in self.fitted_modules.items()
                   for k, v in getattr(self, attr).state_dict().items()}
        tensors.update({key: torch.from_numpy(np.ascontiguousarray(getattr(self, attr)))
                        for attr, key in self.fitted_arrays.items() if getattr(self, attr, None) is not None})
        return tensors

    def state(self) -> dict:
        """Fitted values other than arrays (JSON), for the bundle's model.json."""
        return {}

    def restore(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        """Rebuild the fitted model from ``weights()`` and ``state()`` of a saved detector: each fitted module is
        built on the meta device and filled (strictly) from its weights, so settings that would build a huge
        network cannot allocate more than the size-capped weights file holds."""
        builders = self.networks()
        for attr, prefix in self.fitted_modules.items():
            mine = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix) and
                    k not in self.fitted_arrays.values()}
            setattr(self, attr, load_module(builders[attr], mine, self.device))
        for attr, key in self.fitted_arrays.items():
            if key in weights:
                if weights[key].dtype not in (torch.float32, torch.float64):
                    raise ValueError(f"array {key} is {weights[key].dtype}, not float32 or float64")
                setattr(self, attr, weights[key].numpy())

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
    keep : str
        'last' (the last epoch's weights) or 'best' (the epoch with the lowest loss on the held-out normal images).
    patience : int
        Stop early when the held-out normal images' loss has not improved for this many epochs (None: never).
    loss_log : str
        CSV file that gets every epoch's losses as training goes (None: none).
    """

    #: whether ``warm_start`` (fine-tuning from saved weights, ``cxrad train --init``) is implemented
    supports_warm_start: ClassVar[bool] = True
    fitted_modules: ClassVar[dict[str, str]] = {"model_": ""}
    choices: ClassVar[dict[str, tuple]] = {**Detector.choices, "keep": ("last", "best")}
    bounds: ClassVar[dict[str, tuple]] = {**Detector.bounds, "epochs": (1, 10**7), "lr": (0.0, 10.0),
                                          "checkpoint_minutes": (0.0, 10**6), "max_minutes": (0.0, 10**7),
                                          "snapshot_every": (1, 10**12), "patience": (1, 10**7)}

    epochs: int = 50
    lr: float = 1e-3
    checkpoint_dir: str | None = None
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None
    warm_start: bool = False
    snapshot_every: int | None = None
    keep: str = "last"
    patience: int | None = None
    loss_log: str | None = None

    def train_config(self, train: np.ndarray, val: np.ndarray, desc: str, sample_weight=None,
                     **settings) -> TrainConfig:
        """The loop's settings for this detector; the run key ties checkpoints to the data (and its sampling
        weights), the learned settings (less ``epochs``, so a finished run can be extended, and the others of
        NOT_IN_RUN_KEY) and the starting weights."""
        start = self.weights() if self.warm_start and hasattr(self, "thresholds_") else {}
        keyed = {k: v for k, v in self.learned_params().items() if k not in NOT_IN_RUN_KEY}
        cfg = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
               "device": self.device, "checkpoint_dir": self.checkpoint_dir,
               "checkpoint_minutes": self.checkpoint_minutes, "max_minutes": self.max_minutes,
               "snapshot_every": self.snapshot_every, "progress": self.progress, "desc": desc,
               "key": run_key(train, val, keyed, start, sample_weight),
               "identity": run_identity(train, val, keyed, start, sample_weight),
               "keep": self.keep, "patience": self.patience, "log_csv": self.loss_log}
        return TrainConfig(**{**cfg, **settings})

    def networks(self) -> dict:
        return {"model_": self.network}

    def start_network(self, network):
        """The network to train, on the device: the fitted one when warm-starting, else ``network()`` with
        weights drawn from ``seed``; and the same wrapped for data-parallel training under torchrun."""
        device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        fitted = getattr(self, "model_", None) if self.warm_start and hasattr(self, "thresholds_") else None
        model = (fitted if fitted is not None else network()).to(device)
        return model, wrap_ddp(model, device), device

    def use_snapshot(self, path, train: np.ndarray, val: np.ndarray) -> dict:
        """Score with the weights of one of this run's snapshots (``checkpoint_dir/snapshots``), refitted after
        training as ``use_weights`` says; returns the snapshot's meta (epoch, samples, history)."""
        if set(self.fitted_modules) != {"model_"}:
            raise NotImplementedError(f"the {self.kind} detector's snapshots hold more than one network")
        tensors, meta = read_state(path)
        prefix = self.fitted_modules["model_"]
        self.use_weights({prefix + k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                         train, val)
        return meta

    def record(self, result) -> None:
        """Keep the loop's history, whether a time box stopped it before the last epoch, and which epoch's
        weights the model holds."""
        self.history_ = {**getattr(self, "history_", {}), **result.history}
        self.epochs_done_, self.training_finished_ = result.epochs_done, result.finished
        self.best_epoch_, self.kept_ = result.best_epoch, result.kept

    def state(self) -> dict:
        state = {"epochs_done": getattr(self, "epochs_done_", self.epochs),
                 "training_finished": bool(getattr(self, "training_finished_", True))}
        if getattr(self, "best_epoch_", None) is not None:  # 1-based; the weights are its when kept is "best"
            state.update(best_epoch=int(self.best_epoch_), kept=str(getattr(self, "kept_", "last")))
        return state

    @classmethod
    def from_document(cls, doc: dict, device: str = "auto", where: str = "bundle") -> "Detector":
        det = super().from_document(doc, device, where)
        state = doc.get("state") or {}
        done, finished = state.get("epochs_done", det.epochs), state.get("training_finished", True)
        best, kept = state.get("best_epoch"), state.get("kept", "last")
        if not isinstance(done, int) or isinstance(done, bool) or done < 0 or not isinstance(finished, bool):
            raise BundleError(f"{where}: malformed model.json (state: epochs_done must be a whole number and "
                              "training_finished true or false)")
        if (best is not None and (not isinstance(best, int) or isinstance(best, bool) or best < 0)) or \
                kept not in ("last", "best"):
            raise BundleError(f"{where}: malformed model.json (state: best_epoch must be a whole number or null "
                              "and kept 'last' or 'best')")
        det.epochs_done_, det.training_finished_ = done, finished
        det.best_epoch_, det.kept_ = best, kept
        return det


#: most held-out normal scores a bundle may hold (each scored image's percentile is taken among them)
MAX_NORMAL_SCORES = 10**7


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_document(doc: dict, where: str) -> None:
    """Every value of model.json that loading reads has the type and range it must have, so that a malformed
    or hostile document is a one-line BundleError, never a raw traceback or a silently wrong model."""
    def fail(what: str):
        raise BundleError(f"{where}: malformed model.json ({what})")

    prep = doc.get("preprocessing")
    if not isinstance(prep, dict) or set(prep) != {"size", "resize"} or not isinstance(prep["size"], int) or \
            isinstance(prep["size"], bool) or not isinstance(prep["resize"], str):
        fail("preprocessing must be {size: int, resize: text}")
    thresholds = doc.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds or len(thresholds) > 1000 or \
            not all(isinstance(k, str) and _is_number(v) and np.isfinite(v) for k, v in thresholds.items()):
        fail("thresholds must map rule names to finite numbers")
    if not isinstance(doc.get("threshold_rule"), str) or not _is_number(doc.get("threshold")):
        fail("threshold_rule must be text and threshold a number")
    scores = doc.get("normal_scores")
    if not isinstance(scores, list) or not 2 <= len(scores) <= MAX_NORMAL_SCORES or \
            not all(_is_number(v) and np.isfinite(v) for v in scores):
        raise BundleError(f"{where}: thresholds and normal scores must be finite numbers (at least 2 scores)")
    history = doc.get("history")
    if history is not None and (not isinstance(history, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(_is_number(x) or x is None for x in v)
            for k, v in history.items())):
        fail("history must map names to lists of numbers")
    td = doc.get("training_data")
    if td is not None and (not isinstance(td, dict)
                           or not isinstance(td.get("fingerprint"), (str, type(None)))
                           or not all(td.get(k) is None or (isinstance(td[k], int) and not isinstance(td[k], bool)
                                                            and td[k] >= 0) for k in ("n_train", "n_val"))
                           or not (td.get("image_sha256_prefixes") is None or (
                               isinstance(td["image_sha256_prefixes"], list)
                               and all(isinstance(h, str) for h in td["image_sha256_prefixes"])))):
        fail("training_data must hold a text fingerprint, image counts and text hashes")
    state = doc.get("state")
    if state is not None and not isinstance(state, dict):
        fail("state must be a mapping")


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


def _with_column(X, name: str, values):
    """``X`` (a manifest, paths or an ImageSet) with one more manifest column, row by row."""
    values = np.asarray(values, np.float64).ravel()
    if isinstance(X, ImageSet):
        if len(X.errors) or len(X) != len(values):
            raise ValueError(f"{name} cannot be matched to this ImageSet's rows; give it in its manifest")
        return ImageSet(X.images, X.frame.assign(**{name: values}), X.prep, X.errors)
    if isinstance(X, (str, list, tuple)) or hasattr(X, "__fspath__"):
        X = pd.DataFrame({"path": [str(p) for p in ([X] if isinstance(X, str) or hasattr(X, "__fspath__") else X)],
                          "label": 0})
    elif not isinstance(X, pd.DataFrame):
        arr = np.asarray(X)
        return _with_column(ImageSet.from_arrays(arr[None] if arr.ndim == 2 else arr), name, values)
    if len(X) != len(values):
        raise ValueError(f"{len(X)} images but {len(values)} values of {name}")
    return X.assign(**{name: values})


def _short_hashes(images: ImageSet) -> list[str] | None:
    """The first 16 hex digits of each training file's SHA-256 (sorted), kept in the bundle so that an
    evaluation on the same files can be warned about; None when the images came as arrays."""
    if "sha256" not in images.frame or (images.frame["sha256"] == "").any():
        return None
    return sorted({str(h)[:16] for h in images.frame["sha256"]})


def _allowed_types(annotation) -> tuple:
    """The runtime types a setting's annotation admits (int also passes where a float is wanted)."""
    if annotation is None:
        return ()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _allowed_types(a))
    base = origin or annotation
    if base is float:
        return (float, int)
    if base in (tuple, list):
        return (tuple, list)
    if base is type(None):
        return (type(None),)
    return (base,) if isinstance(base, type) else ()


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
