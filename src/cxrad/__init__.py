"""cxrad: unsupervised anomaly detection on chest X-rays, trained on normal images only.

``import cxrad`` is light: the names below are imported on first use.
"""
from __future__ import annotations

import importlib

from cxrad.version import __version__

_LAZY = {"DataError": "errors", "ImageReadError": "errors", "BundleError": "errors", "NotFittedError": "errors",
         "ImageSet": "data", "load_images": "data", "open_dataset": "data", "Preprocessing": "imaging",
         "read_image": "imaging", "Detector": "detectors", "load_detector": "detectors",
         "OnnxScorer": "serving.onnx_export"}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name == "load_model":  # the earlier name of load_detector
        name = "load_detector"
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cxrad' has no attribute {name!r}")
