"""Dual-distribution discrepancy (Cai et al., MICCAI 2022): AE-U ensembles on normals and on normals + an
unlabelled pool; see README.md."""
from cxrad.detectors.ddad.detector import DDADDetector

__all__ = ["DDADDetector"]
