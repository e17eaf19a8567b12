"""Evaluation metrics for anomaly scores against labels (1 = abnormal)."""
from __future__ import annotations

import numpy as np
import pandas as pd

# scipy.stats and scikit-learn are imported where they are used: ``cxrad score`` imports this module (through
# the evaluation layer) but computes no metric, and those imports cost ~0.9 s of its start


def _auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count one half); equals roc_auc_score, ~50x faster for the bootstrap."""
    from scipy.stats import rankdata
    ranks = rankdata(np.r_[pos_scores, neg_scores])
    n_pos, n_neg = pos_scores.size, neg_scores.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc_ci(labels, scores, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI for AUROC, resampling images with both classes kept in every resample."""
    y, s = np.asarray(labels, int), np.asarray(scores, float)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):  # stratified: each resample keeps the class sizes
        aucs[b] = _auroc(s[rng.choice(pos, pos.size)], s[rng.choice(neg, neg.size)])
    alpha = (1 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def binary_metrics(labels, predictions) -> dict:
    from sklearn.metrics import confusion_matrix
    y, p = np.asarray(labels, int), np.asarray(predictions, int)
    tn, fp, fn, tp = confusion_matrix(y, p, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"sensitivity": float(sens), "specificity": float(spec), "precision": float(prec), "f1": float(f1),
            "accuracy": float((tp + tn) / max(len(y), 1)),
            "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}}


def evaluate(labels, scores, threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC (with bootstrap 95% CI), AUPRC, and the threshold metrics (anomalous = score > threshold)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    y, s = np.asarray(labels, int), np.asarray(scores, float)
    out: dict = {"n": int(len(y)), "n_normal": int((y == 0).sum()), "n_abnormal": int((y == 1).sum())}
    both = out["n_normal"] > 0 and out["n_abnormal"] > 0
    out["auroc"] = float(roc_auc_score(y, s)) if both else float("nan")
    out["auroc_ci"] = list(bootstrap_auroc_ci(y, s, n_boot, seed)) if both and n_boot else [float("nan")] * 2
    out["auprc"] = float(average_precision_score(y, s)) if both else float("nan")
    if threshold is not None:
        out["threshold"] = float(threshold)
        out.update(binary_metrics(y, s > threshold))
    return out


def component_aurocs(det, table: pd.DataFrame) -> dict[str, float]:
    """AUROC of each of a detector's score components alone, oriented so that 1.0 is perfect."""
    y = table["label"]
    return {c: evaluate(y, -table[c] if c in det.lower_is_anomalous else table[c], n_boot=0)["auroc"]
            for c in det.components}


def breakdown(table: pd.DataFrame, by: str, threshold: float | None = None) -> pd.DataFrame:
    """Per-group metrics. Abnormal groups (a finding) are scored against *all* normal images, so each row
    reads as "how well does the detector separate this finding from normal"."""
    rows = []
    normals = table[table["label"] == 0]
    for name, group in table.groupby(by, sort=True):
        part = pd.concat([normals, group[group["label"] == 1]]) if (group["label"] == 1).any() else group
        m = evaluate(part["label"], part["score"], threshold, n_boot=0)
        rows.append({by: name, "n": len(group), "n_abnormal": int((group["label"] == 1).sum()),
                     "auroc_vs_all_normal": m["auroc"],
                     "flagged": float((group["score"] > threshold).mean()) if threshold is not None else np.nan,
                     "mean_score": float(group["score"].mean())})
    return pd.DataFrame(rows)


def class_means(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The CAE paper's table: mean (and sd) of each score component per class."""
    named = table.assign(cls=np.where(table["label"] == 1, "abnormal", "normal"))
    agg = named.groupby("cls")[columns].agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg.reset_index()
