"""Regional intensity/texture statistics with a shrunk Gaussian (PaDiM-style modelling, hand-crafted features)."""
from cxrad.detectors.regional.detector import RegionalDetector
from cxrad.detectors.regional.model import RegionalStatistics

__all__ = ["RegionalDetector", "RegionalStatistics"]
