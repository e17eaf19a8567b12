"""A DAE adapted to a site by its unlabelled films, scored by the discrepancy with the DAE it started from."""
from cxrad.detectors.adapted.detector import AdaptedDetector

__all__ = ["AdaptedDetector"]
