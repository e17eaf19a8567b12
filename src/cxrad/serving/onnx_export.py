"""Export a fitted detector's scoring graph to ONNX, and score with the export.

    export_onnx(det, "exported/")                    # exported/model.onnx + exported/model.cxrad.json
    OnnxScorer("exported/").score(["a.png", "b.dcm"])   # the same table as the detector's score

The graph is the detector's own ``scoring_graph`` (``cxrad.detectors.graph``): uint8 images (N, S, S) at the model's
input size in, every output of the detector out (its components, score, and its map, reconstruction and features).
Intensity scaling, the network and the score formula are all in it; how files become its input is recorded in the
sidecar's ``preprocessing`` (grey, PIL bilinear resize: ``cxrad.imaging.resize``). A fusion whose members take
other sizes has one input per size, which the scorer fills by resizing with PIL, as the files were.

The sidecar (JSON) also holds the thresholds and held-out normal scores, for verdicts and percentiles, and the
chunk of images each call takes (as PyTorch scoring, so scores do not depend on how many images come together).
The scorer needs onnxruntime, numpy and pandas, not torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np

from cxrad.detectors.chunks import CHUNK, PICTURES, graph_inputs, is_picture, run_chunked
from cxrad.errors import ExportError
from cxrad.files import UnsafeFileError, atomic_write_bytes, atomic_write_text, read_regular_file

FORMAT, FORMAT_VERSION = "cxrad-onnx", 3
#: versions read: 2 (the ONNX file checksummed by the sidecar), 3 (and the sidecar by the ONNX file's metadata)
READABLE_VERSIONS = (2, 3)
#: the ONNX metadata_props key holding the sidecar's canonical SHA-256 (format 3)
SIDECAR_DIGEST_KEY = "cxrad_sidecar_sha256"
SIDECAR_SUFFIX = ".cxrad.json"
DEFAULT_OPSET = 20
MAX_SIDECAR_BYTES = 64 * 2**20
MAX_ONNX_BYTES = 2 * 2**30


def export_paths(out) -> tuple[Path, Path]:
    """(model.onnx, sidecar) for ``out``: a ``.onnx`` file name, or a folder that gets model.onnx."""
    out = Path(out)
    onnx_path = out if out.suffix.lower() == ".onnx" else out / "model.onnx"
    return onnx_path, onnx_path.with_name(onnx_path.stem + SIDECAR_SUFFIX)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs and warns about internals (a missing torchvision, deprecated pytree calls): noise
    to a user whose export succeeds; a failure still raises."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(det, out, opset: int = DEFAULT_OPSET) -> tuple[Path, Path]:
    """Write ``det`` (a fitted detector) as ONNX + JSON sidecar under ``out``; returns both paths."""
    import torch
    try:
        import onnx  # noqa: F401  (torch's exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install 'cxrad[onnx]'") from None

    det._check_fitted()
    graph = det.scoring_graph().eval()
    if graph.not_exportable:
        raise ExportError(f"a {det.kind} detector cannot be exported to ONNX: {graph.not_exportable}")
    graph = graph.cpu()
    inputs = det.input_specs()
    rng = np.random.default_rng(0)
    examples = tuple(torch.from_numpy(rng.integers(0, 256, (CHUNK, i["size"], i["size"]), dtype=np.uint8))
                     for i in inputs)
    batch = torch.export.Dim("n")
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(graph, examples, None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[i["name"] for i in inputs], output_names=list(graph.outputs),
                                        dynamic_shapes=(tuple({0: batch} for _ in inputs),), optimize=True)
    except Exception as exc:  # the exporter raises many types; its root cause's first line says what failed
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(cause).strip().splitlines() or [type(cause).__name__])[0])
        raise ExportError(f"torch.onnx.export failed for this {det.kind} detector ({first})") from exc
    onnx_path, sidecar = export_paths(out)
    from cxrad.version import __version__
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": det.kind, "cxrad": __version__,
           "inputs": inputs, "outputs": list(graph.outputs), "components": list(det.components),
           "lower_is_anomalous": list(det.lower_is_anomalous), "preprocessing": det.prep.to_dict(),
           "chunk": CHUNK, "threshold": float(det.threshold_), "threshold_rule": det.threshold_rule_,
           "thresholds": {k: float(v) for k, v in det.thresholds_.items()},
           "normal_scores": [float(v) for v in det.normal_scores_]}
    proto = program.model_proto
    proto.metadata_props.add(key=SIDECAR_DIGEST_KEY, value=sidecar_digest(json.loads(json.dumps(doc))))
    data = proto.SerializeToString()
    doc["onnx"] = {"file": onnx_path.name, "sha256": hashlib.sha256(data).hexdigest(), "opset": opset}
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(onnx_path, data)
    atomic_write_text(sidecar, json.dumps(doc, indent=1))
    return onnx_path, sidecar


def verify_export(det, path, images: np.ndarray | None = None, tolerance: float = 1e-4) -> dict[str, float]:
    """Score ``images`` (default: the bundled sample test images) with the detector and with onnxruntime;
    returns each score output's largest difference relative to max(1, |value|), and raises ExportError if one
    exceeds ``tolerance``."""
    if images is None:
        from cxrad.data import bundled_samples, load_images
        samples = bundled_samples()
        images = load_images(samples.loc[samples["orig_split"] == "test", "path"].tolist(), det.prep).images
    images = np.asarray(images)
    expected, got = det.score_arrays(images), OnnxScorer(path).score_arrays(images)
    errors = {k: float(np.max(np.abs(got[k] - v) / np.maximum(1.0, np.abs(v)), initial=0.0))
              for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise ExportError(f"the export's {worst} differs from PyTorch's by {errors[worst]:.2g} (tolerance "
                          f"{tolerance:g}) on {len(images)} images")
    return errors


# ---------------------------------------------------------------------------------------------- scoring
def is_export(path) -> bool:
    """Whether ``path`` is an ONNX export (its folder, its .onnx file or its sidecar) rather than a bundle."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    return path.name.endswith(SIDECAR_SUFFIX) or export_paths(path)[1].is_file()


def sidecar_digest(doc: dict) -> str:
    """SHA-256 of a sidecar's canonical JSON less its ``onnx`` entry (which names the ONNX file): what a format-3
    ONNX file records in its metadata, so an edited sidecar is caught."""
    body = {k: v for k, v in doc.items() if k != "onnx"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def read_sidecar(path) -> tuple[dict, Path]:
    """(sidecar document, ONNX file) of an export: its folder, its .onnx file or its sidecar. Every value the
    scorer uses is checked here: a sidecar is input from outside."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    sidecar = path if path.name.endswith(SIDECAR_SUFFIX) else export_paths(path)[1]
    try:
        doc = json.loads(read_regular_file(sidecar, MAX_SIDECAR_BYTES).decode("utf-8"))
    except UnsafeFileError as exc:
        if str(exc) == "file not found":
            raise ExportError(f"{path}: no cxrad ONNX export here (missing {sidecar.name})") from None
        raise ExportError(f"{sidecar}: {exc}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{sidecar}: unreadable sidecar ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or isinstance(doc.get("format_version"), bool) or \
            doc.get("format_version") not in READABLE_VERSIONS:
        raise ExportError(f"{sidecar}: not a cxrad ONNX sidecar of format version {FORMAT_VERSION} (export the model "
                          "again with this cxrad)")
    try:
        _check_sidecar(doc)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ExportError(f"{sidecar}: malformed sidecar ({exc})") from None
    name = str(doc["onnx"]["file"])
    if Path(name).name != name or not name.endswith(".onnx"):
        raise ExportError(f"{sidecar}: names an ONNX file outside its folder ({name!r})")
    return doc, sidecar.with_name(name)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_sidecar(doc: dict) -> None:
    """Raise ValueError naming the first value of the sidecar without the type or range the scorer needs."""
    from cxrad.imaging import Preprocessing
    onnx, prep = doc.get("onnx"), doc.get("preprocessing")
    if not isinstance(onnx, dict) or not isinstance(onnx.get("file"), str) or not isinstance(onnx.get("sha256"), str):
        raise ValueError("onnx must name the ONNX file and its sha256")
    if not isinstance(prep, dict) or set(prep) != {"size", "resize"} or not isinstance(prep["size"], int):
        raise ValueError("preprocessing must be {size: int, resize: text}")
    Preprocessing(**prep)
    if not isinstance(doc.get("kind"), str) or not isinstance(doc.get("threshold_rule"), str):
        raise ValueError("kind and threshold_rule must be text")
    for key in ("outputs", "components", "lower_is_anomalous"):
        if not isinstance(doc.get(key, []), list) or not all(isinstance(o, str) for o in doc.get(key, [])):
            raise ValueError(f"{key} must be a list of names")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= 16 or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("size"), int)
            and not isinstance(i.get("size"), bool) and isinstance(i.get("resize"), str) for i in inputs):
        raise ValueError("inputs must be 1 to 16 {name, size, resize} entries")
    for spec in inputs:
        Preprocessing(spec["size"], spec["resize"])
    if inputs[0]["size"] != prep["size"]:
        raise ValueError("the first input must be at the preprocessing size")
    chunk = doc.get("chunk")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= 1024:
        raise ValueError(f"chunk {chunk!r} is not a whole number from 1 to 1024")
    thresholds, scores = doc.get("thresholds"), doc.get("normal_scores")
    if not isinstance(thresholds, dict) or not thresholds or not all(
            isinstance(k, str) and _number(v) for k, v in thresholds.items()) or not _number(doc.get("threshold")) \
            or not isinstance(scores, list) or len(scores) < 2 or not all(_number(v) for v in scores):
        raise ValueError("thresholds and normal scores must be finite numbers (at least 2 scores)")
    if doc["threshold_rule"] not in thresholds or float(thresholds[doc["threshold_rule"]]) != float(doc["threshold"]):
        raise ValueError("the active threshold is not one of the stored ones")
    if set(doc["components"]) - set(doc["outputs"]) or "score" not in doc["outputs"]:
        raise ValueError("the outputs must include the score and every component")


class OnnxScorer:
    """Scores images with an export, without torch: the same components, score and pictures as the detector,
    and the same front door as ``cxrad score`` (``score`` takes files, a manifest or arrays).

    ``threads``: onnxruntime's intra-op threads (None: its default, one per core)."""

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        from cxrad.imaging import Preprocessing

        self.meta, onnx_path = read_sidecar(path)
        try:
            data = read_regular_file(onnx_path, MAX_ONNX_BYTES)
        except UnsafeFileError as exc:
            raise ExportError(f"{onnx_path}: cannot read the ONNX file ({exc})") from None
        if hashlib.sha256(data).hexdigest() != self.meta["onnx"]["sha256"]:
            raise ExportError(f"{onnx_path}: does not match the checksum in its sidecar (altered or mixed exports)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a bad model
            raise ExportError(f"{onnx_path}: onnxruntime cannot load it ({type(exc).__name__})") from None
        if self.meta["format_version"] >= 3:
            recorded = self.session.get_modelmeta().custom_metadata_map.get(SIDECAR_DIGEST_KEY)
            if recorded != sidecar_digest(self.meta):
                raise ExportError(f"{onnx_path}: its sidecar does not match the checksum the ONNX file records (an "
                                  "edited or mixed-up sidecar); export the model again")
        self.kind = str(self.meta["kind"])
        self.prep = Preprocessing(**self.meta["preprocessing"])
        self.image_size = self.prep.size
        self.components = tuple(self.meta["components"])
        self.lower_is_anomalous = tuple(self.meta.get("lower_is_anomalous", ()))
        self.thresholds_ = {str(k): float(v) for k, v in self.meta["thresholds"].items()}
        self.threshold_rule_ = str(self.meta["threshold_rule"])
        self.threshold_ = float(self.meta["threshold"])
        self.normal_scores_ = np.sort(np.asarray(self.meta["normal_scores"], np.float64))
        self.cache_dir, self.progress = None, False

    def _run(self, images: np.ndarray, keep=None) -> dict[str, np.ndarray]:
        names = [i["name"] for i in self.meta["inputs"]]

        def call(chunk):
            return dict(zip(self.meta["outputs"], self.session.run(None, dict(zip(names, chunk)))))
        out = run_chunked(call, graph_inputs(images, self.meta["inputs"]), keep, int(self.meta["chunk"]))
        return out if len(images) else {k: np.zeros(0) for k in (keep or self.meta["outputs"])}

    def score_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (N, S, S) at the export's input size -> per-image components and ``score`` (float64)."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.image_size,) * 2 or images.dtype != np.uint8:
            raise ExportError(f"expected uint8 images of shape (N, {self.image_size}, {self.image_size}), got "
                              f"{images.dtype} {images.shape}")
        return self._run(images, keep=("score", *self.components))

    def explain(self, X, pictures=PICTURES):
        """As ``Detector.explain``: the score table of files, a manifest or arrays, and the pictures."""
        from cxrad.data import as_imageset
        from cxrad.detectors.results import score_table
        images = as_imageset(X, self.prep)
        out = self._run(np.asarray(images.images), keep=("score", *self.components, *pictures))
        table = score_table(images, out, self.components, self.normal_scores_, self.threshold_)
        return table, {k: v for k, v in out.items() if is_picture(k)}

    def score(self, X):
        """As ``Detector.score``: one row per input, in input order, unreadable files as error rows."""
        return self.explain(X, pictures=())[0]

    def percentile(self, scores) -> np.ndarray:
        """Percentile of each score among the held-out normal scores (as ``Detector.score``)."""
        from cxrad.detectors.thresholds import percentile_of
        return percentile_of(self.normal_scores_, np.asarray(scores, np.float64))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 anomalous, 0 normal, at the exported active threshold."""
        return (self.score_arrays(images)["score"] > self.threshold_).astype(int)

    def set_operating_point(self, point) -> float:
        self.thresholds_[point.rule] = float(point.threshold)
        self.threshold_rule_, self.threshold_ = point.rule, float(point.threshold)
        return self.threshold_
