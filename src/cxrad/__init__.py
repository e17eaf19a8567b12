"""cxrad: unsupervised anomaly detection on chest X-rays, trained on normal images only.

``import cxrad`` is light: the names below are imported on first use.
"""
from __future__ import annotations

import importlib

from cxrad.version import __version__

_LAZY = {"DataError": "errors", "ImageReadError": "errors", "BundleError": "errors", "NotFittedError": "errors",
         "ImageSet": "data", "load_images": "data", "open_dataset": "data", "Preprocessing": "io",
         "read_image": "io", "Detector": "detector", "load_model": "pretrained", "load_detector": "models"}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cxrad' has no attribute {name!r}")
