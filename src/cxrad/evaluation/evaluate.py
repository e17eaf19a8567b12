"""Evaluating a fitted detector on labelled images: every metric, the breakdown tables, and the table of
verdict metrics at each stored threshold. The CLI, the report, the benchmarks and the tools all call this."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.data import ImageSet, load_images
from cxrad.detectors.results import csv_text, json_lines, score_columns
from cxrad.files import atomic_write_text
from cxrad.evaluation.metrics import binary_metrics, breakdown, class_means, component_aurocs, evaluate

def write_scores(table: pd.DataFrame, out: Path, components=(), labelled: bool = True, stem: str = "scores") -> None:
    """``stem``.csv and ``stem``.jsonl (one JSON object per line); an error row's score and verdict are empty
    in the CSV and null in JSON."""
    table = table[score_columns(table, components, labelled)]
    atomic_write_text(out / f"{stem}.csv", csv_text(table))
    atomic_write_text(out / f"{stem}.jsonl", json_lines(table))


def evaluate_model(det, data, out: Path | None = None, cache_dir=None, progress: bool = False,
                   pictures=()) -> dict:
    """Score a labelled manifest (or an already loaded ImageSet) and compute every metric; writes the scores,
    metrics.json and the breakdown tables under ``out`` when it is given. Error rows are counted, not scored.
    The ``pictures`` named (``map``, ``recon``, ``features``) come back under "pictures", from the same pass."""
    images = data if isinstance(data, ImageSet) else load_images(data, det.prep, cache_dir=cache_dir,
                                                                 progress=progress)
    table, drawn = det.explain(images, pictures=pictures)
    ok = table[table["error"] == ""]
    if ok["label"].nunique() < 2:
        present = sorted({"normal" if v == 0 else "abnormal" for v in ok["label"]}) or ["no readable"]
        raise ValueError(f"evaluation needs both normal and abnormal images; this data has only "
                         f"{' and '.join(present)} images")
    result = {"model": det.kind, "threshold_rule": det.threshold_rule_,
              **evaluate(ok["label"], ok["score"], det.threshold_)}
    if hasattr(det, "component_thresholds"):
        result["component_thresholds"] = det.component_thresholds()
    result["components"] = component_aurocs(det, ok)
    result["n_errors"] = int((table["error"] != "").sum())
    result["n_training_images"] = training_overlap(det, images)
    tables = {"by_source": breakdown(ok, "source", det.threshold_),
              "by_finding": breakdown(ok, "finding", det.threshold_),
              "class_means": class_means(ok, list(det.components) + ["score"])}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_scores(table, out, det.components)
        for name, t in tables.items():
            atomic_write_text(out / f"{name}.csv", csv_text(t))
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    result["tables"] = tables
    result["scores"] = table  # per-image rows, in input order, for reports
    result["pictures"] = drawn  # of the scored rows, in the same order
    return result


def training_overlap(det, images: ImageSet) -> int | None:
    """How many of ``images`` the model trained on, by the file hashes its bundle records (None: it records none)."""
    trained = getattr(det, "train_hashes_", None)
    if not trained or "sha256" not in images.frame:
        return None
    return int(images.frame["sha256"].astype(str).str[:16].isin(set(trained)).sum())


def overlap_warning(result: dict) -> str | None:
    n = result.get("n_training_images")
    if not n:
        return None
    return (f"warning: {n} of the {result['n']} evaluated images are among the model's training images (its bundle "
            "records their hashes): these metrics are optimistic; evaluate on images it never saw (--protocol "
            "gives each protocol's test split)")


def threshold_table(det, labels, scores, metrics: dict) -> pd.DataFrame:
    """The seed write-up's "recall and AUROC" table: recall (and the other verdict metrics) at every stored
    threshold, with the AUROC and its CI (which do not depend on the threshold)."""
    rows = []
    for rule, t in det.thresholds_.items():
        m = binary_metrics(labels, np.asarray(scores) > t)
        row = {"threshold_rule": rule, "active": rule == det.threshold_rule_, "threshold": t,
               "recall": m["sensitivity"], "specificity": m["specificity"], "precision": m["precision"],
               "f1": m["f1"], "auroc": metrics["auroc"],
               "auroc_95ci": "{:.3f}-{:.3f}".format(*metrics["auroc_ci"])}
        if hasattr(det, "component_thresholds"):
            row.update(det.component_thresholds(t))
        rows.append(row)
    return pd.DataFrame(rows)


def format_metrics(result: dict) -> str:
    lo, hi = result["auroc_ci"]
    cm = result.get("confusion_matrix", {})
    warning = overlap_warning(result)
    lines = ([warning] if warning else []) + [
        f"images: {result['n']} ({result['n_normal']} normal, {result['n_abnormal']} abnormal)"
        + (f", {result['n_errors']} unreadable" if result.get("n_errors") else ""),
        f"AUROC {result['auroc']:.3f} (95% CI {lo:.3f}-{hi:.3f})   AUPRC {result['auprc']:.3f}",
        f"threshold ({result['threshold_rule']}) {result['threshold']:.4g}: sensitivity {result['sensitivity']:.3f}"
        f"  specificity {result['specificity']:.3f}  precision {result['precision']:.3f}  F1 {result['f1']:.3f}"
        f"  accuracy {result['accuracy']:.3f}",
        f"confusion matrix: TN {cm.get('tn')}  FP {cm.get('fp')}  FN {cm.get('fn')}  TP {cm.get('tp')}",
    ]
    if result.get("components"):
        lines.append("component AUROC: " + "  ".join(f"{k} {v:.3f}" for k, v in result["components"].items()))
    for name in ("class_means", "by_source", "by_finding"):
        t = result.get("tables", {}).get(name)
        if t is not None and len(t):
            lines += [f"\n{name.replace('_', ' ')}:", t.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)
