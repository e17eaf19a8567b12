"""Synthetic-opacity self-supervised segmenter (FPI / NSA-style blending in the lung field); see README.md."""
from cxrad.detectors.opacity.detector import OpacityDetector

__all__ = ["OpacityDetector"]
