"""Evaluating detectors on labelled images: metrics and the evaluation tables."""
from __future__ import annotations

from cxrad.evaluation.evaluate import evaluate_model, format_metrics, threshold_table

__all__ = ["evaluate_model", "format_metrics", "threshold_table"]
