"""The rows a detector's scoring produces, one schema everywhere (``score``, ``evaluate``, the Ray engine, the
dashboard's download): ``path, score, <components>, percentile, anomalous, error``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrad.data import ImageSet
from cxrad.data.images import ORDER
import cxrad.detectors.thresholds as th


def score_table(images: ImageSet, outputs: dict, components, normal_scores, threshold: float) -> pd.DataFrame:
    """One row per input, in input order: the manifest columns, each component, score, percentile, verdict and
    error. Unreadable inputs (and scores that are not finite) are error rows with an empty score and verdict."""
    table = images.frame.copy()
    for name in components:
        table[name] = np.asarray(outputs[name], np.float64)
    scores = np.asarray(outputs["score"], np.float64)
    table["score"] = scores
    table["percentile"] = th.percentile_of(normal_scores, scores)
    table["anomalous"] = pd.array(scores > threshold, dtype="boolean")
    table["error"] = ""
    table.loc[~np.isfinite(scores), "error"] = "score is not finite (the model diverged on this image)"
    if len(images.errors):
        errors = images.errors.copy()
        for col in table.columns:
            if col not in errors:
                errors[col] = pd.NA if col == "anomalous" else np.nan
        table = pd.concat([table, errors[table.columns]], ignore_index=True)
        if ORDER in table:
            table = table.sort_values(ORDER, kind="stable").reset_index(drop=True)
        table["anomalous"] = table["anomalous"].astype("boolean")
    table.loc[table["error"] != "", ["score", "percentile", "anomalous"]] = [np.nan, np.nan, pd.NA]
    return table.drop(columns=ORDER, errors="ignore")


def table_rows(images: ImageSet) -> np.ndarray:
    """For each image of ``images.images``, its row in ``score_table(images, ...)``."""
    if len(images.errors) and ORDER in images.frame:
        return images.frame[ORDER].to_numpy(int)
    return np.arange(len(images))


def score_columns(table: pd.DataFrame, components=(), labelled: bool = False) -> list[str]:
    """The per-image columns written to score files: path, score, components, percentile, verdict, error
    (and, for a labelled dataset, its label, finding and source after the path)."""
    extra = [c for c in ("label", "finding", "source") if c in table] if labelled else []
    return [c for c in ("path", *extra, "score", *components, "percentile", "anomalous", "error") if c in table]


def json_lines(rows: pd.DataFrame) -> str:
    """One JSON object per row, each line ending in a newline (so appended batches never run together)."""
    text = rows.to_json(orient="records", lines=True) if len(rows) else ""
    return text if not text or text.endswith("\n") else text + "\n"
