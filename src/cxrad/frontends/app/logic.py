"""What the screening dashboard does, without Streamlit: score uploaded files, pick an operating point,
draw the heatmap overlay, build the results table.

Everything here is a plain function of bytes, arrays and a fitted detector, so it is tested directly
(``tests/app/test_logic.py``); ``streamlit_app.py`` only lays the results out.

Operating points are ``cxrad.detectors.thresholds.operating_point`` (stored, target specificity, or target sensitivity
on confirmed-abnormal calibration uploads, since a bundle stores normal scores only), shared with the CLI and
the report. The results table has the columns of the CLI's scores.csv.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrad.detectors.results import score_columns
from cxrad.data import ImageSet
from cxrad.errors import ImageReadError
from cxrad.imaging import Preprocessing, decode_image, resize
from cxrad.frontends.app.launch import DEFAULT_MAX_UPLOAD_MB


#: most files scored in one batch: each keeps display images in memory
MAX_FILES = 100
#: longest side of the images shown on the page (the model sees its own size)
DISPLAY_SIDE = 512
#: what the uploaders accept (Streamlit's filter goes by extension: an extension-less DICOM must be renamed .dcm)
SUFFIXES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom", "dic")
RESEARCH_NOTE = ("Research tool, not a diagnostic device. The verdict is an unsupervised anomaly score "
                 "compared with a threshold; it has not been validated for clinical use and must not guide "
                 "the care of a patient.")


@dataclass
class FileResult:
    """One uploaded file. ``error`` is non-empty when it could not be scored (the other fields are then None)."""

    name: str
    error: str = ""
    score: float | None = None
    percentile: float | None = None
    components: dict | None = None            # the detector's score components
    image: np.ndarray | None = None           # uint8 grey, the upload as decoded (side <= DISPLAY_SIDE)
    heatmap: np.ndarray | None = None         # uint8 RGB overlay on ``image``; None if the model has no map
    reconstruction: np.ndarray | None = None  # uint8 grey at the model's size; None if it does not reconstruct
    anomalous: bool | None = None             # set by apply_threshold

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        if self.anomalous is None:
            return ""
        return "anomalous" if self.anomalous else "normal"


def max_upload_bytes(mb: float = DEFAULT_MAX_UPLOAD_MB) -> int:
    return int(mb * 1024 * 1024)


def file_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------- decoding
def decode_upload(name: str, data: bytes, max_bytes: int) -> np.ndarray:
    """Bytes of one upload -> float grey image in [0, 1]; ImageReadError with the reason otherwise."""
    if len(data) > max_bytes:
        raise ImageReadError(f"file too large ({len(data) / 2**20:.1f} MB, limit {max_bytes / 2**20:.0f} MB)")
    return decode_image(data, Path(name).suffix)


def display_image(grey: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 grey image with the original aspect ratio, longest side at most ``side``."""
    h, w = grey.shape
    scale = min(1.0, side / max(h, w))
    img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------- heatmap
def _unprep(amap: np.ndarray, shape: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """Map a model-size map back onto an image of ``shape``: undo the padding, then stretch."""
    if prep.resize == "pad":
        h, w = shape
        s = amap.shape[0]
        scale = s / max(h, w)
        ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (s - ph) // 2, (s - pw) // 2
        amap = amap[top:top + ph, left:left + pw]
    img = Image.fromarray(amap.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def normalise_map(amap: np.ndarray) -> np.ndarray:
    """Smooth a per-pixel map and scale it to [0, 1] by its own 99th percentile.

    Per-image scaling shows *where* in this image the model disagrees most; how anomalous the image is
    overall is the score, not the colour. Smoothing (sigma ~ 1.5 % of the side) hides single-pixel noise.
    """
    from scipy.ndimage import gaussian_filter

    amap = np.nan_to_num(np.asarray(amap, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    amap = gaussian_filter(amap, sigma=max(0.5, 0.015 * amap.shape[0]))
    lo, hi = float(amap.min()), float(np.percentile(amap, 99))
    if hi - lo < 1e-12:
        return np.zeros_like(amap, dtype=np.float32)
    return np.clip((amap - lo) / (hi - lo), 0, 1).astype(np.float32)


def overlay(grey_u8: np.ndarray, heat01: np.ndarray, cmap: str = "inferno", alpha: float = 0.6) -> np.ndarray:
    """Colour ``heat01`` (same shape, [0, 1]) with a matplotlib colormap over the grey image; the colour's
    opacity grows with the value so that unremarkable regions keep showing the radiograph."""
    import matplotlib

    if grey_u8.shape != heat01.shape:
        raise ValueError(f"image {grey_u8.shape} and heatmap {heat01.shape} differ in shape")
    colours = matplotlib.colormaps[cmap](heat01)[..., :3]
    base = np.repeat(grey_u8[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    a = (alpha * heat01)[..., None]
    out = (1 - a) * base + a * colours
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- scoring
def score_uploads(det, files: list[tuple[str, bytes]], max_bytes: int | None = None) -> list[FileResult]:
    """Score uploaded files with a fitted detector; one FileResult per file, in order.

    Unreadable files (and files over ``max_bytes``) get their reason in ``error`` and do not stop the others.
    Verdicts are left unset: ``apply_threshold`` sets them, so a new operating point needs no re-scoring.
    The detector is only read, never modified (it may be shared between browser sessions).
    """
    max_bytes = max_upload_bytes() if max_bytes is None else max_bytes
    results = [FileResult(name=name) for name, _ in files]
    greys: dict[int, np.ndarray] = {}
    for i, (name, data) in enumerate(files):
        if i >= MAX_FILES:
            results[i].error = f"not scored: at most {MAX_FILES} files per batch"
            continue
        try:
            greys[i] = decode_upload(name, data, max_bytes)
        except ImageReadError as exc:
            results[i].error = str(exc)
        except Exception as exc:  # never a traceback on the page: one bad upload is one error card
            results[i].error = f"cannot read this file ({type(exc).__name__})"
    if not greys:
        return results
    idx = list(greys)
    batch = np.stack([resize(greys[i], det.prep) for i in idx])
    table, pictures = det.explain(ImageSet.from_arrays(batch, prep=det.prep))  # one forward pass: scores and maps
    maps, recons = pictures.get("map"), pictures.get("recon")
    for j, i in enumerate(idx):
        r = results[i]
        err = table["error"].iloc[j]
        if err:
            r.error = err
            continue
        r.score, r.percentile = float(table["score"].iloc[j]), float(table["percentile"].iloc[j])
        r.components = {c: float(table[c].iloc[j]) for c in det.components}
        r.image = display_image(greys[i])
        if maps is not None:
            heat = normalise_map(np.asarray(maps[j]))
            r.heatmap = overlay(r.image, _unprep(heat, r.image.shape, det.prep))
        if recons is not None:
            r.reconstruction = np.clip(np.asarray(recons[j]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return results


def apply_threshold(results: list[FileResult], threshold: float) -> list[FileResult]:
    """Set each scored result's verdict: anomalous when the score is strictly above the threshold."""
    for r in results:
        r.anomalous = None if r.error or r.score is None else bool(r.score > threshold)
    return results


# -------------------------------------------------------------------------------- operating point
def stored_thresholds(det) -> dict[str, float]:
    """The bundle's thresholds, active rule first."""
    active = det.threshold_rule_
    rest = {k: float(v) for k, v in det.thresholds_.items() if k != active}
    return {active: float(det.threshold_), **rest}


def calibration_scores(results: list[FileResult]) -> tuple[np.ndarray, list[FileResult]]:
    """Scores of scored confirmed-abnormal calibration uploads, and the files that could not be read."""
    scores = np.array([r.score for r in results if not r.error], float)
    return scores, [r for r in results if r.error]


# ---------------------------------------------------------------------------------------- table
def results_table(results: list[FileResult], components=()) -> pd.DataFrame:
    """One row per file, with the columns of ``cxrad score``'s scores.csv: path (the uploaded name), score,
    components, percentile among held-out normal images, verdict (empty for an error), error."""
    rows = [{"path": r.name, "score": r.score if r.score is not None else np.nan,
             **{c: (r.components or {}).get(c, np.nan) for c in components},
             "percentile": r.percentile if r.percentile is not None else np.nan,
             "anomalous": pd.NA if r.error or r.anomalous is None else bool(r.anomalous), "error": r.error}
            for r in results]
    table = pd.DataFrame(rows, columns=["path", "score", *components, "percentile", "anomalous", "error"])
    table["anomalous"] = table["anomalous"].astype("boolean")
    return table[score_columns(table, components)]
