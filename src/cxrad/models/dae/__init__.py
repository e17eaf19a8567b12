"""Coarse-noise denoising autoencoder (Kascenas et al., MIDL 2022)."""
from cxrad.models.dae.detector import DAEDetector
from cxrad.models.dae.model import UNet

__all__ = ["DAEDetector", "UNet"]
