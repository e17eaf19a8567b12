"""Every detector, one folder each; importing this package registers them all by their ``kind``."""
from __future__ import annotations

from cxrad.bundle import read_meta, resolve
from cxrad.detector import REGISTRY, Detector, detector_class
from cxrad.models.aeu import AEUDetector
from cxrad.models.anogan import AnoGANDetector, FAnoGANDetector
from cxrad.models.cae import CAEDetector
from cxrad.models.dae import DAEDetector
from cxrad.models.fusion import FusionDetector
from cxrad.models.opacity import OpacityDetector
from cxrad.models.patchcore import PatchCoreDetector
from cxrad.models.regional import RegionalDetector

__all__ = ["AEUDetector", "AnoGANDetector", "CAEDetector", "DAEDetector", "Detector", "FAnoGANDetector",
           "FusionDetector", "OpacityDetector", "PatchCoreDetector", "REGISTRY", "RegionalDetector", "detector_class", "load_detector"]


def load_detector(path, device: str = "auto", allow_unverified: bool = False) -> Detector:
    """Load any bundle (a folder or a shipped model's name) into its registered detector class, on ``device``."""
    path = resolve(path)
    return detector_class(read_meta(path)["kind"]).load(path, device=device, allow_unverified=allow_unverified)
