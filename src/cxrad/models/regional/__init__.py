"""Regional intensity/texture statistics with a shrunk Gaussian (PaDiM-style modelling, hand-crafted features)."""
from cxrad.models.regional.detector import RegionalDetector
from cxrad.models.regional.model import RegionalStatistics

__all__ = ["RegionalDetector", "RegionalStatistics"]
