"""Coarse-noise denoising autoencoder (Kascenas et al., MIDL 2022)."""
from cxrad.detectors.dae.detector import DAEDetector

__all__ = ["DAEDetector"]
