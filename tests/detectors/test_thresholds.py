"""Threshold rules with known answers (synthetic and real scores) and metrics against sklearn / by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score, precision_score,
                             recall_score, roc_auc_score)

import cxrad.detectors.thresholds as th
from cxrad.evaluation.metrics import binary_metrics, bootstrap_auroc_ci, breakdown, class_means, evaluate


@pytest.fixture(scope="module")
def real_scores(tiny_cae_bundle, sample_manifest, cache_dir):
    """Scores of the tiny CAE on the bundled test images (normal, pneumonia, COVID-19)."""
    from cxrad.detectors import load_detector
    from cxrad.data import load_images
    det = load_detector(tiny_cae_bundle)
    table = det.score(load_images(sample_manifest[sample_manifest["orig_split"] == "test"], det.prep, cache_dir))
    assert (table["error"] == "").all() and table["label"].nunique() == 2
    return det, table


def _gaussians(n, seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, n), rng.normal(shift, 1, n)


def _brute(normal, abnormal, objective):
    """Best objective over every distinct threshold (anomalous = score > t)."""
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    s = np.r_[normal, abnormal]
    best = -np.inf
    for t in np.r_[-np.inf, np.unique(s)]:
        best = max(best, objective(y, s > t))
    return best


def _youden(y, p):
    return p[y == 1].mean() - p[y == 0].mean()


def _f1(y, p):
    tp, fp, fn = (p & (y == 1)).sum(), (p & (y == 0)).sum(), (~p & (y == 1)).sum()
    return 2 * tp / max(2 * tp + fp + fn, 1)


# ----------------------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("n, spec", [(100, 0.95), (20, 0.95), (37, 0.9), (1000, 0.99)])
def test_quantile_gives_the_specificity_on_the_validation_scores(n, spec):
    scores = np.random.default_rng(n).normal(size=n)
    t = th.quantile_threshold(scores, spec)
    assert (scores <= t).mean() >= spec  # at least the asked specificity
    assert (scores < t).mean() < spec  # and the lowest such threshold (no sensitivity given away)


def test_quantile_on_real_validation_scores(real_scores):
    det, _ = real_scores
    val = det.normal_scores_
    t = th.quantile_threshold(val, 0.95)
    assert (val <= t).mean() >= 0.95 and (val < t).mean() < 0.95
    assert det.thresholds_["quantile"] == pytest.approx(t)
    point = th.operating_point(det, "specificity", target=0.8)
    assert det.set_operating_point(point) == pytest.approx(th.quantile_threshold(val, 0.8))
    assert det.threshold_rule_ == "specificity@0.8"
    det.set_operating_point(th.operating_point(det, "stored", rule="quantile"))
    with pytest.raises(ValueError):
        th.quantile_threshold([], 0.95)
    with pytest.raises(ValueError):
        th.quantile_threshold(val, 1.0)


@pytest.mark.parametrize("n, sens", [(10, 0.9), (10, 0.7), (100, 0.95), (7, 1.0), (50, 0.5)])
def test_sensitivity_threshold_flags_the_asked_share(n, sens):
    abnormal = np.random.default_rng(n).normal(size=n)
    t = th.sensitivity_threshold(abnormal, sens)
    flagged = (abnormal > t).mean()
    assert flagged >= sens - 1e-12  # at least the asked sensitivity
    assert flagged < sens + 1 / n - 1e-12  # and no more than needed


def test_crossing_equals_the_analytic_crossing_of_two_equal_variance_gaussians():
    normal, abnormal = _gaussians(1000, shift=2.0)
    t = th.crossing_threshold(normal, abnormal)
    assert np.median(normal) < t < np.median(abnormal)
    assert t == pytest.approx(1.0, abs=0.15)  # the midpoint of the means for equal variances
    # class sizes do not move it: densities, not counts, cross
    assert th.crossing_threshold(normal[:300], abnormal) == pytest.approx(1.0, abs=0.25)
    # unequal variances: the crossing nearer the narrow class, as the analytic solution says
    rng = np.random.default_rng(5)
    wide = rng.normal(3.0, 2.0, 1000)
    x = np.linspace(0, 3, 30001)
    pdf = lambda v, m, sd: np.exp(-(v - m) ** 2 / (2 * sd ** 2)) / sd  # noqa: E731
    analytic = x[np.argmin(np.abs(pdf(x, 0, 1) - pdf(x, 3, 2)))]
    assert th.crossing_threshold(normal, wide) == pytest.approx(analytic, abs=0.2)


def test_crossing_on_real_scores_lies_between_the_class_medians(real_scores):
    _, table = real_scores
    n, a = table.loc[table["label"] == 0, "score"], table.loc[table["label"] == 1, "score"]
    t = th.compute_threshold("crossing", n, a)
    lo, hi = sorted((np.median(n), np.median(a)))
    assert lo <= t <= hi


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_youden_and_max_f1_match_brute_force(source, real_scores):
    if source == "real":
        _, table = real_scores
        n, a = table.loc[table["label"] == 0, "score"].to_numpy(), table.loc[table["label"] == 1, "score"].to_numpy()
    else:
        n, a = _gaussians(300, seed=1, shift=1.0)
        a = a[:120]
    y = np.r_[np.zeros(len(n)), np.ones(len(a))]
    s = np.r_[n, a]
    t = th.compute_threshold("youden", n, a)
    assert _youden(y, s > t) == pytest.approx(_brute(n, a, _youden))
    t = th.compute_threshold("max-f1", n, a)
    assert _f1(y, s > t) == pytest.approx(_brute(n, a, _f1))


def test_fixed_rule_and_errors():
    assert th.compute_threshold("fixed", [0.0], value=0.25) == 0.25
    with pytest.raises(ValueError, match="value"):
        th.compute_threshold("fixed", [0.0])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        th.compute_threshold("median", [0.0, 1.0])
    with pytest.raises(ValueError, match="abnormal"):
        th.compute_threshold("youden", [0.0, 1.0], [])
    assert set(th.RULES) == {"quantile", "crossing", "youden", "max-f1", "fixed"}


def test_percentile_among_normal_scores(real_scores):
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(th.percentile_of(ref, [0.5, 1.0, 2.5, 4.0, 9.0]), [0, 25, 50, 100, 100])
    det, table = real_scores
    np.testing.assert_allclose(table["percentile"],
                               [100.0 * (det.normal_scores_ <= s).mean() for s in table["score"]])


def test_calibrate_stores_labelled_rules_in_the_model(real_scores, tmp_path, sample_manifest, cache_dir):
    from cxrad.data import load_images
    det, table = real_scores
    test = load_images(sample_manifest[sample_manifest["orig_split"] == "test"], det.prep, cache_dir)
    n, a = table.loc[table["label"] == 0, "score"], table.loc[table["label"] == 1, "score"]
    for rule in ("crossing", "youden", "max-f1"):
        t = det.set_operating_point(th.operating_point(det, rule, labelled=test))
        assert t == pytest.approx(th.compute_threshold(rule, n, a), rel=1e-6)
        assert det.threshold_rule_ == rule and det.thresholds_[rule] == t
    det.set_operating_point(th.operating_point(det, "fixed", value=0.5))
    assert det.threshold_rule_ == "fixed" and det.threshold_ == 0.5
    from cxrad.detectors import load_detector
    back = load_detector(det.save(tmp_path / "m"))
    assert back.thresholds_ == pytest.approx(det.thresholds_) and back.threshold_rule_ == "fixed"
    back.set_operating_point(th.operating_point(back, "stored", rule="youden"))
    assert back.threshold_ == pytest.approx(det.thresholds_["youden"])
    with pytest.raises(ValueError, match="no 'nope' threshold"):
        th.operating_point(back, "stored", rule="nope")
    with pytest.raises(ValueError, match="at least 2 normal and 2 abnormal"):
        th.operating_point(back, "crossing", abnormal_scores=[1.0])
    det.set_operating_point(th.operating_point(det, "stored", rule="quantile"))


# -------------------------------------------------------------------------------------------- metrics
def test_binary_metrics_by_hand():
    y = [0, 0, 0, 0, 1, 1, 1]
    p = [0, 1, 0, 0, 1, 0, 1]  # tn 3, fp 1, fn 1, tp 2
    m = binary_metrics(y, p)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 2}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert np.isnan(binary_metrics([0, 0], [0, 0])["sensitivity"])


def test_evaluate_matches_sklearn_on_real_scores(real_scores):
    det, table = real_scores
    y, s = table["label"].to_numpy(int), table["score"].to_numpy()
    t = float(np.median(s))
    m = evaluate(y, s, threshold=t, n_boot=200)
    p = (s > t).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["auprc"] == pytest.approx(average_precision_score(y, s))
    assert m["sensitivity"] == pytest.approx(recall_score(y, p))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - p))
    assert m["precision"] == pytest.approx(precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, p)) and m["accuracy"] == pytest.approx(accuracy_score(y, p))
    tn, fp, fn, tp = confusion_matrix(y, p).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["n"] == len(y) and m["n_abnormal"] == y.sum()
    lo, hi = m["auroc_ci"]
    assert lo <= m["auroc"] <= hi


def test_fast_auroc_equals_sklearn_with_ties():
    from cxrad.evaluation.metrics import _auroc
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 50).astype(float)  # many ties
    assert _auroc(pos, neg) == pytest.approx(roc_auc_score(np.r_[np.ones(30), np.zeros(50)], np.r_[pos, neg]))


def test_bootstrap_ci_contains_auroc_and_narrows_with_more_data():
    widths = []
    for n in (40, 400):
        normal, abnormal = _gaussians(n, seed=n, shift=1.0)
        y, s = np.r_[np.zeros(n), np.ones(n)], np.r_[normal, abnormal]
        lo, hi = bootstrap_auroc_ci(y, s, n_boot=200, seed=0)
        assert lo < roc_auc_score(y, s) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 10x the data, about a third of the width
    assert bootstrap_auroc_ci([0, 0], [0.1, 0.2]) != bootstrap_auroc_ci([0, 0], [0.1, 0.2])  # nan, nan


def test_breakdown_per_source_and_finding_and_class_means():
    table = pd.DataFrame({
        "label": [0, 0, 0, 1, 1, 1, 1],
        "score": [0.1, 0.2, 0.3, 0.25, 0.9, 0.8, 0.05],
        "recon_error": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "source": ["a", "a", "b", "a", "b", "b", "b"],
        "finding": ["none", "none", "none", "pneumonia", "covid", "covid", "pneumonia"]})
    by_finding = breakdown(table, "finding", threshold=0.22).set_index("finding")
    # pneumonia (0.25, 0.05) against all three normals (0.1, 0.2, 0.3): 2 of 6 pairs ranked right
    assert by_finding.loc["pneumonia", "auroc_vs_all_normal"] == pytest.approx(2 / 6)
    assert by_finding.loc["covid", "auroc_vs_all_normal"] == pytest.approx(1.0)
    assert by_finding.loc["covid", "flagged"] == 1.0 and by_finding.loc["pneumonia", "flagged"] == 0.5
    assert by_finding.loc["none", "n"] == 3 and by_finding.loc["none", "flagged"] == pytest.approx(1 / 3)
    by_source = breakdown(table, "source").set_index("source")
    assert by_source.loc["b", "n_abnormal"] == 3
    assert by_source.loc["b", "mean_score"] == pytest.approx(np.mean([0.3, 0.9, 0.8, 0.05]))
    means = class_means(table, ["recon_error", "score"]).set_index("cls")
    assert means.loc["normal", "recon_error_mean"] == pytest.approx(2.0)
    assert means.loc["abnormal", "recon_error_mean"] == pytest.approx(5.5)
    assert means.loc["abnormal", "recon_error_std"] == pytest.approx(np.std([4, 5, 6, 7], ddof=1))
