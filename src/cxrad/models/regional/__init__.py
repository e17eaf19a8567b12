"""Regional intensity/texture statistics with a shrunk Gaussian (PaDiM-style modelling, hand-crafted features)."""
from .detector import RegionalDetector
from .model import RegionalStatistics

__all__ = ["RegionalDetector", "RegionalStatistics"]
