"""Export a fitted detector to ONNX, with everything needed to reproduce its ``score``, and score with it.

    export_onnx("runs/dae", "exported/")            # exported/model.onnx + exported/model.cxrad.json
    OnnxScorer("exported/").score_arrays(images)    # uint8 (N, S, S) -> the detector's score components

The graph takes uint8 images (N, S, S) at the model's input size (how files become that input is recorded
in the sidecar's ``preprocessing``: grey, PIL bilinear resize, see ``cxrad.io.resize``) and holds the rest of
the pipeline: the per-image 1st-99th percentile scaling (a full sort of each image, interpolated exactly as
numpy.percentile does), the network, and the score (the DAE's median-filtered residual, AE-U's weighted
error, f-AnoGAN's residuals, the regional Mahalanobis distance in float64). Two parts stay outside:

* the CAE's kernel density of latent vectors: the graph returns the latent vector, and the sidecar carries the
  training latents, bandwidth and score calibration, which ``OnnxScorer`` applies in numpy;
* a fusion's resizing to members of another input size (PIL's bilinear filter, which ONNX's Resize does not
  reproduce to the grey level): the graph takes one input per size and ``OnnxScorer`` resizes.

The sidecar (JSON) also has the thresholds and held-out normal scores, for verdicts and percentiles. AnoGAN
cannot be exported: its latent mapping is hundreds of gradient steps per image, not one forward graph.
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

from cxrad.errors import ExportError
from cxrad.files import atomic_write_bytes, atomic_write_text

FORMAT, FORMAT_VERSION = "cxrad-onnx", 1
SIDECAR_SUFFIX = ".cxrad.json"
DEFAULT_OPSET = 20


def export_paths(out) -> tuple[Path, Path]:
    """(model.onnx, sidecar) for ``out``: a ``.onnx`` file name, or a folder that gets model.onnx."""
    out = Path(out)
    onnx_path = out if out.suffix.lower() == ".onnx" else out / "model.onnx"
    return onnx_path, onnx_path.with_name(onnx_path.stem + SIDECAR_SUFFIX)


# ------------------------------------------------------------------------------------------------ graphs
def _torch_modules():
    """The graph modules, built on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from cxrad.models.aeu.detector import weighted_errors
    from cxrad.models.anogan.detector import izif_terms
    from cxrad.models.dae.detector import median_filter, residual_scores
    from cxrad.models.opacity.detector import map_scores
    from cxrad.models.patchcore.detector import gaussian_patch_scores, image_scores, knn_patch_scores, patch_features
    from cxrad.models.regional.model import STATISTICS

    def normalise(images):
        """``models.augment.normalise`` in torch, step for step in the same precision: uint8 (N, H, W) ->
        float32 (N, H, W)."""
        x = images.float() / 255.0
        ordered = x.flatten(1).sort(dim=1).values
        n = ordered.shape[1]

        def percentile(q: float):
            pos = q / 100 * (n - 1)  # numpy's 'linear' method in float64, with its two-sided interpolation
            i = int(math.floor(pos))
            t = pos - i
            a, b = ordered[:, i].double(), ordered[:, min(i + 1, n - 1)].double()
            return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t

        lo, hi = percentile(1), percentile(99)
        span = (hi - lo).clamp_min(1e-3)[:, None, None]
        return ((x.double() - lo[:, None, None]) / span * 2 - 1).clamp(-1.5, 1.5).float()

    class DAEGraph(nn.Module):
        names = ("box_residual", "top_residual", "score")

        def __init__(self, det):
            super().__init__()
            self.net = det.model_

        def forward(self, images):
            x = normalise(images)[:, None]
            mean, top = residual_scores(median_filter((x - self.net(x)).abs()))
            return mean, top, mean.clone()

    class AEUGraph(nn.Module):
        names = ("mse", "weighted_error", "score")

        def __init__(self, det):
            super().__init__()
            self.net = det.model_

        def forward(self, images):
            x = normalise(images)[:, None]
            sq, weighted = weighted_errors(x, *self.net(x))
            weighted = weighted.mean((1, 2, 3))
            return sq.mean((1, 2, 3)), weighted, weighted.clone()

    class FAnoGANGraph(nn.Module):
        names = ("residual", "discrimination", "score")

        def __init__(self, det):
            super().__init__()
            self.E, self.G, self.D = det.encoder_, det.generator_, det.discriminator_
            self.kappa = float(det.kappa)

        def forward(self, images):
            x = (images.float() / 255.0)[:, None] * 2 - 1
            return izif_terms(x, self.G(self.E(x)), self.D, self.kappa)

    class CAEGraph(nn.Module):
        names = ("recon_error", "latent")  # the KDE of the latent vector is applied by OnnxScorer

        def __init__(self, det):
            super().__init__()
            self.net, self.channels = det.model_, int(det.channels)

        def forward(self, images):
            x = (images.float() / 255.0)[:, None].expand(-1, self.channels, -1, -1)
            recon, z = self.net(x)
            return ((recon - x) ** 2).mean(1).mean((1, 2)), z

    class RegionalGraph(nn.Module):
        names = ("mahalanobis", "intensity_z", "texture_z", "score")

        def __init__(self, det):
            super().__init__()
            self.stats, self.scales = det._module(), len(det.scales)
            self.register_buffer("location", torch.as_tensor(det.location_, dtype=torch.float64))
            self.register_buffer("precision", torch.as_tensor(det.precision_, dtype=torch.float64))
            self.register_buffer("cell_mean", torch.as_tensor(det.cell_mean_))
            self.register_buffer("cell_sd", torch.as_tensor(det.cell_sd_))

        def forward(self, images):
            cells = self.stats(normalise(images)[:, None])
            d = cells.flatten(1).double() - self.location  # float64, as the detector computes it
            maha = ((d @ self.precision) * d).sum(1)
            z2 = ((cells - self.cell_mean) / self.cell_sd) ** 2
            per_stat = z2.flatten(2).unflatten(1, (self.scales, len(STATISTICS))).mean(dim=(1, 3))
            return maha, per_stat[:, 0] ** 0.5, per_stat[:, 1:].mean(1) ** 0.5, maha.clone()

    class OpacityGraph(nn.Module):
        names = ("mean_map", "top_map", "score")

        def __init__(self, det):
            super().__init__()
            self.net, self.top_fraction = det.model_, float(det.top_fraction)

        def forward(self, images):
            mean, top = map_scores(torch.sigmoid(self.net(normalise(images)[:, None])), self.top_fraction)
            return mean, top, top.clone()

    class PatchCoreGraph(nn.Module):
        names = ("max_patch", "top_patches", "score")

        def __init__(self, det):
            super().__init__()
            self.encoder, self.levels = det.encoder_, tuple(int(v) for v in det.levels)
            self.method, self.top_fraction = det.method, float(det.top_fraction)
            if self.method == "gaussian":
                self.register_buffer("mean", torch.as_tensor(det.mean_))
                self.register_buffer("precision", torch.as_tensor(det.precision_))
            else:
                self.register_buffer("bank", torch.as_tensor(det.bank_))

        def forward(self, images):
            feats = patch_features(self.encoder, normalise(images)[:, None], self.levels)
            if self.method == "gaussian":
                patch = gaussian_patch_scores(feats, self.mean, self.precision)
            else:
                patch = knn_patch_scores(feats, self.bank)
            side = int(round(feats.shape[1] ** 0.5))
            worst, top = image_scores(patch.reshape(-1, side, side), self.top_fraction)
            return worst, top, top.clone()

    class FusionGraph(nn.Module):
        """Members' graphs on their own input (one per input size), scores standardised and combined."""

        def __init__(self, det, sizes: list[int]):
            super().__init__()
            self.members = nn.ModuleList(graph_for(m) for m in det.members_)
            self.inputs = [sizes.index(m.image_size) for m in det.members_]
            self.names = (*det.components, "score")
            stats = [det.standardise_[name] for name in det.components]
            self.register_buffer("median", torch.tensor([s[0] for s in stats], dtype=torch.float64))
            self.register_buffer("scale", torch.tensor([s[1] for s in stats], dtype=torch.float64))
            self.rule = det.rule

        def forward(self, *inputs):
            raw = torch.stack([m(inputs[i])[m.names.index("score")].double()
                               for m, i in zip(self.members, self.inputs)], dim=1)
            z = (raw - self.median) / self.scale
            score = z.mean(1) if self.rule == "mean" else z.max(1).values
            return (*z.unbind(1), score)

    graphs = {"dae": DAEGraph, "aeu": AEUGraph, "fanogan": FAnoGANGraph, "cae": CAEGraph, "regional": RegionalGraph,
              "opacity": OpacityGraph, "patchcore": PatchCoreGraph}

    def graph_for(det, top: bool = False):
        if det.kind == "anogan":
            raise ExportError("AnoGAN cannot be exported to ONNX: it maps each image to the latent space by "
                              f"{det.map_iters} gradient steps, not one forward pass; train an f-AnoGAN (a trained "
                              "encoder does the mapping) to export a GAN detector")
        if not top and det.kind in ("cae", "fusion"):
            raise ExportError(f"a fusion with a {det.kind} member cannot be exported to ONNX (the member's score is "
                              "partly computed outside the graph); export the members one by one")
        if det.kind == "fusion":
            return FusionGraph(det, fusion_sizes(det))
        if det.kind not in graphs:
            raise ExportError(f"cxrad has no ONNX graph for {det.kind} detectors (it exports "
                              f"{', '.join(sorted([*graphs, 'fusion']))})")
        return graphs[det.kind](det)

    return graph_for


def fusion_sizes(det) -> list[int]:
    """The distinct input sizes of a fusion: its own first, then its members' in order."""
    sizes = [det.image_size]
    for m in det.members_:
        if m.image_size not in sizes:
            sizes.append(m.image_size)
    return sizes


def _inputs(det) -> list[dict]:
    """The graph's inputs: the model's size, then (fusion) each other member size with the member's resize mode."""
    specs = [{"name": "images", "size": int(det.image_size), "resize": det.resize}]
    for m in det.members_ if det.kind == "fusion" else []:
        if all(m.image_size != s["size"] for s in specs):
            specs.append({"name": f"images_{m.image_size}", "size": int(m.image_size), "resize": m.resize})
    return specs


def _max_batch(det) -> int:
    """Images per onnxruntime call: a PatchCore graph holds an (N, patches, bank) distance matrix, kept here
    under about 256 MiB; other graphs take the scorer's batch."""
    if det.kind != "patchcore" or det.method != "knn":
        return 64
    patches = det._patches(np.zeros((1, det.image_size, det.image_size), np.uint8)).shape[1]
    return int(max(1, min(64, 2 ** 28 // (4 * patches * len(det.bank_)))))


def _postprocess(det) -> dict | None:
    if det.kind != "cae":
        return None
    return {"kind": "kde", "latents": det.kde_latents_.astype(np.float32).tolist(),
            "latent_mean": np.asarray(det.latent_mean_, np.float64).tolist(),
            "latent_sd": np.asarray(det.latent_sd_, np.float64).tolist(), "bandwidth": float(det.kde_bandwidth_),
            "component_stats": {k: list(v) for k, v in det.component_stats_.items()}, "score_mode": det.score_mode}


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

    graph_for = _torch_modules()
    if det.kind != "anogan":  # AnoGAN's error says why it cannot be exported, fitted or not
        det._check_fitted()
    graph = graph_for(det, top=True).eval()
    inputs = _inputs(det)
    rng = np.random.default_rng(0)
    examples = tuple(torch.from_numpy(rng.integers(0, 256, (3, i["size"], i["size"]), dtype=np.uint8))
                     for i in inputs)
    batch = torch.export.Dim("n")
    dynamic = tuple({0: batch} for _ in inputs)
    names = list(graph.names)
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(graph, examples, None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[i["name"] for i in inputs], output_names=names,
                                        dynamic_shapes=(dynamic,) if det.kind == "fusion" else dynamic,
                                        optimize=True)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; its root cause's first line says what failed
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(cause).strip().splitlines() or [type(cause).__name__])[0])
        raise ExportError(f"torch.onnx.export failed for this {det.kind} detector ({first})") from exc
    data = program.model_proto.SerializeToString()
    onnx_path, sidecar = export_paths(out)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(onnx_path, data)
    from cxrad.version import __version__
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": det.kind, "cxrad": __version__,
           "onnx": {"file": onnx_path.name, "sha256": hashlib.sha256(data).hexdigest(), "opset": opset},
           "inputs": inputs, "outputs": names, "components": list(det.components),
           "lower_is_anomalous": list(det.lower_is_anomalous), "preprocessing": det.prep.to_dict(),
           "threshold": float(det.threshold_), "threshold_rule": det.threshold_rule_,
           "thresholds": {k: float(v) for k, v in det.thresholds_.items()},
           "normal_scores": [float(v) for v in det.normal_scores_], "postprocess": _postprocess(det),
           "max_batch": _max_batch(det)}
    atomic_write_text(sidecar, json.dumps(doc, indent=1))
    return onnx_path, sidecar


def verify_export(det, path, images: np.ndarray | None = None, tolerance: float = 1e-4) -> dict[str, float]:
    """Score ``images`` (default: the bundled sample test images) with the detector and with onnxruntime;
    returns each output's largest difference relative to max(1, |value|), and raises ExportError if one
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
def read_sidecar(path) -> tuple[dict, Path]:
    """(sidecar document, ONNX file) of an export: its folder, its .onnx file or its sidecar."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    sidecar = path if path.name.endswith(SIDECAR_SUFFIX) else export_paths(path)[1]
    try:
        doc = json.loads(sidecar.read_text("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: no cxrad ONNX export here (missing {sidecar.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{sidecar}: unreadable sidecar ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{sidecar}: not a cxrad ONNX sidecar of format version {FORMAT_VERSION}")
    return doc, sidecar.with_name(doc["onnx"]["file"])


def kde_log_density(z: np.ndarray, post: dict, chunk: int = 16) -> np.ndarray:
    """What scikit-learn's Gaussian KernelDensity.score_samples gives for the standardised latent vectors."""
    latents = np.asarray(post["latents"], np.float32).astype(np.float64)
    h = float(post["bandwidth"])
    zs = (np.asarray(z, np.float32) - np.asarray(post["latent_mean"])) / np.asarray(post["latent_sd"])
    n, d = latents.shape
    out = np.empty(len(zs))
    for i in range(0, len(zs), chunk):  # exact squared distances, a few rows at a time
        log_k = -0.5 * ((zs[i:i + chunk, None, :] - latents[None]) ** 2).sum(-1) / (h * h)
        top = log_k.max(1, keepdims=True)
        out[i:i + chunk] = (top + np.log(np.exp(log_k - top).sum(1, keepdims=True)))[:, 0]
    return out - np.log(n) - 0.5 * d * np.log(2 * np.pi) - d * np.log(h)


class OnnxScorer:
    """Scores uint8 images with an export, without torch: the same components and ``score`` as the detector.

    ``threads``: onnxruntime's intra-op threads (None: its default, one per core)."""

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        self.meta, onnx_path = read_sidecar(path)
        try:
            data = onnx_path.read_bytes()
        except OSError as exc:
            raise ExportError(f"{onnx_path}: cannot read the ONNX file ({exc.strerror})") from None
        if hashlib.sha256(data).hexdigest() != self.meta["onnx"]["sha256"]:
            raise ExportError(f"{onnx_path}: does not match the checksum in its sidecar (altered or mixed exports)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.size = int(self.meta["inputs"][0]["size"])
        self.threshold = float(self.meta["threshold"])
        self.normal_scores = np.sort(np.asarray(self.meta["normal_scores"], np.float64))

    def _feeds(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from cxrad.io import Preprocessing, resize
        feeds = {}
        for spec in self.meta["inputs"]:
            if spec["size"] == self.size:
                feeds[spec["name"]] = images
            else:  # a fusion member of another size: the fusion resizes with PIL, so do we
                prep = Preprocessing(spec["size"], spec["resize"])
                feeds[spec["name"]] = np.stack([resize(im, prep) for im in images])
        return feeds

    def score_arrays(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """uint8 images (N, S, S) at the export's input size -> per-image components and ``score`` (float64)."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.size, self.size) or images.dtype != np.uint8:
            raise ExportError(f"expected uint8 images of shape (N, {self.size}, {self.size}), got {images.dtype} "
                              f"{images.shape}")
        parts: dict[str, list] = {}
        batch_size = max(1, min(batch_size, int(self.meta.get("max_batch", batch_size))))
        for i in range(0, len(images), batch_size):
            outs = self.session.run(None, self._feeds(np.ascontiguousarray(images[i:i + batch_size])))
            for name, value in zip(self.meta["outputs"], outs):
                parts.setdefault(name, []).append(value)
        out = {k: np.concatenate(v) for k, v in parts.items()} if parts else \
            {k: np.zeros((0,)) for k in self.meta["outputs"]}
        post = self.meta.get("postprocess")
        if post and post["kind"] == "kde":
            return self._cae_scores(out, post)
        return {k: v.astype(np.float64) for k, v in out.items()}

    @staticmethod
    def _cae_scores(out: dict, post: dict) -> dict[str, np.ndarray]:
        comps = {"recon_error": out["recon_error"].astype(np.float64),
                 "log_density": kde_log_density(out["latent"], post) if len(out["latent"]) else np.zeros(0)}
        (me, se), (md, sd) = post["component_stats"]["recon_error"], post["component_stats"]["neg_log_density"]
        z_err, z_dens = (comps["recon_error"] - me) / se, (-comps["log_density"] - md) / sd
        comps["score"] = {"either": np.maximum(z_err, z_dens), "recon": z_err, "density": z_dens}[post["score_mode"]]
        return comps

    def percentile(self, scores) -> np.ndarray:
        """Percentile of each score among the held-out normal scores (as ``Detector.score``)."""
        from cxrad.thresholds import percentile_of
        return percentile_of(self.normal_scores, np.asarray(scores, np.float64))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 anomalous, 0 normal, at the exported active threshold."""
        return (self.score_arrays(images)["score"] > self.threshold).astype(int)
