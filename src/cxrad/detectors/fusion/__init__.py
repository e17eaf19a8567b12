"""Score fusion of several detectors, standardised on held-out normal images (outlier-ensemble averaging)."""
from cxrad.detectors.fusion.detector import FusionDetector

__all__ = ["FusionDetector"]
