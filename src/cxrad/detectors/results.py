"""The rows a detector's scoring produces, one schema everywhere (``score``, ``evaluate``, the Ray engine, the
dashboard's download): ``path, score, <components>, percentile, anomalous, error``."""
from __future__ import annotations

import csv
import io
import json
import math

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


def _json_value(value):
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return str(value)


def json_lines(rows: pd.DataFrame) -> str:
    """One JSON object per row, each line ending in a newline (so appended batches never run together). Numbers
    keep full precision, as in the CSV (the shortest text that reads back to the same float); a missing value is
    null; text is written as it is (no ``\\/`` escapes)."""
    columns = [str(c) for c in rows.columns]
    return "".join(json.dumps(dict(zip(columns, map(_json_value, values))), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":"))
                   + "\n" for values in rows.itertuples(index=False, name=None))


#: what a spreadsheet takes as the start of a formula (OWASP "CSV injection"); a cell starting with one is
#: written with a leading single quote, and so is a cell that already starts with one (so reading back is exact)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it literally: prefixed with ' if it starts like a formula (or with ')."""
    return "'" + text if text.startswith((*FORMULA_START, "'")) else text


def restore_cell(text: str) -> str:
    """The inverse of ``neutralise_cell``."""
    return text[1:] if text.startswith("'") else text


def csv_text(table: pd.DataFrame, header: bool = True) -> str:
    """``table`` as CSV for people and spreadsheets: every text cell neutralised against formula injection, and
    every field holding a line break (``\\r`` included, which pandas leaves bare) quoted, so that a file name
    can never split a row. Rows end in ``\\n``; numbers are written as pandas writes them (full precision)."""
    table = table.copy()
    for col in table.columns:
        if table[col].dtype == object or pd.api.types.is_string_dtype(table[col]):
            table[col] = table[col].map(lambda v: neutralise_cell(v) if isinstance(v, str) else v)
    text = table.to_csv(index=False, header=header, lineterminator="\r\n")  # quotes any field with \r or \n
    out, buf = [], io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in csv.reader(io.StringIO(text, newline="")):
        writer.writerow(row)
        out.append(buf.getvalue()[:-2] + "\n")
        buf.seek(0)
        buf.truncate()
    return "".join(out)
