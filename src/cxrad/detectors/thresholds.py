"""Operating points: turn anomaly scores into verdicts.

Rules (all on held-out *validation* scores, never on the test set):
- ``quantile``: the ``specificity`` quantile of normal scores; needs no abnormal labels at all.
- ``crossing``: where the normal and abnormal score densities cross (the AnoGAN TB report's rule).
- ``youden``: maximises sensitivity + specificity - 1.
- ``max-f1``: maximises F1 of the abnormal class.
- ``fixed``: a value the user gives.
An image is anomalous when its score is strictly above the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# scikit-learn is imported inside the labelled rules: scoring with a stored threshold never needs it (~0.9 s)

RULES = ("quantile", "crossing", "youden", "max-f1", "fixed")
LABELLED_RULES = ("crossing", "youden", "max-f1")


def quantile_threshold(normal_scores, specificity: float = 0.95) -> float:
    s = np.asarray(normal_scores, float)
    if s.size == 0:
        raise ValueError("the quantile rule needs normal validation scores")
    if not 0 < specificity < 1:
        raise ValueError(f"specificity must be in (0, 1), got {specificity}")
    # the lowest score with at least `specificity` of normal scores at or below it ('higher' overshot:
    # with 100 scores it gave 96% specificity for 95%)
    return float(np.quantile(s, specificity, method="inverted_cdf"))


def sensitivity_threshold(abnormal_scores, sensitivity: float) -> float:
    """Highest threshold that still flags ``sensitivity`` of the abnormal scores."""
    s = np.sort(np.asarray(abnormal_scores, float))
    if s.size == 0:
        raise ValueError("a sensitivity target needs abnormal validation scores")
    k = int(np.floor((1 - sensitivity) * s.size + 1e-9))  # (1 - 0.9) * 10 is 0.999..., not 1
    return float(np.nextafter(s[max(k, 0)], -np.inf)) if k < s.size else float(s[-1])


def _kde(scores: np.ndarray):
    from sklearn.neighbors import KernelDensity
    bw = 1.06 * max(scores.std(), 1e-12) * scores.size ** (-1 / 5)  # Silverman's rule
    return KernelDensity(bandwidth=bw).fit(scores[:, None])


def crossing_threshold(normal_scores, abnormal_scores, grid: int = 2048) -> float:
    """Score where the two class densities cross, between the class medians.

    Densities are Gaussian KDEs (Silverman bandwidth); if several crossings lie between the medians the one
    with the fewest training errors wins. Falls back to the midpoint of the medians if they never cross.
    """
    n, a = np.asarray(normal_scores, float), np.asarray(abnormal_scores, float)
    if n.size < 2 or a.size < 2:
        raise ValueError("the crossing rule needs at least 2 normal and 2 abnormal validation scores")
    lo, hi = sorted((np.median(n), np.median(a)))
    if hi - lo < 1e-12:
        return float(lo)
    xs = np.linspace(lo, hi, grid)
    diff = _kde(n).score_samples(xs[:, None]) - _kde(a).score_samples(xs[:, None])
    idx = np.flatnonzero(np.diff(np.sign(diff)) != 0)
    if idx.size == 0:
        return float((lo + hi) / 2)
    candidates = (xs[idx] + xs[idx + 1]) / 2
    errors = [(n > t).sum() + (a <= t).sum() for t in candidates]
    return float(candidates[int(np.argmin(errors))])


def youden_threshold(labels, scores) -> float:
    from sklearn.metrics import roc_curve
    fpr, tpr, thr = roc_curve(labels, scores)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # thr[0] is +inf
    return float(np.nextafter(thr[i], -np.inf))  # roc_curve counts score >= thr as positive


def max_f1_threshold(labels, scores) -> float:
    from sklearn.metrics import precision_recall_curve
    prec, rec, thr = precision_recall_curve(labels, scores)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    return float(np.nextafter(thr[int(np.argmax(f1))], -np.inf))


def compute_threshold(rule: str, normal_scores, abnormal_scores=None, specificity: float = 0.95,
                      value: float | None = None) -> float:
    """One threshold by name. Labelled rules need ``abnormal_scores``; ``fixed`` needs ``value``."""
    if rule == "quantile":
        return quantile_threshold(normal_scores, specificity)
    if rule == "fixed":
        if value is None:
            raise ValueError("the fixed rule needs a value")
        return float(value)
    if rule not in LABELLED_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {', '.join(RULES)}")
    if abnormal_scores is None or len(abnormal_scores) == 0:
        raise ValueError(f"the {rule} rule needs labelled abnormal validation images")
    if rule == "crossing":
        return crossing_threshold(normal_scores, abnormal_scores)
    n, a = np.asarray(normal_scores, float), np.asarray(abnormal_scores, float)
    labels = np.r_[np.zeros(n.size), np.ones(a.size)]
    scores = np.r_[n, a]
    return youden_threshold(labels, scores) if rule == "youden" else max_f1_threshold(labels, scores)


def robust_scale(scores) -> tuple[float, float]:
    """(median, IQR as a normal sd) of finite held-out normal scores: how a score is standardised before scores of
    different kinds are averaged (outlier-ensemble practice); the sd when the IQR is 0."""
    s = np.asarray(scores, float)
    s = s[np.isfinite(s)]
    q1, median, q3 = np.percentile(s, [25, 50, 75])
    scale = (q3 - q1) / 1.349  # the IQR of a standard normal distribution
    return float(median), float(scale if scale > 0 else np.std(s) + 1e-12)


def percentile_of(normal_scores_sorted: np.ndarray, scores) -> np.ndarray:
    """Percent of held-out normal scores at or below each score (0-100)."""
    ref = np.asarray(normal_scores_sorted, float)
    if ref.size == 0:
        return np.full(np.shape(scores), np.nan)
    return 100.0 * np.searchsorted(ref, np.asarray(scores, float), side="right") / ref.size


# ------------------------------------------------------------------------------------- confidence
#: fewer held-out normal scores than this and a threshold's specificity is too uncertain to trust unwarned
MIN_NORMALS = 50


@dataclass(frozen=True)
class ThresholdConfidence:
    """How far a threshold can be trusted, from the ``n`` held-out normal scores it rests on: the share of them
    at or below it (its specificity there) with the Clopper-Pearson interval of the specificity it gives on new
    normal images, and the distribution-free (order-statistic) interval of the quantile threshold itself
    (None for a side with too few scores to bound it)."""

    n: int
    specificity: float
    specificity_ci: tuple[float, float]
    threshold_ci: tuple[float | None, float | None]
    level: float = 0.95

    @property
    def few(self) -> bool:
        return self.n < MIN_NORMALS

    def describe(self) -> str:
        lo, hi = self.threshold_ci
        pct = f"{self.level:.0%}"
        bounds = (f"{lo:.4g}" if lo is not None else "below the lowest normal score") + " to " + \
            (f"{hi:.4g}" if hi is not None else "above the highest")
        return (f"{pct} CI of the threshold {bounds}; specificity on the {self.n} held-out normals "
                f"{self.specificity:.3f}, {pct} CI {self.specificity_ci[0]:.2f}-{self.specificity_ci[1]:.2f}")

    def warning(self) -> str | None:
        if not self.few:
            return None
        return (f"the threshold rests on only {self.n} held-out normal image(s) (fewer than {MIN_NORMALS}): on new "
                f"normal images its specificity could be anywhere from {self.specificity_ci[0]:.2f} to "
                f"{self.specificity_ci[1]:.2f} ({self.level:.0%} CI); train on more normal images or raise "
                "--val-fraction")


def threshold_confidence(normal_scores, threshold: float, level: float = 0.95) -> ThresholdConfidence:
    """``ThresholdConfidence`` of ``threshold`` on the held-out normal scores it was set on."""
    from scipy.stats import beta, binom
    s = np.sort(np.asarray(normal_scores, float))
    n = int(s.size)
    if n == 0:
        raise ValueError("a threshold's confidence needs held-out normal scores")
    k = int(np.searchsorted(s, threshold, side="right"))  # normal scores at or below it pass as normal
    a = (1 - level) / 2
    spec_lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    spec_hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    q = min(max(k / n, 1e-12), 1 - 1e-12)
    lo_rank, hi_rank = int(binom.ppf(a, n, q)), int(binom.ppf(1 - a, n, q)) + 1  # 1-based order statistics
    return ThresholdConfidence(n, k / n, (spec_lo, spec_hi),
                               (float(s[lo_rank - 1]) if lo_rank >= 1 else None,
                                float(s[hi_rank - 1]) if hi_rank <= n else None), level)


# ---------------------------------------------------------------------------------- operating points
OPERATING_MODES = ("stored", "specificity", "sensitivity", "fixed")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and where it came from; the CLI, the report and the dashboard all set verdicts with one."""

    threshold: float
    rule: str   # the name it is stored under in a bundle's thresholds, e.g. "quantile", "specificity@0.9"
    label: str  # for people, e.g. "stored quantile", "specificity 0.9"


def labelled_scores(det, data) -> tuple[np.ndarray, np.ndarray]:
    """(normal, abnormal) finite scores of a labelled calibration set (a manifest, paths or an ImageSet)."""
    table = det.score(data)
    table = table[(table["error"] == "") & np.isfinite(table["score"])]
    return table.loc[table["label"] == 0, "score"].to_numpy(float), table.loc[table["label"] == 1, "score"].to_numpy(float)


def operating_point(det, mode: str = "stored", rule: str | None = None, target: float | None = None,
                    value: float | None = None, abnormal_scores=None, normal_scores=None,
                    labelled=None) -> OperatingPoint:
    """The operating point of a fitted detector:

    - ``stored``: a threshold saved in the bundle (``rule``; the active one by default);
    - ``specificity``: the ``target`` quantile of the held-out normal validation scores (or of ``normal_scores``);
    - ``sensitivity``: flags the ``target`` share of ``abnormal_scores`` (confirmed-abnormal calibration
      images: a bundle stores normal scores only);
    - ``crossing``, ``youden``, ``max-f1``: the labelled rules, on ``normal_scores`` and ``abnormal_scores``;
    - ``fixed``: the threshold ``value``.
    ``labelled`` (a labelled calibration set) gives ``normal_scores`` and ``abnormal_scores``. Raises ValueError
    with the reason when the point cannot be set. ``det.set_operating_point`` makes it the active one."""
    if labelled is not None:
        normal_scores, abnormal_scores = labelled_scores(det, labelled)
    if mode == "stored":
        rule = rule or det.threshold_rule_
        if rule not in det.thresholds_:
            raise ValueError(f"no {rule!r} threshold stored; have {', '.join(det.thresholds_)}")
        return OperatingPoint(float(det.thresholds_[rule]), rule, f"stored {rule}")
    if mode == "fixed":
        if value is None or not np.isfinite(value):
            raise ValueError(f"a fixed threshold must be a finite number, got {value}")
        return OperatingPoint(float(value), "fixed", f"fixed {value:g}")
    normals = det.normal_scores_ if normal_scores is None else np.asarray(normal_scores, float)
    abnormals = np.asarray([] if abnormal_scores is None else abnormal_scores, float)
    abnormals = abnormals[np.isfinite(abnormals)]
    if mode in LABELLED_RULES:
        if len(normals) < 2 or len(abnormals) < 2:
            raise ValueError(f"the {mode} rule needs labelled calibration images: at least 2 normal and 2 abnormal")
        return OperatingPoint(compute_threshold(mode, normals, abnormals), mode,
                              f"{mode} on {len(normals)} normal + {len(abnormals)} abnormal image(s)")
    if mode not in OPERATING_MODES:
        raise ValueError(f"unknown operating point {mode!r}; choose from "
                         f"{', '.join([*OPERATING_MODES, *LABELLED_RULES])}")
    if target is None or not 0 < target < 1:
        raise ValueError(f"the target {mode} must be between 0 and 1 (exclusive), got {target}")
    if mode == "specificity":
        rule = "quantile" if normal_scores is None and target == det.specificity else f"specificity@{target:g}"
        return OperatingPoint(quantile_threshold(normals, target), rule, f"specificity {target:g}")
    if abnormals.size == 0:
        raise ValueError("a target sensitivity needs images known to be abnormal: a model stores only normal "
                         "validation scores. Give confirmed-abnormal calibration images, or choose a stored "
                         "threshold or a target specificity.")
    return OperatingPoint(sensitivity_threshold(abnormals, target), f"sensitivity@{target:g}",
                          f"sensitivity {target:g} on {abnormals.size} abnormal image(s)")
