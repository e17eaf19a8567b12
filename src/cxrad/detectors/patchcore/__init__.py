"""Patch features of an in-domain encoder, modelled PatchCore- or PaDiM-style; see README.md."""
from cxrad.detectors.patchcore.detector import PatchCoreDetector

__all__ = ["PatchCoreDetector"]
