"""Every detector, one folder each, registered by its ``kind`` (``registry``). Adding a detector is adding its
folder (and its entry in docs/detectors.md).

The names below load on first use, so that ``cxrad.detectors.thresholds`` or ``results`` (numpy and pandas only)
import without torch, as an ONNX-only scorer needs."""
from __future__ import annotations

import importlib
from pathlib import Path

from cxrad.detectors.registry import REGISTRY, detector_class, discover

__all__ = ["Detector", "REGISTRY", "detector_class", "discover", "load_detector"]


def load_detector(model=None, device: str = "auto", allow_unverified: bool = False):
    """A fitted detector from a bundle folder, a shipped model's name, None (the shipped default), or a detector
    (returned as it is), loaded into its registered class on ``device``."""
    from cxrad.bundles import read_meta, resolve
    from cxrad.detectors.base import Detector
    if isinstance(model, Detector):
        return model
    path = resolve(model)
    return detector_class(read_meta(path)["kind"]).load(path, device=device, allow_unverified=allow_unverified)


def __getattr__(name: str):
    here = Path(__file__).parent
    if (here / f"{name}.py").exists() or (here / name / "__init__.py").exists():  # a submodule, being imported
        return importlib.import_module(f"{__name__}.{name}")
    if name == "Detector":
        return importlib.import_module("cxrad.detectors.base").Detector
    for cls in discover().values():  # a detector class by its class name, e.g. DAEDetector
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'cxrad.detectors' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), "Detector", *(cls.__name__ for cls in discover().values())})
