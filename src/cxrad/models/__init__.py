"""Every detector, one folder each; importing this package registers them all by their ``kind``."""
from __future__ import annotations

from ..bundle import read_meta, resolve
from ..detector import REGISTRY, Detector, detector_class
from .aeu import AEUDetector
from .anogan import AnoGANDetector, FAnoGANDetector
from .cae import CAEDetector
from .dae import DAEDetector
from .fusion import FusionDetector
from .opacity import OpacityDetector
from .patchcore import PatchCoreDetector
from .regional import RegionalDetector

__all__ = ["AEUDetector", "AnoGANDetector", "CAEDetector", "DAEDetector", "Detector", "FAnoGANDetector",
           "FusionDetector", "OpacityDetector", "PatchCoreDetector", "REGISTRY", "RegionalDetector", "detector_class", "load_detector"]


def load_detector(path, device: str = "auto", allow_unverified: bool = False) -> Detector:
    """Load any bundle (a folder or a shipped model's name) into its registered detector class, on ``device``."""
    path = resolve(path)
    return detector_class(read_meta(path)["kind"]).load(path, device=device, allow_unverified=allow_unverified)
