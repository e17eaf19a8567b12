"""What the screening dashboard does, without Streamlit: score uploaded files, pick an operating point,
draw the heatmap overlay, build the results table.

Everything here is a plain function of bytes, arrays and a fitted detector, so it is tested directly
(``tests/frontends/app/test_logic.py``); ``streamlit_app.py`` only lays the results out.

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

from cxrad.detectors.results import score_columns
from cxrad.data import ImageSet
from cxrad.errors import ImageReadError
from cxrad.imaging import decode_image, resize
from cxrad.frontends.app.launch import DEFAULT_MAX_UPLOAD_MB
# the heatmap drawing is shared with `cxrad score --maps`
from cxrad.frontends.heatmaps import DISPLAY_SIDE, display_image, map_overlay, normalise_map, overlay  # noqa: F401


#: most files scored in one batch: each keeps display images in memory
MAX_FILES = 100
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
            r.heatmap = map_overlay(r.image, maps[j], det.prep)
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
